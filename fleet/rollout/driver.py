"""The rollout driver: the collector's thread that moves every rollout forward, one tick at a time.

Each tick (``tick_s``, default 1 s) the driver takes or renews the lease (:mod:`.records`; with several
collectors on one PostgreSQL database exactly one drives, and one that dies is replaced when its lease runs
out), then for each rollout:

1. resolves the commands in flight from the stored replies and job results (``deploy`` → ``deployed`` or
   ``failed``; ``train`` → its job's result → ``promoted`` / ``not_promoted`` / ``failed``; ``rollback`` →
   ``rolled_back``);
2. while ``running``: sends ``deploy`` to the current wave's pending devices, and ``train`` to its deployed
   ones (with ``--train``);
3. at the wave's timeout marks the devices without an outcome ``offline`` (not connected) or ``failed``;
4. judges the wave (:func:`.plan.judge`): halts (and rolls the wave back), opens the next wave, or finishes;
5. in a halted rollout (or one aborted with ``--rollback``) sends ``rollback`` to the devices that got the
   bundle: their previous bundle (the folder the deploy's ``replace`` kept) and their previous model version.

Commands carry ids derived from rollout, verb, wave and attempt (``ro-NAME-deploy-w1-a0``): a collector killed
after publishing and before writing the new state publishes the same id again, and one that takes the lease
over republishes every command in flight; a device answers a repeated cmd_id from its reply cache, so no box
is deployed or trained twice.
Commands expire with the wave (MQTT Message Expiry and the body's ``expires``): a box offline during its
wave gets them from its persistent session when it returns in time; one back later is commanded again
(``attempt`` + 1) while the rollout runs or is done.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable

from ftedge.errors import FtedgeError, LeaseLost

from .. import headline
from . import plan
from .plan import (
    DEPLOYED, DEPLOYING, FAILED, NOT_PROMOTED, OFFLINE, PENDING, PROMOTED, ROLLED_BACK, ROLLING_BACK, TRAINING,
)
from .records import ROLLOUT_CMD_PREFIX, Member, Rollout, RolloutRecords, now_ms

log = logging.getLogger(__name__)

LEASE_S = 15.0             # a driver that stops renewing is replaced after this long
TICK_S = 1.0
CATCH_UP_S = 10.0          # how often offline devices are looked for again
RESEND_S = 30.0            # a command without its final reply after this long is published again (same cmd_id)
ROLLBACK_EXPIRY_S = 86400  # a rollback waits this long in an offline box's session
MIN_EXPIRY_S = 60.0        # a deploy or train expires at its wave's end, and never sooner than this after it was sent

# send(fleet, device, verb, args, cmd_id, expires_ms): publish one command (the collector's publish_command)
Send = Callable[[str, str, str, dict[str, Any], str, int], Any]
# url(sha256, fleet, device, rollout, expires_s): the URL a device downloads the bundle from
UrlFor = Callable[[str, str, str, str, int], str]


def gain_of(result: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    """(before, after, gain) of a job result: its headline metric untuned → tuned; the gain is signed so that
    higher is better whatever the metric (a loss that fell is a positive gain)."""
    h = headline.of_result(result)
    return h.untuned, h.tuned, headline.gain(h)


class RolloutDriver:
    """Drives the rollouts stored in ``store`` (a :class:`~ftedge.fleet.store.FleetStore`), sending through
    ``send``; ``url_for`` signs download URLs for bundles the collector serves (None: only rollouts with an
    external ``--url`` can start their waves)."""

    def __init__(self, store: Any, send: Send, holder: str, url_for: UrlFor | None = None,
                 tick_s: float = TICK_S, lease_s: float = LEASE_S, min_expiry_s: float = MIN_EXPIRY_S) -> None:
        self.records = RolloutRecords(store)
        self.send, self.holder, self.url_for = send, holder, url_for
        self.tick_s, self.lease_s, self.min_expiry_s = float(tick_s), float(lease_s), float(min_expiry_s)
        self.leading = False
        self.sent = 0                  # commands published (the benchmark reads it)
        self._last_catch_up = 0.0
        self._settled: dict[str, int] = {}   # finished rollouts with nothing in flight → their updated_ms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> RolloutDriver:
        self._thread = threading.Thread(target=self._loop, name="ftedge-rollouts", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.leading:
            try:
                self.records.release(self.holder)
            except FtedgeError as exc:
                log.warning("could not release the rollout lease: %s", exc)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except LeaseLost as exc:
                log.warning("%s; another collector drives the rollouts now", exc)
                self.leading = False
            except Exception:  # noqa: BLE001 - the driver must outlive a bad tick (the database away, a bug)
                log.exception("rollout tick failed; retrying in %.0f s", self.tick_s)
            self._stop.wait(self.tick_s)

    # -- one tick -------------------------------------------------------------------------------------------

    def tick(self, now: int | None = None) -> bool:
        """Drive every rollout one step; False when another collector holds the lease."""
        if not self.records.acquire(self.holder, self.lease_s):
            if self.leading:
                log.warning("lost the rollout lease: another collector drives the rollouts now")
            self.leading = False
            return False
        takeover = not self.leading
        if takeover:
            log.info("%s drives the rollouts (lease %.0f s)", self.holder, self.lease_s)
            self.leading = True
            self._settled.clear()
        now = now_ms() if now is None else now
        catch_up = time.monotonic() - self._last_catch_up >= CATCH_UP_S
        if catch_up:
            self._last_catch_up = time.monotonic()
        for r in self.records.all():
            settled = self._settled.get(r.name) == r.updated_ms   # an operator's abort --rollback changes it
            if settled and not (catch_up and r.state == plan.DONE):  # done: look for boxes back from offline
                continue
            self._drive(r, now, resend=takeover, catch_up=catch_up)
        return True

    def _drive(self, r: Rollout, now: int, resend: bool, catch_up: bool) -> None:
        spec = r.spec
        members = {m.key: m for m in self.records.members(r.name, wave=r.wave)}
        for m in self.records.members(r.name, states=plan.IN_FLIGHT):
            members.setdefault(m.key, m)
        undo = r.undo_from is not None
        if undo:
            for m in self.records.members(r.name):
                if m.wave >= r.undo_from:
                    members.setdefault(m.key, m)
        changed: dict[tuple[str, str], Member] = {}
        before = (r.state, r.wave, r.wave_started_ms, r.reason, len(r.verdicts), r.undo_from)

        def put(m: Member) -> None:
            m.updated_ms = now
            changed[m.key] = m

        # 1. commands in flight
        flying = [m for m in members.values() if m.state in plan.IN_FLIGHT and m.cmd_id]
        replies = self.records.replies([(m.fleet, m.device, m.cmd_id) for m in flying])
        for m in flying:
            reply = replies.get((m.fleet, m.device, m.cmd_id))
            if m.state == TRAINING and reply is not None and reply.get("job") and m.job is None:
                m.job = str(reply["job"])
                put(m)
        results = self.records.results([(m.fleet, m.device, m.job) for m in flying
                                        if m.state == TRAINING and m.job])
        for m in flying:
            reply = replies.get((m.fleet, m.device, m.cmd_id))
            if self._resolve(r, m, reply, results.get((m.fleet, m.device, m.job or ""))):
                put(m)
            elif resend or (now - (m.sent_ms or now) >= RESEND_S * 1000 and self._unanswered(m, reply)):
                self._command(r, m, now, again=True)   # same cmd_id: the box answers from its reply cache
                put(m)
        # 2. new commands of the current wave
        if r.state == plan.RUNNING:
            wave = [m for m in members.values() if m.wave == r.wave]
            facts = self.records.device_facts([m.key for m in wave if m.state == PENDING]) if wave else {}
            for m in wave:
                if m.state == PENDING:
                    if m.prev_version is None:
                        m.prev_version = facts.get(m.key, (None, None))[1]
                    self._command(r, m, now, state=DEPLOYING)
                    put(m)
                elif m.state == DEPLOYED and spec.train is not None:
                    self._command(r, m, now, state=TRAINING)
                    put(m)
            # 3. the wave's timeout
            closed = all(m.state in plan.FINAL_OUTCOMES and not (spec.train and m.state == DEPLOYED) for m in wave)
            deadline = (r.wave_started_ms or now) + int(spec.wave_timeout_s * 1000)
            if not closed and now >= deadline:
                facts = self.records.device_facts([m.key for m in wave])
                unfinished = (PENDING, DEPLOYING, TRAINING) + ((DEPLOYED,) if spec.train is not None else ())
                for m in wave:
                    if m.state in unfinished:
                        online = facts.get(m.key, (None, None))[0] == "online"
                        if m.state != DEPLOYING:   # a deploy still waiting in the box's session is asked for again
                            m.cmd_id = None        # on its return under the same cmd_id (it runs at most once)
                        m.state = FAILED if online else OFFLINE
                        m.reason = (f"no outcome within --wave-timeout {spec.wave_timeout_s:g} s"
                                    + (" (the device is online)" if online else
                                       "; the device is offline (commanded again when it returns)"))
                        put(m)
                closed = True
            # 4. the gate
            verdict = plan.judge(spec, r.wave, [plan.Outcome(m.state, m.gain) for m in wave], closed)
            if verdict.state == "halted":
                r.state, r.reason = plan.HALTED, f"{'canary' if r.wave == 0 else f'wave {r.wave}'}: {verdict.why}"
                r.verdicts.append({**verdict.__dict__, "line": verdict.line(), "at_ms": now})
                if spec.rollback:
                    r.undo_from = r.wave
                log.warning("rollout %s halted: %s", r.name, r.reason)
            elif verdict.state == "passed":
                r.verdicts.append({**verdict.__dict__, "line": verdict.line(), "at_ms": now})
                log.info("rollout %s: %s", r.name, verdict.line())
                nxt = self._next_wave(r)
                if nxt is None:
                    r.state, r.reason = plan.DONE, None
                else:
                    r.wave, r.wave_started_ms = nxt, now
        # commands still in flight when a rollout stopped: past their expiry no box will run them
        if r.finished:
            deadline = (r.wave_started_ms or now) + int(spec.wave_timeout_s * 1000)
            late = [m for m in members.values() if m.state in (DEPLOYING, TRAINING) and m.key not in changed
                    and now >= max(deadline, (m.sent_ms or 0) + int(self.min_expiry_s * 1000))]
            if late:
                facts = self.records.device_facts([m.key for m in late])
                for m in late:
                    online = facts.get(m.key, (None, None))[0] == "online"
                    m.state, m.cmd_id = (FAILED if online else OFFLINE), None
                    m.reason = f"no answer before the rollout {r.state} and its command expired"
                    put(m)
        # 5. roll back what the halted (or aborted --rollback) waves installed
        if r.undo_from is not None:
            for m in list(members.values()) + list(changed.values()):
                m = changed.get(m.key, m)
                if m.wave >= r.undo_from and m.state in (DEPLOYED, PROMOTED, NOT_PROMOTED, FAILED) \
                        and (m.replaced is not None or m.new_version is not None):
                    args = self._rollback_args(r, m)
                    if args:
                        self._command(r, m, now, state=ROLLING_BACK)
                    else:
                        m.state, m.reason = ROLLED_BACK, "nothing to undo: the bundle was new on this box"
                    put(m)
        # a device back from offline is commanded again while the rollout runs or is done
        if catch_up and r.state in (plan.RUNNING, plan.DONE):
            offline = [m for m in self.records.members(r.name, states=[OFFLINE]) if m.key not in changed]
            facts = self.records.device_facts([m.key for m in offline]) if offline else {}
            for m in offline:
                if facts.get(m.key, (None, None))[0] == "online":
                    if m.cmd_id is None:
                        m.attempt += 1
                    self._command(r, m, now, state=DEPLOYING, again=m.cmd_id is not None)
                    put(m)
        if changed or before != (r.state, r.wave, r.wave_started_ms, r.reason, len(r.verdicts), r.undo_from):
            self.records.save(r, changed.values(), holder=self.holder)
        if r.finished and not any(m.state in plan.IN_FLIGHT for m in list(members.values()) + list(changed.values())):
            self._settled[r.name] = r.updated_ms

    def _next_wave(self, r: Rollout) -> int | None:
        """The next wave that has devices (a small fleet may leave some waves empty)."""
        counts = self.records.counts(r.name)
        waves = sorted({w for (_, w, _) in counts if w > r.wave})
        return waves[0] if waves else None

    # -- devices --------------------------------------------------------------------------------------------

    def _resolve(self, r: Rollout, m: Member, reply: dict[str, Any] | None, result: dict[str, Any] | None) -> bool:
        """Apply the reply (and job result) of ``m``'s command in flight; True if ``m`` changed."""
        if reply is None:
            return False
        status, code, detail = reply.get("status"), reply.get("code"), reply.get("detail")
        verb = {DEPLOYING: "deploy", TRAINING: "train", ROLLING_BACK: "rollback"}[m.state]
        if status in ("rejected", "error"):
            m.state, m.cmd_id = FAILED, None
            m.reason = f"{verb} {status}: {code}: {str(detail)[:400]}"
            return True
        if m.state == DEPLOYING and status == "done":
            replaced = reply.get("replaced")
            # a repeated deploy of an installed bundle replaces nothing: keep what the first one replaced
            m.replaced = replaced if isinstance(replaced, str) and replaced else (m.replaced or "")
            m.state, m.cmd_id, m.reason = DEPLOYED, None, None
            return True
        if m.state == ROLLING_BACK and status == "done":
            m.state, m.cmd_id = ROLLED_BACK, None
            m.reason = str(detail)[:400] if detail else None
            return True
        if m.state == TRAINING and result is not None:
            before, after, gain = gain_of(result)
            m.before, m.after, m.gain = before, after, gain
            m.cmd_id = None
            if result.get("status") != "succeeded":
                m.state = FAILED
                m.reason = f"training {result.get('status')}: {str(result.get('error') or '')[:400]}"
            elif result.get("promoted"):
                m.state, m.new_version, m.reason = PROMOTED, str(result.get("version") or "promoted"), None
            else:
                m.state = NOT_PROMOTED
                m.reason = "the personalized model did not beat the untuned one on this box's validation data"
            return True
        return False

    @staticmethod
    def _unanswered(m: Member, reply: dict[str, Any] | None) -> bool:
        """Whether ``m``'s command still waits for its final reply. A reply can be stuck in the session of a
        share-group member that is down (the broker deals the group's messages to it too): asked again, the
        box answers on this collector's own reply topic. A train job that was accepted is followed by its
        result (telemetry), not by another reply."""
        if reply is None:
            return True
        return reply.get("status") == "accepted" and m.state != TRAINING

    def _rollback_args(self, r: Rollout, m: Member) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if m.new_version is not None:
            args["to"] = m.prev_version or "none"
        if m.replaced:
            args["bundle"], args["restore"] = r.spec.bundle, m.replaced
        return args

    def _command(self, r: Rollout, m: Member, now: int, state: str | None = None, again: bool = False) -> None:
        """Publish the command of ``m``'s (new) state; its id is derived, so a repeat is answered from the
        device's reply cache instead of being run twice."""
        state = state or m.state
        verb = {DEPLOYING: "deploy", TRAINING: "train", ROLLING_BACK: "rollback"}[state]
        spec = r.spec
        wave_end = (r.wave_started_ms or now) + int(spec.wave_timeout_s * 1000)
        expires = now + ROLLBACK_EXPIRY_S * 1000 if verb == "rollback" else max(wave_end, now + int(self.min_expiry_s * 1000))
        if verb == "deploy":
            if spec.url:
                url = spec.url
            elif self.url_for is not None:
                url = self.url_for(spec.sha256, m.fleet, m.device, r.name, math.ceil(expires / 1000) + 3600)
            else:
                raise FtedgeError(f"rollout {r.name}: this collector serves no bundles (start `fleet serve` with "
                                  "--public-url) and the rollout names no --url")
            args: dict[str, Any] = {"url": url, "sha256": spec.sha256, "name": spec.bundle, "replace": True}
        elif verb == "train":
            args = {**(spec.train or {}), "bundle": spec.bundle}
        else:
            args = self._rollback_args(r, m)
        cmd_id = m.cmd_id if again and m.cmd_id else f"{ROLLOUT_CMD_PREFIX}{r.name}-{verb}-w{m.wave}-a{m.attempt}"
        m.state, m.cmd_id, m.sent_ms = state, cmd_id, now
        if verb == "train":
            m.job = None
        self.send(m.fleet, m.device, verb, args, cmd_id, expires)
        self.sent += 1
