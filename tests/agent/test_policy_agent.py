"""The box's own policy in a real agent process over a real Mosquitto broker: a run starts by itself when enough new
samples arrive, exactly once; it survives a SIGKILL; the fleet sets, shows and clears the policy with the `policy`
verb. Decisions with an injected clock: test_policy_decisions.py."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.agent_harness import Collector

pytestmark = pytest.mark.needs("mosquitto")

LABELS = "abcd"
POLICY = """
[personalize]
bundle = "{bundle}"
data = "{data}"
min_new_samples = 20
min_interval_h = 0
max_load = 64
check_interval_s = 1
{extra}
"""


def _blobs(folder: Path, per_class: int, seed: int) -> None:
    """SYNTHETIC samples of the mlp bundle (Gaussian blobs), one .npy file per sample in a folder per label."""
    from tests.helpers.zoo import gaussian_classes

    x, y = gaussian_classes(n_per_class=per_class, seed=seed)
    for i, (row, label) in enumerate(zip(x, y)):
        (folder / LABELS[label]).mkdir(parents=True, exist_ok=True)
        np.save(folder / LABELS[label] / f"s{seed}-{i:04d}.npy", row)


def _data_root(cfg: Path) -> Path:
    return Path(next(line for line in cfg.read_text().splitlines() if line.startswith("data_root")).split('"')[1])


def _policy_state(col: Collector) -> dict:
    metas = [m for m in col.of("meta") if m.get("personalize")]
    return metas[-1]["personalize"]["state"] if metas else {}


def _mlp_box(broker, device, agents, epochs: int) -> tuple[Path, Collector]:  # noqa: ANN001
    """An agent whose policy trains the mlp bundle on DATA/blobs (empty yet), online; (the data folder, a collector)."""
    cfg = device(broker, POLICY.format(bundle="mlp", data="blobs", extra=f"options = {{ epochs = {epochs} }}"))
    data = _data_root(cfg) / "blobs"
    data.mkdir()
    col = Collector(broker)
    agents(cfg)
    col.wait_online()
    return data, col


def test_twenty_new_samples_train_exactly_once_by_themselves(broker, device, agents):
    data, col = _mlp_box(broker, device, agents, epochs=5)
    assert col.wait(lambda: _policy_state(col).get("state") == "waiting_data", 30), col.of("meta")[-1:]
    _blobs(data, per_class=5, seed=1)   # 20 new samples
    assert col.wait(lambda: col.topics("jobs/"), 60), "no policy run started"
    assert col.wait(lambda: [t for t, _ in col.topics("jobs/") if t.endswith("/result")], 120)
    time.sleep(4)   # several more checks: the same data must not start a second run
    results = [b for t, b in col.topics("jobs/") if t.endswith("/result")]
    assert len(results) == 1, results
    r = results[0]
    assert r["status"] == "succeeded" and r["trigger"] == "policy"
    assert "20 new samples (≥ 20)" in r["trigger_reason"] and "load" in r["trigger_reason"]
    assert [b["trigger"] for b in col.of("job")][-1] == "policy"
    assert col.wait(lambda: _policy_state(col).get("state") == "waiting_data", 10)
    state = _policy_state(col)
    assert state["new_samples"] == 0 and state["samples"] == 20 and state["last_run"]["job"] == r["job"]
    col.close()


def test_a_policy_run_killed_mid_job_resumes_once(broker, device, agents):
    cfg = device(broker, POLICY.format(bundle="kws", data="clips", extra='options = { epochs = 60, mode = "full", '
                                                                         "batch_size = 4 }"))
    data = _data_root(cfg) / "clips"
    rng = np.random.default_rng(0)
    words = ("yes", "no", "up", "down")   # the kws bundle's labels
    for i in range(24):   # SYNTHETIC clips: 4 classes, shifted noise
        (data / words[i % 4]).mkdir(parents=True, exist_ok=True)
        np.save(data / words[i % 4] / f"c{i:03d}.npy",
                (0.7 * (i % 4) + rng.standard_normal((101, 40))).astype(np.float32))
    col = Collector(broker)
    agent = agents(cfg)
    col.wait_online()
    assert col.wait(lambda: len([t for t, _ in col.topics("jobs/") if t.endswith("/progress")]) >= 3, 120)
    agent.stop(signal.SIGKILL)
    agents(cfg)
    assert col.wait(lambda: [t for t, _ in col.topics("jobs/") if t.endswith("/result")], 300)
    time.sleep(4)
    results = [b for t, b in col.topics("jobs/") if t.endswith("/result")]
    assert len(results) == 1 and results[0]["status"] == "succeeded" and results[0]["trigger"] == "policy"
    jobs = {b["job"] for b in col.of("job")}
    assert len(jobs) == 1, f"the resumed run is the same job, and no second run started: {jobs}"
    col.close()


def test_the_fleet_sets_shows_and_clears_the_policy(broker, device, agents):
    cfg = device(broker)
    col = Collector(broker)
    agents(cfg)
    col.wait_online()
    shown = col.send("policy", {})
    assert shown["status"] == "done" and shown["policy"] is None
    bad = col.send("policy", {"set": {"bundle": "mlp", "data": "/etc/shadow", "window": "24:00-01:00",
                                      "max_runs_per_day": 0}})
    assert bad["status"] == "rejected" and bad["code"] == "bad_args"
    for key in ("data", "window", "max_runs_per_day"):
        assert key in bad["detail"]
    assert col.send("policy", {})["policy"] is None, "a refused policy changes nothing"
    assert col.send("policy", {"set": {}, "clear": True})["code"] == "bad_args"
    ok = col.send("policy", {"set": {"bundle": "mlp", "data": "blobs", "min_new_samples": 50}})
    assert ok["status"] == "done" and ok["policy"]["source"] == "fleet" and ok["policy"]["min_new_samples"] == 50
    assert col.wait(lambda: (col.of("meta")[-1].get("personalize") or {}).get("policy", {}).get("source") == "fleet")
    checked = col.send("policy", {"check": True})
    assert checked["state"]["state"] in ("waiting_data", "error"), checked
    cleared = col.send("policy", {"clear": True})
    assert cleared["status"] == "done" and cleared["policy"] is None
    col.close()


def test_a_policy_run_continues_from_the_active_version_and_is_not_promoted_unless_it_beats_it(broker, device, agents):
    """The second policy run warm-starts from v0001. With a learning rate too small to change anything (1e-6, one
    epoch) its validation accuracy is the active version's — far above the untuned bundle's, so it did start from
    v0001's weights — and, not beating the active version, it is not promoted, says so, and v0001 stays active."""
    data, col = _mlp_box(broker, device, agents, epochs=40)
    _blobs(data, per_class=5, seed=1)

    def results() -> list[dict]:
        return [b for t, b in col.topics("jobs/") if t.endswith("/result")]
    assert col.wait(lambda: results(), 120)
    first = results()[0]
    assert first["promoted"] and first["version"] == "v0001" and first["warm_start"] is None, first
    tiny = col.send("policy", {"set": {"bundle": "mlp", "data": "blobs", "min_new_samples": 20, "min_interval_h": 0,
                                       "max_load": 64, "check_interval_s": 1,
                                       "options": {"epochs": 1, "lr": 1e-6, "schedule": "constant"}}})
    assert tiny["status"] == "done", tiny
    _blobs(data, per_class=5, seed=2)   # 20 more samples: the second run
    assert col.wait(lambda: len(results()) == 2, 120)
    second = results()[1]
    assert second["status"] == "succeeded" and second["trigger"] == "policy" and second["warm_start"] == "v0001"
    assert second["previous"]["accuracy"] == second["final"]["accuracy"] > second["baseline"]["accuracy"], second
    assert second["previous_gain"] == 0 and not second["promoted"] and second["version"] is None
    assert "does not beat the active model" in second["stop_reason"]
    assert col.wait(lambda: col.of("meta")[-1].get("active_version") == "v0001")
    col.close()
