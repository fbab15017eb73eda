"""bench/rollout cannot rot: its simulated phase, the fan-out baseline and the tick cost with tiny numbers (a real
Mosquitto, the collector host as a child process), and the JSON the report and BENCHMARKS.md are made from."""

from __future__ import annotations

import json

import pytest
from ftedge.fleet.rollout import plan

pytestmark = pytest.mark.needs("mosquitto")


def test_the_rollout_bench_runs_small_and_every_box_ends_in_a_final_state(tmp_path, capsys):
    from bench.rollout.__main__ import main

    out = tmp_path / "rollout.json"
    # waves of 1-9 boxes with seeded failures: one failure is 11-33 % of such a wave, which halts it at the bench's
    # thresholds (rightly: a finished wave is judged on all its outcomes); this test is about the bench running to
    # its end, so its thresholds are loose
    assert main(["--devices", "30", "--phases", "sim,baseline,ticks", "--fail-rate", "5%", "--offline-rate", "10%",
                 "--max-failures", "0.3", "--max-regressions", "0.4", "--wave-timeout", "4", "--fast-tick", "0", "--tick-sizes", "40,80", "--agents", "0",
                 "--seed", "3", "--json-out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert "Staged rollouts" in capsys.readouterr().out
    sim = res["sim"]
    assert sim["state"] == plan.DONE and sim["finished"], sim["reason"]
    assert sum(sim["final_states"].values()) == 30
    assert set(sim["final_states"]) <= set(plan.FINAL_OUTCOMES) - {plan.DEPLOYED}, sim["final_states"]
    assert sim["final_states"].get(plan.OFFLINE, 0) >= 1, "seed 3 makes some boxes offline"
    assert [w["wave"] for w in sim["waves"]] == [0, 1, 2, 3]
    for w in sim["waves"]:
        assert w["state"] == "passed" and w["verdict_s"] > 0
        assert w["last_answer_s"] is not None or w["offline"] == w["devices"], w   # a wave of silent boxes: none
    assert sim["sent"] == sum(sim["sent_by"].values()) > 30
    assert sim["resyncs"] == 0 and res["baseline"]["resyncs"] == 0, "a fresh simulator per part: no seq holes"
    assert sim["collector_cpu_s"] > 0 and sim["ticks"]["n"] > 0 and sim["ticks"]["p50_ms"] > 0
    assert sim["rows"]["rollout_devices"] == 30 and sim["rows_per_device"] > 1 and sim["bytes_per_device"] > 0
    base = res["baseline"]
    assert base["devices"] == 30 and base["sent"] > 30 and base["wall_s"] > 0
    assert base["promoted"] + base["not_promoted"] == base["deployed"]
    assert [t["devices"] for t in res["ticks"]] == [40, 80]
    assert all(t["sent"] == t["devices"] and t["state"] == plan.DONE for t in res["ticks"])
    assert res["capacity"]["devices"] == 100_000 and res["capacity"]["rows"] > 0
