"""The fleet collector core: FleetStore rules, and the Collector against a real Mosquitto broker.

Devices are simulated with plain paho clients that publish contract messages (docs/mqtt.md: topic
tree ftedge/v1/{fleet}/{device}/…, envelope v, ts, dev, boot, seq, hist; the Last Will carries seq 0 and
will: true).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from ftedge.fleet.ingest import Collector, CollectorError, CollectorSettings
from ftedge.fleet.store import SCHEMA_VERSION, FleetStore

from tests.helpers.fleet_sim import (
    FLEET,
    SimDevice,
    env,
    msg,
    result_body,
    simulate_training,
    wait_for,
    will_body,
)

# -- FleetStore alone (no broker) ---------------------------------------------------------------------------

def test_store_schema_and_reopen(tmp_path):
    path = tmp_path / "fleet.sqlite"
    with FleetStore(path) as store:
        store.ingest_batch([msg("d1", "status", env("d1", "b1", 1, state="online", reason="birth"), True),
                            msg("d1", "jobs/j1/progress", env("d1", "b1", 2, job="j1", epoch=1, loss=0.5))])
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"devices", "seen", "gaps", "progress", "results", "replies", "counters", "boots"} <= tables
    db.close()
    with FleetStore(path) as store:   # reopening keeps state and de-duplication
        rep = store.ingest_batch([msg("d1", "jobs/j1/progress", env("d1", "b1", 2, job="j1", epoch=1, loss=0.5)),
                                  msg("d1", "jobs/j1/progress", env("d1", "b1", 3, job="j1", epoch=2, loss=0.4))])
        assert (rep["messages"], rep["duplicates"]) == (1, 1)
        assert store.counters()["messages_total"] == 3
        (d,) = store.devices()
        assert (d["state"], d["last_seq"], d["metrics"]["epoch"]) == ("online", 3, 2)


def test_store_malformed_and_ignored(tmp_path):
    store = FleetStore(tmp_path / "f.sqlite")
    rep = store.ingest_batch([
        ("ftedge/v1/demo/d1/status", b"{not json", False),
        ("ftedge/v1/demo/d1/status", b"[1, 2]", False),
        ("ftedge/v1/demo/d1/meta", json.dumps({"agent": "x"}).encode(), True),              # no envelope
        msg("d1", "meta", env("someone-else", "b1", 1)),                                       # dev mismatch
        msg("d1", "jobs/j/progress", env("d1", "b1", 0, job="j", epoch=1)),                   # seq 0: Will only
        ("ftedge/v1/demo", b"{}", False),                                                      # bad topic
        msg("d1", "cmd/ping", {"cmd_id": "c1", "args": {}}),                                   # host -> device
        ("ftedge/v1/demo/d1/status", b'{"v":1,"ts":Infinity,"dev":"d1","boot":"b1","seq":1}', False),
        msg("d1", "status", env("d1", "b1", 1, state="online", reason="birth")),
        msg("d1", "jobs/j/progress", env("d1", "b1", 2, job="j", epoch=10**30)),            # > 64 bits
    ])
    assert (rep["malformed"], rep["ignored"], rep["messages"]) == (8, 1, 1)
    c = store.counters()
    assert (c["malformed_total"], c["ignored_total"], c["messages_total"]) == (8, 1, 1)
    assert store.job(FLEET, "d1", "j") is None
    store.close()


def test_store_reorder_window_holes_and_late_fill(tmp_path):
    store = FleetStore(tmp_path / "f.sqlite", reorder_window_s=5.0)
    t = 1000.0
    p = lambda s: msg("d1", "jobs/j/progress", env("d1", "b1", s, job="j", epoch=s))  # noqa: E731
    store.ingest_batch([p(1), p(2), p(4), p(6)], now=t)
    store.ingest_batch([p(5)], now=t + 1)                 # reordered, inside the window: no hole for 5
    assert store.check_gaps(now=t + 4.9) == []
    holes = store.check_gaps(now=t + 5.0)
    assert [(h["missing_from"], h["missing_to"]) for h in holes] == [(3, 3)]
    assert store.counters()["seq_gaps_total"] == 1
    assert store.check_gaps(now=t + 100) == []            # counted once
    store.ingest_batch([p(9)], now=t + 10)                # a new hole 7..8
    store.ingest_batch([p(7)], now=t + 11)                # partly filled in time: only 8 stays missing
    assert [(h["missing_from"], h["missing_to"]) for h in store.check_gaps(now=t + 15)] == [(8, 8)]
    rep = store.ingest_batch([p(3), p(3), p(8)], now=t + 20)   # late fills (3 twice: one duplicate)
    assert (rep["messages"], rep["duplicates"], rep["late_fills"]) == (2, 1, 2)
    gaps = store.gaps()
    assert [(g["missing_from"], g["filled_ts"] is not None) for g in gaps] == [(3, True), (8, True)]
    c = store.counters()
    assert (c["seq_gaps_total"], c["late_fills_total"], c["messages_total"], c["duplicates_total"]) == (2, 2, 9, 1)
    rep = store.ingest_batch([p(s) for s in range(1, 10)], now=t + 30)   # everything again: all duplicates
    assert (rep["messages"], rep["duplicates"]) == (0, 9)
    assert store.device(FLEET, "d1")["last_seq"] == 9
    store.close()


def test_store_pending_hole_survives_restart(tmp_path):
    path = tmp_path / "f.sqlite"
    p = lambda s: msg("d1", "jobs/j/progress", env("d1", "b1", s, job="j", epoch=s))  # noqa: E731
    with FleetStore(path, reorder_window_s=0.0) as store:
        store.ingest_batch([p(1), p(3)])
    with FleetStore(path, reorder_window_s=0.0) as store:
        assert [(h["missing_from"], h["missing_to"]) for h in store.check_gaps(now=time.time() + 1)] == [(2, 2)]
        assert store.ingest_batch([p(3)])["duplicates"] == 1


def test_store_retained_replay_opens_no_hole(tmp_path):
    store = FleetStore(tmp_path / "f.sqlite", reorder_window_s=0.0)
    store.ingest_batch([msg("d1", "status", env("d1", "b1", 1, state="online", reason="birth"), True),
                        msg("d1", "job", env("d1", "b1", 40, job="j", status="running"), True)])
    assert store.check_gaps(now=time.time() + 10) == []   # the retained job (seq 40) says nothing of loss
    store.close()


def test_store_wills_and_state_inference(tmp_path):
    store = FleetStore(tmp_path / "f.sqlite")
    t0 = 1_700_000_000_000
    st = lambda b, s, ts, **kw: msg("d1", "status", env("d1", b, s, ts, **kw), True)  # noqa: E731
    store.ingest_batch([st("b1", 1, t0 + 10, state="online", reason="birth"),
                        st("b2", 1, t0 + 60_000, state="online", reason="birth")])
    d = store.device(FLEET, "d1")
    assert (d["boot"], d["state"]) == ("b2", "online")
    # The old boot's Will arrives late (crash + quick restart): ignored.
    rep = store.ingest_batch([msg("d1", "status", will_body("d1", "b1", t0), True)])
    assert (rep["messages"], rep["stale_wills"]) == (1, 1)
    assert store.device(FLEET, "d1")["state"] == "online"
    # An old boot's snapshot replayed late does not overwrite the current boot's state.
    store.ingest_batch([st("b1", 2, t0 + 20, state="offline", reason="shutdown")])
    assert store.device(FLEET, "d1")["state"] == "online"
    # The current boot's Will marks it offline; its retained replay is a duplicate.
    store.ingest_batch([msg("d1", "status", will_body("d1", "b2", t0 + 59_990), False)])
    d = store.device(FLEET, "d1")
    assert (d["state"], d["reason"]) == ("offline", "lwt")
    assert store.ingest_batch([msg("d1", "status", will_body("d1", "b2", t0 + 59_990), True)])["duplicates"] == 1
    # A live message of that boot published after the Will: the device reconnected.
    store.ingest_batch([msg("d1", "jobs/j/progress", env("d1", "b2", 2, t0 + 70_000, job="j", epoch=1))])
    d = store.device(FLEET, "d1")
    assert (d["state"], d["reason"]) == ("online", "reconnect")
    # ...and the same Will firing again (connection lost again) counts.
    assert store.ingest_batch([msg("d1", "status", will_body("d1", "b2", t0 + 59_990))])["messages"] == 1
    assert store.device(FLEET, "d1")["state"] == "offline"
    # A newer boot brings it back even before its status arrives.
    store.ingest_batch([msg("d1", "meta", env("d1", "b3", 2, t0 + 90_000, active_version="v0002"), True)])
    d = store.device(FLEET, "d1")
    assert (d["boot"], d["state"], d["reason"], d["active_version"]) == ("b3", "online", "new_boot", "v0002")
    store.close()


def test_store_snapshots_keep_newest_and_replies(tmp_path):
    store = FleetStore(tmp_path / "f.sqlite", max_replies=3)
    store.ingest_batch([msg("d1", "meta", env("d1", "b1", 5, active_version="v0002"), True),
                        msg("d1", "meta", env("d1", "b1", 3, active_version="v0001"), True),   # older: ignored
                        msg("d1", "meta", {"thinned": True, **env("d1", "b1", 6)})])            # stub: ignored
    assert store.device(FLEET, "d1")["active_version"] == "v0002"
    store.ingest_batch([msg("d1", "cmdres/h", env("d1", "b1", 10 + i, cmd_id=f"c{i}", status="done", code="ok"))
                        for i in range(5)])
    assert store.reply("c4")["status"] == "done" and store.reply("c0") is None   # only the newest 3 kept
    store.close()


def test_store_one_transaction_per_batch(tmp_path):
    store = FleetStore(tmp_path / "f.sqlite")
    before = store.transactions
    batch = [msg(f"d{i % 5}", "jobs/j/progress", env(f"d{i % 5}", "b1", i // 5 + 1, job="j", epoch=i // 5 + 1))
             for i in range(5000)]
    rep = store.ingest_batch(batch)
    assert store.transactions - before == 1
    assert rep["messages"] == 5000 and store.counters()["messages_total"] == 5000
    assert len(store.job(FLEET, "d3", "j", limit=1000)["progress"]) == 1000
    store.close()


# -- against Mosquitto --------------------------------------------------------------------------------------

@pytest.mark.needs("mosquitto")
@pytest.mark.parametrize("fast_receive", [True, False], ids=["fast-receive", "stock-paho"])
def test_collector_ingests_a_simulated_fleet(tmp_path, broker, running, fast_receive):
    store = FleetStore(tmp_path / "fleet.sqlite")
    col = running(store, fast_receive=fast_receive)
    assert col.client.fast is fast_receive
    accs = {"dev-001": (0.50, 0.90), "dev-002": (0.60, 0.80), "dev-003": (0.70, 0.70)}
    devs = [SimDevice(broker, name) for name in accs]
    for d in devs:
        simulate_training(d, f"j-{d.device}", *accs[d.device])
    # one device is still training, one device message is malformed, one is a host->device command
    busy = SimDevice(broker, "dev-004")
    busy.publish("status", {"state": "online", "reason": "birth"}, retain=True)
    busy.publish("job", {"job": "j-busy", "status": "running"}, retain=True)
    busy.publish("jobs/j-busy/progress", {"job": "j-busy", "epoch": 1, "loss": 2.0, "metrics": {}})
    busy.raw("jobs/j-busy/progress", b"not json")
    busy.raw("cmd/ping", json.dumps({"cmd_id": "x", "args": {}}).encode())
    busy.sync()
    total = 3 * 9 + 3
    assert wait_for(lambda: store.counters()["messages_total"] >= total), store.counters()
    assert col.flush(10)
    c = store.counters()
    assert (c["messages_total"], c["duplicates_total"], c["malformed_total"], c["seq_gaps_total"]) == (total, 0, 1, 0)
    assert c["ignored_total"] == 1   # we also see cmd/… on the fleet subscription, and ignore it
    by_id = {d["device"]: d for d in store.devices()}
    assert sorted(by_id) == ["dev-001", "dev-002", "dev-003", "dev-004"]
    d1 = by_id["dev-001"]
    assert (d1["fleet"], d1["state"], d1["active_version"], d1["last_seq"]) == (FLEET, "online", "v0002", 9)
    assert d1["job"]["id"] == "j-dev-001" and d1["job"]["status"] == "succeeded"
    assert d1["metrics"]["epoch"] == 3 and d1["meta"]["models"] == ["v0001", "v0002"]
    assert d1["last_seen"] > 0 and d1["boot"] == devs[0].boot
    assert by_id["dev-004"]["job"] == {**by_id["dev-004"]["job"], "id": "j-busy", "status": "running"}
    job = store.job(FLEET, "dev-002", "j-dev-002")
    assert [p["epoch"] for p in job["progress"]] == [1, 2, 3]
    assert job["result"]["final"]["accuracy"] == 0.80 and job["status"] == "succeeded"
    assert store.job(FLEET, "dev-002", "nope") is None
    s = store.fleet_summary()
    assert (s["devices"], s["online"], s["jobs_running"], s["promoted_devices"]) == (4, 4, 1, 3)
    assert s["accuracy_before"] == pytest.approx(0.60) and s["accuracy_after"] == pytest.approx(0.80)
    for d in [*devs, busy]:
        d.close()


@pytest.mark.needs("mosquitto")
def test_duplicates_are_counted_and_ignored(tmp_path, broker, running):
    store = FleetStore(tmp_path / "fleet.sqlite")
    running(store)
    dev = SimDevice(broker, "dev-001")
    body = dev.publish("jobs/j1/progress", {"job": "j1", "epoch": 1, "loss": 0.5})
    dev.raw("jobs/j1/progress", json.dumps({**body, "hist": True}).encode())   # outbox re-publish after a lost ack
    dev.raw("jobs/j1/progress", json.dumps(body).encode())
    dev.publish("jobs/j1/result", result_body("j1", 0.5, 0.7))
    dev.sync()
    assert wait_for(lambda: sum(store.counters()[k] for k in ("messages_total", "duplicates_total")) >= 4)
    c = store.counters()
    assert (c["messages_total"], c["duplicates_total"]) == (2, 2)
    assert len(store.job(FLEET, "dev-001", "j1")["progress"]) == 1
    dev.close()


@pytest.mark.needs("mosquitto")
def test_seq_hole_counted_after_window_and_resync_requested(tmp_path, broker, running):
    store = FleetStore(tmp_path / "fleet.sqlite", reorder_window_s=0.6)
    col = running(store, client_id="fleet-host-1")
    dev = SimDevice(broker, "dev-007")
    for s in (1, 2, 4):
        dev.publish("jobs/j/progress", {"job": "j", "epoch": s, "loss": 1.0}, seq=s)
    dev.sync()
    assert wait_for(lambda: store.counters()["messages_total"] == 3)
    assert store.counters()["seq_gaps_total"] == 0 and not dev.commands   # still inside the reorder window
    assert wait_for(lambda: len(dev.commands) >= 1, 10), "no resync command arrived"
    topic, body, response_topic, corr = dev.commands[0]
    assert topic == "ftedge/v1/demo/dev-007/cmd/resync"
    assert body["cmd_id"].startswith("resync-") and body["args"] == {}
    assert response_topic == "ftedge/v1/demo/dev-007/cmdres/fleet-host-1" and corr == body["cmd_id"].encode()
    assert store.counters()["seq_gaps_total"] == 1
    assert [(g["missing_from"], g["missing_to"], g["filled_ts"]) for g in store.gaps()] == [(3, 3, None)]
    # the device's reply (auto_reply) is stored for `fleet send`-style lookups
    assert wait_for(lambda: store.reply(body["cmd_id"]) is not None)
    # the missing message arrives late: the hole is marked filled, the counter stays
    dev.publish("jobs/j/progress", {"job": "j", "epoch": 3, "loss": 1.0}, seq=3)
    dev.sync()
    assert wait_for(lambda: store.gaps()[0]["filled_ts"] is not None)
    c = store.counters()
    assert (c["seq_gaps_total"], c["late_fills_total"]) == (1, 1)
    time.sleep(1.0)
    assert len(dev.commands) == 1 and col.stats["resyncs"] == 1   # no further resync
    dev.close()


@pytest.mark.needs("mosquitto")
def test_stale_will_ignored_current_will_marks_offline(tmp_path, broker, running):
    store = FleetStore(tmp_path / "fleet.sqlite")
    running(store)
    t0 = int(time.time() * 1000)
    old = SimDevice(broker, "dev-001", t0=t0 - 60_000)
    old.publish("status", {"state": "online", "reason": "birth"}, retain=True)
    old.sync()
    old.client.loop_stop()      # the old boot "crashes" (its socket stays open: the broker has not noticed yet)
    new = SimDevice(broker, "dev-001", t0=t0)
    new.publish("status", {"state": "online", "reason": "birth"}, retain=True)
    new.sync()
    assert wait_for(lambda: (store.device(FLEET, "dev-001") or {}).get("boot") == new.boot)
    old.client.socket().close()  # now the broker publishes the old boot's Will, after the new birth
    assert wait_for(lambda: store.counters()["stale_wills_total"] == 1)
    d = store.device(FLEET, "dev-001")
    assert (d["state"], d["reason"], d["boot"]) == ("online", "birth", new.boot)
    new.kill()                   # the current boot's Will: offline
    assert wait_for(lambda: store.device(FLEET, "dev-001")["state"] == "offline")
    d = store.device(FLEET, "dev-001")
    assert (d["reason"], d["boot"]) == ("lwt", new.boot)
    assert store.counters()["stale_wills_total"] == 1


@pytest.mark.needs("mosquitto")
def test_restart_replays_retained_without_double_counting(tmp_path, broker, running):
    store = FleetStore(tmp_path / "fleet.sqlite")
    col = running(store, client_id="collector-a")
    devs = [SimDevice(broker, f"dev-{i}") for i in range(3)]
    for d in devs:
        simulate_training(d, "j1", 0.5, 0.75)
    assert wait_for(lambda: store.counters()["messages_total"] == 27)
    col.stop()
    # while the collector is down: its persistent session queues new messages
    for d in devs:
        d.publish("jobs/j2/progress", {"job": "j2", "epoch": 1, "loss": 0.9})
        d.sync()
    col2 = running(store, client_id="collector-a")   # same session, same database
    # on subscribe the broker replays status, meta and job (retained): duplicates by (boot, seq)
    assert wait_for(lambda: store.counters()["duplicates_total"] >= 9 and store.counters()["messages_total"] >= 30)
    assert col2.flush(10)
    time.sleep(0.3)
    c = store.counters()
    assert (c["messages_total"], c["duplicates_total"], c["seq_gaps_total"]) == (30, 9, 0)
    assert store.job(FLEET, "dev-1", "j2")["progress"][0]["epoch"] == 1
    # a collector with a fresh database learns the retained state (one unique message per retained topic)
    fresh = FleetStore(tmp_path / "fresh.sqlite")
    running(fresh)
    assert wait_for(lambda: fresh.counters()["messages_total"] >= 9)
    time.sleep(0.3)
    assert fresh.counters()["messages_total"] == 9 and fresh.counters()["seq_gaps_total"] == 0
    d = fresh.device(FLEET, "dev-2")
    assert (d["state"], d["active_version"], d["job"]["status"]) == ("online", "v0002", "succeeded")
    for d in devs:
        d.close()


def _publish_stream(devs: list[SimDevice], n: int) -> None:
    for i in range(n):
        d = devs[i % len(devs)]
        d.publish("jobs/j/progress", {"job": "j", "epoch": d.seq + 1, "loss": 0.1, "metrics": {"val_accuracy": 0.5}})
    for d in devs:
        d.sync(60)


@pytest.mark.needs("mosquitto")
def test_batched_writes_5000_messages(tmp_path, broker, running):
    store = FleetStore(tmp_path / "fleet.sqlite")
    col = running(store)
    devs = [SimDevice(broker, f"dev-{i:03d}") for i in range(5)]
    before = store.transactions
    _publish_stream(devs, 5000)
    assert wait_for(lambda: store.counters()["messages_total"] >= 5000, 60), store.counters()
    assert col.flush(10)
    c = store.counters()
    assert (c["messages_total"], c["duplicates_total"], c["seq_gaps_total"], c["malformed_total"]) == (5000, 0, 0, 0)
    assert col.stats["processed"] == 5000
    transactions = store.transactions - before
    assert transactions <= 5000 // 10, f"{transactions} transactions for 5000 messages: not batched"
    assert all(d["last_seq"] == 1000 for d in store.devices())
    print(f"\n5000 messages in {transactions} transactions ({col.stats['batches']} batches)")
    for d in devs:
        d.close()


@pytest.mark.needs("mosquitto")
def test_ingest_rate_10000_messages(tmp_path, broker, running):
    store = FleetStore(tmp_path / "fleet.sqlite")
    col = running(store)
    devs = [SimDevice(broker, f"dev-{i:03d}") for i in range(10)]
    t = time.perf_counter()
    _publish_stream(devs, 10_000)
    published = time.perf_counter() - t
    assert wait_for(lambda: store.counters()["messages_total"] >= 10_000, 120), store.counters()
    elapsed = time.perf_counter() - t
    assert store.counters()["messages_total"] == 10_000
    # the store alone, same kind of traffic, batches of 500
    direct = FleetStore(tmp_path / "direct.sqlite")
    batch = [msg(f"dev-{i % 10:03d}", "jobs/j/progress",
                 env(f"dev-{i % 10:03d}", "b1", i // 10 + 1, job="j", epoch=i // 10 + 1, loss=0.1,
                     metrics={"val_accuracy": 0.5})) for i in range(10_000)]
    t = time.perf_counter()
    for k in range(0, 10_000, 500):
        direct.ingest_batch(batch[k:k + 500])
    store_only = time.perf_counter() - t
    assert direct.counters()["messages_total"] == 10_000
    print(f"\ningest rate, 10,000 messages: end to end (publish -> Mosquitto -> collector -> SQLite) "
          f"{10_000 / elapsed:,.0f} msg/s ({elapsed:.2f} s; publishing took {published:.2f} s; "
          f"{col.stats['batches']} batches); FleetStore.ingest_batch alone {10_000 / store_only:,.0f} msg/s")
    direct.close()
    for d in devs:
        d.close()


@pytest.mark.needs("mosquitto")
def test_shared_subscription_splits_the_stream(tmp_path, broker, running):
    stores = [FleetStore(tmp_path / f"c{i}.sqlite") for i in range(2)]
    cols = [running(s, share="g1", client_id=f"collector-g1-{i}") for i, s in enumerate(stores)]
    assert [c.subscriptions[0] for c in cols] == ["$share/g1/ftedge/v1/+/+/#"] * 2
    devs = [SimDevice(broker, f"dev-{i}") for i in range(2)]
    _publish_stream(devs, 200)
    assert wait_for(lambda: sum(s.counters()["messages_total"] for s in stores) >= 200)
    for c in cols:
        assert c.flush(10)
    time.sleep(0.3)
    counts = [s.counters()["messages_total"] for s in stores]
    assert sum(counts) == 200 and all(0 < n < 200 for n in counts), counts
    seen = set()
    for s in stores:
        for d in s.devices():
            job = s.job(FLEET, d["device"], "j")
            seen |= {(d["device"], p["seq"]) for p in job["progress"]}
    assert seen == {(d.device, q) for d in devs for q in range(1, 101)}
    assert all(s.counters()["seq_gaps_total"] == 0 for s in stores) and not any(d.commands for d in devs)
    # send() through one member of the group still sees its reply (its own cmdres subscription)
    reply = cols[0].send(FLEET, "dev-1", "ping", {}, timeout=10)
    assert reply["status"] == "done" and reply["detail"] == "ping"
    for d in devs:
        d.close()


@pytest.mark.needs("mosquitto")
def test_send_request_response(tmp_path, broker, running):
    store = FleetStore(tmp_path / "fleet.sqlite")
    col = running(store, client_id="ops-console")
    dev = SimDevice(broker, "dev-001")
    reply = col.send(FLEET, "dev-001", "status", {"verbose": True}, timeout=10)
    assert reply["status"] == "done" and reply["detail"] == "status"
    topic, body, rt, corr = dev.commands[-1]
    assert topic.endswith("/cmd/status") and body["args"] == {"verbose": True}
    assert rt == "ftedge/v1/demo/dev-001/cmdres/ops-console" and corr == reply["cmd_id"].encode()
    assert store.reply(reply["cmd_id"]) == reply
    with pytest.raises(TimeoutError):
        col.send(FLEET, "no-such-device", "ping", timeout=1.0)
    with pytest.raises(CollectorError):
        col.send(FLEET, "dev/001", "ping", timeout=1.0)
    # a one-shot sender that does not listen to the fleet (e.g. `ftedge fleet send`)
    quiet = running(FleetStore(tmp_path / "cli.sqlite"), listen=False, client_id="cli-once")
    assert quiet.send(FLEET, "dev-001", "ping", timeout=10)["status"] == "done"
    assert quiet.store.counters()["messages_total"] == 1
    dev.close()


def test_settings_from_url():
    s = CollectorSettings.from_url("mqtts://broker.example:8884", client_id="c1")
    assert (s.host, s.port, s.tls, s.client_id) == ("broker.example", 8884, True, "c1")
    assert CollectorSettings.from_url("mqtt://127.0.0.1").port == 1883
    for bad in ("127.0.0.1:1883", "http://x", "mqtt://u:p@x", "mqtt://x/path"):
        with pytest.raises(CollectorError):
            CollectorSettings.from_url(bad)
    with pytest.raises(CollectorError):
        Collector(FleetStore(":memory:"), share="bad/group")


def test_a_poison_message_does_not_sink_its_batch(tmp_path):
    class Fragile(FleetStore):
        def ingest_batch(self, msgs, now=None):
            msgs = list(msgs)
            if any(t.endswith("/poison") for t, _, _ in msgs):
                raise RuntimeError("boom")
            return super().ingest_batch(msgs, now)

    store = Fragile(tmp_path / "f.sqlite")
    col = Collector(store, client_id="unit")   # not started: feed the writer's batch step directly
    batch = [msg("d1", "jobs/j/progress", env("d1", "b1", s, job="j", epoch=s)) for s in (1, 2)]
    col._ingest([batch[0], ("ftedge/v1/demo/d1/poison", b"{}", False), batch[1]])
    assert store.counters()["messages_total"] == 2 and col.stats["errors"] == 1
    assert col.stats["processed"] == 3
    store.close()


# -- the collector's receive path ------------------------------------------------------------------------------

def _publish_packet(topic: bytes, payload: bytes, qos: int = 1, mid: int = 1, retain: bool = False,
                    props: bytes = b"") -> bytes:
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    body += varint(len(props)) + props + payload
    return bytes([0x30 | qos << 1 | int(retain)]) + varint(len(body)) + body


class _FakeSocket:
    """Hands out pre-cut chunks of a byte stream, as a non-blocking socket would."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)

    def recv(self, n: int) -> bytes:
        if not self.chunks:
            raise BlockingIOError
        head = self.chunks.pop(0)
        if len(head) > n:
            self.chunks.insert(0, head[n:])
            head = head[:n]
        return head


def test_fast_receive_path_decodes_packets_split_anywhere():
    import random

    from ftedge.fleet.ingest import _FastClient

    got: list[tuple[int, list, list]] = []
    c = _FastClient(mqtt.CallbackAPIVersion.VERSION2, client_id="unit", protocol=mqtt.MQTTv5,
                    sink=lambda g, m, ids: got.append((g, m, ids)))
    assert c.fast, "the installed paho lacks the internals the fast receive path needs"
    big = b"x" * 300_000                                      # 3-byte remaining length, more than one recv
    expected = [("ftedge/v1/f/d1/status", b'{"a":1}', True, 7), ("ftedge/v1/f/d1/meta", b"", False, 0),
                ("ftedge/v1/f/d2/jobs/j/progress", big, False, 65535), (b"ftedge/v1/f/\xff/x", b"{}", False, 9)]
    stream = b"".join(_publish_packet(t if isinstance(t, bytes) else t.encode(), p, qos=1 if mid else 0,
                                      mid=mid, retain=r, props=b"\x03\x00\x10application/json" if mid == 7 else b"")
                      for t, p, r, mid in expected)
    rng = random.Random(1)
    for trial in range(30):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(0, 40))) if trial else []
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
        got.clear()
        c._sock = _FakeSocket(chunks)
        while c._sock.chunks:
            assert c.loop_read() == mqtt.MQTT_ERR_SUCCESS
        msgs = [m for _, ms, _ in got for m in ms]
        ids = [mid for _, _, mids in got for mid in mids]
        assert [(t, p, r) for t, p, r in msgs] == [(t, p, r) for t, p, r, _ in expected]
        assert ids == [7, 65535, 9]                         # QoS 1 packet ids, in order; QoS 0 has none
        assert not c._rbuf
    # a PUBLISH whose topic length runs past its packet is a protocol error (the connection is dropped)
    bad = b"\x32\x05\x00\x09abc" + _publish_packet(b"ftedge/v1/f/d1/meta", b"{}")
    lost: list[int] = []
    c._loop_rc_handle = lambda rc: lost.append(rc) or rc  # type: ignore[method-assign]
    got.clear()
    c._sock = _FakeSocket([bad])
    assert c.loop_read() == mqtt.MQTT_ERR_PROTOCOL and lost == [mqtt.MQTT_ERR_PROTOCOL] and not got
    c._sock = None


def test_fast_receive_path_acks_only_on_its_connection():
    from ftedge.fleet.ingest import _FastClient

    c = _FastClient(mqtt.CallbackAPIVersion.VERSION2, client_id="unit", protocol=mqtt.MQTTv5, sink=print)
    queued: list[bytes] = []
    c._packet_queue = lambda cmd, packet, mid, qos, info=None: queued.append(bytes(packet))  # type: ignore
    assert not c.ack_batch(0, [1])                           # not connected yet
    c.session_up()
    assert c.ack_batch(1, [1, 258]) and queued == [b"\x40\x02\x00\x01\x40\x02\x01\x02"]
    c.session_down()
    c.session_up()
    assert not c.ack_batch(1, [3]) and len(queued) == 1            # from the previous connection: dropped


@pytest.mark.needs("mosquitto")
@pytest.mark.parametrize("fast_receive", [True, False], ids=["fast-receive", "stock-paho"])
def test_unacknowledged_messages_are_redelivered_after_a_crash(tmp_path, broker, running, fast_receive):
    """Messages are acknowledged after commit, on the fast and the stock paho receive path alike: a collector
    that dies before committing loses nothing."""
    release = threading.Event()

    class Stuck(FleetStore):
        def ingest_batch(self, msgs, now=None):
            release.wait(30)           # the writer never gets to commit (the process "dies" meanwhile)
            return {}

    stuck = Stuck(tmp_path / "stuck.sqlite")
    col = Collector(stuck, CollectorSettings(host="127.0.0.1", port=broker.port), client_id="collector-crash",
                    gap_check_s=0.1, fast_receive=fast_receive).start()
    assert col.client.fast is fast_receive
    assert col.wait_connected(10)
    dev = SimDevice(broker, "dev-1")
    for e in range(1, 51):
        dev.publish("jobs/j/progress", {"job": "j", "epoch": e, "loss": 1.0 / e})
    dev.sync()
    assert wait_for(lambda: col.stats["received"] == 50)
    col.client.loop_stop()             # crash: no DISCONNECT, no PUBACK for anything received
    col.client.socket().close()
    col._closing = True
    store = FleetStore(tmp_path / "fleet.sqlite")
    col2 = running(store, client_id="collector-crash")   # the same persistent session
    assert wait_for(lambda: store.counters()["messages_total"] >= 50), store.counters()
    assert col2.flush(10)
    c = store.counters()
    assert (c["messages_total"], c["seq_gaps_total"]) == (50, 0)
    assert [p["epoch"] for p in store.job(FLEET, "dev-1", "j")["progress"]] == list(range(1, 51))
    release.set()
    dev.close()
