"""Issue 33 ("Hardening II"), store side: one device's message cannot slow every batch or lock new devices out,
and no device can grow the database without bound.

Every test runs on both databases: a SQLite file and a fresh database of a real PostgreSQL server.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from ftedge.errors import FleetStoreError
from ftedge.fleet.ingest import Collector
from ftedge.fleet.store import FleetStore

from tests.helpers.fleet_sim import FLEET, env, msg




def _raw(device: str, suffix: str, text: str) -> tuple[str, bytes, bool]:
    return f"ftedge/v1/{FLEET}/{device}/{suffix}", text.encode(), False


def _status(device: str, seq: int = 1, boot: str = "b1") -> tuple[str, bytes, bool]:
    return msg(device, "status", env(device, boot, seq, state="online", reason="birth"))


# -- finding 1: strings no database can store, long boots ------------------------------------------------------

def _poisoned() -> list[tuple[Any, bytes, bool]]:
    """Messages that raised inside the store's transaction before issue 33 (on SQLite, PostgreSQL or both)."""
    e = json.dumps(env("p1", "b1", 1, state="online"))
    return [
        _raw("p1", "status", e.replace('"online"', '"\\ud800"')),                    # lone surrogate in a column
        _raw("p2", "status", e.replace('"p1"', '"p2"').replace('"online"', '"on\\u0000line"')),   # NUL in a column
        _raw("p3", "meta", json.dumps(env("p3", "b1", 1, active_version="v1", note="x")).replace(
            '"x"', '"\\udfff"')),                                                      # surrogate in an unknown field
        _raw("p4", "meta", json.dumps(env("p4", "b1", 1, hardware={"cpu": "x"})).replace('"x"', '"a\\u0000"')),
        msg("p5", "status", env("p5", "b" * 3000, 1, state="online")),                # a boot of a few KB
        msg("p6", "status", env("p6", "b1/../x y", 1, state="online")),               # a boot that is no token
        (f"ftedge/v1/{FLEET}/p7\ud800/status", json.dumps(env("p7\ud800", "b1", 1)).encode(), False),
        (f"ftedge/v1/{FLEET}/p8/jobs/j\x00/progress", json.dumps(env("p8", "b1", 1, epoch=1)).encode(), False),
    ]


def test_unstorable_strings_and_long_boots_are_malformed_and_the_batch_commits_once(db):
    good = [_status(f"d{i}") for i in range(50)]
    with FleetStore(db) as store:
        poisoned = _poisoned()
        rep = store.ingest_batch(good[:25] + poisoned + good[25:])
        assert (rep["messages"], rep["malformed"]) == (50, len(poisoned))
        assert store.transactions == 1
        assert store.device_count() == 50 and store.counters()["malformed_total"] == len(poisoned)
        # a 64-character boot of the allowed alphabet is fine
        boot = "A-z0.9_" * 9 + "x"
        assert store.ingest_batch([_status("long", boot=boot[:64])])["messages"] == 1
        assert store.device(FLEET, "long")["boot"] == boot[:64]


class _FailingStore(FleetStore):
    """A store that cannot write the messages of devices named ``poison…`` (a reason parsing cannot see: a
    full disk, a constraint): injected so that what the collector and the store do with a failing batch is
    tested on its own, on the real databases."""

    def _apply(self, db: Any, m: Any, *args: Any) -> Any:
        if m.device.startswith("poison"):
            raise FleetStoreError(f"cannot store a message of {m.device}")
        return super()._apply(db, m, *args)


def test_a_failing_batch_is_bisected_not_replayed_message_by_message(db):
    good = [msg(f"d{i % 100}", "meta", env(f"d{i % 100}", "b1", 1 + i // 100, active_version=f"v{i}"))
            for i in range(1000)]
    with _FailingStore(db) as store:
        collector = Collector(store, client_id="c-bisect")
        collector._ingest(good[:500] + [_status("poison1")] + good[500:])
        assert collector.stats["errors"] == 1 and collector.stats["processed"] == 1001
        assert store.counters()["messages_total"] == 1000
        assert store.device(FLEET, "d7")["active_version"] == "v907"
        # one bad message among 1,001: a failed batch, then about two transactions per halving (was 1,002)
        assert store.transactions <= 2 * 11


def test_a_failed_transaction_leaves_no_room_taken_in_the_fleet(db):
    with _FailingStore(db, max_devices_per_fleet=10) as store:
        store.ingest_batch([_status("d1"), _status("d2")])
        for i in range(5):
            with pytest.raises(FleetStoreError):
                store.ingest_batch([_status(f"poison{i}"), _status(f"new{i}")])
        collector = Collector(store, client_id="c-cap")
        collector._ingest([_status(f"poison{i}", seq=2) for i in range(5)] + [_status("d1", seq=2)])
        rep = store.ingest_batch([_status(f"d{i}") for i in range(3, 11)])
        assert (rep["messages"], rep["rejected"]) == (8, 0)
        assert store.ingest_batch([_status("d11")])["rejected"] == 1   # the cap itself still holds
        assert store.device_count() == 10


# -- finding 3: device-controlled row counts, job pages, reads beside the writer --------------------------------

def _rows(store: FleetStore, sql: str, *args: Any) -> int:
    with store._reading() as db:
        return int(db.execute(sql, args).fetchone()[0])


def test_a_device_cannot_grow_its_epochs_and_jobs_without_bound(db):
    from ftedge.fleet.device_caps import MAX_EPOCHS_PER_JOB, MAX_JOBS_PER_DEVICE, PRUNE_EVERY

    epochs = MAX_EPOCHS_PER_JOB + 2 * PRUNE_EVERY
    jobs = MAX_JOBS_PER_DEVICE + 2 * PRUNE_EVERY
    with FleetStore(db) as store:
        store.ingest_batch([msg("d", "jobs/j0/progress", env("d", "b1", e, 1_000 + e, job="j0", epoch=e, loss=1 / e))
                            for e in range(1, epochs + 1)])
        kept = _rows(store, "SELECT COUNT(*) FROM progress WHERE job = ?", "j0")
        assert MAX_EPOCHS_PER_JOB <= kept <= MAX_EPOCHS_PER_JOB + PRUNE_EVERY
        assert _rows(store, "SELECT MIN(epoch) FROM progress WHERE job = ?", "j0") == epochs - kept + 1  # oldest go
        # jobs: each a result (and the newest ones a progress row too), newer ones later
        seq = epochs
        batch = []
        for j in range(1, jobs + 1):
            seq += 1
            batch.append(msg("d", f"jobs/j{j}/result", env("d", "b1", seq, 10_000 + j, job=f"j{j}", status="failed")))
        store.ingest_batch(batch)
        names = {j["job"] for j in store.jobs(device="d")}
        assert MAX_JOBS_PER_DEVICE <= len(names) <= MAX_JOBS_PER_DEVICE + PRUNE_EVERY
        assert f"j{jobs}" in names and "j0" not in names and "j1" not in names
        assert _rows(store, "SELECT COUNT(*) FROM progress") == 0   # j0's epochs went with it
        # another device is not touched by d's pruning
        store.ingest_batch([msg("e", "jobs/x/progress", env("e", "b1", 1, 1, job="x", epoch=1))])
        assert store.job(FLEET, "e", "x")["progress"][0]["epoch"] == 1


def test_closed_holes_of_a_device_are_pruned_past_the_cap(db):
    from ftedge.fleet.device_caps import PRUNE_EVERY

    t0 = 1_800_000_000.0
    with FleetStore(db, reorder_window_s=1, max_gaps_per_device=10) as store:
        n = PRUNE_EVERY + 50
        half = n // 2   # one gap check counts at most MAX_HOLES_PER_WRITE_OFF (100) holes per boot: two checks
        for k, t in ((0, t0), (half, t0 + 5)):
            store.ingest_batch([msg("d", "status", env("d", "b1", 2 * i, state="online"))
                                for i in range(k + 1, k + half + 1)], now=t)
            assert len(store.check_gaps(now=t + 5)) == half          # every odd seq is a hole: all kept (open)
        store.ingest_batch([msg("d", "status", env("d", "b1", 2 * i - 1, state="online")) for i in range(1, n + 1)],
                           now=t0 + 11)                               # all filled late: closed
        assert len(store.gaps(device="d")) == n
        base = 2 * n
        store.ingest_batch([msg("d", "status", env("d", "b1", base + 2 * i, state="online"))
                            for i in range(1, PRUNE_EVERY + 1)], now=t0 + 12)
        assert len(store.check_gaps(now=t0 + 17)) == PRUNE_EVERY
        gaps = store.gaps(device="d")
        assert len(gaps) == PRUNE_EVERY and all(g["filled_ts"] is None for g in gaps)   # open ones stay
        assert store.counters()["seq_gaps_total"] == n + PRUNE_EVERY
        # a late fill of a kept open hole still counts
        rep = store.ingest_batch([msg("d", "status", env("d", "b1", base + 1, state="online"))], now=t0 + 18)
        assert rep["late_fills"] == 1


def test_a_job_is_read_in_pages_of_the_newest_epochs(db):
    from ftedge.fleet.views import JOB_PAGE_EPOCHS

    n = 2 * JOB_PAGE_EPOCHS + 10
    with FleetStore(db) as store:
        store.ingest_batch([msg("d", "jobs/j/progress", env("d", "b1", e, job="j", epoch=e)) for e in range(1, n + 1)])
        page = store.job(FLEET, "d", "j")
        assert [p["epoch"] for p in page["progress"]] == list(range(n - JOB_PAGE_EPOCHS + 1, n + 1))
        seen = [p["epoch"] for p in page["progress"]]
        while page["next_before"] is not None:
            page = store.job(FLEET, "d", "j", before_epoch=page["next_before"])
            assert 0 < len(page["progress"]) <= JOB_PAGE_EPOCHS
            seen = [p["epoch"] for p in page["progress"]] + seen
        assert seen == list(range(1, n + 1))
        assert [p["epoch"] for p in store.job(FLEET, "d", "j", limit=3)["progress"]] == [n - 2, n - 1, n]


def test_reads_do_not_wait_for_the_writer(db):
    import threading

    with FleetStore(db) as store:
        store.ingest_batch([msg("d", "jobs/j/progress", env("d", "b1", 1, job="j", epoch=1))])
        holding, release = threading.Event(), threading.Event()

        def writer() -> None:
            with store.backend.write() as tx:      # a long write transaction (a big batch, a slow disk)
                tx.execute("UPDATE devices SET state = 'busy'")
                holding.set()
                release.wait(30)

        w = threading.Thread(target=writer)
        w.start()
        try:
            assert holding.wait(10)
            got: list[Any] = []
            r = threading.Thread(target=lambda: got.append((store.job(FLEET, "d", "j"), store.devices())))
            r.start()
            r.join(10)
            assert got, "a read waited for the writer's transaction"
            job, devices = got[0]
            assert job["progress"][0]["epoch"] == 1 and devices[0]["state"] != "busy"   # the committed state
        finally:
            release.set()
            w.join(30)
        assert store.devices()[0]["state"] == "busy"
