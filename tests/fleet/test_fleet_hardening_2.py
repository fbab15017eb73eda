"""Issue 33 ("Hardening II"), store side: one device's message cannot slow every batch or lock new devices out,
and no device can grow the database without bound.

Every test runs on both databases: a SQLite file and a fresh database of a real PostgreSQL server.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from ftedge.errors import FleetStoreError
from ftedge.fleet.ingest import Collector
from ftedge.fleet.store import FleetStore

from tests.helpers.fleet_sim import FLEET, env, msg
from tests.helpers.postgres import PostgresServer
from tests.helpers.services import require


@pytest.fixture(scope="module")
def pg_server():
    require("postgres")
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path) -> str:
    """Where a store lives: a SQLite file, or a fresh database on the module's PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "fleet.sqlite")
    server = request.getfixturevalue("pg_server")
    name = f"t_{uuid.uuid4().hex[:10]}"
    server.sql(f"CREATE DATABASE {name}")
    return server.url.rsplit("/", 1)[0] + "/" + name


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
