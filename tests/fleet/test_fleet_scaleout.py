"""Several collectors, one fleet (issue 17): the PostgreSQL store against the SQLite one, concurrent stores on one
database, and three real `ftedge fleet serve` processes in one MQTT share group on a real Mosquitto and a real
PostgreSQL — one SIGKILLed mid-ingest and restarted with its persistent session, then PostgreSQL restarted
mid-ingest — with every message committed exactly once, every hole counted once and no reply lost."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from ftedge.fleet.share_group import generate
from ftedge.fleet.store import FleetStore

from tests.helpers.fleet_sim import FLEET, SimDevice, env, msg, wait_for, will_body

SHARE_GROUP = generate()   # one group for every collector process of this module (`serve` refuses guessable names)






# -- the two stores tell the same story ----------------------------------------------------------------------

def _story(store: FleetStore, t0: float) -> None:
    """Holes, a late fill, duplicates, retained replays, a stale Will, a new boot, replies, a result."""
    ts = 1_700_000_000_000
    store.ingest_batch([msg("d1", "status", env("d1", "b1", 1, ts, state="online", reason="birth"), True),
                        msg("d1", "meta", env("d1", "b1", 2, ts, active_version="v0001"), True),
                        msg("d1", "jobs/j1/progress", env("d1", "b1", 3, ts, job="j1", epoch=1, loss=0.9)),
                        msg("d1", "jobs/j1/progress", env("d1", "b1", 6, ts, job="j1", epoch=4, loss=0.6)),
                        msg("d1", "jobs/j1/progress", env("d1", "b1", 6, ts, job="j1", epoch=4, loss=0.6)),
                        msg("d2", "status", env("d2", "x1", 1, ts, state="online", reason="birth"), True),
                        msg("d2", "cmdres/h", env("d2", "x1", 2, ts, cmd_id="c1", status="done"))], now=t0)
    store.check_gaps(now=t0 + 1)                      # within the window: nothing counted yet
    store.ingest_batch([msg("d1", "jobs/j1/progress", env("d1", "b1", 4, ts, job="j1", epoch=2, loss=0.8))],
                       now=t0 + 2)
    assert len(store.check_gaps(now=t0 + 10)) == 1    # 5 is missing for good
    store.ingest_batch([msg("d1", "jobs/j1/progress", env("d1", "b1", 5, ts, job="j1", epoch=3, loss=0.7)),
                        msg("d1", "jobs/j1/progress", env("d1", "b1", 5, ts, job="j1", epoch=3, loss=0.7)),
                        msg("d1", "status", env("d1", "b1", 1, ts, state="online", reason="birth"), True),
                        msg("d1", "jobs/j1/result", env("d1", "b1", 7, ts, job="j1", status="succeeded",
                                                        final={"accuracy": 0.9}, baseline={"accuracy": 0.5},
                                                        promoted=True))], now=t0 + 11)
    # d2 restarts: its new boot wins; the old boot's Will arriving late is stale
    store.ingest_batch([msg("d2", "status", env("d2", "x2", 1, ts + 5, state="online", reason="birth"), True)],
                       now=t0 + 12)
    store.ingest_batch([msg("d2", "status", will_body("d2", "x1", ts), True)], now=t0 + 13)


def _normalized(store: FleetStore) -> dict[str, Any]:
    gaps = [{k: v for k, v in g.items() if k not in ("ts", "filled_ts")} | {"closed": g["filled_ts"] is not None}
            for g in store.gaps()]
    devices = [{k: v for k, v in d.items() if k != "last_seen"} for d in store.devices()]
    return {"devices": devices, "counters": store.counters(), "gaps": gaps, "reply": store.reply("c1", FLEET, "d2"),
            "job": store.job(FLEET, "d1", "j1")}


def test_postgres_store_tells_the_same_story_as_sqlite(tmp_path, pg_url):
    t0 = time.time()
    with FleetStore(tmp_path / "fleet.sqlite", reorder_window_s=5) as lite, \
            FleetStore(pg_url, reorder_window_s=5) as pg:
        _story(lite, t0)
        _story(pg, t0)
        a, b = _normalized(lite), _normalized(pg)
    assert a == b
    c = b["counters"]
    assert (c["messages_total"], c["duplicates_total"], c["seq_gaps_total"], c["late_fills_total"],
            c["stale_wills_total"]) == (11, 3, 1, 1, 1)
    assert [(g["missing_from"], g["missing_to"], g["filled"], g["closed"]) for g in b["gaps"]] == [(5, 5, 1, True)]
    d2 = next(d for d in b["devices"] if d["device"] == "d2")
    assert (d2["boot"], d2["state"]) == ("x2", "online")


def test_schema_version_is_the_same_on_both_databases(tmp_path, pg_url, pg_server):
    from ftedge.fleet.schema import SCHEMA_VERSION

    FleetStore(tmp_path / "f.sqlite").close()
    FleetStore(pg_url).close()
    FleetStore(pg_url).close()   # a second collector opening it migrates nothing
    import sqlite3

    assert sqlite3.connect(tmp_path / "f.sqlite").execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db = pg_url.rsplit("/", 1)[1]
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(pg_server.port), "-U", "postgres", "-d", db, "-At",
                          "-c", "SELECT version FROM ftedge_schema"], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(SCHEMA_VERSION)]


def test_a_database_newer_than_this_ftedge_is_refused(pg_url):
    FleetStore(pg_url).close()
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("UPDATE ftedge_schema SET version = 99")
    from ftedge.errors import FleetStoreError

    with pytest.raises(FleetStoreError, match="newer than this ftedge"):
        FleetStore(pg_url)


# -- concurrent stores on one database ------------------------------------------------------------------------

def _fleet_messages(n_devices: int, n_seq: int, rng: random.Random) -> tuple[list[tuple], set, int]:
    """Messages of a simulated fleet with deliberate holes (never sent), duplicates and outbox replays."""
    out, skipped, unique = [], set(), 0
    ts = 1_700_000_000_000
    for i in range(n_devices):
        dev, boot = f"dev-{i:03d}", f"boot-{i}"
        out.append(msg(dev, "status", env(dev, boot, 1, ts, state="online", reason="birth"), True))
        unique += 1
        for seq in range(2, n_seq + 1):
            if rng.random() < 0.03 and seq < n_seq:
                skipped.add((dev, seq))
                continue
            body = env(dev, boot, seq, ts + seq, job="j", epoch=seq, loss=1.0 / seq)
            out.append(msg(dev, "jobs/j/progress", body))
            unique += 1
            if rng.random() < 0.05:
                out.append(msg(dev, "jobs/j/progress", body))                       # duplicate
            if rng.random() < 0.03:
                out.append(msg(dev, "jobs/j/progress", {**body, "hist": True}))     # outbox replay
    return out, skipped, unique


def _check_holes(store: FleetStore, skipped: set) -> None:
    """Every deliberately skipped seq lies in exactly one counted hole; every other seq of a hole arrived late."""
    by_dev: dict[str, list[dict]] = {}
    for g in store.gaps():
        by_dev.setdefault(g["device"], []).append(g)
    late = 0
    for dev, gaps in by_dev.items():
        covered: list[int] = []
        for g in gaps:
            seqs = range(g["missing_from"], g["missing_to"] + 1)
            covered += seqs
            assert g["filled"] == sum((dev, s) not in skipped for s in seqs), g
            late += g["filled"]
        assert len(covered) == len(set(covered)), f"{dev}: a seq counted in two holes: {gaps}"
    counted = {(g["device"], s) for gs in by_dev.values() for g in gs
               for s in range(g["missing_from"], g["missing_to"] + 1)}
    assert skipped <= counted, sorted(skipped - counted)[:10]
    assert store.counters()["seq_gaps_total"] == sum(len(g) for g in by_dev.values())
    assert store.counters()["late_fills_total"] == late


def test_concurrent_stores_count_every_message_once(pg_url):
    """Three stores (three collectors' worth) write one database at once from three threads, each getting a
    random share of every device's messages in random batches, judging holes concurrently."""
    rng = random.Random(7)
    messages, skipped, unique = _fleet_messages(40, 120, rng)
    shares: list[list[tuple]] = [[], [], []]
    for m in messages:
        shares[rng.randrange(3)].append(m)
    stores = [FleetStore(pg_url, reorder_window_s=0.3, instance=f"c{i}") for i in range(3)]
    errors: list[BaseException] = []

    def run(store: FleetStore, share: list[tuple], seed: int) -> None:
        r = random.Random(seed)
        try:
            i = 0
            while i < len(share):
                n = r.randint(1, 300)
                store.ingest_batch(share[i:i + n])
                i += n
                if r.random() < 0.3:
                    store.check_gaps()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s, sh, i)) for i, (s, sh) in enumerate(zip(stores, shares))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for s in stores:
        s.check_gaps(now=time.time() + 10)   # whatever is still open is missing for good
    store = stores[0]
    c = store.counters()
    assert c["messages_total"] == unique
    assert c["duplicates_total"] == len(messages) - unique
    _check_holes(store, skipped)
    assert len(store.devices()) == 40
    assert all(d["last_seq"] == 120 for d in store.devices())
    rows = sum(len(store.job(FLEET, d["device"], "j")["progress"]) for d in store.devices())
    assert rows == unique - 40
    for s in stores:
        s.close()


# -- three collector processes, a crash and a database restart --------------------------------------------------

def _serve(broker_port: int, pg_url: str, name: str, http_port: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ftedge", "fleet", "serve", "--broker", f"mqtt://127.0.0.1:{broker_port}",
         "--db", pg_url, "--share-group", SHARE_GROUP, "--client-id", name, "--http", f"127.0.0.1:{http_port}"],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        body = r.read()
        return json.loads(body) if r.headers.get_content_type() == "application/json" else body.decode()


def _up(port: int) -> bool:
    try:
        _get(f"http://127.0.0.1:{port}/api/devices?limit=1")
        return True
    except OSError:
        return False


def test_three_collectors_lose_nothing_when_one_is_killed_and_the_database_restarts(tmp_path, broker, pg_server,
                                                                                    pg_url):
    ports = [_free_port() for _ in range(3)]
    logs = [tmp_path / f"collector-{i}.log" for i in range(3)]
    procs = [_serve(broker.port, pg_url, f"collector-{i}", ports[i], logs[i]) for i in range(3)]
    try:
        assert all(wait_for(lambda p=p: _up(p), 30) for p in ports), [lg.read_text()[-2000:] for lg in logs]
        time.sleep(1.0)   # every subscription in place before the fleet talks
        devs = [SimDevice(broker, f"dev-{i:02d}") for i in range(12)]
        rng = random.Random(3)
        skipped: set[tuple[str, int]] = set()
        sent_dups = 0

        def publish(rounds: int) -> None:
            nonlocal sent_dups
            for _ in range(rounds):
                for d in devs:
                    if rng.random() < 0.02:
                        with d.lock:                                   # a message the device never sends
                            d.seq += 1
                            skipped.add((d.device, d.seq))
                    e = d.seq + 1
                    body = d.publish("jobs/j/progress", {"job": "j", "epoch": e, "loss": 1.0 / e})
                    if rng.random() < 0.05:
                        d.raw("jobs/j/progress", json.dumps(body).encode())                   # duplicate
                        sent_dups += 1
                    if rng.random() < 0.03:
                        d.raw("jobs/j/progress", json.dumps({**body, "hist": True}).encode())  # outbox replay
                        sent_dups += 1
                time.sleep(0.01)

        for d in devs:
            d.publish("status", {"state": "online", "reason": "birth"}, retain=True)
        publish(40)
        # SIGKILL one collector mid-ingest, keep publishing, restart it with the same client id (session)
        pub = threading.Thread(target=publish, args=(100,))
        pub.start()
        time.sleep(0.4)
        os.killpg(procs[1].pid, signal.SIGKILL)
        procs[1].wait(10)
        pub.join(120)
        procs[1] = _serve(broker.port, pg_url, "collector-1", ports[1], logs[1])
        assert wait_for(lambda: _up(ports[1]), 30), logs[1].read_text()[-2000:]
        # commands sent through the group while the fleet talks: every reply must be stored
        cmd_ids = []
        for d in devs[:4]:
            out = subprocess.run([sys.executable, "-m", "ftedge", "fleet", "send", d.device, "ping", "--fleet", FLEET,
                                  "--broker", f"mqtt://127.0.0.1:{broker.port}"],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            cmd_ids.append(json.loads(out.stdout)["cmd_id"])
        # restart PostgreSQL mid-ingest: collectors wait, acknowledge nothing, and carry on
        pub = threading.Thread(target=publish, args=(200,))
        pub.start()
        time.sleep(0.5)
        pg_server.restart(down_s=6.0)   # longer than the store's own retries: the collectors hold their batches
        pub.join(120)
        for d in devs:
            d.publish("jobs/j/result", {"job": "j", "status": "succeeded", "final": {"accuracy": 0.9},
                                        "baseline": {"accuracy": 0.5}, "promoted": True})
            d.sync()
        expected = sum(d.seq for d in devs) - len(skipped)
        store = FleetStore(pg_url, instance="checker")

        def settled() -> bool:
            # holes (~5 s reorder window) trigger resync commands whose replies are messages too
            return store.counters()["messages_total"] == sum(d.seq for d in devs) - len(skipped)

        assert wait_for(settled, 60), (store.counters(), sum(d.seq for d in devs) - len(skipped))
        time.sleep(7)   # past the reorder window: every hole is judged
        assert wait_for(settled, 30)
        c = store.counters()
        print("counters", c, "skipped", len(skipped), "duplicates sent", sent_dups, "gaps", len(store.gaps()))
        assert c["messages_total"] == sum(d.seq for d in devs) - len(skipped) >= expected
        assert c["duplicates_total"] >= sent_dups       # + what the broker redelivered after the kill
        assert c["malformed_total"] == c["rejected_total"] == 0
        _check_holes(store, skipped)
        assert skipped and c["seq_gaps_total"] > 0
        # every message of every device is there exactly once, in order
        for d in devs:
            row = store.device(FLEET, d.device)
            assert row["last_seq"] == d.seq and row["state"] == "online"
            epochs = [p["epoch"] for p in store.job(FLEET, d.device, "j")["progress"]]
            assert len(epochs) == len(set(epochs))
            assert store.job(FLEET, d.device, "j")["result"]["status"] == "succeeded"
        # no reply lost: every command a device answered (pings, resyncs) has its reply stored
        answered = [(d.device, body["cmd_id"]) for d in devs for _, body, rt, _ in d.commands if rt]
        assert len(answered) >= len(cmd_ids)
        for dev, cmd_id in answered:
            assert wait_for(lambda: store.reply(cmd_id, FLEET, dev) is not None, 10), (dev, cmd_id)
        # any collector shows the whole fleet; /metrics counters are the fleet's, process metrics per instance
        for p in ports:
            listed = _get(f"http://127.0.0.1:{p}/api/devices")
            assert sorted(x["device"] for x in listed) == sorted(d.device for d in devs)
        out = subprocess.run([sys.executable, "-m", "ftedge", "fleet", "status", "--db", pg_url, "--json"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert sorted(x["device"] for x in json.loads(out.stdout)) == sorted(d.device for d in devs)
        for p in ports:   # every collector's dashboard shows the whole fleet
            page = _get(f"http://127.0.0.1:{p}/")
            assert all(d.device in page for d in devs)
        from prometheus_client.parser import text_string_to_metric_families

        for p, name in zip(ports, ("collector-0", "collector-1", "collector-2")):
            samples = {(s.name, s.labels.get("instance")): s.value for fam in
                       text_string_to_metric_families(_get(f"http://127.0.0.1:{p}/metrics")) for s in fam.samples}
            assert samples[("ftedge_messages_total", None)] == c["messages_total"]
            assert samples[("ftedge_collector_received_total", name)] > 0
        logs_text = "".join(lg.read_text() for lg in logs)
        assert "wait unacknowledged" in logs_text   # the outage was noticed and waited out
        store.close()
        for d in devs:
            d.close()
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def test_collectors_opening_a_fresh_database_together_migrate_it_once(pg_url):
    """Collector processes opening one empty database at the same moment: one migrates, the others wait."""
    start = time.time() + 1.5
    code = ("import sys, time; from ftedge.fleet.store import FleetStore; time.sleep(max(0, float(sys.argv[2]) - "
            "time.time())); FleetStore(sys.argv[1]).close()")
    procs = [subprocess.Popen([sys.executable, "-c", code, pg_url, str(start)], stderr=subprocess.PIPE, text=True)
             for _ in range(8)]
    errors = [p.communicate(timeout=60)[1] for p in procs if p.wait(60) != 0]
    assert not errors, errors
    with FleetStore(pg_url) as store:
        assert store.counters()["messages_total"] == 0


def test_a_device_locked_by_another_collector_does_not_hold_up_the_others(pg_url):
    """On a shared database a batch first commits the devices nobody else holds (SKIP LOCKED); the device another
    collector's transaction has locked follows in a second transaction once that one ends."""
    import psycopg

    with FleetStore(pg_url) as store:
        store.ingest_batch([msg(d, "status", env(d, "b", 1, state="online", reason="birth"), True)
                            for d in ("d1", "d2")])
        other = psycopg.connect(pg_url)                     # another collector, mid-transaction on d1
        other.execute("SELECT 1 FROM devices WHERE device = 'd1' FOR UPDATE")
        batch = [msg(d, "jobs/j/progress", env(d, "b", 2, job="j", epoch=1, loss=0.5)) for d in ("d1", "d2")]
        done = threading.Event()
        worker = threading.Thread(target=lambda: (store.ingest_batch(batch), done.set()))
        worker.start()
        with FleetStore(pg_url) as reader:
            assert wait_for(lambda: reader.device(FLEET, "d2")["last_seq"] == 2, 10)   # d2 went ahead
            assert reader.device(FLEET, "d1")["last_seq"] == 1 and not done.is_set()  # d1 waits for the lock
            other.rollback()
            assert done.wait(10)
            worker.join(10)
            assert reader.device(FLEET, "d1")["last_seq"] == 2
            assert reader.counters()["messages_total"] == 4
        assert store.deferred == 1
        other.close()


# -- a collector down longer than the reorder window (issue 33, finding 18) -------------------------------------

def _samples(port: int) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(_get(f"http://127.0.0.1:{port}/metrics")) for s in fam.samples}


def test_holes_wait_while_a_member_of_the_group_is_down_or_draining(pg_url):
    """The judgement rule of ftedge.fleet.liveness on the clock of the test: a hole noticed while member b is
    down waits for b, then one window after b is back, and a member silent past member_hold_s holds nothing."""
    a = FleetStore(pg_url, reorder_window_s=5, instance="a", member_hold_s=60)
    t0 = time.time()
    a.beat("grp", "a", up_ms=int((t0 - 100) * 1000), now=t0)
    a.beat("grp", "b", up_ms=int((t0 - 100) * 1000), now=t0)          # b's last beat: it dies right after
    a.ingest_batch([msg("d1", "status", env("d1", "b1", 1, state="online")),
                    msg("d1", "jobs/j/progress", env("d1", "b1", 3, job="j", epoch=3))], now=t0 + 1)
    a.beat("grp", "a", up_ms=int((t0 - 100) * 1000), now=t0 + 10)
    assert a.check_gaps(now=t0 + 10, group="grp") == []                 # b may hold seq 2
    a.beat("grp", "b", up_ms=int((t0 + 20) * 1000), now=t0 + 21)        # b is back at t0 + 20 ...
    a.beat("grp", "a", up_ms=int((t0 - 100) * 1000), now=t0 + 22)
    assert a.check_gaps(now=t0 + 22, group="grp") == []                 # ... and drains its session for a window
    a.beat("grp", "b", up_ms=int((t0 + 20) * 1000), now=t0 + 26)
    a.beat("grp", "a", up_ms=int((t0 - 100) * 1000), now=t0 + 26)
    assert [(h["missing_from"], h["missing_to"]) for h in a.check_gaps(now=t0 + 26, group="grp")] == [(2, 2)]
    # a member gone longer than member_hold_s no longer holds judgement
    a.ingest_batch([msg("d1", "jobs/j/progress", env("d1", "b1", 5, job="j", epoch=5))], now=t0 + 27)
    a.beat("grp", "a", up_ms=int((t0 - 100) * 1000), now=t0 + 100)
    assert a.check_gaps(now=t0 + 80, group="grp") == []                 # b (last beat t0 + 26) may hold seq 4
    assert len(a.check_gaps(now=t0 + 100, group="grp")) == 1            # b silent for 74 s > 60 s: gone
    assert a.counters()["seq_gaps_total"] == 2
    a.close()


def test_a_collector_down_longer_than_the_window_makes_no_false_holes(tmp_path, broker, pg_server, pg_url):
    """One of three collectors is SIGKILLed for 8 s (the reorder window is 5 s) while the fleet talks: its share
    of every stream waits in its broker session. The others must not count the seqs it holds as holes nor ask
    devices without a real hole to resync; the real holes (seqs never sent) are counted once, per device too,
    and the late-fill counter is exported."""
    ports = [_free_port() for _ in range(3)]
    logs = [tmp_path / f"collector-{i}.log" for i in range(3)]
    procs = [_serve(broker.port, pg_url, f"collector-{i}", ports[i], logs[i]) for i in range(3)]
    try:
        assert all(wait_for(lambda p=p: _up(p), 30) for p in ports), [lg.read_text()[-2000:] for lg in logs]
        time.sleep(1.0)
        devs = [SimDevice(broker, f"dev-{i:02d}") for i in range(20)]
        rng = random.Random(5)
        skipped: set[tuple[str, int]] = set()
        holed = {d.device for d in devs[:4]}          # only these devices ever skip a seq

        def publish(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for d in devs:
                    if d.device in holed and rng.random() < 0.05:
                        with d.lock:                   # a message the device never sends: a real hole
                            d.seq += 1
                            skipped.add((d.device, d.seq))
                    e = d.seq + 1
                    d.publish("jobs/j/progress", {"job": "j", "epoch": e, "loss": 1.0 / e})
                time.sleep(0.1)

        for d in devs:
            d.publish("status", {"state": "online", "reason": "birth"}, retain=True)
        publish(2.0)
        os.killpg(procs[1].pid, signal.SIGKILL)
        procs[1].wait(10)
        publish(8.0)                                   # longer than the 5 s reorder window
        procs[1] = _serve(broker.port, pg_url, "collector-1", ports[1], logs[1])
        assert wait_for(lambda: _up(ports[1]), 30), logs[1].read_text()[-2000:]
        publish(2.0)
        for d in devs:
            d.sync()
        store = FleetStore(pg_url, instance="checker")
        total = sum(d.seq for d in devs) - len(skipped)
        assert wait_for(lambda: store.counters()["messages_total"] >= total, 60), (store.counters(), total)
        assert wait_for(lambda: store.counters()["seq_gaps_total"] >= len(skipped), 30), \
            (store.counters(), len(skipped))
        time.sleep(3.0)                                # a gap check or three more: nothing further is counted
        c = store.counters()
        gaps = store.gaps()
        print("counters", c, "skipped", len(skipped), "gaps", len(gaps))
        false = [g for g in gaps if any((g["device"], s) not in skipped
                                        for s in range(g["missing_from"], g["missing_to"] + 1))]
        assert not false, f"{len(false)} false hole(s), e.g. {false[:3]}"
        assert c["seq_gaps_total"] == len(gaps) == len(skipped)
        assert c["messages_total"] == sum(d.seq for d in devs) - len(skipped)   # + the replies to resyncs
        resynced = {d.device for d in devs for topic, *_ in d.commands if topic.endswith("/cmd/resync")}
        assert resynced <= holed, f"resync sent to devices without a real hole: {sorted(resynced - holed)}"
        # per device: the API, `fleet status` and /metrics say which box lost what
        listed = {x["device"]: x for x in _get(f"http://127.0.0.1:{ports[0]}/api/devices")}
        per_dev = {d.device: sum(1 for dev, _ in skipped if dev == d.device) for d in devs}
        for d in devs:
            assert listed[d.device]["seq_gaps"] == per_dev[d.device]
            assert listed[d.device]["messages"] == d.seq - per_dev[d.device]
        out = subprocess.run([sys.executable, "-m", "ftedge", "fleet", "status", "--db", pg_url],
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        assert "gaps" in out.stdout.splitlines()[0]
        samples = _samples(ports[2])
        assert samples[("ftedge_seq_late_fills_total", ())] == c["late_fills_total"]
        assert samples[("ftedge_seq_gaps_total", ())] == len(skipped)
        d0 = min(holed)
        assert samples[("ftedge_device_seq_gaps_total", (("device", d0), ("fleet", FLEET)))] == per_dev[d0]
        store.close()
        for d in devs:
            d.close()
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
