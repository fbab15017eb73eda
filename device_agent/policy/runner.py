"""The agent's side of the policy: check it periodically and when data arrives, and queue an ordinary job when it
says so (same queue, checkpoints, resume, retention and telemetry as a fleet's ``train``; its result says
``trigger: "policy"`` and why it started).

Files under ``STATE/personalize/``: ``state.json`` (when policy runs were queued, what the caps removed),
``hashes.json`` and ``trained.txt`` (:mod:`.sample_set`). ``STATE/policy.json`` holds a policy the fleet set with the
``policy`` verb; it replaces ``[personalize]`` until the fleet clears it.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Callable

from ftedge.device_agent.policy.decision import Clock, Decision, Facts, decide, host_facts
from ftedge.device_agent.policy.sample_set import SampleSet, signature
from ftedge.device_agent.policy.spec import Policy, parse_policy
from ftedge.durable import atomic_write_json
from ftedge.errors import FtedgeError, Rejected
from ftedge.mqtt.contract import MAX_REASON

log = logging.getLogger(__name__)

POLL_S = 2.0            # how often the data folder's fingerprint is looked at (cheap: folder mtimes only)
REASON_REPUBLISH_S = 10.0  # meta is republished at most this often when only the reason's numbers change
KEEP_RUNS = 100         # policy run times kept in state.json


class PolicyRunner:
    """Evaluates the box's policy and queues its runs. ``submit(policy, reason) -> job id`` builds and queues the
    job (the agent's); ``busy()`` says whether a job is queued or running; ``on_change()`` republishes meta."""

    def __init__(self, state_dir: Path, config_policy: Policy | None, data_root: Path,
                 submit: Callable[[Policy, str, list], str], busy: Callable[[], bool],
                 on_change: Callable[[], None] = lambda: None, clock: Clock | None = None,
                 power_root: str = "/sys/class/power_supply",
                 loadavg: Callable[[], tuple[float, float, float]] | None = None) -> None:
        self.dir = Path(state_dir) / "personalize"
        self.override_path = Path(state_dir) / "policy.json"
        self.state_path = self.dir / "state.json"
        self.config_policy = config_policy
        self.data_root = Path(data_root)
        self.submit, self.busy, self.on_change = submit, busy, on_change
        self.clock = clock or Clock()
        self.power_root, self.loadavg = power_root, loadavg
        self.lock = threading.RLock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self._sig: tuple = ()
        self._published: tuple[str, str, float] = ("", "", 0.0)
        self.saved = self._load_state()
        self.hold_until = float(self.saved.get("hold_until", 0.0))   # kept across restarts: a rollout outlives one
        self.policy, problem = self._load_override()
        self.status: dict[str, Any] = self._status(Decision("error", problem) if problem else
                                                   Decision("disabled", "no policy") if self.policy is None
                                                   else Decision("waiting_data", "not checked yet"), 0, 0)

    # --- persisted state ------------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.state_path.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and isinstance(doc.get("runs", []), list):
                hold = doc.get("hold_until", 0.0)
                return {"runs": [float(t) for t in doc.get("runs", []) if isinstance(t, (int, float))],
                        "hold_until": float(hold) if isinstance(hold, (int, float)) and not isinstance(hold, bool)
                        else 0.0,
                        "last_run": doc.get("last_run") if isinstance(doc.get("last_run"), dict) else None,
                        "removed": doc.get("removed") if isinstance(doc.get("removed"), dict)
                        else {"samples": 0, "bytes": 0}}
        except (OSError, ValueError):
            pass
        return {"runs": [], "hold_until": 0.0, "last_run": None, "removed": {"samples": 0, "bytes": 0}}

    def _save_state(self) -> None:
        self.saved["runs"] = self.saved["runs"][-KEEP_RUNS:]
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.state_path, self.saved)
        except (OSError, FtedgeError) as exc:
            log.error("cannot save the policy state %s (%s)", self.state_path, exc)

    def _load_override(self) -> tuple[Policy | None, str]:
        if not self.override_path.exists():
            return self.config_policy, ""
        try:
            doc = json.loads(self.override_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return None, f"{self.override_path} is unreadable ({exc}): send the policy again or clear it"
        policy, problems = parse_policy(doc.get("policy") if isinstance(doc, dict) else None, "fleet")
        if policy is None:
            return None, (f"{self.override_path} is not a valid policy ({'; '.join(problems)}): send the policy "
                          "again or clear it")
        return policy, ""

    # --- the fleet's policy verb ------------------------------------------------------------------------------
    def set(self, doc: Any) -> Policy:
        """Validate and persist a policy from the fleet; it replaces the config's. Rejected (bad_args) lists every
        problem and changes nothing."""
        policy, problems = parse_policy(doc, "fleet")
        if policy is None:
            raise Rejected("bad_args", "args.set is not a valid policy: " + "; ".join(problems))
        with self.lock:
            atomic_write_json(self.override_path, {"policy": {k: v for k, v in policy.public().items()
                                                              if k != "source"}})
            self.policy = policy
        self.wake.set()
        return policy

    def clear(self) -> Policy | None:
        """Back to the config's ``[personalize]`` (or none)."""
        with self.lock:
            self.override_path.unlink(missing_ok=True)
            self.policy = self.config_policy
        self.wake.set()
        return self.policy

    def hold(self, seconds: float | None = None) -> None:
        """No policy run for ``seconds`` (default: the policy's hold_after_rollout_s): a deploy or rollback."""
        p = self.policy
        span = seconds if seconds is not None else (p.hold_after_rollout_s if p else 0.0)
        with self.lock:
            self.hold_until = max(self.hold_until, self.clock.time() + span)
            self.saved["hold_until"] = self.hold_until
            self._save_state()

    def public(self) -> dict[str, Any] | None:
        """``meta.personalize``: the policy and its state (None without a policy)."""
        with self.lock:
            if self.policy is None and self.status["state"] != "error":
                return None
            return {"policy": self.policy.public() if self.policy else None, "state": dict(self.status)}

    # --- the loop -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name="ftedge-policy", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout=5)

    def _loop(self) -> None:
        last_check = -1e18
        while not self.stopping.is_set():
            woken = self.wake.wait(POLL_S)
            self.wake.clear()
            if self.stopping.is_set():
                return
            p = self.policy
            if p is None:
                continue
            try:
                sig = signature(self._data_path(p))
            except Rejected:
                sig = ()
            due = self.clock.time() - last_check >= p.check_interval_s
            if woken or due or sig != self._sig:
                self._sig = sig
                last_check = self.clock.time()
                try:
                    self.check()
                except Exception:  # noqa: BLE001 - the policy must never stop the agent
                    log.exception("policy check failed; trying again at the next check")

    def _data_path(self, p: Policy) -> Path:
        from ftedge.device_agent.commands import _inside

        return _inside(self.data_root, p.data, "data")

    def check(self) -> dict[str, Any]:
        """Evaluate the policy now; queue a run when it says so. Returns the state (``meta.personalize.state``)."""
        with self.lock:
            p = self.policy
            if p is None:
                return self._set(Decision("disabled", "no policy"), 0, 0)
            try:
                root = self._data_path(p)
            except Rejected as exc:
                return self._set(Decision("error", f"data: {exc.detail}"), 0, 0)
            samples_set = SampleSet(root, self.dir)
            samples = samples_set.scan()
            samples, removed, removed_bytes = samples_set.enforce(samples, p.max_samples_per_label, p.max_bytes)
            if removed:
                r = self.saved["removed"]
                r["samples"], r["bytes"] = int(r.get("samples", 0)) + removed, int(r.get("bytes", 0)) + removed_bytes
                self._save_state()
            new = samples_set.new(samples, samples_set.trained())
            load, discharging = host_facts(self.power_root, self.loadavg)
            last = self.saved["last_run"]
            facts = Facts(samples=len(samples), new_samples=new, busy=self.busy(), hold_until=self.hold_until,
                          last_run=float(last["at_ms"]) / 1000 if last else None, runs=tuple(self.saved["runs"]),
                          load_per_core=load, discharging=discharging)
            decision = decide(p, facts, self.clock)
            if not decision.ready:
                return self._set(decision, len(samples), new)
            try:
                job_id = self.submit(p, decision.reason, samples)
            except Rejected as exc:
                return self._set(Decision("error", f"cannot start a run: {exc.detail}"), len(samples), new)
            now = self.clock.time()
            samples_set.mark_trained(samples)
            self.saved["runs"].append(now)
            self.saved["last_run"] = {"job": job_id, "at_ms": int(now * 1000)}
            self._save_state()
            log.info("policy: queued job %s (%s)", job_id, decision.reason)
            return self._set(Decision("running", f"job {job_id}: {decision.reason}"), len(samples), 0)

    def _status(self, d: Decision, samples: int, new: int) -> dict[str, Any]:
        now = self.clock.time()
        return {"state": d.state, "reason": d.reason[:MAX_REASON], "samples": samples, "new_samples": new,
                "next_eligible_ms": int(d.next_eligible * 1000) if d.next_eligible else None,
                "checked_ms": int(now * 1000), "runs_24h": sum(1 for t in self.saved["runs"] if now - t < 86400),
                "last_run": self.saved["last_run"], "removed": dict(self.saved["removed"])}

    def _set(self, d: Decision, samples: int, new: int) -> dict[str, Any]:
        self.status = self._status(d, samples, new)
        state, reason, at = self._published
        now = self.clock.time()
        if d.state != state or (d.reason != reason and now - at >= REASON_REPUBLISH_S):
            self._published = (d.state, d.reason, now)
            try:
                self.on_change()
            except Exception:  # noqa: BLE001
                log.exception("could not publish the policy state")
        return dict(self.status)
