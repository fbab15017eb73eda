"""The one SQLite helper: opening a database file (WAL), write transactions, and versioned schema migration.

Used by the device's outbox, the embedding cache and the fleet store, so each gets the same rules: WAL
journal (readers never block the writer), ``BEGIN IMMEDIATE`` write transactions that roll back on any
exception, and a schema version in ``PRAGMA user_version`` that is migrated one step per transaction and
refused when it is newer than this ftedge. It is the only module that imports :mod:`sqlite3`
(ARCHITECTURE.md).
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from ftedge.errors import FtedgeError

Connection = sqlite3.Connection
Error = sqlite3.Error
complete_statement = sqlite3.complete_statement


def connect(path: str | Path, *, error: type[FtedgeError], what: str, wal: bool = True,
            synchronous: str | None = "NORMAL", autocommit: bool = True,
            damaged_hint: str = "if the file is damaged, move it aside") -> sqlite3.Connection:
    """Open ``path`` (``":memory:"`` too) for use from several threads; WAL unless ``wal`` is False.

    ``autocommit`` (isolation_level None) leaves transactions to :func:`transaction`; without it the
    connection's own ``with db:`` blocks commit. Any failure raises ``error`` naming ``what``.
    """
    memory = str(path) == ":memory:"
    try:
        if not memory:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=30, check_same_thread=False,
                             **({"isolation_level": None} if autocommit else {}))
    except (OSError, sqlite3.Error) as exc:
        raise error(f"cannot open {what} {path}: {exc}; check that the directory exists or can be created, "
                    "and its permissions") from exc
    try:
        if wal and not memory:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise error(f"{path}: SQLite refused WAL mode ({mode}); put {what} on a local disk")
        if synchronous:
            db.execute(f"PRAGMA synchronous={synchronous}")
    except sqlite3.Error as exc:
        db.close()
        raise error(f"cannot open {what} {path}: {exc}; {damaged_hint}") from exc
    except BaseException:
        db.close()
        raise
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE`` write transaction: COMMIT, or ROLLBACK on any exception."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def statements(script: str) -> Iterator[str]:
    """The complete SQL statements of ``script`` (trigger bodies with inner ``;`` stay whole)."""
    buf = ""
    for piece in script.split(";")[:-1]:
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            yield buf.strip()
            buf = ""


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, steps: Sequence[str], *, error: type[FtedgeError], what: str,
            newer_hint: str) -> int:
    """Bring ``db`` to schema ``len(steps)``: step i (a SQL script) takes ``user_version`` i to i + 1, one
    transaction each. A newer file raises ``error`` (``newer_hint`` says what to do). Returns the old version."""
    old = version = schema_version(db)
    if version > len(steps):
        raise error(f"{what} has schema {version}, newer than this ftedge understands ({len(steps)}); {newer_hint}")
    while version < len(steps):
        with transaction(db):
            # Read the version again under the write lock: another process opening the same file (a collector
            # and `fleet rollout start`, say) may have run this step meanwhile; running it twice fails.
            version = schema_version(db)
            if version >= len(steps):
                break
            for statement in statements(steps[version]):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {version + 1}")
            version += 1
    return old
