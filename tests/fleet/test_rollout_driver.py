"""The rollout driver against a real Mosquitto and a real collector, with simulated boxes (SYNTHETIC results):
waves, gates, rollback, offline boxes, restarts and the lease. Real agents: tests/fleet/test_rollout_agents.py."""

from __future__ import annotations

import time

import pytest
from ftedge.fleet.rollout import plan
from ftedge.fleet.rollout.driver import RolloutDriver
from ftedge.fleet.rollout.records import RolloutRecords
from ftedge.fleet.store import FleetStore

from tests.helpers.fleet_sim import wait_for
from tests.helpers.rollout_sim import Box, FleetSim

pytestmark = pytest.mark.needs("mosquitto")
SHA = "ab" * 32
FLEET = "sim"


def _spec(**kw) -> plan.RolloutSpec:
    kw.setdefault("name", "r1")
    return plan.RolloutSpec(sha256=SHA, bundle="kws", url="https://cdn.example/kws.tar.gz", **kw).check()


def _start(store: FleetStore, spec: plan.RolloutSpec, devices: list[str]) -> RolloutRecords:
    """What `fleet rollout start` does once it has the archive (tests/fleet/test_rollout_agents.py runs the CLI)."""
    records = RolloutRecords(store)
    keys = [(FLEET, d) for d in devices]
    assert wait_for(lambda: set(records.known_devices(FLEET)) >= set(keys), 10), "the collector never saw the boxes"
    versions = {k: v for k, (_, v) in records.device_facts(keys).items()}
    records.create(spec, plan.assign_waves(spec, keys), versions)
    return records


@pytest.fixture()
def fleet(broker, running, tmp_path):
    """A collector on a SQLite file, a simulator and a driver factory (drivers stopped at teardown)."""
    store = FleetStore(tmp_path / "fleet.sqlite")
    collector = running(store)
    sims: list[FleetSim] = []
    drivers: list[RolloutDriver] = []

    def sim(boxes: dict[str, Box]) -> FleetSim:
        s = FleetSim(broker.port, FLEET, boxes)
        sims.append(s)
        return s

    def driver(holder: str = "c1", on: FleetStore | None = None, lease_s: float = 15.0,
               min_expiry_s: float = 60.0) -> RolloutDriver:
        d = RolloutDriver(on or store, lambda f, dev, v, a, c, e: collector.publish_command(
            f, dev, v, a, cmd_id=c, expiry_s=60, expires_ms=e), holder=holder, tick_s=0.05, lease_s=lease_s,
            min_expiry_s=min_expiry_s)
        drivers.append(d)
        return d.start()

    yield store, sim, driver
    for d in drivers:
        d.stop()
    for s in sims:
        s.close()
    collector.stop()
    store.close()


def _done(records: RolloutRecords, name: str = "r1", timeout: float = 30) -> plan.RolloutSpec:
    assert wait_for(lambda: records.get(name).finished, timeout), records.get(name)
    return records.get(name)


def test_waves_pass_one_after_another_and_every_device_ends_promoted(fleet):
    store, sim, driver = fleet
    boxes = {f"b{i}": Box(before=0.5, gain=0.05 + i / 100) for i in range(6)}
    sim(boxes)
    records = _start(store, _spec(canary="1", waves=plan.parse_waves("50%,100%"), train={"data": "user"}),
                     list(boxes))
    driver()
    r = _done(records)
    assert r.state == plan.DONE, r.reason
    assert [v["wave"] for v in r.verdicts] == [0, 1, 2] and all(v["state"] == "passed" for v in r.verdicts)
    members = records.members("r1")
    assert {m.state for m in members} == {plan.PROMOTED}
    assert all(m.gain == pytest.approx(m.after - m.before) and m.gain > 0 for m in members)
    # each wave started only after the previous one was judged: canary commands precede every other deploy
    canary = next(m.device for m in members if m.wave == 0)
    assert all(box.deploys == 1 for box in boxes.values())
    assert boxes[canary].commands[0][0] == "deploy" and [c[0] for c in boxes[canary].commands] == ["deploy", "train"]


def test_a_failing_canary_halts_and_the_other_devices_get_nothing(fleet):
    store, sim, driver = fleet
    boxes = {f"b{i}": Box() for i in range(5)}
    spec = _spec(canary_devices=["b3"])
    boxes["b3"].fail_deploy = True
    sim(boxes)
    records = _start(store, spec, list(boxes))
    driver()
    r = _done(records)
    assert r.state == plan.HALTED and "canary" in r.reason and "failed" in r.reason
    b3 = next(m for m in records.members("r1") if m.device == "b3")
    assert b3.state == plan.FAILED and "untrusted key" in b3.reason
    assert all(not boxes[d].commands for d in boxes if d != "b3"), "a device beyond the canary was commanded"
    assert {m.state for m in records.members("r1") if m.device != "b3"} == {plan.PENDING}


def test_a_wave_that_regresses_too_often_halts_and_rolls_those_boxes_back(fleet):
    store, sim, driver = fleet
    boxes = {f"b{i}": Box(active_version="v0003") for i in range(5)}
    spec = _spec(canary="1", train={"data": "user"}, max_regressions=0.3)
    records = RolloutRecords(store)
    sim(boxes)
    keys = [(FLEET, d) for d in boxes]
    assert wait_for(lambda: set(records.known_devices(FLEET)) >= set(keys) and all(
        v == "v0003" for _, v in records.device_facts(keys).values()), 10)
    waves = plan.assign_waves(spec, keys)
    later = sorted(d for (_, d), w in waves.items() if w == 1)
    for d in later[:2]:                       # 2 of 4 regress: 50% > 30%
        boxes[d].regress = True
    records.create(spec, waves, {k: v for k, (_, v) in records.device_facts(keys).items()})
    driver()
    r = _done(records)
    assert r.state == plan.HALTED and "regressed" in r.reason, r.reason
    assert wait_for(lambda: all(m.state == plan.ROLLED_BACK for m in records.members("r1") if m.wave == 1), 10), \
        records.members("r1")
    canary = next(m for m in records.members("r1") if m.wave == 0)
    assert canary.state == plan.PROMOTED, "the canary passed its gate: it keeps the new bundle and model"
    for d in later:
        verbs = [c[0] for c in boxes[d].commands]
        assert verbs == ["deploy", "train", "rollback"], (d, verbs)
        rollback = boxes[d].commands[-1][2]
        assert rollback["bundle"] == "kws" and rollback["restore"].startswith("kws.replaced-")
        promoted = not boxes[d].regress
        assert rollback.get("to") == ("v0003" if promoted else None), rollback   # the model version before
    assert all(box.active_version == "v0003" for d, box in boxes.items() if d in later)


def test_an_offline_box_counts_as_offline_at_the_timeout_and_gets_the_bundle_when_it_returns(fleet):
    store, sim, driver = fleet
    boxes = {"b0": Box(), "b1": Box(offline=True), "b2": Box()}
    s = sim(boxes)
    records = _start(store, _spec(canary="0", wave_timeout_s=4), list(boxes))
    driver()
    r = _done(records)
    assert r.state == plan.DONE and r.verdicts[-1]["offline"] == 1, [(m.device, m.state, m.reason) for m in records.members("r1")]
    assert r.verdicts[-1]["offline"] == 1 and r.verdicts[-1]["failed"] == 0
    b1 = next(m for m in records.members("r1") if m.device == "b1")
    assert b1.state == plan.OFFLINE and "offline" in b1.reason
    s.come_online("b1")
    assert wait_for(lambda: next(m for m in records.members("r1") if m.device == "b1").state == plan.DEPLOYED, 30)
    # the deploy of its wave (same cmd_id: had it run meanwhile, its cached reply would answer): one deploy
    assert boxes["b1"].deploys == 1 and [c[1] for c in boxes["b1"].commands] == ["ro-r1-deploy-w1-a0"]


def test_a_driver_restarted_mid_wave_resumes_and_deploys_no_box_twice(fleet, tmp_path):
    store, sim, driver = fleet
    boxes = {f"b{i}": Box(delay_s=0.4) for i in range(6)}
    sim(boxes)
    records = _start(store, _spec(canary="1", waves=[0.5, 1.0], train={"data": "user"}), list(boxes))
    first = driver("c1", lease_s=1.0)
    assert wait_for(lambda: any(m.state in plan.IN_FLIGHT for m in records.members("r1") if m.wave >= 1), 20)
    first._stop.set()                     # stops ticking, holds its lease until it runs out (a SIGKILL)
    first._thread.join(5)
    second = driver("c2", lease_s=1.0)
    r = _done(records)
    assert r.state == plan.DONE and second.leading and not first.leading or r.state == plan.DONE
    assert all(box.deploys == 1 for box in boxes.values()), {d: b.deploys for d, b in boxes.items()}
    trains = {d: [c[1] for c in b.commands if c[0] == "train"] for d, b in boxes.items()}
    assert all(len(set(ids)) == 1 for ids in trains.values()), trains   # one train cmd_id (repeats answered once)


def test_two_drivers_on_one_database_only_the_lease_holder_commands(fleet, tmp_path):
    store, sim, driver = fleet
    other = FleetStore(tmp_path / "fleet.sqlite")   # a second process would open the same file
    try:
        boxes = {f"b{i}": Box() for i in range(4)}
        sim(boxes)
        records = _start(store, _spec(canary="1"), list(boxes))
        a, b = driver("c1"), driver("c2", on=other)
        r = _done(records)
        assert r.state == plan.DONE
        assert a.leading != b.leading and (a.sent == 0 or b.sent == 0) and a.sent + b.sent == 4
        assert all(box.deploys == 1 for box in boxes.values())
    finally:
        other.close()


def test_pause_holds_the_next_wave_and_abort_with_rollback_undoes_every_reached_box(fleet):
    from ftedge.cli import main

    store, sim, driver = fleet
    boxes = {f"b{i}": Box() for i in range(4)}
    sim(boxes)
    records = _start(store, _spec(canary="1"), list(boxes))
    assert main(["fleet", "rollout", "pause", "r1", "--db", str(store.path)]) == 0
    driver()
    assert not wait_for(lambda: any(b.commands for b in boxes.values()), 1.0), "a paused rollout sent a command"
    assert main(["fleet", "rollout", "resume", "r1", "--db", str(store.path)]) == 0
    assert wait_for(lambda: records.get("r1").state == plan.DONE, 20)
    assert main(["fleet", "rollout", "abort", "r1", "--rollback", "--db", str(store.path)]) == 0
    assert wait_for(lambda: all(m.state == plan.ROLLED_BACK for m in records.members("r1")), 20), \
        records.members("r1")
    assert all([c[0] for c in b.commands] == ["deploy", "rollback"] for b in boxes.values())
    assert main(["fleet", "rollout", "pause", "r1", "--db", str(store.path)]) == 1, "an aborted rollout stays so"


def test_a_halted_rollout_settles_once_the_commands_of_silent_boxes_expired(fleet):
    """Halted early by a failure while a hung box never answers: once its command expired it is marked, nothing is
    left in flight, and the driver stops reading the rollout every tick."""
    store, sim, driver = fleet
    boxes = {"b0": Box(fail_deploy=True), "b1": Box(silent=True), "b2": Box()}
    sim(boxes)
    records = _start(store, _spec(canary="0", min_devices=1, wave_timeout_s=1.0), list(boxes))
    d = driver(min_expiry_s=1.0)
    assert wait_for(lambda: records.get("r1").state == plan.HALTED, 20)
    assert wait_for(lambda: not records.members("r1", states=plan.IN_FLIGHT), 20), records.members("r1")
    b1 = next(m for m in records.members("r1") if m.device == "b1")
    assert b1.state == plan.FAILED and "expired" in b1.reason, b1
    assert wait_for(lambda: "r1" in d._settled, 10)
    calls = []
    original = d.records.members
    d.records.members = lambda *a, **k: calls.append(a) or original(*a, **k)
    time.sleep(1.0)                      # ~20 ticks
    assert not calls, f"a settled rollout was read {len(calls)} times"


def test_a_done_rollout_is_read_again_only_on_catch_up_ticks(fleet):
    store, sim, driver = fleet
    sim({f"b{i}": Box() for i in range(3)})
    records = _start(store, _spec(canary="1"), ["b0", "b1", "b2"])
    d = driver()
    _done(records)
    assert wait_for(lambda: "r1" in d._settled, 10)
    calls = []
    original = d.records.members
    d.records.members = lambda *a, **k: calls.append(a) or original(*a, **k)
    d._last_catch_up = time.monotonic()    # the next catch-up tick is 10 s away
    time.sleep(1.0)
    assert not calls, "a done rollout was driven on ordinary ticks"
    d._last_catch_up = 0.0                 # a catch-up tick: it looks for boxes back from offline
    assert wait_for(lambda: calls, 5)


def test_replies_to_rollout_commands_outlive_the_global_reply_cap(tmp_path):
    """The driver learns every box's outcome from the replies: a wave answering more than the store's cap
    between two ticks must not lose them (other replies are still pruned to the cap)."""
    from tests.helpers.fleet_sim import env, msg

    store = FleetStore(tmp_path / "f.sqlite", max_replies=5)
    try:
        batch = []
        for i in range(20):
            dev = f"d{i:02d}"
            batch.append(msg(dev, "cmdres/h", env(dev, "b1", 1, cmd_id="ro-r1-deploy-w1-a0", status="done")))
            batch.append(msg(dev, "cmdres/h", env(dev, "b1", 2, cmd_id=f"ping-{i}", status="done")))
        store.ingest_batch(batch)
        records = RolloutRecords(store)
        kept = records.replies([("demo", f"d{i:02d}", "ro-r1-deploy-w1-a0") for i in range(20)])
        assert len(kept) == 20
        assert sum(store.reply(f"ping-{i}", "demo", f"d{i:02d}") is not None for i in range(20)) <= 5
    finally:
        store.close()


def test_on_postgresql_one_collector_drives_and_another_takes_over_when_it_dies(broker, running, pg_url):
    """Two collectors on one PostgreSQL database, each with a driver: one holds the lease; when it stops
    renewing (killed), the other takes over after the lease and finishes the rollout, deploying no box twice."""
    stores = [FleetStore(pg_url, instance=f"c{i}") for i in (1, 2)]
    collectors = [running(s) for s in stores]
    drivers: list[RolloutDriver] = []
    s = FleetSim(broker.port, FLEET, {f"b{i}": Box(delay_s=0.3) for i in range(6)})
    try:
        records = _start(stores[0], _spec(canary="1", waves=[0.5, 1.0], train={"data": "user"}), list(s.boxes))
        for i, (store, col) in enumerate(zip(stores, collectors)):
            drivers.append(RolloutDriver(store, lambda f, d, v, a, c, e, col=col: col.publish_command(
                f, d, v, a, cmd_id=c, expiry_s=60, expires_ms=e), holder=f"c{i + 1}", tick_s=0.05,
                lease_s=1.0).start())
        assert wait_for(lambda: drivers[0].leading != drivers[1].leading, 10)
        leader = next(d for d in drivers if d.leading)
        follower = next(d for d in drivers if d is not leader)
        assert wait_for(lambda: records.get("r1").wave >= 1, 20)
        leader._stop.set()                 # it stops renewing; its lease runs out (like a SIGKILL)
        leader._thread.join(5)
        assert wait_for(lambda: follower.leading, 10), "the other collector never took over"
        assert wait_for(lambda: records.get("r1").finished, 30), records.get("r1")
        assert records.get("r1").state == plan.DONE
        assert leader.sent > 0 and follower.sent > 0
        assert all(b.deploys == 1 for b in s.boxes.values()), {d: b.deploys for d, b in s.boxes.items()}
    finally:
        for d in drivers:
            d.stop()
        s.close()
        for c in collectors:
            c.stop()
        for store in stores:
            store.close()
