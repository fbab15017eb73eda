"""The fleet database's schema: one SQL script per version step (``PRAGMA user_version``), applied by
:func:`ftedge.sqlite_db.migrate` when the store opens."""

from __future__ import annotations

COUNTERS = ("messages_total", "duplicates_total", "seq_gaps_total", "malformed_total", "late_fills_total",
            "stale_wills_total", "ignored_total", "rejected_total")

_SCHEMA = [
    # Migration i brings the file from user_version i to i + 1 (one transaction each).
    """
    CREATE TABLE devices (
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        state TEXT,                                 -- online / offline (from status, Will, inference)
        reason TEXT,                                -- birth / shutdown / lwt / resync / new_boot / reconnect
        last_seen_ms INTEGER,                       -- collector clock (retained replays: their ts at most)
        boot TEXT,                                  -- current boot
        last_seq INTEGER NOT NULL DEFAULT 0,        -- max seq of the current boot
        meta_json TEXT,                             -- latest meta body (as published)
        job_json TEXT,                              -- latest job body
        metrics_json TEXT,                          -- latest progress body of the current boot
        active_version TEXT,
        status_ts INTEGER,                          -- envelope ts of the applied status
        marks_json TEXT NOT NULL DEFAULT '{}',      -- seq of the applied snapshot per kind (current boot)
        PRIMARY KEY (fleet, device)
    );
    CREATE TABLE boots (
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        boot TEXT NOT NULL,
        first_ts INTEGER NOT NULL,                  -- smallest envelope ts seen: orders boots
        first_seen_ms INTEGER NOT NULL,             -- collector clock
        contiguous INTEGER NOT NULL DEFAULT 0,      -- every seq <= this arrived or is a counted hole
        max_seq INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (fleet, device, boot)
    );
    CREATE TABLE seen (                             -- seqs beyond `contiguous`, hole fills, the Will (seq 0)
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        boot TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (fleet, device, boot, seq)
    ) WITHOUT ROWID;
    CREATE TABLE gaps (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        boot TEXT NOT NULL,
        missing_from INTEGER NOT NULL,
        missing_to INTEGER NOT NULL,
        ts INTEGER NOT NULL,                        -- when counted (collector clock, ms)
        filled INTEGER NOT NULL DEFAULT 0,          -- seqs of the range that arrived late
        filled_ts INTEGER                           -- set once the whole range arrived
    );
    CREATE INDEX gaps_open ON gaps (fleet, device, boot) WHERE filled_ts IS NULL;
    CREATE TABLE progress (
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        job TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        body_json TEXT NOT NULL,
        PRIMARY KEY (fleet, device, job, epoch)
    );
    CREATE TABLE results (
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        job TEXT NOT NULL,
        ts INTEGER NOT NULL,
        body_json TEXT NOT NULL,
        PRIMARY KEY (fleet, device, job)
    );
    CREATE TABLE replies (
        cmd_id TEXT PRIMARY KEY,
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        body_json TEXT NOT NULL,
        ts INTEGER NOT NULL                         -- when received (collector clock, ms)
    );
    CREATE INDEX replies_ts ON replies (ts);
    CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO counters (name, value) VALUES ('messages_total', 0), ('duplicates_total', 0),
        ('seq_gaps_total', 0), ('malformed_total', 0), ('late_fills_total', 0), ('stale_wills_total', 0),
        ('ignored_total', 0);
    """,
    # 2: replies keyed on (fleet, device, cmd_id); the rejected_total counter
    """
    CREATE TABLE replies_v2 (
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        cmd_id TEXT NOT NULL,
        body_json TEXT NOT NULL,
        ts INTEGER NOT NULL,                        -- when received (collector clock, ms)
        PRIMARY KEY (fleet, device, cmd_id)
    );
    INSERT OR REPLACE INTO replies_v2 (fleet, device, cmd_id, body_json, ts)
        SELECT fleet, device, cmd_id, body_json, ts FROM replies;
    DROP TABLE replies;
    ALTER TABLE replies_v2 RENAME TO replies;
    CREATE INDEX replies_ts ON replies (ts);
    INSERT OR IGNORE INTO counters (name, value) VALUES ('rejected_total', 0);
    """,
]
SCHEMA_VERSION = len(_SCHEMA)
assert SCHEMA_VERSION == 2
