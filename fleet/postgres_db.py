"""The one PostgreSQL adapter (psycopg 3): connections that look like the SQLite helper's, write transactions,
connection loss and versioned schema migration. It is the only module that imports :mod:`psycopg`
(the ``fleet`` extra installs it; ``--db postgresql://…`` needs it, SQLite does not).

SQL is written once, with ``?`` placeholders (the SQLite style); :class:`Connection` turns them into
psycopg's ``%s``. A lost server (restart, failover, network) raises :class:`~ftedge.errors.StoreUnavailable`
and the next call connects again; a deadlock or serialization failure between collectors raises it too
(the caller retries the whole transaction: its state is reloaded inside the transaction).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote_plus

from ftedge.errors import FleetStoreError, StoreUnavailable

try:
    import psycopg
    from psycopg import errors as pg_errors
except ImportError:   # pragma: no cover - the fleet extra installs it
    psycopg = None

_PLACEHOLDER = re.compile(r"\?")
_MIGRATION_LOCK = 0x66746564   # pg_advisory_xact_lock key of schema migrations ("fted")
MIGRATION_TRIES = 5            # a migration gives up after this many lost connections


def _sql(text: str) -> str:
    return _PLACEHOLDER.sub("%s", text.replace("%", "%%"))


_SECRET_KEYS = ("password", "sslpassword")   # libpq parameters that hold a secret
# keyword/value conninfo ("host=db password='x y'"): a quoted value may hold spaces and \' escapes
_SECRET_KEYWORD = re.compile(r"\b((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)", re.IGNORECASE)


def redact(url: str) -> str:
    """The URL (or keyword/value conninfo) without its secrets, for messages and logs: the password of
    ``user:password@`` and the value of a ``password=`` / ``sslpassword=`` parameter (libpq takes them in the
    query, ``?password=…``, too; the key may be percent-encoded)."""
    if "://" not in url:
        return _SECRET_KEYWORD.sub(r"\1***", url)
    url = re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", url)
    head, sep, query = url.partition("?")
    if not sep:
        return url
    items = []
    for item in query.split("&"):
        key, eq, _ = item.partition("=")
        items.append(f"{key}=***" if eq and unquote_plus(key).strip().lower() in _SECRET_KEYS else item)
    return head + sep + "&".join(items)


class Connection:
    """A psycopg connection with the sqlite3-like calls the store uses (``execute``, ``executemany``)."""

    def __init__(self, url: str, what: str, connect_timeout: float = 10.0) -> None:
        if psycopg is None:
            raise FleetStoreError("--db postgresql://… needs psycopg 3: pip install 'ftedge[fleet]' "
                                  "(or 'psycopg[binary]')")
        self.url, self.what, self.connect_timeout = url, what, connect_timeout
        self._conn: Any = None
        self.lock = threading.RLock()

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=int(self.connect_timeout),
                                             application_name="ftedge-fleet")
            except psycopg.OperationalError as exc:
                self._conn = None
                raise StoreUnavailable(f"cannot connect to {self.what} {redact(self.url)}: "
                                       f"{str(exc).strip()}; is PostgreSQL running and the URL right?") from exc
        return self._conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        with _errors(self):
            return self._connection().execute(_sql(sql), tuple(args))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        with _errors(self):
            cur = self._connection().cursor()
            cur.executemany(_sql(sql), rows)
            return cur

    def script(self, script: str) -> None:
        """Run a multi-statement script (no parameters)."""
        with _errors(self):
            self._connection().execute(script)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction: COMMIT, or ROLLBACK on any exception."""
        with self.lock:
            with _errors(self):
                conn = self._connection()
                with conn.transaction():
                    yield self

    def close(self) -> None:
        with self.lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                finally:
                    self._conn = None


@contextmanager
def _errors(c: Connection) -> Iterator[None]:
    """Map psycopg's errors: transient ones (connection lost, deadlock, serialization) to StoreUnavailable."""
    try:
        yield
    except StoreUnavailable:
        raise
    except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure, pg_errors.LockNotAvailable) as exc:
        raise StoreUnavailable(f"{c.what}: {str(exc).strip()} (retried)") from exc
    except psycopg.OperationalError as exc:
        broken = c._conn is None or c._conn.closed or c._conn.broken
        if broken:
            c.close()
            raise StoreUnavailable(f"lost the connection to {c.what} {redact(c.url)}: {str(exc).strip()}; "
                                   "retrying until it is back") from exc
        raise FleetStoreError(f"{c.what}: {str(exc).strip()}") from exc
    except psycopg.Error as exc:
        if c._conn is not None and (c._conn.closed or c._conn.broken):
            c.close()
            raise StoreUnavailable(f"lost the connection to {c.what} {redact(c.url)}: {str(exc).strip()}; "
                                   "retrying until it is back") from exc
        raise FleetStoreError(f"{c.what}: {str(exc).strip()}") from exc


def migrate(c: Connection, steps: Sequence[str], *, newer_hint: str) -> int:
    """Bring the database to schema ``len(steps)`` (table ``ftedge_schema``), step by step, each in one
    transaction under an advisory lock (collectors starting together migrate once). Returns the old version."""
    old = None
    failures = 0
    while True:   # one step per transaction until the last; a lost connection is retried (5 tries in all)
        try:
            with c.transaction() as tx:
                tx.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
                # under the lock: IF NOT EXISTS alone races when collectors start together
                tx.execute("CREATE TABLE IF NOT EXISTS ftedge_schema (version INTEGER NOT NULL)")
                row = tx.execute("SELECT version FROM ftedge_schema").fetchone()
                version = 0 if row is None else int(row[0])
                old = version if old is None else old
                if version > len(steps):
                    raise FleetStoreError(f"{c.what} has schema {version}, newer than this ftedge understands "
                                          f"({len(steps)}); {newer_hint}")
                if version == len(steps):
                    return old
                tx.script(steps[version])
                if row is None:
                    tx.execute("INSERT INTO ftedge_schema (version) VALUES (?)", (version + 1,))
                else:
                    tx.execute("UPDATE ftedge_schema SET version = ?", (version + 1,))
        except StoreUnavailable:
            failures += 1
            if failures == MIGRATION_TRIES:
                raise
            time.sleep(0.5)
