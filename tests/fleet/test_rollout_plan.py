"""The rollout rules without a broker: options, wave assignment and each wave's gate (fleet/rollout/plan.py)."""

from __future__ import annotations

import pytest
from ftedge.errors import UsageError
from ftedge.fleet.rollout import plan
from ftedge.fleet.rollout.plan import Outcome, RolloutSpec, assign_waves, judge

KEYS = [("f", f"d{i:03d}") for i in range(100)]


def _spec(**kw) -> RolloutSpec:
    return RolloutSpec(name=kw.pop("name", "r"), sha256="0" * 64, bundle="kws", **kw).check()


def test_waves_and_shares_parse_and_bad_ones_say_how_to_write_them():
    assert plan.parse_waves("10%,50%,100%") == [0.1, 0.5, 1.0]
    assert plan.parse_waves("25%") == [0.25, 1.0], "the last wave always reaches every device"
    assert plan.parse_share("0.2", "--x") == 0.2
    for bad in ("50%,10%", "0%", "abc", "10%,10%"):
        with pytest.raises(UsageError, match="--waves"):
            plan.parse_waves(bad)
    with pytest.raises(UsageError, match="from 0% to 100%"):
        plan.parse_share("150%", "--max-failures")
    with pytest.raises(UsageError, match="--name"):
        _spec(name="../x")


def test_waves_cover_every_device_once_canary_first_and_are_stable_per_rollout():
    spec = _spec(canary="5%", waves=[0.1, 0.5, 1.0])
    waves = assign_waves(spec, KEYS)
    assert sorted(waves) == sorted(KEYS)
    sizes = [sum(w == i for w in waves.values()) for i in range(4)]
    assert sizes == [5, 10, 38, 47]            # 5% canary; then 10%, 50%, 100% of the other 95 (ceil)
    assert assign_waves(spec, list(reversed(KEYS))) == waves, "the order devices are listed in does not matter"
    other = assign_waves(_spec(name="r2", canary="5%", waves=[0.1, 0.5, 1.0]), KEYS)
    assert {k for k, w in other.items() if w == 0} != {k for k, w in waves.items() if w == 0}, \
        "another rollout picks another canary"
    named = assign_waves(_spec(canary_devices=["d007", "f/d042"]), KEYS)
    assert {k[1] for k, w in named.items() if w == 0} == {"d007", "d042"}
    assert set(assign_waves(_spec(canary="0"), KEYS).values()) == {1}


def test_failures_halt_at_once_but_only_after_min_devices_have_an_outcome():
    spec = _spec(max_failures=0.2, min_devices=5)
    four_failed = [Outcome(plan.FAILED)] * 2 + [Outcome(plan.DEPLOYED)] * 2 + [Outcome(plan.DEPLOYING)] * 6
    assert judge(spec, 1, four_failed, closed=False).state == "open", "4 outcomes < --min-devices 5"
    v = judge(spec, 1, four_failed[:4] + [Outcome(plan.DEPLOYED)] + [Outcome(plan.DEPLOYING)] * 5, closed=False)
    assert v.state == "halted" and "2 of 5 devices failed" in v.why
    ok = [Outcome(plan.FAILED)] + [Outcome(plan.DEPLOYED)] * 9
    assert judge(spec, 1, ok, closed=True).state == "passed"
    # a finished wave is judged on all its outcomes, however few: a canary of one that failed halts
    v = judge(spec, 0, [Outcome(plan.FAILED)], closed=True)
    assert v.state == "halted" and "1 of 1 devices failed" in v.why
    assert judge(_spec(), 1, [Outcome(plan.FAILED)] + [Outcome(plan.DEPLOYING)] * 99, closed=False).state == "open", \
        "one early failure in a wave of 100 is no verdict with the default --min-devices 10"


def test_offline_devices_are_neither_failures_nor_regressions():
    spec = _spec(max_failures=0.0, train={"data": "u"}, max_regressions=0.0)
    v = judge(spec, 1, [Outcome(plan.OFFLINE)] * 3 + [Outcome(plan.PROMOTED, 0.1)], closed=True)
    assert v.state == "passed" and v.offline == 3 and v.failed == 0


def test_the_training_gate_counts_regressions_and_the_median_gain():
    spec = _spec(train={"data": "u"}, max_regressions=0.25, min_gain=0.02)
    good = [Outcome(plan.PROMOTED, g) for g in (0.01, 0.03, 0.05)]
    assert judge(spec, 1, good + [Outcome(plan.NOT_PROMOTED, -0.1)], closed=True).state == "passed"  # 1/4 = 25%
    v = judge(spec, 1, good + [Outcome(plan.NOT_PROMOTED, -0.1)] * 2, closed=True)
    assert v.state == "halted" and "2 of 5 devices regressed" in v.why
    v = judge(spec, 1, [Outcome(plan.PROMOTED, g) for g in (0.005, 0.01, 0.2)], closed=True)
    assert v.state == "halted" and "median gain" in v.why and v.median_gain == pytest.approx(0.01)
    assert judge(spec, 1, good, closed=False).state == "open", "the training gate waits for the whole wave"
    deployed_only = [Outcome(plan.DEPLOYED)] * 3
    assert judge(spec, 1, deployed_only, closed=False).outcomes == 0, "with --train, deployed is not an outcome"
