"""The box's own policy (device_agent.policy) with an injected clock, real files and a fake sysfs power folder:
when it starts a run, what it waits for, and the data caps. The agent over a real broker: test_policy_agent.py."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from ftedge.device_agent.policy.decision import Clock
from ftedge.device_agent.policy.runner import PolicyRunner
from ftedge.device_agent.policy.spec import parse_policy
from ftedge.errors import Rejected

T0 = datetime(2026, 12, 8, 12, 0, tzinfo=timezone.utc).timestamp()   # noon (the clock's local time is UTC)


class FakeClock(Clock):
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def time(self) -> float:
        return self.t

    def local(self, t: float) -> datetime:
        return datetime.fromtimestamp(t, timezone.utc).replace(tzinfo=None)


def _policy(**kw):
    doc = {"bundle": "mlp", "data": "blobs", "min_new_samples": 20, "min_interval_h": 0, "max_load": 64, **kw}
    policy, problems = parse_policy(doc)
    assert policy is not None, problems
    return policy


def _add(data: Path, n: int, label: str = "a", start: int = 0) -> None:
    (data / "blobs" / label).mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        np.save(data / "blobs" / label / f"s{i:04d}.npy", np.full(20, ord(label[0]) * 1000.0 + i, np.float32))  # distinct contents


def _battery(root: Path, status: str) -> str:
    bat = root / "BAT0"
    bat.mkdir(parents=True, exist_ok=True)
    (bat / "type").write_text("Battery\n")
    (bat / "status").write_text(status + "\n")
    return str(root)


@pytest.fixture()
def box(tmp_path):
    """A runner over real files whose submit records the runs it queues (the agent queues a real job)."""
    data = tmp_path / "data"
    (data / "blobs").mkdir(parents=True)
    runs: list[str] = []
    busy = {"now": False}

    def make(policy, clock=None, power_root=None):
        def submit(p, reason, samples):
            runs.append(reason)
            return f"job{len(runs)}"
        return PolicyRunner(tmp_path / "state", policy, data, submit, lambda: busy["now"], clock=clock or FakeClock(),
                            power_root=power_root or str(tmp_path / "no-power"))
    return make, data, runs, busy


def test_twenty_new_samples_start_exactly_one_run(box):
    make, data, runs, _ = box
    runner = make(_policy())
    _add(data, 19)
    state = runner.check()
    assert state["state"] == "waiting_data" and state["new_samples"] == 19 and "19 of 20" in state["reason"]
    _add(data, 1, start=19)
    state = runner.check()
    assert len(runs) == 1 and state["state"] == "running" and "20 new samples" in runs[0]
    for _ in range(3):  # the same data never starts a second run
        assert runner.check()["state"] == "waiting_data"
    assert len(runs) == 1
    _add(data, 19, label="b")
    assert runner.check()["new_samples"] == 19 and len(runs) == 1
    _add(data, 1, label="b", start=19)
    runner.check()
    assert len(runs) == 2


def test_a_renamed_or_copied_sample_is_not_new(box):
    make, data, runs, _ = box
    runner = make(_policy())
    _add(data, 20)
    runner.check()
    for f in sorted((data / "blobs" / "a").iterdir())[:10]:
        f.rename(f.with_name("renamed-" + f.name))
    (data / "blobs" / "b").mkdir()
    for f in sorted((data / "blobs" / "a").iterdir())[:10]:
        (data / "blobs" / "b" / f.name).write_bytes(f.read_bytes())
    state = runner.check()
    assert state["new_samples"] == 0 and len(runs) == 1


def test_outside_its_window_it_waits_then_runs(box):
    make, data, runs, _ = box
    clock = FakeClock()
    runner = make(_policy(window="01:00-05:00"), clock)
    _add(data, 25)
    state = runner.check()
    assert state["state"] == "waiting_window" and not runs
    next_start = datetime(2026, 12, 9, 1, 0, tzinfo=timezone.utc).timestamp()
    assert state["next_eligible_ms"] == int(next_start * 1000)
    clock.t = next_start - 60  # 00:59: still waiting
    assert runner.check()["state"] == "waiting_window"
    clock.t = next_start + 30 * 60  # 01:30
    assert runner.check()["state"] == "running" and len(runs) == 1 and "in window 01:00-05:00" in runs[0]


def test_a_window_across_midnight(box):
    make, data, runs, _ = box
    clock = FakeClock(datetime(2026, 12, 8, 23, 30, tzinfo=timezone.utc).timestamp())
    runner = make(_policy(window="22:00-02:00"), clock)
    _add(data, 20)
    assert runner.check()["state"] == "running"
    clock.t = datetime(2026, 12, 9, 3, 0, tzinfo=timezone.utc).timestamp()
    _add(data, 20, start=100)
    assert runner.check()["state"] == "waiting_window"


def test_on_battery_it_waits_then_runs_on_mains(box, tmp_path):
    make, data, runs, _ = box
    power = _battery(tmp_path / "power", "Discharging")
    runner = make(_policy(), power_root=power)
    _add(data, 20)
    state = runner.check()
    assert state["state"] == "waiting_power" and not runs
    _battery(tmp_path / "power", "Charging")
    state = runner.check()
    assert state["state"] == "running" and "on mains" in runs[0]


def test_on_battery_true_runs_while_discharging(box, tmp_path):
    make, data, runs, _ = box
    runner = make(_policy(on_battery=True), power_root=_battery(tmp_path / "power", "Discharging"))
    _add(data, 20)
    assert runner.check()["state"] == "running" and "on battery" in runs[0]


def test_a_loaded_box_waits_for_idle(box):
    make, data, runs, _ = box
    runner = make(_policy(max_load=0.5))
    runner.loadavg = lambda: (100.0 * (os.cpu_count() or 1), 0.0, 0.0)
    _add(data, 20)
    state = runner.check()
    assert state["state"] == "waiting_idle" and "max_load 0.5" in state["reason"] and not runs
    runner.loadavg = lambda: (0.0, 0.0, 0.0)
    assert runner.check()["state"] == "running"


def test_interval_and_runs_per_day_bound_the_runs(box):
    make, data, runs, _ = box
    clock = FakeClock()
    runner = make(_policy(min_interval_h=2, max_runs_per_day=2), clock)
    _add(data, 20)
    runner.check()
    _add(data, 20, start=100)
    state = runner.check()
    assert state["state"] == "waiting_interval" and state["next_eligible_ms"] == int((T0 + 7200) * 1000)
    clock.t += 7200
    assert runner.check()["state"] == "running"
    _add(data, 20, start=200)
    clock.t += 7200
    state = runner.check()
    assert state["state"] == "waiting_quota" and state["runs_24h"] == 2
    assert state["next_eligible_ms"] == int((T0 + 86400) * 1000)
    clock.t = T0 + 86400
    assert runner.check()["state"] == "running" and len(runs) == 3


def test_never_while_another_job_runs_or_a_rollout_holds_the_box(box):
    make, data, runs, busy = box
    clock = FakeClock()
    runner = make(_policy(hold_after_rollout_s=600), clock)
    _add(data, 20)
    busy["now"] = True
    assert runner.check()["state"] == "busy"
    busy["now"] = False
    runner.hold()
    state = runner.check()
    assert state["state"] == "waiting_rollout" and state["next_eligible_ms"] == int((T0 + 600) * 1000)
    restarted = make(_policy(hold_after_rollout_s=600), clock)   # an agent restart keeps the hold
    assert restarted.check()["state"] == "waiting_rollout"
    clock.t += 601
    assert runner.check()["state"] == "running" and len(runs) == 1


def test_the_data_caps_remove_the_oldest_samples_and_count_them(box):
    make, data, runs, _ = box
    runner = make(_policy(max_samples_per_label=5, min_new_samples=100))
    _add(data, 8)
    files = sorted((data / "blobs" / "a").iterdir())
    for i, f in enumerate(files):  # s0000 is the oldest
        os.utime(f, ns=(1_000_000_000 * (i + 1), 1_000_000_000 * (i + 1)))
    state = runner.check()
    left = sorted(p.name for p in (data / "blobs" / "a").iterdir())
    assert left == [f.name for f in files[3:]]
    assert state["removed"]["samples"] == 3 and state["removed"]["bytes"] == sum(f.stat().st_size for f in files[3:6])
    assert state["samples"] == 5
    size = files[-1].stat().st_size
    runner.policy = _policy(max_bytes=2 * size, min_new_samples=100)
    state = runner.check()
    assert sorted(p.name for p in (data / "blobs" / "a").iterdir()) == [f.name for f in files[6:]]
    assert state["removed"]["samples"] == 6


def test_a_fleet_policy_replaces_the_configs_and_a_bad_one_changes_nothing(box, tmp_path):
    make, data, runs, _ = box
    runner = make(_policy())
    with pytest.raises(Rejected) as bad:
        runner.set({"bundle": "mlp", "data": "/etc", "window": "25:00-01:00", "min_new_samples": -1, "colour": 1})
    for word in ("data", "window", "min_new_samples", "colour"):
        assert word in bad.value.detail
    assert runner.policy.source == "config" and not (tmp_path / "state" / "policy.json").exists()
    runner.set({"bundle": "mlp", "data": "blobs", "min_new_samples": 3, "max_load": 64})
    assert runner.policy.source == "fleet" and runner.policy.min_new_samples == 3
    again = make(_policy())  # a restart keeps the fleet's policy
    assert again.policy.source == "fleet" and again.policy.min_new_samples == 3
    again.clear()
    assert again.policy.source == "config" and make(_policy()).policy.source == "config"


def test_data_outside_the_data_root_is_an_error_state_not_a_run(box):
    make, data, runs, _ = box
    runner = make(_policy(data="../../etc"))
    state = runner.check()
    assert state["state"] == "error" and "outside" in state["reason"] and not runs


def test_config_reports_every_personalize_problem_with_its_key(tmp_path):
    from ftedge.device_agent.config import load_config
    from ftedge.errors import AgentError

    base = (f'device_id = "d"\nfleet = "f"\nstate_dir = "{tmp_path}/s"\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'
            f'[paths]\ndata_root = "{tmp_path}"\nbundle_root = "{tmp_path}"\n')
    cfg = tmp_path / "agent.toml"
    cfg.write_text(base + '[personalize]\nbundle = "kws"\nwindow = "1-5"\nmax_load = "low"\nminnew = 3\n'
                          'options = { epochs = 0 }\n')
    with pytest.raises(AgentError) as err:
        load_config(cfg)
    text = str(err.value)
    for key in ("personalize.data", "personalize.window", "personalize.max_load", "personalize.minnew",
                "personalize.options"):
        assert key in text, text
    cfg.write_text(base + '[personalize]\nbundle = "kws"\ndata = "kws-data"\noptions = "auto"\n')
    loaded = load_config(cfg)
    assert loaded.personalize.options == {"auto": True} and loaded.personalize.min_new_samples == 20


def test_a_long_reason_is_cut_to_what_the_fleet_accepts(tmp_path):
    from ftedge.mqtt.contract import MAX_REASON, POLICY_STATES

    data = tmp_path / "data"
    _add(data, 20)

    def submit(p, reason, samples):
        raise Rejected("bad_args", "x" * 5000)
    runner = PolicyRunner(tmp_path / "state", _policy(), data, submit, lambda: False, clock=FakeClock(),
                          power_root=str(tmp_path / "no-power"))
    state = runner.check()
    assert state["state"] == "error" and len(state["reason"]) == MAX_REASON
    assert state["state"] in POLICY_STATES


def test_agent_status_shows_the_policy_in_effect(tmp_path):
    import json
    import subprocess
    import sys

    from tests.helpers.common import ROOT

    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'device_id = "d"\nfleet = "f"\nstate_dir = "{tmp_path}/s"\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'
                   f'[paths]\ndata_root = "{tmp_path}"\nbundle_root = "{tmp_path}"\n'
                   '[personalize]\nbundle = "kws"\ndata = "user"\n')
    out = subprocess.run([sys.executable, "-m", "ftedge", "agent", "status", "--config", str(cfg), "--json"],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    shown = json.loads(out.stdout)["personalize"]
    assert shown["source"] == "config" and shown["bundle"] == "kws" and shown["last_run"] is None
    text = subprocess.run([sys.executable, "-m", "ftedge", "agent", "status", "--config", str(cfg)],
                          capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "personalize (config): kws on user" in text and "last policy run: none" in text
