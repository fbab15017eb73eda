"""A rollout's plan and verdicts, as pure functions: the options, the waves, and each wave's gate.

Nothing here touches the database or the broker (:mod:`.records` stores, :mod:`.driver` acts), so the rules
are tested on their own and the benchmark's simulator drives the same code as the collector.

**Device states** (one row per device and rollout): ``pending`` (not commanded yet), ``deploying`` (the
``deploy`` was sent), ``deployed`` (the bundle is installed; final without ``--train``), ``training`` (the
``train`` job runs), ``promoted`` / ``not_promoted`` (the job's result: the personalized model beat the
device's untuned baseline, or not), ``failed`` (why: the reply's code and detail, or a timeout),
``offline`` (the device never answered and is not connected at the wave's timeout), ``rolling_back`` and
``rolled_back``.

**Gates.** A wave ends when every device has an outcome or its timeout passes. While it runs, a share of
failures (``failed``) above ``max_failures`` halts it at once, judged once ``min_devices`` devices have an outcome
(one early failure in a large wave is no verdict); when it ends, the share over all its outcomes. With
``--train`` the wave also needs the share of devices that regressed (``not_promoted``) or failed at most
``max_regressions`` and the median gain (after − before of the task's headline metric, signed so that
higher is better) at least ``min_gain``. ``offline`` devices count in neither share.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from statistics import median
from typing import Any

from ftedge.errors import UsageError

PENDING, DEPLOYING, DEPLOYED, TRAINING = "pending", "deploying", "deployed", "training"
PROMOTED, NOT_PROMOTED, FAILED, OFFLINE = "promoted", "not_promoted", "failed", "offline"
ROLLING_BACK, ROLLED_BACK = "rolling_back", "rolled_back"
DEVICE_STATES = (PENDING, DEPLOYING, DEPLOYED, TRAINING, PROMOTED, NOT_PROMOTED, FAILED, OFFLINE,
                 ROLLING_BACK, ROLLED_BACK)
IN_FLIGHT = (DEPLOYING, TRAINING, ROLLING_BACK)

# Rollout states: `running` drives waves; `paused` sends nothing new (commands in flight still finish);
# `halted` (a gate breached) and `aborted` (the operator) roll back and stop; `done` every wave passed.
RUNNING, PAUSED, HALTED, ABORTED, DONE = "running", "paused", "halted", "aborted", "done"
ROLLOUT_STATES = (RUNNING, PAUSED, HALTED, ABORTED, DONE)
FINISHED = (HALTED, ABORTED, DONE)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_WAVES = 20


def parse_share(text: str, what: str) -> float:
    """``"10%"`` → 0.1, ``"0.1"`` → 0.1; a share from 0 to 1."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise UsageError(f"{what} {text!r}: give a percentage like 10% (or a fraction like 0.1)") from None
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise UsageError(f"{what} {text!r}: give a share from 0% to 100%")
    return value


def parse_waves(text: str) -> list[float]:
    """``"10%,50%,100%"``: the cumulative share of the non-canary devices reached by the end of each wave.
    The last wave is always 100% (added when missing)."""
    shares = [parse_share(p, "--waves") for p in str(text).split(",") if p.strip()]
    if not shares or any(b <= a for a, b in zip(shares, shares[1:])) or shares[0] <= 0:
        raise UsageError(f"--waves {text!r}: give increasing shares of the fleet, e.g. 10%,50%,100%")
    if shares[-1] < 1.0:
        shares.append(1.0)
    if len(shares) > MAX_WAVES:
        raise UsageError(f"--waves {text!r}: at most {MAX_WAVES} waves")
    return shares


@dataclass
class RolloutSpec:
    """What ``rollout start`` asked for (stored as JSON with the rollout; the driver reads it back)."""

    name: str
    sha256: str
    bundle: str                       # the name the bundle installs as on the devices (its manifest's name)
    url: str | None = None            # an external URL (object store, CDN); None: served by the collector
    canary: str = "1"                 # N devices or P% of them (ignored with canary_devices)
    canary_devices: list[str] = field(default_factory=list)
    waves: list[float] = field(default_factory=lambda: [1.0])
    max_failures: float = 0.1
    min_devices: int = 10
    wave_timeout_s: float = 3600.0
    train: dict[str, Any] | None = None
    min_gain: float = 0.0
    max_regressions: float = 0.25
    rollback: bool = True             # roll a halted wave's devices back (start --no-rollback: leave them)

    def check(self) -> RolloutSpec:
        if not NAME_RE.fullmatch(self.name):
            raise UsageError(f"--name {self.name!r}: use 1-64 letters, digits, '.', '_' or '-' (starting with a "
                             "letter or digit)")
        if self.min_devices < 1:
            raise UsageError("--min-devices must be at least 1")
        if not math.isfinite(self.wave_timeout_s) or self.wave_timeout_s <= 0:
            raise UsageError("--wave-timeout must be a positive number of seconds")
        if not math.isfinite(self.min_gain):
            raise UsageError("--min-gain must be a finite number")
        if self.train is not None and not isinstance(self.train, dict):
            raise UsageError("--train must be a JSON object of train options, e.g. '{\"data\": \"user\"}'")
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RolloutSpec:
        d = json.loads(text)
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _order(name: str, key: tuple[str, str]) -> str:
    """A stable pseudo-random order of devices per rollout: waves are not always the same boxes."""
    return hashlib.sha256(f"{name}\0{key[0]}\0{key[1]}".encode()).hexdigest()


def assign_waves(spec: RolloutSpec, devices: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """``(fleet, device)`` → wave: 0 is the canary, then 1… for ``spec.waves``. Deterministic."""
    ordered = sorted(set(devices), key=lambda k: _order(spec.name, k))
    if spec.canary_devices:
        wanted = set(spec.canary_devices)
        canary = [k for k in ordered if k[1] in wanted or f"{k[0]}/{k[1]}" in wanted]
    else:
        raw = spec.canary.strip()
        n = math.ceil(parse_share(raw, "--canary") * len(ordered)) if raw.endswith("%") else int(raw)
        canary = ordered[:max(0, min(n, len(ordered)))]
    rest = [k for k in ordered if k not in set(canary)]
    waves = {k: 0 for k in canary}
    start = 0
    for i, share in enumerate(spec.waves, start=1):
        end = len(rest) if i == len(spec.waves) else max(start, math.ceil(share * len(rest)))
        for k in rest[start:end]:
            waves[k] = i
        start = end
    return waves


@dataclass
class Outcome:
    """One device of a wave, as the gate sees it."""

    state: str
    gain: float | None = None


@dataclass
class Verdict:
    """A wave's gate: ``passed`` (go on), ``halted`` (a threshold breached: ``why``) or ``open`` (wait)."""

    wave: int
    state: str                        # passed / halted / open
    why: str = ""
    devices: int = 0
    outcomes: int = 0
    failed: int = 0
    regressed: int = 0
    offline: int = 0
    median_gain: float | None = None

    def line(self) -> str:
        what = "canary" if self.wave == 0 else f"wave {self.wave}"
        gain = "" if self.median_gain is None else f", median gain {self.median_gain:+.3f}"
        text = (f"{what}: {self.state} — {self.outcomes}/{self.devices} with an outcome, {self.failed} failed, "
                f"{self.regressed} not promoted, {self.offline} offline{gain}")
        return text + (f" ({self.why})" if self.why else "")


FINAL_OUTCOMES = (DEPLOYED, PROMOTED, NOT_PROMOTED, FAILED, OFFLINE)


def judge(spec: RolloutSpec, wave: int, outcomes: list[Outcome], closed: bool) -> Verdict:
    """The gate of one wave. ``closed``: every device has an outcome or the wave's timeout passed (devices
    without an outcome were already marked failed/offline by the caller)."""
    training = spec.train is not None
    final = [o for o in outcomes if o.state in FINAL_OUTCOMES and (not training or o.state != DEPLOYED)]
    counted = [o for o in final if o.state != OFFLINE]
    v = Verdict(wave, "open", devices=len(outcomes), outcomes=len(final),
                failed=sum(o.state == FAILED for o in final), offline=sum(o.state == OFFLINE for o in final),
                regressed=sum(o.state == NOT_PROMOTED for o in final))
    gains = [o.gain for o in final if o.gain is not None and math.isfinite(o.gain)]
    v.median_gain = median(gains) if gains else None
    # min_devices holds back only the early verdict: a closed wave is judged on every outcome it has (a canary
    # of one box that failed halts, whatever --min-devices says)
    if counted and (closed or len(counted) >= spec.min_devices) and v.failed / len(counted) > spec.max_failures:
        v.state, v.why = "halted", (f"{v.failed} of {len(counted)} devices failed, more than --max-failures "
                                    f"{spec.max_failures:.0%}")
        return v
    if not closed:
        return v
    if training and counted:
        bad = v.failed + v.regressed
        if bad / len(counted) > spec.max_regressions:
            v.state, v.why = "halted", (f"{bad} of {len(counted)} devices regressed or failed, more than "
                                        f"--max-regressions {spec.max_regressions:.0%}")
            return v
        if v.median_gain is not None and v.median_gain < spec.min_gain:
            v.state, v.why = "halted", (f"median gain {v.median_gain:+.4f} is below --min-gain "
                                        f"{spec.min_gain:+.4f}")
            return v
    v.state = "passed"
    return v
