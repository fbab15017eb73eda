"""The long-running device agent: MQTT session, durable outbox, commands, jobs, model versions.

Threads: paho's network thread (callbacks only enqueue), the *pump* (the only thread that publishes:
outbox → paho, PUBACK → delete), the *command* thread (validates and answers ``cmd/{verb}``), the *job*
thread (trains), the *ask* thread (answers ``ask``, :mod:`ftedge.device_agent.asker`) and the deploy worker. Every device→host message goes through the SQLite outbox first.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

import ftedge
from ftedge.device_agent.asker import Asker
from ftedge.device_agent.commands import (ReplyCache, Rejected, cancel_target, parse_request, peek_cmd_id,
                                          request_expires, train_job)
from ftedge.device_agent.config import AgentConfig, topic_root
from ftedge.device_agent.deployer import Deployer
from ftedge.device_agent.disk import DiskGuard
from ftedge.device_agent.install import DeployError, check_restore_names, restore_replaced
from ftedge.device_agent.jobs import ACTIVE, Job, JobRunner, JobStore
from ftedge.device_agent.mqtt_link import Incoming, LinkSettings, MqttLink
from ftedge.device_agent.outbox import Outbox
from ftedge.device_agent.policy.runner import PolicyRunner
from ftedge.device_agent.policy.spec import Policy
from ftedge.device_agent.retention import enforce_retention
from ftedge.device_agent.versions import ModelStore
from ftedge.errors import AgentError, FtedgeError
from ftedge.mqtt.contract import CMD, CMDRES, JOB, MAX_REASON, META, STATUS, job_suffix

log = logging.getLogger(__name__)
MAX_INFLIGHT = 100
ROLLBACK_ARGS = ("to", "bundle", "restore")
NO_VERSION = "none"  # rollback's args.to that deactivates every personalized model


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.root = topic_root(cfg)
        self.state_dir = Path(cfg.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(self.state_dir / "outbox.sqlite", cfg.device_id,
                             max_bytes=cfg.outbox.max_bytes, max_age_s=cfg.outbox.max_age_s)
        self.boot = self.outbox.boot
        self.models = ModelStore(self.state_dir)
        self.disk = DiskGuard(self.state_dir)
        d = cfg.deploy
        self.jobs = JobRunner(JobStore(self.state_dir), self.state_dir, self._emit_job, self._job_finished,
                              max_starts=cfg.jobs.max_starts, disk=self.disk, data_root=cfg.paths.data_root,
                              train_defaults=cfg.runtime.train_defaults(),
                              trusted_keys=list(d.trusted_keys) if d.require_signed else None)
        self.replies = ReplyCache(self.state_dir / "replies.json")
        self.deployer = Deployer(cfg.deploy, cfg.paths.bundle_root)
        self.asker = Asker(self.models, cfg.paths.bundle_root, cfg.ask,
                           trusted_keys=list(d.trusted_keys) if d.require_signed else None,
                           training=lambda: self.jobs.current is not None)
        self.policy = PolicyRunner(self.state_dir, cfg.personalize, cfg.paths.data_root, self._policy_job,
                                   self._busy, on_change=self._policy_changed)
        self.stopping = threading.Event()   # asked to stop (signal); `run` then calls `shutdown`
        self._drained = threading.Event()   # shutdown flushed the outbox: the pump thread may exit
        self.wake = threading.Event()
        self.inflight: dict[int, int] = {}
        self.acks: "queue.Queue[tuple[int, int, str]]" = queue.Queue()
        self.commands: "queue.Queue[Incoming | None]" = queue.Queue()
        self.denied = 0
        self.pump_errors = 0          # publishing passes that failed (and were retried)
        self.connections = 0          # connections made during this boot
        self.connected_at_ms = 0      # when the current connection came up
        m = cfg.mqtt
        self.link = MqttLink(
            LinkSettings(host=m.host, port=m.port, client_id=f"ftedge-{cfg.fleet}-{cfg.device_id}", tls=m.tls,
                         username=m.username, password=m.password,
                         ca_file=str(m.ca_file) if m.ca_file else None,
                         cert_file=str(m.cert_file) if m.cert_file else None,
                         key_file=str(m.key_file) if m.key_file else None,
                         keepalive=m.keepalive, session_expiry=m.session_expiry, will_delay=m.will_delay,
                         max_packet_size=m.max_packet_size),
            will=(self.root + STATUS, self._status_body("offline", "lwt", will=True)),
            subscriptions=[self.root + f"{CMD}/+"],
            on_message=self.commands.put, on_connection=self._connection, on_puback=self._puback,
        )
        self.threads = [threading.Thread(target=self._pump, name="ftedge-pump", daemon=True),
                        threading.Thread(target=self._command_loop, name="ftedge-commands", daemon=True)]

    # -- publishing (everything through the outbox) --------------------------------------------------
    def _status_body(self, state: str, reason: str, will: bool = False) -> bytes:
        # The Last Will cannot take a place in the seq sequence: it carries seq 0 and will=true.
        body = {"state": state, "reason": reason, "v": 1, "ts": int(time.time() * 1000), "dev": self.cfg.device_id,
                "boot": self.boot, "seq": 0, "hist": False, "will": will}
        return json.dumps(body, separators=(",", ":")).encode()

    def publish(self, kind: str, suffix: str, body: dict[str, Any], retain: bool = False) -> None:
        body = self._capped(kind, suffix, body)
        for attempt in range(2):
            try:
                self.outbox.enqueue(self.root + suffix, body, kind=kind, qos=1, retain=retain)
                break
            except FtedgeError as exc:  # e.g. disk full: log loudly, keep the agent (and its job) alive
                full = self.disk.state()["full"]
                if attempt == 0 and full:
                    continue  # the reserve was just released: one more try
                if full and self._publish_unstored(kind, suffix, body, retain):
                    return
                log.error("could not queue a %s message for %s: %s", kind, suffix, exc)
                return
        self.wake.set()

    def _publish_unstored(self, kind: str, suffix: str, body: dict[str, Any], retain: bool) -> bool:
        """Disk full: send the message straight to the broker with the next seq, without the outbox's
        durability (a reply to `status` must still say "disk full"). False if it could not be sent."""
        try:
            msg = self.outbox.ephemeral(self.root + suffix, body, kind=kind)
        except FtedgeError as exc:
            log.error("could not send a %s message for %s: %s", kind, suffix, exc)
            return False
        corr = body.get("correlation") if kind == CMDRES else None
        mid = self.link.publish(msg.topic, msg.payload(hist=False), qos=1, retain=retain,
                                correlation=bytes.fromhex(corr) if isinstance(corr, str) else None)
        log.warning("disk full: sent %s message seq %d for %s without storing it (%s)", kind, msg.seq, suffix,
                    "handed to the broker" if mid is not None else "not connected: lost, a seq hole shows it")
        return mid is not None

    def _capped(self, kind: str, suffix: str, body: dict[str, Any]) -> dict[str, Any]:
        """``body``, or a small stand-in when it would not fit the MQTT maximum packet size."""
        limit = self.cfg.mqtt.max_packet_size - 1024 - len(self.root + suffix)  # envelope + topic + headers
        try:
            size = len(json.dumps(body, default=str).encode())
        except (TypeError, ValueError):
            return body  # the outbox reports what is wrong with it
        if size <= limit:
            return body
        log.error("a %s message for %s is %d bytes, over the %d-byte limit (mqtt.max_packet_size); sending a "
                  "stand-in without its body", kind, suffix, size, limit)
        keep = {k: body[k] for k in ("cmd_id", "status", "code", "job", "state", "reason", "correlation")
                if k in body and isinstance(body[k], (str, int, float, bool, type(None)))}
        return {**keep, "oversize": True, "bytes": size,
                "detail": f"message body of {size} bytes exceeds the {limit}-byte limit; raise mqtt.max_packet_size"}

    def _emit_job(self, kind: str, body: dict[str, Any]) -> None:
        if kind == JOB and body.get("status") == "running":
            self.asker.release()  # the decoder would compete with the training for memory
        if kind == JOB:
            self.publish(JOB, JOB, body, retain=True)
        else:
            self.publish(kind, job_suffix(body["job"], kind), body)

    def meta(self) -> dict[str, Any]:
        from ftedge.runtime.engines.engine import available_engines
        from ftedge.runtime.engines import ort_backend

        active = self.models.active()
        return {
            "agent": ftedge.__version__, "onnxruntime": ort_backend.version(), "providers": ort_backend.available_providers(),
            "engines": available_engines(),
            "hardware": {"cpus": os.cpu_count(), "machine": platform.machine(), "system": platform.system(),
                         "python": platform.python_version()},
            "models": [v["id"] for v in self.models.list()],
            "active_version": active["id"] if active else None,
            "personalize": self.policy.public(),
        }

    def status(self) -> dict[str, Any]:
        current = self.jobs.current
        disk = self.disk.state()
        problems = [p for p in [self.disk.problem() if disk["full"] else None] if p] + list(self.jobs.problems)
        if not self.jobs.thread.is_alive() and self.jobs.thread.ident is not None:
            problems.append("the job thread has stopped: restart the agent")
        if not self.threads[0].is_alive() and self.threads[0].ident is not None:
            problems.append("the publishing thread has stopped: restart the agent")
        try:
            active = (self.models.active() or {}).get("id")
        except FtedgeError as exc:
            active, problems = None, problems + [f"model versions: {exc}"]
        return {"state": "online", "boot": self.boot, "active_version": active,
                "current_job": current.id if current else None, "queued": self.jobs.queued(),
                "personalize": (self.policy.public() or {}).get("state"),
                "outbox": self.outbox.stats(), "denied_publishes": self.denied, "disk": disk, "problems": problems}

    def resync(self) -> None:
        """Republish every retained topic (a collector that lost state asks for it)."""
        self.publish(STATUS, STATUS, {"state": "online", "reason": "resync"}, retain=True)
        self.publish(META, META, self.meta(), retain=True)
        jobs = self.jobs.store.all()
        if jobs:
            self.publish(JOB, JOB, jobs[-1].public(), retain=True)

    # -- lifecycle ---------------------------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                signal.signal(sig, lambda *_: self.stopping.set())
            except ValueError:  # not the main thread (tests)
                pass
        self.start()
        try:
            while not self.stopping.wait(1.0):
                pass
        finally:
            self.shutdown()
        return 0

    def _retain(self) -> None:
        """Apply ``[retention]`` (at start and after every stored version: a long boot must not grow forever)."""
        try:
            enforce_retention(self.cfg.retention, self.state_dir, self.models)
        except Exception:  # noqa: BLE001 - cleanup must never stop the agent
            log.exception("retention cleanup failed; continuing without it")

    def start(self) -> None:
        self.disk.state()  # makes the free-space reserve
        self._retain()
        log.info("agent %s/%s boot %s starting (%s)", self.cfg.fleet, self.cfg.device_id, self.boot,
                 json.dumps(self.cfg.to_public_dict()["mqtt"]))
        self.publish(STATUS, STATUS, {"state": "online", "reason": "birth"}, retain=True)
        self.publish(META, META, self.meta(), retain=True)
        self.deployer.cleanup()  # leftovers of a deploy interrupted by a power loss
        for t in self.threads:
            t.start()
        self.asker.start()
        self.link.start()
        self.jobs.start()
        self.policy.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop jobs at the next batch (they resume on the next start), say offline, flush, disconnect."""
        self.jobs.shutting_down = True
        self.policy.stop()
        self.jobs.stop()
        self.publish(STATUS, STATUS, {"state": "offline", "reason": "shutdown"}, retain=True)
        deadline = time.time() + timeout
        while time.time() < deadline and self.outbox.depth() and self.link.connected.is_set():
            self.wake.set()
            time.sleep(0.02)
        self.stopping.set()
        self._drained.set()
        self.asker.stop()
        self.commands.put(None)
        self.wake.set()
        self.link.stop()
        for t in self.threads:
            t.join(timeout=5)
        log.info("agent stopped; %d message(s) left in the outbox for the next start", self.outbox.depth())

    # -- pump: outbox → paho, PUBACK → delete ------------------------------------------------------------
    def _connection(self, up: bool) -> None:
        if up:
            self.connections += 1
            self.connected_at_ms = int(time.time() * 1000)
        self.acks.put((-1, 0, "up" if up else "down"))
        self.wake.set()

    def _puback(self, mid: int, code: int, reason: str) -> None:
        self.acks.put((mid, code, reason))
        self.wake.set()

    def _pump(self) -> None:
        acked: list[int] = []  # PUBACKed rows not yet deleted (kept across a failed pass, deleted by the next)
        # Exits only after `shutdown` flushed: a signal sets `stopping` first, and the offline status that
        # shutdown publishes still needs this thread to send it and to take its PUBACK off the outbox.
        while not (self._drained.is_set() and self.commands.empty() and self.acks.empty() and not self.wake.is_set()):
            self.wake.wait(0.5)
            self.wake.clear()
            try:
                self._pump_pass(acked)
            except Exception as exc:  # noqa: BLE001 - e.g. "database or disk is full": retry, never die
                log.error("publishing pass failed (%s: %s); retrying", type(exc).__name__, exc)
                self.disk.state()  # a full disk releases the reserve, so the next pass can commit
                self.pump_errors += 1
                time.sleep(0.5)

    def _pump_pass(self, acked: list[int]) -> None:
        """One pass: take PUBACKs, hand pending outbox rows to paho, then delete the acked rows."""
        while True:
            try:
                mid, code, reason = self.acks.get_nowait()
            except queue.Empty:
                break
            if mid == -1:  # connection changed: republish whatever is unacknowledged
                self.inflight.clear()
                if reason == "up" and self.connections > 1:
                    # The Will may have marked us offline (retained) during the outage: say online again.
                    self.publish(STATUS, STATUS, {"state": "online", "reason": "reconnect"}, retain=True)
                continue
            row = self.inflight.pop(mid, None)
            if row is None:
                continue
            if code >= 128:  # v5: the broker refused it (e.g. 135 not authorized): log, do not retry forever
                self.denied += 1
                log.error("broker refused a publish (%s); dropping it from the outbox", reason)
            acked.append(row)
        attempted: list[int] = []
        if self.link.connected.is_set() and len(self.inflight) < MAX_INFLIGHT:
            busy = set(self.inflight.values())
            for msg in self.outbox.pending(limit=MAX_INFLIGHT + len(busy)):
                if len(self.inflight) >= MAX_INFLIGHT:
                    break
                if msg.id in busy or msg.id in acked:
                    continue
                # hist: a retry, a leftover of an earlier boot, or queued during an outage of this boot
                hist = msg.is_replay(self.boot) or (self.connections > 1 and msg.body["ts"] < self.connected_at_ms)
                corr = msg.body.get("correlation") if msg.kind == CMDRES else None
                mid = self.link.publish(msg.topic, msg.payload(hist=hist), qos=msg.qos, retain=msg.retain,
                                        correlation=bytes.fromhex(corr) if corr else None)
                if mid is None:
                    break
                self.inflight[mid] = msg.id
                attempted.append(msg.id)
        self.outbox.settle(acked, attempted)  # one transaction per pass, not one per message
        acked.clear()

    # -- commands ------------------------------------------------------------------------------------
    def _reply(self, incoming: Incoming, cmd_id: str | None, status: str, code: str, detail: str,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"cmd_id": cmd_id, "status": status, "code": code, "detail": detail, **(extra or {})}
        if incoming.correlation is not None:
            body["correlation"] = incoming.correlation.hex()
        topic = incoming.response_topic or ""
        suffix = topic[len(self.root):] if topic.startswith(self.root + f"{CMDRES}/") else f"{CMDRES}/unknown"
        self.publish(CMDRES, suffix, body)
        return body

    def _command_loop(self) -> None:
        while True:
            incoming = self.commands.get()
            if incoming is None:
                return
            try:
                self._handle(incoming)
            except Exception as exc:  # noqa: BLE001 - one bad command must not stop the agent
                log.exception("command on %s failed", incoming.topic)
                try:  # with the request's cmd_id when it has one: the sender matches replies by it
                    self._reply(incoming, peek_cmd_id(incoming.payload), "error", "internal",
                                f"{type(exc).__name__}: {exc}")
                except Exception:  # noqa: BLE001
                    log.exception("could not even reply")

    def _handle(self, incoming: Incoming) -> None:
        verb = incoming.topic.rsplit("/", 1)[-1]
        cmd_id = None
        if incoming.retain:  # a retained command would run again at every (re)subscribe: never act on one
            if not incoming.payload:
                return  # someone clearing a retained command
            try:
                cmd_id = parse_request(incoming.payload)[0]
            except Rejected as rej:
                cmd_id = rej.cmd_id
            log.warning("refused a retained %s command %s", verb, cmd_id)
            self._reply(incoming, cmd_id, "rejected", "retained_command",
                        f"retained commands are refused: publish cmd/{verb} with retain=false, and clear the "
                        f"retained one (an empty retained publish to {incoming.topic})")
            return
        try:
            cmd_id, args = parse_request(incoming.payload)
            previous = self.replies.get(cmd_id, verb)
            if previous is not None:  # idempotent: same answer again, nothing redone
                self._reply(incoming, cmd_id, previous["status"], previous["code"], previous["detail"],
                            {k: v for k, v in previous.items() if k not in ("cmd_id", "status", "code", "detail", "correlation")})
                return
            outcome = self._dispatch(verb, cmd_id, args, incoming)
            if outcome is None:  # answered later, by the verb's own worker (ask)
                return
            status, code, detail, extra = outcome
        except Rejected as rej:
            cmd_id = cmd_id or rej.cmd_id
            log.warning("rejected %s command %s: %s", verb, cmd_id, rej.detail)
            reply = self._reply(incoming, cmd_id, "rejected", rej.code, rej.detail)
        else:
            reply = self._reply(incoming, cmd_id, status, code, detail, extra)
        if cmd_id is not None and reply["code"] != "busy":  # busy is transient: a retry may get an answer
            self.replies.put(cmd_id, {k: v for k, v in reply.items() if k != "correlation"}, verb)

    def _dispatch(self, verb: str, cmd_id: str, args: dict[str, Any],
                  incoming: Incoming) -> tuple[str, str, str, dict[str, Any]] | None:
        """Run ``verb`` through the one verb table; returns (status, code, detail, extra) for the reply, or None
        when the verb's worker replies later."""
        handler = _VERBS.get(verb)
        if handler is None:
            raise Rejected("unknown_verb", f"unknown verb {verb!r}; verbs: {', '.join(_VERBS)}")
        return handler(self, cmd_id, args, incoming)

    def _ping(self, cmd_id: str, args: dict[str, Any], incoming: Incoming) -> tuple[str, str, str, dict[str, Any]]:
        return "done", "ok", "pong", {"agent_boot": self.boot}

    def _status_verb(self, cmd_id: str, args: dict[str, Any],
                     incoming: Incoming) -> tuple[str, str, str, dict[str, Any]]:
        return "done", "ok", "agent status", {"agent": self.status()}

    def _resync(self, cmd_id: str, args: dict[str, Any], incoming: Incoming) -> tuple[str, str, str, dict[str, Any]]:
        self.resync()
        return "done", "ok", "retained state republished", {}

    def _train(self, cmd_id: str, args: dict[str, Any], incoming: Incoming) -> tuple[str, str, str, dict[str, Any]]:
        job = train_job(args, self.cfg.paths.data_root, self.cfg.paths.bundle_root, cmd_id, self.models)
        self.jobs.submit(job)
        return "accepted", "queued", f"job {job.id} queued", {"job": job.id}

    def _cancel(self, cmd_id: str, args: dict[str, Any], incoming: Incoming) -> tuple[str, str, str, dict[str, Any]]:
        job_id = cancel_target(args, self.jobs.current.id if self.jobs.current else None)
        if job_id is None or not self.jobs.cancel(job_id):
            raise Rejected("unknown_job", f"no queued or running job {job_id!r}")
        return "done", "cancelling", f"job {job_id} stops at its next batch", {"job": job_id}

    def _rollback(self, cmd_id: str, args: dict[str, Any],
                  incoming: Incoming) -> tuple[str, str, str, dict[str, Any]]:
        """Undo a rollout on this box: the model version (``to``: an earlier version, or "none"), the bundle
        (``bundle`` + ``restore``: a kept ``BUNDLE.replaced-<time>`` folder), or both; no args: the model back
        one version. The model part runs first; if the bundle part fails it is undone: a refused rollback
        changes nothing."""
        unknown = sorted(set(args) - set(ROLLBACK_ARGS))
        if unknown:
            raise Rejected("bad_args", f"unknown rollback argument(s) {', '.join(map(str, unknown))}; "
                                       f"allowed: {', '.join(ROLLBACK_ARGS)}")
        to, bundle, restore = args.get("to"), args.get("bundle"), args.get("restore")
        if to is not None and not isinstance(to, str):
            raise Rejected("bad_args", f'args.to must be a version id string (e.g. "v0003") or "{NO_VERSION}"')
        if (bundle is None) != (restore is None):
            raise Rejected("bad_args", "args.bundle and args.restore go together: the bundle's name and the kept "
                                       "folder to put back (the `replaced` a replace deploy answered)")
        if bundle is not None:
            try:
                check_restore_names(bundle, restore)
            except DeployError as exc:
                raise Rejected("bad_args", f"args.bundle/args.restore: {exc}") from None
        d = self.cfg.deploy
        replaced = None
        self.policy.hold()  # the rollout's checks come before the box's own runs
        try:
            with self.models.transaction():  # a failing bundle part puts active.json back
                if to == NO_VERSION:
                    self.models.deactivate()
                elif to is not None or bundle is None:
                    self.models.rollback(to)
                if bundle is not None:
                    replaced = restore_replaced(self.cfg.paths.bundle_root, bundle, restore,
                                                list(d.trusted_keys) if d.require_signed else None,
                                                check=lambda: self._bundle_idle(bundle))
                active = (self.models.active() or {}).get("id")
        except FtedgeError as exc:
            raise Rejected("rollback_refused", str(exc)) from exc
        self.publish(META, META, self.meta(), retain=True)
        detail = "active version is now " + (active or "none (the bundle's own model answers)")
        if bundle is not None:
            detail += f"; bundle {bundle} restored from {restore}" + (
                f" (the one it replaced is kept as {replaced})" if replaced else "")
        return "done", "ok", detail, {"active_version": active, "bundle": bundle, "restored": restore,
                                      "replaced": replaced}

    def _bundle_idle(self, name: str) -> None:
        """Raise if a queued or running job trains on bundle ``name`` (its bundle must not change under it)."""
        root = Path(self.cfg.paths.bundle_root)
        paths = {str(root.resolve() / name), str((root / name).resolve())}  # how train_job resolved it
        current = self.jobs.current
        jobs = [current] if current is not None else []
        jobs += [j for j in self.jobs.store.all() if j.status in ACTIVE and j.id not in self.jobs.done]
        for job in jobs:
            if job.bundle in paths:
                raise AgentError(f"job {job.id} is {job.status} on bundle {name}, which must not change under "
                                 f"it: cancel it (cmd/cancel with args.job = \"{job.id}\") or wait for its "
                                 "result, then send the rollback again")

    def _ask(self, cmd_id: str, args: dict[str, Any], incoming: Incoming) -> None:
        """Queue the ask on the asker's thread (bad args and a full queue are refused here, at once); its one
        reply is published when it is answered."""
        def finish(status: str, code: str, detail: str, extra: dict[str, Any]) -> None:
            reply = self._reply(incoming, cmd_id, status, code, detail, extra)
            self.replies.put(cmd_id, {k: v for k, v in reply.items() if k != "correlation"}, "ask")

        self.asker.submit(cmd_id, args, request_expires(incoming.payload), finish)
        return None

    def _deploy(self, cmd_id: str, args: dict[str, Any], incoming: Incoming) -> tuple[str, str, str, dict[str, Any]]:
        def finish(status: str, code: str, detail: str, extra: dict[str, Any]) -> None:
            # `_handle` records the `accepted` reply when this method returns; wait for it so the final
            # reply is published after it and replaces it in the cache (final replies always win).
            deadline = time.monotonic() + 10
            while self.replies.get(cmd_id, "deploy") is None and time.monotonic() < deadline:
                time.sleep(0.01)
            reply = self._reply(incoming, cmd_id, status, code, detail, extra)
            self.replies.put(cmd_id, {k: v for k, v in reply.items() if k != "correlation"}, "deploy")

        outcome = self.deployer.submit(cmd_id, args, finish)
        self.policy.hold()  # a rollout is under way: the box's own runs wait (policy.hold_after_rollout_s)
        return outcome

    # -- the box's own policy -----------------------------------------------------------------------
    def _policy_verb(self, cmd_id: str, args: dict[str, Any],
                     incoming: Incoming) -> tuple[str, str, str, dict[str, Any]]:
        """Show (no args), ``set`` (a whole policy, validated; replaces the config's), ``clear`` (back to the
        config's) or ``check`` (evaluate now) the box's personalization policy."""
        unknown = sorted(set(args) - {"set", "clear", "check"})
        if unknown or len(args) > 1:
            raise Rejected("bad_args", "policy takes one of args.set (a policy object), args.clear (true) or "
                                       "args.check (true), or no args to show it" +
                           (f"; unknown: {', '.join(map(str, unknown))}" if unknown else ""))
        for key in ("clear", "check"):
            if key in args and args[key] is not True:
                raise Rejected("bad_args", f"args.{key} must be true")
        if "set" in args:
            policy = self.policy.set(args["set"])
            detail = f"policy set: {policy.bundle} on {policy.data}"
        elif "clear" in args:
            policy = self.policy.clear()
            detail = "fleet policy cleared: " + ("the config's [personalize] applies" if policy else "no policy")
        else:
            detail = "policy checked" if "check" in args else "policy"
        if args:  # the reply's state is the new policy's (set/clear/check evaluate at once; no args only shows)
            self.policy.check()
        self.publish(META, META, self.meta(), retain=True)
        shown = self.policy.public() or {}
        return "done", "ok", detail, {"policy": shown.get("policy"), "state": shown.get("state")}

    def _policy_job(self, policy: Policy, reason: str, samples: list) -> str:
        """Queue the policy's run: an ordinary train job (warm start from the active version where it fits)."""
        args: dict[str, Any] = {"bundle": policy.bundle, "data": policy.data, **policy.train_options()}
        if policy.warm_start and "warm_start" not in args:
            source = self._warm_source(policy)
            if source is not None:
                args["warm_start"] = source
        job = train_job(args, self.cfg.paths.data_root, self.cfg.paths.bundle_root, None, self.models)
        job.trigger, job.trigger_reason = "policy", reason[:MAX_REASON]
        self.jobs.submit(job)
        return job.id

    def _warm_source(self, policy: Policy) -> str | None:
        """The active version's id when it was trained from the policy's bundle and kept its trained weights."""
        try:
            active = self.models.active()
            name = json.loads((Path(self.cfg.paths.bundle_root) / policy.bundle / "manifest.json")
                              .read_text(encoding="utf-8")).get("name")
        except (FtedgeError, OSError, ValueError):
            return None
        if not active or active.get("bundle") != name:
            return None
        folder = self.models.root / active["id"]
        if not any((folder / f).is_file() for f in ("weights.safetensors", "adapter.safetensors")):
            log.info("policy: active version %s has no trained weights to continue from; training from the bundle",
                     active["id"])
            return None
        return active["id"]

    def _busy(self) -> bool:
        if self.jobs.current is not None or self.deployer.current is not None:
            return True
        return any(j.status in ACTIVE and j.id not in self.jobs.done for j in self.jobs.store.all())

    def _policy_changed(self) -> None:
        if self.threads[0].ident is not None:  # started: meta goes out with the state
            self.publish(META, META, self.meta(), retain=True)

    # -- jobs ------------------------------------------------------------------------------------------
    def _job_finished(self, job: Job) -> None:
        self.policy.wake.set()  # the box is free again: the policy may have data waiting
        if job.status == "succeeded" and job.result and job.result.get("promoted"):
            try:
                version = self.models.add_version(self.state_dir / "runs" / job.id, job.id)
                job.version = version["id"]
            except (FtedgeError, OSError) as exc:  # e.g. disk full: not promoted, and say why
                log.error("could not store the model of job %s: %s", job.id, exc)
                job.result["promoted"] = False
                job.error = (f"training succeeded but the model could not be stored ({exc}); nothing was "
                             "activated: free disk space or fix the models folder, then train again")
            self._retain()
            try:
                meta = self.meta()
            except (FtedgeError, OSError) as exc:
                log.error("could not describe the model versions: %s", exc)
                return
            self.publish(META, META, meta, retain=True)


# The agent's verbs, in the order its "unknown verb" error lists them (commands.VERBS holds the same names).
_VERBS = {"ping": Agent._ping, "status": Agent._status_verb, "resync": Agent._resync, "train": Agent._train,
          "cancel": Agent._cancel, "rollback": Agent._rollback, "deploy": Agent._deploy,
          "ask": Agent._ask, "policy": Agent._policy_verb}
