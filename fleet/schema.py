"""The fleet database's schema, for SQLite and PostgreSQL: one SQL script per version step and dialect.

The steps are numbered the same for both databases, so version N means the same tables everywhere: SQLite
keeps the version in ``PRAGMA user_version`` (:func:`ftedge.sqlite_db.migrate`), PostgreSQL in the table
``ftedge_schema`` (:func:`ftedge.fleet.postgres_db.migrate`, under an advisory lock so that collectors
starting together migrate once)."""

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
_SCHEMA.append(
    # 3 (issue 17: several collectors on one database): a boot's pending marks live in its row (any collector
    # may count the hole), open holes are counted per boot, counters are sharded per collector instance
    # (summed on read) so that concurrent collectors never wait on one counter row.
    """
    ALTER TABLE boots ADD COLUMN marks_json TEXT;
    ALTER TABLE boots ADD COLUMN mark_ms INTEGER;
    ALTER TABLE boots ADD COLUMN holes_open INTEGER NOT NULL DEFAULT 0;
    UPDATE boots SET holes_open = (SELECT COUNT(*) FROM gaps g WHERE g.fleet = boots.fleet
        AND g.device = boots.device AND g.boot = boots.boot AND g.filled_ts IS NULL);
    UPDATE boots SET mark_ms = CAST(strftime('%s', 'now') AS INTEGER) * 1000,
        marks_json = '[[' || (SELECT MAX(s.seq) FROM seen s WHERE s.fleet = boots.fleet AND s.device = boots.device
            AND s.boot = boots.boot) || ',' || (CAST(strftime('%s', 'now') AS INTEGER) * 1000) || ']]'
        WHERE EXISTS (SELECT 1 FROM seen s WHERE s.fleet = boots.fleet AND s.device = boots.device
            AND s.boot = boots.boot AND s.seq > boots.contiguous);
    CREATE INDEX boots_marked ON boots (mark_ms) WHERE mark_ms IS NOT NULL;
    CREATE TABLE counters_v3 (
        name TEXT NOT NULL,
        instance TEXT NOT NULL,                     -- the collector that counted (its client id)
        value INTEGER NOT NULL,
        PRIMARY KEY (name, instance)
    ) WITHOUT ROWID;
    INSERT INTO counters_v3 (name, instance, value) SELECT name, '', value FROM counters;
    DROP TABLE counters;
    ALTER TABLE counters_v3 RENAME TO counters;
    """)
_SCHEMA.append(
    # 4 (issue 33): per-device counts (which box loses telemetry), the liveness of a share group's
    # collectors, so that a hole is judged only when no member of the group can still deliver it
    # (ftedge.fleet.liveness).
    """
    ALTER TABLE devices ADD COLUMN messages_total INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN seq_gaps_total INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN late_fills_total INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE collectors (
        grp TEXT NOT NULL,                          -- the share group
        member TEXT NOT NULL,                       -- the collector's client id
        up_ms INTEGER NOT NULL,                     -- when its current broker connection was subscribed
        beat_ms INTEGER NOT NULL,                   -- its latest heartbeat while connected
        PRIMARY KEY (grp, member)
    ) WITHOUT ROWID;
    -- and a device's holes are pruned past a cap (fleet/device_caps.py), found by device in id order
    CREATE INDEX gaps_device ON gaps (fleet, device, id);
    """)

_SCHEMA.append(
    # 5 (issue 34): staged rollouts (fleet/rollout/), driven by one collector at a time (the lease).
    """
    CREATE TABLE rollouts (
        name TEXT PRIMARY KEY,
        spec_json TEXT NOT NULL,                    -- RolloutSpec as started
        state TEXT NOT NULL,                        -- running / paused / halted / aborted / done
        wave INTEGER NOT NULL DEFAULT 0,            -- the wave being driven (0: the canary)
        waves INTEGER NOT NULL,                     -- waves in all (canary included)
        wave_started_ms INTEGER,
        reason TEXT,                                -- why it halted or was aborted
        verdicts_json TEXT NOT NULL DEFAULT '[]',   -- one per judged wave
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        undo_from INTEGER                           -- roll back the devices of this wave and later (NULL: none)
    );
    CREATE TABLE rollout_devices (
        rollout TEXT NOT NULL,
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        wave INTEGER NOT NULL,
        state TEXT NOT NULL,                        -- DEVICE_STATES of fleet/rollout/plan.py
        attempt INTEGER NOT NULL DEFAULT 0,         -- a device back from offline is commanded again
        cmd_id TEXT,                                -- the command in flight
        sent_ms INTEGER,
        job TEXT,
        prev_version TEXT,                          -- its active model version before the rollout
        new_version TEXT,                           -- the version the training of the rollout activated
        replaced TEXT,                              -- the bundle folder its deploy replaced (kept on the device)
        before REAL,
        after REAL,
        gain REAL,
        reason TEXT,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (rollout, fleet, device)
    ) WITHOUT ROWID;
    CREATE INDEX rollout_devices_wave ON rollout_devices (rollout, wave, state);
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        until_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- a command's final reply (done/error/rejected) is never replaced by its `accepted`, which a collector of a
    -- share group may commit later than another collector commits the final one
    ALTER TABLE replies ADD COLUMN final INTEGER NOT NULL DEFAULT 1;
    """)

_SCHEMA.append(
    # 6 (issue 36): each box's personalization history (one row per job result, newest HISTORY_PER_DEVICE kept:
    # fleet/device_caps.py) and its policy state from its latest meta (ftedge_policy_devices counts it in SQL).
    """
    CREATE TABLE personalization (
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        job TEXT NOT NULL,
        at_ms INTEGER NOT NULL,                     -- the result's envelope ts (device clock, ms)
        triggered_by TEXT NOT NULL,                 -- command / policy (results without one: command)
        trigger_reason TEXT,
        status TEXT,
        promoted INTEGER NOT NULL DEFAULT 0,
        version TEXT,                               -- the model version the job stored
        metric TEXT,                                -- the headline metric and its label
        label TEXT,
        tuned REAL,
        untuned REAL,
        gain REAL,                                  -- tuned - untuned, signed so that higher is better
        previous_gain REAL,                         -- vs the active model it warm-started from
        warm_start TEXT,
        PRIMARY KEY (fleet, device, job)
    ) WITHOUT ROWID;
    CREATE INDEX personalization_at ON personalization (fleet, device, at_ms);
    ALTER TABLE devices ADD COLUMN policy_state TEXT;  -- meta.personalize.state.state (NULL: no policy)
    """)

# The same steps for PostgreSQL (64-bit integers for epoch milliseconds and seqs).
POSTGRES_SCHEMA = [
    """
    CREATE TABLE devices (
        fleet TEXT NOT NULL, device TEXT NOT NULL, state TEXT, reason TEXT, last_seen_ms BIGINT, boot TEXT,
        last_seq BIGINT NOT NULL DEFAULT 0, meta_json TEXT, job_json TEXT, metrics_json TEXT, active_version TEXT,
        status_ts BIGINT, marks_json TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (fleet, device)
    );
    CREATE TABLE boots (
        fleet TEXT NOT NULL, device TEXT NOT NULL, boot TEXT NOT NULL, first_ts BIGINT NOT NULL,
        first_seen_ms BIGINT NOT NULL, contiguous BIGINT NOT NULL DEFAULT 0, max_seq BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (fleet, device, boot)
    );
    CREATE TABLE seen (
        fleet TEXT NOT NULL, device TEXT NOT NULL, boot TEXT NOT NULL, seq BIGINT NOT NULL,
        PRIMARY KEY (fleet, device, boot, seq)
    );
    CREATE TABLE gaps (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        fleet TEXT NOT NULL, device TEXT NOT NULL, boot TEXT NOT NULL, missing_from BIGINT NOT NULL,
        missing_to BIGINT NOT NULL, ts BIGINT NOT NULL, filled BIGINT NOT NULL DEFAULT 0, filled_ts BIGINT
    );
    CREATE INDEX gaps_open ON gaps (fleet, device, boot) WHERE filled_ts IS NULL;
    CREATE TABLE progress (
        fleet TEXT NOT NULL, device TEXT NOT NULL, job TEXT NOT NULL, epoch BIGINT NOT NULL, ts BIGINT NOT NULL,
        body_json TEXT NOT NULL,
        PRIMARY KEY (fleet, device, job, epoch)
    );
    CREATE TABLE results (
        fleet TEXT NOT NULL, device TEXT NOT NULL, job TEXT NOT NULL, ts BIGINT NOT NULL, body_json TEXT NOT NULL,
        PRIMARY KEY (fleet, device, job)
    );
    CREATE TABLE replies (
        cmd_id TEXT PRIMARY KEY, fleet TEXT NOT NULL, device TEXT NOT NULL, body_json TEXT NOT NULL,
        ts BIGINT NOT NULL
    );
    CREATE INDEX replies_ts ON replies (ts);
    CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
    INSERT INTO counters (name, value) VALUES ('messages_total', 0), ('duplicates_total', 0),
        ('seq_gaps_total', 0), ('malformed_total', 0), ('late_fills_total', 0), ('stale_wills_total', 0),
        ('ignored_total', 0);
    """,
    """
    ALTER TABLE replies DROP CONSTRAINT replies_pkey;
    ALTER TABLE replies ADD PRIMARY KEY (fleet, device, cmd_id);
    INSERT INTO counters (name, value) VALUES ('rejected_total', 0) ON CONFLICT DO NOTHING;
    """,
    """
    ALTER TABLE boots ADD COLUMN marks_json TEXT;
    ALTER TABLE boots ADD COLUMN mark_ms BIGINT;
    ALTER TABLE boots ADD COLUMN holes_open BIGINT NOT NULL DEFAULT 0;
    UPDATE boots SET holes_open = (SELECT COUNT(*) FROM gaps g WHERE g.fleet = boots.fleet
        AND g.device = boots.device AND g.boot = boots.boot AND g.filled_ts IS NULL);
    UPDATE boots SET mark_ms = (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT,
        marks_json = '[[' || (SELECT MAX(s.seq) FROM seen s WHERE s.fleet = boots.fleet AND s.device = boots.device
            AND s.boot = boots.boot) || ',' || (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT || ']]'
        WHERE EXISTS (SELECT 1 FROM seen s WHERE s.fleet = boots.fleet AND s.device = boots.device
            AND s.boot = boots.boot AND s.seq > boots.contiguous);
    CREATE INDEX boots_marked ON boots (mark_ms) WHERE mark_ms IS NOT NULL;
    ALTER TABLE counters ADD COLUMN instance TEXT NOT NULL DEFAULT '';
    ALTER TABLE counters DROP CONSTRAINT counters_pkey;
    ALTER TABLE counters ADD PRIMARY KEY (name, instance);
    """,
    """
    CREATE INDEX gaps_device ON gaps (fleet, device, id);
    ALTER TABLE devices ADD COLUMN messages_total BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN seq_gaps_total BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN late_fills_total BIGINT NOT NULL DEFAULT 0;
    CREATE TABLE collectors (
        grp TEXT NOT NULL, member TEXT NOT NULL, up_ms BIGINT NOT NULL, beat_ms BIGINT NOT NULL,
        PRIMARY KEY (grp, member)
    );
    """,
    """
    CREATE TABLE rollouts (
        name TEXT PRIMARY KEY, spec_json TEXT NOT NULL, state TEXT NOT NULL, wave BIGINT NOT NULL DEFAULT 0,
        waves BIGINT NOT NULL, wave_started_ms BIGINT, reason TEXT, verdicts_json TEXT NOT NULL DEFAULT '[]',
        created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL, undo_from BIGINT
    );
    CREATE TABLE rollout_devices (
        rollout TEXT NOT NULL, fleet TEXT NOT NULL, device TEXT NOT NULL, wave BIGINT NOT NULL, state TEXT NOT NULL,
        attempt BIGINT NOT NULL DEFAULT 0, cmd_id TEXT, sent_ms BIGINT, job TEXT, prev_version TEXT,
        new_version TEXT, replaced TEXT, before DOUBLE PRECISION, after DOUBLE PRECISION, gain DOUBLE PRECISION,
        reason TEXT, updated_ms BIGINT NOT NULL,
        PRIMARY KEY (rollout, fleet, device)
    );
    CREATE INDEX rollout_devices_wave ON rollout_devices (rollout, wave, state);
    CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until_ms BIGINT NOT NULL);
    ALTER TABLE replies ADD COLUMN final BIGINT NOT NULL DEFAULT 1;
    """,
    """
    CREATE TABLE personalization (
        fleet TEXT NOT NULL, device TEXT NOT NULL, job TEXT NOT NULL, at_ms BIGINT NOT NULL, triggered_by TEXT NOT NULL,
        trigger_reason TEXT, status TEXT, promoted BIGINT NOT NULL DEFAULT 0, version TEXT, metric TEXT, label TEXT,
        tuned DOUBLE PRECISION, untuned DOUBLE PRECISION, gain DOUBLE PRECISION, previous_gain DOUBLE PRECISION,
        warm_start TEXT,
        PRIMARY KEY (fleet, device, job)
    );
    CREATE INDEX personalization_at ON personalization (fleet, device, at_ms);
    ALTER TABLE devices ADD COLUMN policy_state TEXT;
    """,
]
SCHEMA_VERSION = len(_SCHEMA)
assert SCHEMA_VERSION == len(POSTGRES_SCHEMA) == 6
