"""The bench's PostgreSQL: one throwaway server for the run (tests.helpers.postgres), a fresh database per phase,
the server's CPU time and its per-database statistics."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from bench._common import children, proc_cpu_s
from bench.fleet_ingest.database import open_db
from tests.helpers.postgres import PostgresServer

SETTINGS = ("shared_buffers", "fsync", "synchronous_commit", "full_page_writes", "max_connections", "deadlock_timeout")


def server(root: Path, durable: bool) -> PostgresServer:
    """The run's server (a context manager): under the bench's temporary directory, so --keep keeps its server.log
    (deadlock reports) with the rest; 200 connections (several collectors, each with a pool)."""
    return PostgresServer(root=root, max_connections=200, durable=durable)


def describe(pg: PostgresServer) -> dict[str, Any]:
    """The server's version, data directory and the settings the report shows."""
    return {"version": pg.sql("SHOW server_version"), "root": str(pg.root),
            "settings": {k: pg.sql(f"SHOW {k}") for k in SETTINGS}}


class PgCpu:
    """CPU seconds of a PostgreSQL server so far: the postmaster with its reaped children (cutime + cstime: a
    backend that exited) plus every live child (backends, checkpointer, walwriter, autovacuum, …), less the
    backends in ``exclude`` (the bench's own poller)."""

    def __init__(self, data_dir: Path, exclude: set[int] | None = None) -> None:
        self.pid = int((Path(data_dir) / "postmaster.pid").read_text().split()[0])
        self.exclude = exclude or set()

    def __call__(self) -> float:
        total = proc_cpu_s(self.pid, reaped=True)
        for pid in children(self.pid):
            if pid in self.exclude:
                continue
            try:
                total += proc_cpu_s(pid)
            except (OSError, IndexError, ValueError):
                pass   # gone meanwhile: counted in the postmaster's cutime from the next sample on
        return total

    def processes(self) -> int:
        return 1 + len(children(self.pid))


def pg_database(pg: Any, name: str) -> str:
    """A fresh database on the bench's PostgreSQL server; its URL."""
    db = "bench_" + "".join(ch if ch.isalnum() else "_" for ch in name.lower())
    pg.sql(f"DROP DATABASE IF EXISTS {db}")
    pg.sql(f"CREATE DATABASE {db}")
    return pg.url.rsplit("/", 1)[0] + "/" + db


def pg_drop(pg: Any, url: str) -> None:
    try:
        pg.sql(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
    except subprocess.CalledProcessError:
        pass


def pg_database_stats(url: str) -> dict[str, Any]:
    """pg_stat_database of the phase's database (transactions, rollbacks: deadlock/serialization retries among
    them, deadlocks) and its size; read after the collectors exited (a backend flushes its statistics then)."""
    try:
        db = open_db(url)
        try:
            time.sleep(0.6)   # the statistics collector's flush interval (PostgreSQL ≥ 15: at most 1 s)
            row = db.execute("SELECT xact_commit, xact_rollback, deadlocks, conflicts, tup_inserted, tup_updated, "
                             "tup_deleted, blks_read, blks_hit, pg_database_size(current_database()) "
                             "FROM pg_stat_database WHERE datname = current_database()").fetchone()
        finally:
            db.close()
    except Exception as exc:  # noqa: BLE001 - reported
        return {"stats_error": f"{type(exc).__name__}: {exc}"}
    keys = ("xact_commit", "xact_rollback", "deadlocks", "conflicts", "tup_inserted", "tup_updated", "tup_deleted",
            "blks_read", "blks_hit", "db_bytes")
    return {k: int(v) for k, v in zip(keys, row)}
