"""Rollouts in the fleet database (SQLite or PostgreSQL, schema step 5): the only SQL of :mod:`ftedge.fleet.rollout`.

Tables: ``rollouts`` (one row per rollout: its spec, state, current wave, verdicts), ``rollout_devices`` (one row
per device and rollout: its wave, state, command in flight, before/after/gain, why) and ``leases`` (which
collector drives rollouts now). Every write of the driver is *fenced*: it commits only while the writer
still holds the lease, so a collector that stalled past its lease (a long GC pause, a frozen VM) cannot
undo what the collector that took over did.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, fields
from typing import Any, Iterable

from ftedge.errors import LeaseLost, RolloutError

from .plan import FINISHED, RolloutSpec

log = logging.getLogger(__name__)

LEASE = "rollouts"
ROLLOUT_CMD_PREFIX = "ro-"   # the cmd_id of every rollout command (driver.py); their replies outlive the store's cap
_MEMBER_COLS = ("rollout", "fleet", "device", "wave", "state", "attempt", "cmd_id", "sent_ms", "job",
                "prev_version", "new_version", "replaced", "before", "after", "gain", "reason", "updated_ms")


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Member:
    """One device of a rollout (a ``rollout_devices`` row)."""

    rollout: str
    fleet: str
    device: str
    wave: int
    state: str
    attempt: int = 0
    cmd_id: str | None = None
    sent_ms: int | None = None
    job: str | None = None
    prev_version: str | None = None
    new_version: str | None = None
    replaced: str | None = None
    before: float | None = None
    after: float | None = None
    gain: float | None = None
    reason: str | None = None
    updated_ms: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return self.fleet, self.device

    def row(self) -> tuple:
        return tuple(getattr(self, c) for c in _MEMBER_COLS)

    def public(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rollout"}


@dataclass
class Rollout:
    """A ``rollouts`` row with its spec decoded."""

    name: str
    spec: RolloutSpec
    state: str
    wave: int
    waves: int
    wave_started_ms: int | None
    reason: str | None
    verdicts: list[dict[str, Any]]
    created_ms: int
    updated_ms: int
    undo_from: int | None = None      # roll back the devices of this wave and later ones (None: leave them)
    loaded_state: str = ""            # the state as read (an operator's pause/abort made meanwhile wins)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


_ROLLOUT_COLS = ("name, spec_json, state, wave, waves, wave_started_ms, reason, verdicts_json, created_ms, updated_ms,"
                 " undo_from")


def _rollout(row: tuple) -> Rollout:
    return Rollout(row[0], RolloutSpec.from_json(row[1]), row[2], int(row[3]), int(row[4]), row[5], row[6],
                   json.loads(row[7] or "[]"), int(row[8]), int(row[9]),
                   None if row[10] is None else int(row[10]), row[2])


class RolloutRecords:
    """Rollout rows of one :class:`~ftedge.fleet.store.FleetStore` (its backend's read and write connections)."""

    def __init__(self, store: Any) -> None:
        self.backend = store.backend

    # -- the lease ------------------------------------------------------------------------------------------

    def acquire(self, holder: str, ttl_s: float, now: int | None = None) -> bool:
        """Take or renew the lease on driving rollouts for ``ttl_s`` seconds; True if ``holder`` has it."""
        now = now_ms() if now is None else now
        with self.backend.write() as db:
            row = db.execute("SELECT holder, until_ms FROM leases WHERE name = ?", (LEASE,)).fetchone()
            if row is not None and row[0] != holder and int(row[1]) > now:
                return False
            db.execute("INSERT INTO leases (name, holder, until_ms) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE"
                       " SET holder = excluded.holder, until_ms = excluded.until_ms",
                       (LEASE, holder, now + int(ttl_s * 1000)))
        return True

    def release(self, holder: str) -> None:
        with self.backend.write() as db:
            db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (LEASE, holder))

    def leader(self) -> tuple[str, int] | None:
        with self.backend.read() as db:
            row = db.execute("SELECT holder, until_ms FROM leases WHERE name = ?", (LEASE,)).fetchone()
        return (row[0], int(row[1])) if row else None

    def _fence(self, db: Any, holder: str | None) -> None:
        if holder is None:
            return
        row = db.execute("SELECT holder, until_ms FROM leases WHERE name = ?", (LEASE,)).fetchone()
        if row is None or row[0] != holder or int(row[1]) <= now_ms():
            raise LeaseLost(f"{holder} no longer holds the rollout lease")

    # -- rollouts -------------------------------------------------------------------------------------------

    def create(self, spec: RolloutSpec, waves: dict[tuple[str, str], int], versions: dict[tuple[str, str], Any],
               now: int | None = None) -> None:
        """Insert a running rollout and its devices (``waves``: device → wave; ``versions``: their active model
        version now). A name in use is refused."""
        now = now_ms() if now is None else now
        n_waves = len(spec.waves) + 1
        with self.backend.write() as db:
            if db.execute("SELECT 1 FROM rollouts WHERE name = ?", (spec.name,)).fetchone():
                raise RolloutError(f"a rollout named {spec.name!r} exists: pick another --name (names are never "
                                   "reused, so its record stays)")
            db.execute(f"INSERT INTO rollouts ({_ROLLOUT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (spec.name, spec.to_json(), "running", min(waves.values()), n_waves, now, None, "[]", now, now,
                        None))
            rows = [Member(spec.name, k[0], k[1], w, "pending", prev_version=versions.get(k), updated_ms=now).row()
                    for k, w in sorted(waves.items())]
            db.executemany(f"INSERT INTO rollout_devices ({', '.join(_MEMBER_COLS)}) VALUES "
                           f"({', '.join('?' * len(_MEMBER_COLS))})", rows)

    def get(self, name: str) -> Rollout:
        with self.backend.read() as db:
            row = db.execute(f"SELECT {_ROLLOUT_COLS} FROM rollouts WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise RolloutError(f"no rollout named {name!r}: `ftedge fleet rollout list` shows them")
        return _rollout(row)

    def all(self, states: Iterable[str] | None = None) -> list[Rollout]:
        sql, args = f"SELECT {_ROLLOUT_COLS} FROM rollouts", []
        if states is not None:
            states = list(states)
            sql += f" WHERE state IN ({', '.join('?' * len(states))})"
            args = states
        with self.backend.read() as db:
            rows = db.execute(sql + " ORDER BY created_ms, name", args).fetchall()
        return [_rollout(r) for r in rows]

    def members(self, name: str, wave: int | None = None, states: Iterable[str] | None = None) -> list[Member]:
        sql, args = f"SELECT {', '.join(_MEMBER_COLS)} FROM rollout_devices WHERE rollout = ?", [name]
        if wave is not None:
            sql += " AND wave = ?"
            args.append(wave)
        if states is not None:
            states = list(states)
            sql += f" AND state IN ({', '.join('?' * len(states))})"
            args += states
        with self.backend.read() as db:
            rows = db.execute(sql + " ORDER BY wave, fleet, device", args).fetchall()
        return [Member(*r) for r in rows]

    def counts(self, name: str | None = None) -> dict[tuple[str, int, str], int]:
        """``(rollout, wave, state)`` → devices."""
        sql, args = "SELECT rollout, wave, state, COUNT(*) FROM rollout_devices", []
        if name is not None:
            sql += " WHERE rollout = ?"
            args.append(name)
        with self.backend.read() as db:
            rows = db.execute(sql + " GROUP BY rollout, wave, state", args).fetchall()
        return {(r[0], int(r[1]), r[2]): int(r[3]) for r in rows}

    def set_state(self, name: str, state: str, reason: str | None = None, allowed: Iterable[str] = (),
                  holder: str | None = None, undo_from: int | None = None, restart_wave: bool = False) -> Rollout:
        """Move rollout ``name`` to ``state`` (only from one of ``allowed``, when given); ``undo_from``: roll back
        the devices of that wave and later ones; ``restart_wave``: the wave's timeout counts from now (resume)."""
        allowed = list(allowed)
        with self.backend.write() as db:
            self._fence(db, holder)
            row = db.execute(f"SELECT {_ROLLOUT_COLS} FROM rollouts WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise RolloutError(f"no rollout named {name!r}: `ftedge fleet rollout list` shows them")
            current = _rollout(row)
            if allowed and current.state not in allowed:
                raise RolloutError(f"rollout {name} is {current.state}: this needs it {' or '.join(allowed)}")
            now = now_ms()
            db.execute("UPDATE rollouts SET state = ?, reason = COALESCE(?, reason), updated_ms = ?,"
                       " undo_from = COALESCE(?, undo_from), wave_started_ms = ? WHERE name = ?",
                       (state, reason, now, undo_from, now if restart_wave else current.wave_started_ms, name))
        return self.get(name)

    def save(self, rollout: Rollout, members: Iterable[Member] = (), holder: str | None = None) -> None:
        """Write the rollout row and the changed members in one (fenced) transaction."""
        members = list(members)
        now = now_ms()
        with self.backend.write() as db:
            self._fence(db, holder)
            # Operator changes (pause/abort) made meanwhile win: the driver never overwrites a state it did not read.
            cur = db.execute("SELECT state FROM rollouts WHERE name = ?", (rollout.name,)).fetchone()
            state = rollout.state
            if cur is not None and cur[0] != rollout.loaded_state and rollout.state == rollout.loaded_state:
                state = cur[0]
            if state != rollout.state:
                log.info("rollout %s was made %s meanwhile; keeping that", rollout.name, state)
            db.execute("UPDATE rollouts SET state = ?, wave = ?, wave_started_ms = ?, reason = ?, verdicts_json = ?,"
                       " updated_ms = ?, undo_from = COALESCE(?, undo_from) WHERE name = ?",
                       (state, rollout.wave, rollout.wave_started_ms, rollout.reason,
                        json.dumps(rollout.verdicts, separators=(",", ":")), now, rollout.undo_from, rollout.name))
            if members:
                sets = ", ".join(f"{c} = ?" for c in _MEMBER_COLS[3:])
                db.executemany(f"UPDATE rollout_devices SET {sets} WHERE rollout = ? AND fleet = ? AND device = ?",
                               [m.row()[3:] + (m.rollout, m.fleet, m.device) for m in members])
        rollout.state = rollout.loaded_state = state
        rollout.updated_ms = now

    # -- what the driver reads about devices from the telemetry tables ---------------------------------------

    def device_facts(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[str | None, str | None]]:
        """``(fleet, device)`` → (state online/offline, active model version) for devices the store knows."""
        out: dict[tuple[str, str], tuple[str | None, str | None]] = {}
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            frag, args = self.backend.keys_in(("fleet", "device"), part)
            with self.backend.read() as db:
                for f, d, state, version in db.execute(
                        f"SELECT fleet, device, state, active_version FROM devices WHERE {frag}", args):
                    out[(f, d)] = (state, version)
        return out

    def replies(self, wanted: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], dict[str, Any]]:
        """``(fleet, device, cmd_id)`` → the stored reply body, for those that have one."""
        return self._bodies("replies", "cmd_id", wanted)

    def results(self, wanted: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], dict[str, Any]]:
        """``(fleet, device, job)`` → the job's result body, for those that have one."""
        return self._bodies("results", "job", wanted)

    def _bodies(self, table: str, key: str, wanted: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], Any]:
        """The ``body_json`` of ``table``'s rows keyed ``(fleet, device, key)``, 500 keys per query."""
        out: dict[tuple[str, str, str], Any] = {}
        for i in range(0, len(wanted), 500):
            frag, args = self.backend.keys_in(("fleet", "device", key), wanted[i:i + 500])
            with self.backend.read() as db:
                for f, d, k, body in db.execute(f"SELECT fleet, device, {key}, body_json FROM {table} WHERE {frag}",
                                                args):
                    out[(f, d, k)] = json.loads(body)
        return out

    def known_devices(self, fleet: str | None = None) -> list[tuple[str, str]]:
        sql, args = "SELECT fleet, device FROM devices", []
        if fleet is not None:
            sql += " WHERE fleet = ?"
            args.append(fleet)
        with self.backend.read() as db:
            return [(r[0], r[1]) for r in db.execute(sql + " ORDER BY fleet, device", args)]

    # -- read-only views: /metrics, the dashboard and /api (added for issue 34's observability) ------------------

    def current(self, since_ms: int) -> list[Rollout]:
        """Rollouts not finished, and the finished ones last changed at or after ``since_ms`` (oldest first):
        what ``/metrics`` exposes, so old rollouts do not grow the series count forever."""
        done = list(FINISHED)
        with self.backend.read() as db:
            rows = db.execute(f"SELECT {_ROLLOUT_COLS} FROM rollouts WHERE state NOT IN ({', '.join('?' * len(done))})"
                              " OR updated_ms >= ? ORDER BY created_ms, name", [*done, int(since_ms)]).fetchall()
        return [_rollout(r) for r in rows]

    def shown(self, limit: int) -> list[Rollout]:
        """At most ``limit`` rollouts for the dashboard: those not finished first, then the newest."""
        done = list(FINISHED)
        with self.backend.read() as db:
            rows = db.execute(f"SELECT {_ROLLOUT_COLS} FROM rollouts ORDER BY CASE WHEN state IN "
                              f"({', '.join('?' * len(done))}) THEN 1 ELSE 0 END, created_ms DESC, name DESC LIMIT ?",
                              [*done, int(limit)]).fetchall()
        return [_rollout(r) for r in rows]

    def counts_of(self, names: list[str]) -> dict[tuple[str, int, str], int]:
        """``(rollout, wave, state)`` → devices, of the rollouts ``names`` only (one query per 500 names)."""
        out: dict[tuple[str, int, str], int] = {}
        for i in range(0, len(names), 500):
            part = list(names[i:i + 500])
            with self.backend.read() as db:
                rows = db.execute("SELECT rollout, wave, state, COUNT(*) FROM rollout_devices WHERE rollout IN "
                                  f"({', '.join('?' * len(part))}) GROUP BY rollout, wave, state", part).fetchall()
            out.update({(r[0], int(r[1]), r[2]): int(r[3]) for r in rows})
        return out
