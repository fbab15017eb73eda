"""Whether a policy run may start now, and if not, what it waits for: a pure function of the policy, the facts the
agent measured and the clock (tests pass their own).

The checks run in a fixed order and the first that fails names the state: ``disabled``, ``busy`` (a job queued or
running), ``waiting_rollout`` (a deploy or rollback is recent), ``waiting_data``, ``waiting_interval``,
``waiting_quota`` (runs per day), ``waiting_window``, ``waiting_power`` (battery discharging), ``waiting_idle``
(load). All pass: ``ready``, with the reason a run's result will carry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

from ftedge.device_agent.policy.spec import Policy
from ftedge.mqtt.contract import POLICY_STATES

DAY_S = 86400.0
STATES = POLICY_STATES   # what meta.personalize.state.state may say (the fleet refuses others); "ready" stays inside


class Clock:
    """Wall time and local time; tests subclass it to move time by hand."""

    def time(self) -> float:
        return time.time()

    def local(self, t: float) -> datetime:
        """``t`` (epoch seconds) as naive local time (the box's timezone)."""
        return datetime.fromtimestamp(t)


@dataclass(frozen=True)
class Facts:
    """What the agent measured just before deciding."""

    samples: int
    new_samples: int
    busy: bool                      # a job is queued or running
    hold_until: float               # epoch s: no run before (a recent deploy/rollback); 0: none
    last_run: float | None          # epoch s the last policy run was queued
    runs: tuple[float, ...]         # epoch s of recent policy runs
    load_per_core: float | None     # 1-minute load average / CPUs (None: unknown)
    discharging: bool | None        # battery discharging (None: no battery / unknown)


@dataclass(frozen=True)
class Decision:
    state: str
    reason: str
    next_eligible: float | None = None   # epoch s when the blocking condition ends by itself, where known

    @property
    def ready(self) -> bool:
        return self.state == "ready"


def _window_next(policy: Policy, now: float, clock: Clock) -> tuple[bool, float | None]:
    """(inside the window now, epoch s of the window's next start)."""
    span = policy.window_minutes()
    if span is None:
        return True, None
    start, end = span
    local = clock.local(now)
    minute = local.hour * 60 + local.minute
    inside = (start <= minute < end) if start < end else (minute >= start or minute < end) if start != end else True
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    nxt = midnight + timedelta(minutes=start)
    if nxt <= local:
        nxt += timedelta(days=1)
    return inside, now + (nxt - local).total_seconds()


def decide(policy: Policy, facts: Facts, clock: Clock) -> Decision:
    now = clock.time()
    if not policy.enabled:
        return Decision("disabled", "the policy is disabled (enabled = false)")
    if facts.busy:
        return Decision("busy", "another job is queued or running")
    if facts.hold_until > now:
        return Decision("waiting_rollout", "a deploy or rollback happened recently: the rollout's checks come first",
                        facts.hold_until)
    if facts.new_samples < policy.min_new_samples:
        return Decision("waiting_data", f"{facts.new_samples} of {policy.min_new_samples} new samples "
                                        f"({facts.samples} in the data set)")
    if facts.last_run is not None and now - facts.last_run < policy.min_interval_h * 3600:
        nxt = facts.last_run + policy.min_interval_h * 3600
        return Decision("waiting_interval", f"the last policy run was {(now - facts.last_run) / 3600:.1f} h ago "
                                            f"(min_interval_h {policy.min_interval_h:g})", nxt)
    recent = sorted(t for t in facts.runs if now - t < DAY_S)
    if len(recent) >= policy.max_runs_per_day:
        return Decision("waiting_quota", f"{len(recent)} policy runs in the last 24 h (max_runs_per_day "
                                         f"{policy.max_runs_per_day})", recent[0] + DAY_S)
    inside, start = _window_next(policy, now, clock)
    if not inside:
        return Decision("waiting_window", f"outside the window {policy.window} (local time "
                                          f"{clock.local(now):%H:%M})", start)
    if facts.discharging and not policy.on_battery:
        return Decision("waiting_power", "on battery (discharging) and on_battery = false")
    if facts.load_per_core is not None and facts.load_per_core > policy.max_load:
        return Decision("waiting_idle", f"load {facts.load_per_core:.2f} per core > max_load {policy.max_load:g}")
    parts = [f"{facts.new_samples} new samples (≥ {policy.min_new_samples})"]
    if policy.window:
        parts.append(f"in window {policy.window}")
    if facts.load_per_core is not None:
        parts.append(f"load {facts.load_per_core:.2f}/core")
    parts.append("on battery" if facts.discharging else "on mains" if facts.discharging is False else "power unknown")
    return Decision("ready", "; ".join(parts))


def host_facts(power_root: str = "/sys/class/power_supply",
               loadavg: Callable[[], tuple[float, float, float]] | None = None) -> tuple[float | None, bool | None]:
    """(1-minute load per core, battery discharging) of this host; None where it cannot tell."""
    import os
    from pathlib import Path

    try:
        load = (loadavg or os.getloadavg)()[0] / max(1, os.cpu_count() or 1)
    except OSError:
        load = None
    discharging = None
    root = Path(power_root)
    try:
        supplies = sorted(root.iterdir()) if root.is_dir() else []
    except OSError:
        supplies = []
    for s in supplies:
        try:
            kind = (s / "type").read_text().strip()
            if kind != "Battery":
                continue
            status = (s / "status").read_text().strip()
        except OSError:
            continue
        discharging = bool(discharging) or status == "Discharging"
    return load, discharging
