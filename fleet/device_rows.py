"""The state of one :class:`~ftedge.fleet.store.FleetStore` write transaction: the rows of the devices it
touches (:class:`DeviceRow`) and their boots' sequence streams (:class:`~ftedge.fleet.sequence.Stream`),
locked and loaded at its start and written back at its end, with the pruning of old boots.

A transaction first locks the rows of its batch's devices, in one global ``(fleet, device)`` order (devices
without a row are inserted first, within the devices-per-fleet cap), then loads their boots: the contiguous
mark, the pending marks (``boots.marks_json``/``mark_ms``), the seqs seen beyond the mark (``seen``) and the
open holes (``gaps``) with the seqs that already filled them. The snapshot bodies (``meta``, ``job``,
``metrics``) are never read back: a newer message replaces them (``COALESCE`` on write). On a shared
database everything is reloaded under each transaction's locks; on SQLite (the only writer of its file) what
was loaded stays valid for the next batches until a transaction fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .envelope import Message
from .sequence import Hole, Stream
from .store_backend import PostgresBackend, SqliteBackend
from .views import _DEVICE_COLUMNS

# What a transaction reads of a device: not the snapshot bodies (meta, job, metrics), which are only ever
# replaced by a newer message's text, never read back — None in DeviceRow means "unchanged" (COALESCE).
_LOCK_COLUMNS = ("fleet, device, state, reason, last_seen_ms, boot, last_seq, active_version, status_ts,"
                 " marks_json")


@dataclass
class DeviceRow:
    """A device's row as a transaction holds it (the snapshot bodies only when a newer message replaced them)."""

    fleet: str
    device: str
    state: str | None = None
    reason: str | None = None
    last_seen_ms: int | None = None
    boot: str | None = None
    last_seq: int = 0
    meta: str | None = None
    job: str | None = None
    metrics: str | None = None
    active_version: str | None = None
    status_ts: int | None = None
    # meta.personalize.state.state when a newer meta replaced it ("" for a meta without a policy; None: unchanged)
    policy_state: str | None = None
    marks: dict[str, int] = field(default_factory=dict)
    switched: bool = False  # current boot changed in this transaction: prune old boots
    new_messages: int = 0   # unique messages and late fills of this transaction, added to the row's totals
    new_late_fills: int = 0
    stored: bool = False    # a row exists (UPDATE, not INSERT)


class TransactionState:
    """The devices and streams a write transaction holds (a mixin of :class:`~ftedge.fleet.store.FleetStore`,
    which provides ``backend``, ``max_devices_per_fleet`` and ``keep_boots``)."""

    backend: SqliteBackend | PostgresBackend
    max_devices_per_fleet: int
    keep_boots: int

    def __init__(self) -> None:
        # Devices per fleet and the devices known to have a row (rows are never deleted), as committed: a
        # transaction's additions wait in _fleet_added/_known_added until it commits, and vanish if it fails
        # (a failing batch must not fill a fleet's cap with devices that were never stored).
        self._fleet_sizes: dict[str, int] = {}   # approximate across collectors
        self._known: set[tuple[str, str]] = set()
        self._fleet_added: dict[str, int] = {}
        self._known_added: set[tuple[str, str]] = set()
        # The state of one transaction: loaded (under the transaction's locks) at its start, written at its end.
        self._devices: dict[tuple[str, str], DeviceRow] = {}
        self._streams: dict[tuple[str, str, str], Stream] = {}
        self._new_seen: list[tuple[str, str, str, int]] = []

    def _forget(self) -> None:
        self._devices.clear()
        self._streams.clear()

    def _committed(self) -> None:
        """The transaction committed: its new devices count from now on."""
        for fleet, n in self._fleet_added.items():
            if fleet in self._fleet_sizes:
                self._fleet_sizes[fleet] += n
        self._fleet_added.clear()
        self._known_added.clear()   # already in _known

    def _rolled_back(self) -> None:
        """The transaction failed: nothing it added was stored."""
        self._fleet_added.clear()
        self._known -= self._known_added
        self._known_added.clear()

    def _learn(self, key: tuple[str, str]) -> None:
        """``key`` has a row once this transaction commits (it may have had one before)."""
        if key not in self._known:
            self._known.add(key)
            self._known_added.add(key)

    # -- loading (under the transaction's locks) -------------------------------------------------------------

    def _load(self, db: Any, parsed: list[Message], now: float, skip_locked: bool = False) -> set[tuple[str, str]]:
        """Lock and load the devices and boots ``parsed`` touches (devices of full fleets are left out);
        returns the devices left for a later transaction (``skip_locked``: locked by another collector)."""
        keys = {(m.fleet, m.device) for m in parsed}
        unknown = sorted(keys - self._known)
        new = []
        if unknown:
            frag, args = self.backend.keys_in(("fleet", "device"), unknown)
            self._known.update(tuple(r) for r in db.execute(f"SELECT fleet, device FROM devices WHERE {frag}",
                                                            args).fetchall())
            for key in sorted(k for k in unknown if k not in self._known):
                if self._room_for(db, key[0]):
                    new.append(key)
                else:
                    keys.discard(key)
        return self._lock_and_load(db, keys, {(m.fleet, m.device, m.boot) for m in parsed if m.fleet and m.boot},
                                   now, new, skip_locked)

    def _room_for(self, db: Any, fleet: str) -> bool:
        """Whether a new device fits in ``fleet`` (exact near the cap; other collectors' devices are counted
        whenever the count is refreshed, so a shared fleet may exceed the cap by their in-flight batches)."""
        committed = self._fleet_sizes.get(fleet)
        added = self._fleet_added.get(fleet, 0)
        if committed is None or (self.backend.shared and committed + added + 1 >= self.max_devices_per_fleet * 0.9):
            # this transaction's new rows are not in the count yet (inserted at its end, or after this check)
            committed = int(db.execute("SELECT COUNT(*) FROM devices WHERE fleet = ?", (fleet,)).fetchone()[0])
            self._fleet_sizes[fleet] = committed
        if committed + added >= self.max_devices_per_fleet:
            return False
        self._fleet_added[fleet] = added + 1
        return True

    def _lock_and_load(self, db: Any, devices: set[tuple[str, str]], boots: set[tuple[str, str, str]],
                       now: float, new: Sequence[tuple[str, str]] = (),
                       skip_locked: bool = False) -> set[tuple[str, str]]:
        if self.backend.shared:   # other collectors write too: everything is read again under this transaction
            self._forget()
            to_lock = sorted(devices)
        else:                     # this process is the only writer: what it holds from earlier batches is current
            to_lock = sorted(k for k in devices if k not in self._devices)
        for row in self.backend.lock_devices(db, to_lock, _LOCK_COLUMNS, new, skip_locked):
            dev = DeviceRow(*row[:7], active_version=row[7], status_ts=row[8], marks=json.loads(row[9] or "{}"),
                            stored=True)
            self._devices[(dev.fleet, dev.device)] = dev
            self._learn((dev.fleet, dev.device))
        later: set[tuple[str, str]] = set()
        if skip_locked:
            later = devices - self._devices.keys()
        else:
            for key in devices - self._devices.keys():   # SQLite: new rows are written at the end
                self._devices[key] = DeviceRow(*key)
        wanted = set(boots) | {(d.fleet, d.device, d.boot) for d in self._devices.values() if d.boot}
        wanted = sorted(k for k in wanted if (k[0], k[1]) in self._devices and k not in self._streams)
        if not wanted:
            return later
        frag, args = self.backend.keys_in(("fleet", "device", "boot"), wanted)
        above, holed = [], []
        for r in db.execute("SELECT fleet, device, boot, first_ts, first_seen_ms, contiguous, max_seq, marks_json,"
                            f" holes_open FROM boots WHERE {frag}", args).fetchall():
            st = Stream(*r[:7], stored=True)
            if r[7]:
                st.marks = [(int(s), t / 1000.0) for s, t in json.loads(r[7])]
                st.mark_max = max((s for s, _ in st.marks), default=0)
            self._streams[st.key] = st
            if st.max_seq > st.contiguous:
                above.append(st.key)
            if r[8]:
                holed.append(st.key)
        if above:
            frag, args = self.backend.keys_in(("s.fleet", "s.device", "s.boot"), above)
            for f, d, b, seq in db.execute("SELECT s.fleet, s.device, s.boot, s.seq FROM seen s JOIN boots t ON"
                                           " t.fleet = s.fleet AND t.device = s.device AND t.boot = s.boot"
                                           f" WHERE {frag} AND s.seq > t.contiguous", args):
                self._streams[(f, d, b)].above.add(seq)
            for key in above:
                st = self._streams[key]
                if st.above and not st.marks:   # written by an older ftedge: noticed again now
                    st.mark_max = max(st.above)
                    st.marks = [(st.mark_max, now)]
        if holed:
            frag, args = self.backend.keys_in(("fleet", "device", "boot"), holed)
            for gid, f, d, b, lo, hi, filled in db.execute(
                    "SELECT id, fleet, device, boot, missing_from, missing_to, filled FROM gaps WHERE"
                    f" filled_ts IS NULL AND {frag} ORDER BY id", args):
                self._streams[(f, d, b)].holes.append(Hole(gid, lo, hi, filled))
            frag, args = self.backend.keys_in(("s.fleet", "s.device", "s.boot"), holed)
            for f, d, b, seq in db.execute(
                    "SELECT s.fleet, s.device, s.boot, s.seq FROM seen s JOIN boots t ON t.fleet = s.fleet AND"
                    f" t.device = s.device AND t.boot = s.boot WHERE {frag} AND s.seq BETWEEN 1 AND t.contiguous",
                    args):
                self._streams[(f, d, b)].hole_seen.add(seq)
        return later

    # -- writing back ------------------------------------------------------------------------------------------

    def _save_streams(self, db: Any, streams: Iterable[Stream]) -> None:
        if self._new_seen:
            db.executemany("INSERT INTO seen (fleet, device, boot, seq) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                           self._new_seen)
            self._new_seen.clear()
        new, old, purge = [], [], []
        for st in streams:
            marks = json.dumps([[s, int(t * 1000)] for s, t in st.marks]) if st.marks else None
            mark_ms = min(int(t * 1000) for _, t in st.marks) if st.marks else None
            values = (st.first_ts, st.first_seen_ms, st.contiguous, st.max_seq, marks, mark_ms, len(st.holes))
            if st.stored:
                old.append((*values, st.fleet, st.device, st.boot))
            else:
                new.append((st.fleet, st.device, st.boot, *values))
                st.stored = True
            if st.purge:   # seqs <= contiguous need no row, except inside holes (late fills) and the Will (0)
                lo = 1
                for hole in sorted(st.holes, key=lambda h: h.lo):
                    if hole.lo > lo:
                        purge.append((st.fleet, st.device, st.boot, lo, min(hole.lo - 1, st.contiguous)))
                    lo = max(lo, hole.hi + 1)
                purge.append((st.fleet, st.device, st.boot, lo, st.contiguous))
                st.purge = False
        purge = [p for p in purge if p[3] <= p[4]]
        if purge:
            db.executemany("DELETE FROM seen WHERE fleet = ? AND device = ? AND boot = ? AND seq BETWEEN ? AND ?",
                           purge)
        if old:
            db.executemany("UPDATE boots SET first_ts = ?, first_seen_ms = ?, contiguous = ?, max_seq = ?,"
                           " marks_json = ?, mark_ms = ?, holes_open = ? WHERE fleet = ? AND device = ? AND boot = ?",
                           old)
        if new:
            db.executemany(
                "INSERT INTO boots (fleet, device, boot, first_ts, first_seen_ms, contiguous, max_seq, marks_json,"
                " mark_ms, holes_open) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (fleet, device, boot)"
                " DO UPDATE SET first_ts = excluded.first_ts, first_seen_ms = excluded.first_seen_ms,"
                " contiguous = excluded.contiguous, max_seq = excluded.max_seq, marks_json = excluded.marks_json,"
                " mark_ms = excluded.mark_ms, holes_open = excluded.holes_open", new)

    def _save_devices(self, db: Any, devices: Iterable[DeviceRow]) -> None:
        new, old = [], []
        for dev in devices:
            marks = "{" + ",".join([f'"{k}":{v}' for k, v in dev.marks.items()]) + "}"   # str keys, int values
            values = (dev.state, dev.reason, dev.last_seen_ms, dev.boot, dev.last_seq, dev.meta, dev.job,
                      dev.metrics, dev.active_version, dev.status_ts, marks, dev.new_messages, dev.new_late_fills,
                      dev.policy_state)
            dev.meta = dev.job = dev.metrics = dev.policy_state = None   # written: unchanged from now on
            dev.new_messages = dev.new_late_fills = 0
            if dev.stored:
                old.append((*values, dev.fleet, dev.device))
            else:
                new.append((dev.fleet, dev.device, *values))
                dev.stored = True
                self._learn((dev.fleet, dev.device))
        if old:
            db.executemany(
                "UPDATE devices SET state = ?, reason = ?, last_seen_ms = ?, boot = ?, last_seq = ?,"
                " meta_json = COALESCE(?, meta_json), job_json = COALESCE(?, job_json),"
                " metrics_json = COALESCE(?, metrics_json), active_version = ?, status_ts = ?, marks_json = ?,"
                " messages_total = messages_total + ?, late_fills_total = late_fills_total + ?,"
                " policy_state = COALESCE(?, policy_state) WHERE fleet = ? AND device = ?", old)
        if new:
            db.executemany(f"INSERT INTO devices ({_DEVICE_COLUMNS}, messages_total, late_fills_total, policy_state)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (fleet, device)"
                           " DO NOTHING", new)

    def _prune_boots(self, db: Any, dev: DeviceRow) -> None:
        """Keep the newest ``keep_boots`` boots of a device for de-duplication."""
        dev.switched = False
        rows = db.execute("SELECT boot FROM boots WHERE fleet = ? AND device = ? AND boot != ?"
                          " ORDER BY first_seen_ms DESC, first_ts DESC", (dev.fleet, dev.device, dev.boot)).fetchall()
        for (boot,) in rows[self.keep_boots - 1:]:
            key = (dev.fleet, dev.device, boot)
            db.execute("DELETE FROM seen WHERE fleet = ? AND device = ? AND boot = ?", key)
            db.execute("DELETE FROM boots WHERE fleet = ? AND device = ? AND boot = ?", key)
            self._streams.pop(key, None)
