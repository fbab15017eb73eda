"""Issue 12, collector side: bad or hostile device messages cannot break, bloat or fool the collector.

Devices are plain paho clients (``SimDevice``) publishing through a real Mosquitto into a real collector
and SQLite file; the CLI runs in-process (``main``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import urllib.error
import urllib.request
import uuid

import pytest
from ftedge.fleet.dashboard import dashboard_fragment, dashboard_page
from ftedge.fleet.http import FleetHTTPServer
from ftedge.fleet.ingest import CollectorSettings
from ftedge.fleet.metrics import prometheus_text
from ftedge.fleet.schema import _SCHEMA
from ftedge.fleet.store import FleetStore
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ftedge.cli import main
from tests.helpers.fleet_sim import (
    FLEET,
    SimDevice,
    env,
    msg,
    simulate_training,
    wait_for,
)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _all_views_work(store: FleetStore, capsys, db) -> str:
    """/, /fragment, /metrics and `fleet status` (table and JSON) all answer; returns the fragment."""
    srv = FleetHTTPServer(store, "127.0.0.1", 0).start()
    try:
        for path in ("/", "/fragment", "/metrics", "/api/devices"):
            code, body = _get(srv.url + path)
            assert code == 200, (path, body[:500])
        frag = _get(srv.url + "/fragment")[1]
        metrics = _get(srv.url + "/metrics")[1]
    finally:
        srv.stop()
    assert 'ftedge_job_loss{device="dev-good",fleet="demo"}' in metrics
    capsys.readouterr()
    assert main(["fleet", "status", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "dev-good" in out
    assert main(["fleet", "status", "--db", str(db), "--json"]) == 0
    assert "dev-good" in capsys.readouterr().out
    return frag


# -- finding 9: one bad device message breaks the collector ---------------------------------------------------

@pytest.mark.needs("mosquitto")
def test_bad_body_fields_are_counted_as_malformed_and_every_view_still_works(tmp_path, broker, running, capsys):
    db = tmp_path / "fleet.sqlite"
    store = FleetStore(db)
    col = running(store)
    good = SimDevice(broker, "dev-good")
    simulate_training(good, "jg", 0.5, 0.9)
    bad = SimDevice(broker, "dev-bad")
    bad.publish("status", {"state": "online", "reason": "birth"}, retain=True)
    bad.publish("job", {"job": "jb", "status": "running"}, retain=True)
    bad.publish("jobs/jb/progress", {"job": "jb", "epoch": 1, "loss": "abc"})
    bad.publish("jobs/jb/progress", {"job": "jb", "epoch": 2, "loss": 0.5, "metrics": "x"})
    bad.publish("jobs/jb/result", {"job": "jb", "status": "succeeded", "promoted": True, "baseline": [1],
                                   "final": {"accuracy": 0.9}, "duration_s": 1.0})
    bad.publish("jobs/jb/progress", {"job": "jb", "epoch": 3, "loss": 10**40})
    bad.publish("meta", {"active_version": {"nested": "object"}, "models": "v1"}, retain=True)
    bad.publish("job", {"job": ["not", "a", "string"], "status": "running"}, retain=True)
    bad.sync()
    assert wait_for(lambda: store.counters()["malformed_total"] >= 6 and col.flush(1)), store.counters()
    c = store.counters()
    assert c["malformed_total"] == 6, c
    assert c["messages_total"] == 9 + 2, "the good device's 9 and the bad one's status and first job"
    assert store.job(FLEET, "dev-bad", "jb")["result"] is None and store.job(FLEET, "dev-bad", "jb")["progress"] == []
    (d,) = store.devices(FLEET)[:1]
    assert d["device"] == "dev-bad" and d["state"] == "online" and d["job"]["id"] == "jb"
    frag = _all_views_work(store, capsys, db)
    assert 'data-device="dev-good"' in frag and 'data-device="dev-bad"' in frag
    good.close()
    bad.close()


def test_a_device_whose_stored_row_cannot_render_gets_an_error_cell(tmp_path, capsys):
    """Rows stored before validation existed (or edited by hand) must not take a page down."""
    db = tmp_path / "fleet.sqlite"
    store = FleetStore(db)
    batch = [msg(d, "status", env(d, "b1", 1, state="online", reason="birth")) for d in ("dev-bad", "dev-good")]
    batch += [msg(d, "job", env(d, "b1", 2, job="j1", status="running")) for d in ("dev-bad", "dev-good")]
    batch += [msg(d, "jobs/j1/progress", env(d, "b1", 3, job="j1", epoch=1, loss=0.25,
                                             metrics={"val_accuracy": 0.75})) for d in ("dev-bad", "dev-good")]
    batch.append(msg("dev-good", "jobs/j1/result", env("dev-good", "b1", 4, job="j1", status="succeeded",
                                                       promoted=True, baseline={"accuracy": 0.5},
                                                       final={"accuracy": 0.75}, duration_s=1.0)))
    store.ingest_batch(batch)
    store.close()
    raw = sqlite3.connect(db)
    raw.execute("UPDATE devices SET metrics_json = ?, meta_json = ?, job_json = ? WHERE device = 'dev-bad'",
                ('{"epoch": 1, "loss": "abc", "metrics": "x"}', '{"active_version": 3, "models": 7}', '[1]'))
    raw.execute("UPDATE devices SET last_seen_ms = 'soon' WHERE device = 'dev-bad'")   # breaks its table row
    raw.execute("INSERT INTO results (fleet, device, job, ts, body_json) VALUES ('demo', 'dev-bad', 'j1', 5, ?)",
                ('{"job": "j1", "status": "succeeded", "promoted": true, "baseline": [1], "final": "x"}',))
    raw.execute("UPDATE progress SET body_json = '{\"epoch\": 1, \"loss\": \"abc\", \"metrics\": \"x\"}'"
                " WHERE device = 'dev-bad'")
    raw.commit()
    raw.close()
    store = FleetStore(db)
    frag = dashboard_fragment(store)
    assert 'class="device error" data-device="dev-bad"' in frag
    assert "could not render this device" in frag
    assert 'data-device="dev-good"' in frag and "0.2500" in frag
    assert dashboard_page(store).startswith("<!doctype html>")
    dashboard_fragment(store, device="dev-bad")
    assert 'device="dev-good"' in prometheus_text(store).decode()
    frag2 = _all_views_work(store, capsys, db)
    assert 'data-device="dev-good"' in frag2
    store.close()


# -- finding 12 (collector side): maximum packet size, bodies not stored whole -----------------------------------

@pytest.mark.needs("mosquitto")
def test_oversized_bodies_are_not_stored_and_huge_packets_are_not_delivered(tmp_path, broker, running):
    assert CollectorSettings().max_packet_size == 256 * 1024
    store = FleetStore(tmp_path / "fleet.sqlite")
    col = running(store)
    dev = SimDevice(broker, "dev-001")
    dev.publish("status", {"state": "online", "reason": "birth"}, retain=True)
    dev.publish("jobs/j1/result", {"job": "j1", "status": "failed", "error": "e" * 100_000})   # < packet cap
    dev.publish("jobs/j2/result", {"job": "j2", "status": "failed", "error": "e" * 400_000})   # > packet cap
    dev.publish("jobs/j3/result", {"job": "j3", "status": "failed", "error": "short"})
    dev.sync()
    assert wait_for(lambda: store.job(FLEET, "dev-001", "j3") is not None)
    assert col.flush(5)
    assert store.job(FLEET, "dev-001", "j1") is None and store.job(FLEET, "dev-001", "j2") is None
    assert store.counters()["malformed_total"] == 1, "the 100 KB body counts as malformed"
    assert col.stats["received"] == 3, "the broker does not send the collector a packet over its maximum"
    assert col.connected.is_set()
    biggest = sqlite3.connect(tmp_path / "fleet.sqlite").execute(
        "SELECT MAX(LENGTH(body_json)) FROM results").fetchone()[0]
    assert biggest < 1000
    dev.close()


# -- finding 11: boot order follows the collector's clock, not the device's -------------------------------------

@pytest.mark.needs("mosquitto")
def test_a_boot_with_a_1970_clock_after_a_real_one_is_online(tmp_path, broker, running):
    store = FleetStore(tmp_path / "fleet.sqlite")
    running(store)
    first = SimDevice(broker, "dev-001")   # a real clock
    first.publish("status", {"state": "online", "reason": "birth"}, retain=True)
    first.sync()
    assert wait_for(lambda: (store.device(FLEET, "dev-001") or {}).get("state") == "online")
    first.kill()   # the Will marks it offline
    assert wait_for(lambda: store.device(FLEET, "dev-001")["state"] == "offline")
    second = SimDevice(broker, "dev-001", t0=5_000)   # rebooted without an RTC: 1970
    second.publish("status", {"state": "online", "reason": "birth"}, retain=True)
    second.publish("meta", {"active_version": "v0007", "models": ["v0007"]}, retain=True)
    second.sync()
    assert wait_for(lambda: store.device(FLEET, "dev-001")["active_version"] == "v0007", 10), store.devices()
    d = store.device(FLEET, "dev-001")
    assert (d["state"], d["boot"]) == ("online", second.boot)
    second.close()


def test_a_stale_will_of_a_known_boot_stays_ignored_by_receive_order(tmp_path):
    store = FleetStore(tmp_path / "fleet.sqlite")
    t = 1_800_000_000.0
    store.ingest_batch([msg("d", "status", env("d", "old", 1, 9_000_000, state="online", reason="birth"))], now=t)
    store.ingest_batch([msg("d", "status", env("d", "new", 1, 5_000, state="online", reason="birth"))], now=t + 10)
    store.ingest_batch([msg("d", "status", {"state": "offline", "reason": "lwt",
                                            **env("d", "old", 0, 9_000_000), "will": True})], now=t + 11)
    d = store.device(FLEET, "d")
    assert (d["state"], d["boot"]) == ("online", "new")
    assert store.counters()["stale_wills_total"] == 1
    store.close()


# -- finding 13: `fleet train --wait` and a job that fails early -----------------------------------------------

class _FailingTrainer(SimDevice):
    """Accepts `train` and reports at once a failed result with ``duration_s: null`` (as the agent does when
    the job fails before training starts)."""

    def _on_command(self, client, userdata, m) -> None:
        body = json.loads(m.payload)
        rt = m.properties.ResponseTopic
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = m.properties.CorrelationData
        job = f"j-{uuid.uuid4().hex[:6]}"
        reply = self.envelope({"cmd_id": body["cmd_id"], "status": "accepted", "code": "queued", "detail": "",
                               "job": job})
        client.publish(rt, json.dumps(reply).encode(), qos=1, properties=props)
        result = self.envelope({"job": job, "status": "failed", "final": None, "baseline": None,
                                "promoted": False, "duration_s": None, "version": None, "skipped": 0,
                                "error": "cannot load the bundle: manifest.json is missing"})
        client.publish(self.root + f"jobs/{job}/result", json.dumps(result).encode(), qos=1)


@pytest.mark.needs("mosquitto")
def test_fleet_train_wait_reports_an_early_failure_without_a_traceback(broker, capsys):
    dev = _FailingTrainer(broker, "dev-001")
    code = main(["fleet", "train", "--devices", "dev-001", "--bundle", "kws", "--data", "user", "--wait",
                 "--broker", broker.url, "--timeout", "10", "--job-timeout", "30"])
    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    assert "Traceback" not in out + err and "TypeError" not in out + err
    assert "dev-001: job j-" in out and "failed" in out and "manifest.json is missing" in out
    assert "1 of 1 devices failed: dev-001" in err
    dev.close()


# -- finding 17 (collector side): a reply counts only from the device the command went to -----------------------

@pytest.mark.needs("mosquitto")
def test_a_reply_from_another_device_is_not_taken_as_the_answer(tmp_path, broker, running):
    store = FleetStore(tmp_path / "fleet.sqlite")
    col = running(store, client_id="ops")
    a = SimDevice(broker, "dev-a", auto_reply=False)
    b = SimDevice(broker, "dev-b", auto_reply=False)
    forged: list[str] = []

    def forge() -> None:   # dev-b answers dev-a's command on its own (ACL-allowed) reply topic
        assert wait_for(lambda: a.commands, 10)
        cmd_id = a.commands[-1][1]["cmd_id"]
        b.raw("cmdres/ops", json.dumps(b.envelope({"cmd_id": cmd_id, "status": "done", "code": "ok",
                                                   "detail": "forged"})).encode())
        b.sync()
        forged.append(cmd_id)

    t = threading.Thread(target=forge)
    t.start()
    with pytest.raises(TimeoutError):
        col.send(FLEET, "dev-a", "ping", timeout=4)
    t.join()
    assert col.flush(5)
    (cmd_id,) = forged
    assert store.reply(cmd_id, FLEET, "dev-a") is None
    assert store.reply(cmd_id, FLEET, "dev-b")["detail"] == "forged"   # kept as dev-b's, not dev-a's

    # the genuine answer is not overwritten by a forged one arriving later
    cmd_id = col.publish_command(FLEET, "dev-a", "ping")
    assert wait_for(lambda: len(a.commands) == 2)
    a.raw("cmdres/ops", json.dumps(a.envelope({"cmd_id": cmd_id, "status": "done", "code": "ok",
                                               "detail": "genuine"})).encode())
    a.sync()
    assert wait_for(lambda: store.reply(cmd_id, FLEET, "dev-a") is not None)
    b.raw("cmdres/ops", json.dumps(b.envelope({"cmd_id": cmd_id, "status": "error", "code": "x",
                                               "detail": "forged"})).encode())
    b.sync()
    assert wait_for(lambda: store.reply(cmd_id, FLEET, "dev-b") is not None)
    assert store.reply(cmd_id, FLEET, "dev-a")["detail"] == "genuine"
    a.close()
    b.close()


def test_replies_survive_the_schema_upgrade(tmp_path):
    """A version-1 database (replies keyed on cmd_id alone) is migrated, keeping its replies."""
    db = tmp_path / "fleet.sqlite"
    raw = sqlite3.connect(db)
    raw.executescript(_SCHEMA[0] + "INSERT INTO replies VALUES ('c1', 'demo', 'd', '{\"cmd_id\": \"c1\"}', 1);"
                      " PRAGMA user_version = 1;")
    raw.close()
    store = FleetStore(db)
    assert store.reply("c1", FLEET, "d") == {"cmd_id": "c1"}
    assert "rejected_total" in store.counters()
    store.close()


# -- finding 10 (collector side): devices per fleet are capped -------------------------------------------------

def test_devices_per_fleet_are_capped(tmp_path):
    store = FleetStore(tmp_path / "fleet.sqlite", max_devices_per_fleet=2)
    batch = [msg(d, "status", env(d, "b", 1, state="online", reason="birth")) for d in ("d1", "d2", "d3")]
    rep = store.ingest_batch(batch)
    assert rep["rejected"] == 1
    assert [d["device"] for d in store.devices()] == ["d1", "d2"]
    # known devices keep reporting; another fleet has its own cap
    rep = store.ingest_batch([msg("d1", "meta", env("d1", "b", 2, active_version="v2")),
                              msg("d4", "status", env("d4", "b", 1, state="online"), fleet="other"),
                              msg("d5", "status", env("d5", "b", 1, state="online"))])
    assert (rep["messages"], rep["rejected"]) == (2, 1)
    assert store.device(FLEET, "d1")["active_version"] == "v2"
    assert store.counters()["rejected_total"] == 2
    metrics = prometheus_text(store).decode()
    assert 'device="d3"' not in metrics and "ftedge_messages_rejected_total 2.0" in metrics
    store.close()
    store = FleetStore(tmp_path / "fleet.sqlite", max_devices_per_fleet=2)   # the count survives a restart
    assert store.ingest_batch([msg("d6", "status", env("d6", "b", 1, state="online"))])["rejected"] == 1
    store.close()



def test_an_envelope_ts_beyond_any_float_is_malformed_not_a_crash(tmp_path):
    store = FleetStore(tmp_path / "fleet.sqlite")
    huge = b'{"v":1,"ts":1' + b"0" * 400 + b',"dev":"d","boot":"b","seq":1,"hist":false}'
    rep = store.ingest_batch([("ftedge/v1/demo/d/status", huge, False),
                              msg("d", "status", env("d", "b", 2, state="online"))])
    assert (rep["malformed"], rep["messages"]) == (1, 1)
    store.close()


# -- issue 33, finding 15: one device's flood stays that device's ----------------------------------------------

def test_a_device_flooding_command_replies_evicts_only_its_own(tmp_path):
    """Replies are capped per device: 1,500 replies from one device (more than the old global cap of 1,000) leave
    the other devices' replies in place and keep only the flooder's newest."""
    from ftedge.fleet.store import MAX_REPLIES_PER_DEVICE

    store = FleetStore(tmp_path / "fleet.sqlite")
    store.ingest_batch([msg(d, "cmdres/h", env(d, "b", 1, cmd_id=f"ping-{d}", status="done", code="ok"))
                        for d in ("d1", "d2")])
    for k in range(3):
        store.ingest_batch([msg("flood", "cmdres/h", env("flood", "b", 1 + k * 500 + i, cmd_id=f"x{k * 500 + i}",
                                                         status="done", code="ok")) for i in range(500)])
    assert store.reply("ping-d1", FLEET, "d1")["status"] == "done"
    assert store.reply("ping-d2", FLEET, "d2")["status"] == "done"
    assert store.reply("x1499", FLEET, "flood") is not None and store.reply("x0", FLEET, "flood") is None
    db = sqlite3.connect(tmp_path / "fleet.sqlite")
    assert db.execute("SELECT COUNT(*) FROM replies WHERE device = 'flood'").fetchone()[0] == MAX_REPLIES_PER_DEVICE
    db.close()
    store.close()


def test_sparse_seqs_count_capped_holes_and_log_a_bounded_number_of_lines(tmp_path, caplog):
    """A device publishing every other seq (2, 4, …, 40,000): one gap check counts at most
    MAX_HOLES_PER_WRITE_OFF holes for it (the rest as one spanning hole whose arrived seqs count as filled) and
    logs at most HOLE_LOGS_PER_MINUTE WARNING lines; its per-device counts say it is the one with holes."""
    import logging

    from ftedge.fleet.sequence import MAX_HOLES_PER_WRITE_OFF
    from ftedge.fleet.store import HOLE_LOGS_PER_MINUTE

    store = FleetStore(tmp_path / "fleet.sqlite")
    t0 = 1_800_000_000.0
    store.ingest_batch([msg("ok", "status", env("ok", "b", 1, state="online"))], now=t0)
    for k in range(0, 20_000, 5_000):
        store.ingest_batch([msg("sparse", "jobs/j/progress", env("sparse", "b", 2 * (i + 1), job="j", epoch=i, loss=1.0))
                            for i in range(k, k + 5_000)], now=t0)
    with caplog.at_level(logging.WARNING, logger="ftedge.fleet.store"):
        counted = store.check_gaps(now=t0 + 60)
    assert len(counted) == MAX_HOLES_PER_WRITE_OFF == store.counters()["seq_gaps_total"]
    last = counted[-1]
    assert (last["missing_from"], last["missing_to"]) == (2 * MAX_HOLES_PER_WRITE_OFF - 1, 39_999)
    holes = [r for r in caplog.records if "seq hole" in r.getMessage()]
    assert len(holes) == HOLE_LOGS_PER_MINUTE
    # the spanning hole: an arrived seq inside it is a duplicate, a missing one a late fill
    rep = store.ingest_batch([msg("sparse", "jobs/j/progress", env("sparse", "b", 20_000, job="j", epoch=1, loss=1.0)),
                              msg("sparse", "jobs/j/progress", env("sparse", "b", 20_001, job="j", epoch=1, loss=1.0))],
                             now=t0 + 61)
    assert (rep["duplicates"], rep["late_fills"]) == (1, 1)
    devs = {d["device"]: d for d in store.devices()}
    assert (devs["sparse"]["messages"], devs["sparse"]["seq_gaps"], devs["sparse"]["late_fills"]) == \
        (20_001, MAX_HOLES_PER_WRITE_OFF, 1)
    assert (devs["ok"]["messages"], devs["ok"]["seq_gaps"]) == (1, 0)
    metrics = prometheus_text(store).decode()
    assert f'ftedge_device_seq_gaps_total{{device="sparse",fleet="{FLEET}"}} {float(MAX_HOLES_PER_WRITE_OFF)}' \
        in metrics
    # later checks of the same minute log nothing more one by one; the next minute sums up the minute's rest
    caplog.clear()
    store.ingest_batch([msg("sparse", "jobs/j/progress", env("sparse", "b", 40_000 + 2 * i, job="j", epoch=2,
                                                             loss=1.0)) for i in range(1, 50)], now=t0 + 62)
    with caplog.at_level(logging.WARNING, logger="ftedge.fleet.store"):
        assert len(store.check_gaps(now=t0 + 70)) == 49
        assert not [r for r in caplog.records if "seq hole" in r.getMessage()]
        store.check_gaps(now=t0 + 125)
    unlogged = MAX_HOLES_PER_WRITE_OFF - HOLE_LOGS_PER_MINUTE + 49
    assert [r.getMessage() for r in caplog.records if "not logged one by one" in r.getMessage()] == \
        [(f"{unlogged} more seq hole(s) counted in the last minute were not logged one by one "
          "(see ftedge_seq_gaps_total and the per-device seq_gaps)")]
    store.close()
