"""Reading the collector's database, SQLite or PostgreSQL: committed messages while a phase runs, lock waiters,
and the verification afterwards (every (device, boot, seq) stored exactly once, no gaps)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any


def is_pg(target: str | Path) -> bool:
    return str(target).startswith(("postgresql://", "postgres://"))


def open_db(target: str | Path) -> Any:
    """A read connection to the collector's database: SQLite (read-only) or PostgreSQL (autocommit)."""
    if is_pg(target):
        import psycopg

        return psycopg.connect(str(target), autocommit=True, connect_timeout=10)
    return sqlite3.connect(f"file:{target}?mode=ro", uri=True, timeout=5)


def committed(db: Any) -> int:
    """Unique messages committed: ``messages_total`` summed over the collectors' shards (an older schema's single
    row sums the same)."""
    try:
        row = db.execute("SELECT COALESCE(SUM(value), 0) FROM counters WHERE name = 'messages_total'").fetchone()
    except Exception:  # noqa: BLE001 - not created yet / a transient error: poll again
        return 0
    return int(row[0]) if row else 0


def lock_waiters(db: Any) -> int:
    """PostgreSQL backends of this database waiting on a lock (a row lock of another collector's transaction)."""
    try:
        return int(db.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                              "AND datname = current_database()").fetchone()[0])
    except Exception:  # noqa: BLE001
        return 0


def verify(target: str | Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Every (dev, boot, seq) stored exactly once, zero gaps (see the module docstring). ``lost``: messages
    published (and acknowledged by the broker) but not recorded — seqs a device's boot row has not reached
    (``max(0, last − contiguous)`` less the ``seen`` rows beyond contiguous) plus seqs written off as counted holes
    and never filled; ``double_counted``: ``messages_total`` beyond the unique messages recorded."""
    db = open_db(target)
    try:
        q = db.execute
        boots = {(d, b): (int(c), int(m)) for d, b, c, m in q("SELECT device, boot, contiguous, max_seq FROM boots")}
        progress = {d: int(n) for d, n in q("SELECT device, COUNT(*) FROM progress GROUP BY device")}
        c = {k: int(v) for k, v in q("SELECT name, SUM(value) FROM counters GROUP BY name")}
        seen = q("SELECT device, boot, seq FROM seen").fetchall()
        gap_rows = int(q("SELECT COUNT(*) FROM gaps").fetchone()[0])
        unfilled = int(q("SELECT COALESCE(SUM(missing_to - missing_from + 1 - filled), 0) FROM gaps").fetchone()[0])
        n_devices = int(q("SELECT COUNT(*) FROM devices").fetchone()[0])
        results = int(q("SELECT COUNT(*) FROM results").fetchone()[0])
        try:
            per_instance = {}
            for inst, name, v in q("SELECT instance, name, value FROM counters WHERE value <> 0"):
                per_instance.setdefault(inst, {})[name] = int(v)
        except Exception:  # noqa: BLE001 - an older schema (the "before" phase): one row per counter
            if not is_pg(target):
                db.rollback()
            per_instance = {}
    finally:
        db.close()
    beyond: dict[tuple[str, str], int] = {}
    for d, b, s in seen:
        cont = boots.get((d, b), (0, 0))[0]
        if int(s) > cont:
            beyond[(d, b)] = beyond.get((d, b), 0) + 1
    bad = []
    lost = 0
    for dev, (boot, last, nprog) in summary["last_seq"].items():
        got = boots.get((dev, boot))
        if got != (last, last):
            bad.append(f"{dev}: contiguous/max_seq {got} != {last}")
        cont = got[0] if got else 0
        lost += max(0, last - cont - beyond.get((dev, boot), 0))
        if progress.get(dev, 0) != nprog:
            bad.append(f"{dev}: {progress.get(dev, 0)} progress rows != {nprog} published")
    lost += unfilled
    recorded = summary["unique"] - lost
    double = c.get("messages_total", 0) - recorded
    expect = {"messages_total": summary["unique"], "duplicates_total": summary["duplicates"],
              "seq_gaps_total": 0, "malformed_total": 0}
    for k, v in expect.items():
        if c.get(k, 0) != v:
            bad.append(f"{k} = {c.get(k, 0)}, expected {v}")
    if seen:
        bad.append(f"{len(seen)} seen rows left ({sum(beyond.values())} beyond contiguous)")
    if gap_rows:
        bad.append(f"{gap_rows} gap rows ({unfilled} seqs never filled)")
    if n_devices != summary["devices"] or results != summary["devices"]:
        bad.append(f"{n_devices} devices / {results} results, expected {summary['devices']}")
    return {"ok": not bad, "problems": bad[:10], "n_problems": len(bad), "counters": c, "devices": n_devices,
            "lost": lost, "double_counted": max(0, double), "undercounted": max(0, -double),
            "redeliveries": c.get("duplicates_total", 0) - summary["duplicates"],
            "progress_rows": sum(progress.values()), "progress_published": summary["progress"],
            "per_instance": per_instance}
