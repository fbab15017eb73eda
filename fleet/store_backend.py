"""The two databases behind :class:`~ftedge.fleet.store.FleetStore`: one interface, SQLite or PostgreSQL.

- :class:`SqliteBackend` (``--db PATH``, the default): one file, one collector process; WAL, so the HTTP side
  reads while the writer writes: reads use a second connection (one snapshot per read, never waiting for the
  writer's lock). Write transactions are ``BEGIN IMMEDIATE`` (the whole file is the lock).
- :class:`PostgresBackend` (``--db postgresql://…``): one database shared by several collectors. A write
  transaction locks the rows of the devices its batch touches — all at once, in (fleet, device) order, with
  one ``SELECT … FOR UPDATE``, so concurrent collectors do not deadlock on them — and the store reloads those
  devices' state inside the transaction. Reads use a second connection, so the dashboard never waits for the writer.

Both take SQL with ``?`` placeholders; :meth:`keys_in` writes "these composite keys" for each dialect.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ftedge import sqlite_db
from ftedge.errors import FleetStoreError

from .schema import _SCHEMA, POSTGRES_SCHEMA

_DAMAGED = "if the file is damaged, move it aside (the collector rebuilds state from retained messages)"


def is_postgres_url(db: Any) -> bool:
    return isinstance(db, str) and db.split("://", 1)[0] in ("postgresql", "postgres")


class SqliteBackend:
    """A SQLite file (or ``:memory:``) used by one process."""

    dialect = "sqlite"
    shared = False    # one collector: nothing else writes the file
    newest = "rowid"  # breaks ties between rows of the same ts: the one inserted last
    Error = sqlite_db.Error

    def __init__(self, path: Path | str, cache_mib: int = 32) -> None:
        self.target = ":memory:" if str(path) == ":memory:" else Path(path)
        self.lock = threading.RLock()
        self.db = sqlite_db.connect(self.target, error=FleetStoreError, what="the fleet database",
                                    synchronous="NORMAL", damaged_hint=_DAMAGED)
        try:
            # Every device's stream appends to its own spot of the progress index and rewrites its devices row:
            # with a thousand devices that working set outgrows SQLite's default 2 MiB cache (pages re-read
            # every batch), and a larger WAL lets checkpoints write a hot page once for many commits.
            self.db.execute(f"PRAGMA cache_size = -{max(2, int(cache_mib)) * 1024}")
            self.db.execute("PRAGMA wal_autocheckpoint = 10000")
            with self.lock:
                sqlite_db.migrate(self.db, _SCHEMA, error=FleetStoreError, what=f"the fleet database {self.target}",
                                  newer_hint="upgrade ftedge or use another --db")
        except sqlite_db.Error as exc:
            self.db.close()
            raise FleetStoreError(f"cannot open the fleet database {self.target}: {exc}; {_DAMAGED}") from exc
        except BaseException:
            self.db.close()
            raise
        # Reads on their own connection: a dashboard refresh never holds (or waits for) the writer's lock.
        # An in-memory database is private to its connection: reads share the writer's there.
        self.reader: Any = None
        self.read_lock = threading.RLock()
        if self.target != ":memory:":
            try:
                self.reader = sqlite_db.connect(self.target, error=FleetStoreError, what="the fleet database",
                                                synchronous=None, damaged_hint=_DAMAGED)
                self.reader.execute("PRAGMA query_only = ON")
            except BaseException:
                self.db.close()
                raise

    def __str__(self) -> str:
        return str(self.target)

    @contextmanager
    def write(self) -> Iterator[Any]:
        with self.lock:
            try:
                with sqlite_db.transaction(self.db) as db:
                    yield db
            except sqlite_db.Error as exc:
                raise FleetStoreError(f"the fleet database {self.target}: {exc}; check free disk space") from exc

    @contextmanager
    def read(self) -> Iterator[Any]:
        if self.reader is None:
            with self.lock:
                yield self.db
            return
        with self.read_lock:
            self.reader.execute("BEGIN")   # one snapshot for all the queries of a view
            try:
                yield self.reader
            finally:
                self.reader.execute("COMMIT")

    def lock_devices(self, db: Any, keys: Sequence[tuple[str, str]], columns: str,
                     new: Sequence[tuple[str, str]] = (), skip_locked: bool = False) -> list[tuple]:
        """The rows of the existing ``keys`` (the file is locked already: nothing to lock; new rows are
        inserted at the end of the transaction)."""
        frag, args = self.keys_in(("fleet", "device"), keys)
        return db.execute(f"SELECT {columns} FROM devices WHERE {frag}", args).fetchall()

    @staticmethod
    def keys_in(cols: Sequence[str], keys: Sequence[tuple]) -> tuple[str, list[Any]]:
        if not keys:
            return "1 = 0", []
        row = "(" + ", ".join("?" * len(cols)) + ")"
        # `IN (SELECT column1, … FROM (VALUES …))`, not `IN (VALUES …)`: SQLite plans the latter as a scan of the
        # whole table and the former as primary-key searches (26.6 → 2.5 ms for 500 of 100,000 devices).
        picked = ", ".join(f"column{i + 1}" for i in range(len(cols)))
        return (f"({', '.join(cols)}) IN (SELECT {picked} FROM (VALUES {', '.join([row] * len(keys))}))",
                [v for k in keys for v in k])

    def close(self) -> None:
        with self.lock:
            self.db.close()
        if self.reader is not None:
            with self.read_lock:
                self.reader.close()


class PostgresBackend:
    """A PostgreSQL database shared by any number of collectors."""

    dialect = "postgresql"
    shared = True
    newest = "cmd_id"   # no insertion order: ties of the same millisecond are broken arbitrarily

    def __init__(self, url: str) -> None:
        from . import postgres_db   # psycopg only when PostgreSQL is asked for

        self._pg = postgres_db
        self.url = url
        self.writer = postgres_db.Connection(url, "the fleet database")
        self.reader = postgres_db.Connection(url, "the fleet database")
        self.lock = self.writer.lock
        postgres_db.migrate(self.writer, POSTGRES_SCHEMA, newer_hint="upgrade ftedge on every collector")

    def __str__(self) -> str:
        return self._pg.redact(self.url)

    @contextmanager
    def write(self) -> Iterator[Any]:
        with self.writer.transaction() as tx:
            yield tx

    @contextmanager
    def read(self) -> Iterator[Any]:
        with self.reader.lock:
            yield self.reader

    def lock_devices(self, db: Any, keys: Sequence[tuple[str, str]], columns: str,
                     new: Sequence[tuple[str, str]] = (), skip_locked: bool = False) -> list[tuple]:
        """Lock the rows of ``keys`` and return them as every earlier commit left them (READ COMMITTED re-reads
        a row it had to wait for). ``new`` (devices this process has not seen a row of) are inserted first, in
        (fleet, device) order, waiting for a collector inserting the same ones; then every row is locked with
        one ``SELECT … ORDER BY fleet, device FOR UPDATE``. Each phase takes its locks in the same global
        order, and a row inserted in the first phase is one no other transaction could have locked before.
        With ``skip_locked`` the rows another transaction holds are left out instead of waited for."""
        if not keys:
            return []
        if new:
            new = sorted(set(new))
            db.execute("INSERT INTO devices (fleet, device) SELECT f, d FROM unnest(?::text[], ?::text[]) AS k(f, d)"
                       " ORDER BY f, d ON CONFLICT (fleet, device) DO NOTHING",
                       ([k[0] for k in new], [k[1] for k in new]))
        frag, args = self.keys_in(("fleet", "device"), sorted(set(keys)))
        skip = " SKIP LOCKED" if skip_locked else ""
        return db.execute(f"SELECT {columns} FROM devices WHERE {frag} ORDER BY fleet, device FOR UPDATE{skip}",
                          args).fetchall()

    @staticmethod
    def keys_in(cols: Sequence[str], keys: Sequence[tuple]) -> tuple[str, list[Any]]:
        if not keys:
            return "1 = 0", []
        arrays = ", ".join(["?::text[]"] * len(cols))
        return (f"({', '.join(cols)}) IN (SELECT * FROM unnest({arrays}))",
                [[k[i] for k in keys] for i in range(len(cols))])

    def close(self) -> None:
        self.writer.close()
        self.reader.close()
