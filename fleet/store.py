"""Fleet state built from the MQTT contract (SQLite in WAL mode, stdlib only): persistence and migrations.

Three rooms (ARCHITECTURE.md): :mod:`.envelope` parses a received message against the contract,
:mod:`.sequence` decides de-duplication, holes and boot order (pure logic), this module stores what they decide;
the read models are :mod:`.views`.

``FleetStore.ingest_batch`` takes what the collector received — ``(topic, payload, retained)`` tuples — and
applies a whole batch in **one transaction**. Topics are ``ftedge/v1/{fleet}/{device}/{rest}`` (ARCHITECTURE.md,
"MQTT"); ``cmd/…`` (host → device) is ignored. Every device message carries the envelope ``v, ts, dev,
boot, seq, hist``; a payload that is not a JSON object with that envelope (or whose ``dev`` is not the
topic's device) counts in ``malformed_total`` and is otherwise ignored.

**De-duplication and loss.** Messages are unique by ``(fleet, device, boot, seq)``. Per boot (a *stream*)
the store keeps ``contiguous``, the highest seq up to which every seq arrived (or was written off as a
hole), plus the seqs seen beyond it (table ``seen``). A seq ≤ ``contiguous`` is a duplicate (unless it
fills a counted hole); a seq beyond ``contiguous + 1`` leaves a *pending hole*. A hole still open
``reorder_window_s`` after it was noticed is counted by :meth:`FleetStore.check_gaps` (one ``gaps`` row and
one ``seq_gaps_total`` per missing range) and returned so the collector can ask the device to ``resync``.
A late arrival that fills a counted hole is accepted (``late_fills_total``) and the hole is marked filled
once complete; the counter is not decremented. Retained replays (``retained=True``) never open a hole
by themselves: they are old by nature. A boot first seen mid-way (a collector that joins a running
fleet) shows its unseen beginning as one hole. Only the newest ``keep_boots`` boots per device are kept
for de-duplication. ``seq 0`` is the Last Will (not part of the sequence): de-duplicated by
``(boot, will)``, except that a live repeat of the current boot's Will after the device came back counts.

**Which state wins.** A device's *current boot* is the one that started last, judged by the collector's
clock when each boot was first seen (a box without a real-time clock may boot at 1970, so the envelope
``ts`` cannot order boots). A Will (``seq 0``) or an outbox replay (``hist``) is no sighting of a running
boot: a boot known only from those, and two boots first seen in the same batch, are ordered by their
smallest envelope ``ts`` (a Will's ``ts`` is written when its agent starts). Snapshots —
``status``, ``meta``, ``job`` and the latest ``progress`` (``metrics``) — apply only from the current boot
and only if newer (by seq) than the applied one, so a replayed or stale message never overwrites newer
state. In particular an offline Will from an older boot (a crash followed by a quick restart: the old
connection's Will arrives after the new boot's birth) is ignored (``stale_wills_total``). Two inferences
keep ``state`` honest because the agent publishes ``online`` only at birth: a message from a newer boot
than the one that went offline sets ``online`` (reason ``new_boot``), and a live message of the current
boot published after its Will sets ``online`` (reason ``reconnect``). ``progress`` rows and ``result``
rows are recorded from every boot (a result is idempotent per job). ``cmdres`` replies are kept (the
newest ``max_replies``) for ``fleet send``, keyed on ``(fleet, device, cmd_id)``: a device answering another's
command only files a reply of its own.

**Limits** (issue 12). Bodies are type-checked and size-capped (:mod:`~ftedge.fleet.validate`;
``max_payload_bytes``, default 64 KiB): what fails counts in ``malformed_total`` and is stored nowhere. A
fleet holds at most ``max_devices_per_fleet`` devices (default 100,000): messages of a further device count in
``rejected_total`` and create no row (so no Prometheus series).

One ``FleetStore`` object owns a database file (it caches per-device and per-boot state in memory);
it is thread-safe (one lock). Counters: ``messages_total`` (unique device messages), ``duplicates_total``,
``seq_gaps_total``, ``malformed_total``, ``late_fills_total``, ``stale_wills_total``, ``ignored_total``,
``rejected_total``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftedge import sqlite_db
from ftedge.errors import FleetStoreError, FtedgeError  # noqa: F401 - FleetStoreError re-exported
from ftedge.mqtt.contract import TOPIC_ROOT  # noqa: F401 - re-exported: fleet.store.TOPIC_ROOT

from .envelope import Message, parse
from .schema import _SCHEMA, COUNTERS, SCHEMA_VERSION  # noqa: F401 - SCHEMA_VERSION re-exported
from .sequence import Hole, Stream, started_later
from .validate import MAX_PAYLOAD
from .views import _DEVICE_COLUMNS, FleetReadModel

MAX_DEVICES_PER_FLEET = 100_000
_INT64 = 2**63

log = logging.getLogger(__name__)


# -- in-memory state (flushed at the end of every transaction) -------------------------------------------------

@dataclass
class _Device:
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
    marks: dict[str, int] = field(default_factory=dict)
    switched: bool = False  # current boot changed in this transaction: prune old boots
    stored: bool = False    # a row exists (UPDATE, not INSERT)


class _Report(dict):
    def add(self, key: str, n: int = 1) -> None:
        self[key] = self.get(key, 0) + n


class FleetStore(FleetReadModel):
    """The collector's database; see the module docstring for the rules."""

    def __init__(self, path: Path | str, reorder_window_s: float = 5.0, keep_boots: int = 4,
                 max_replies: int = 1000, cache_mib: int = 32, max_payload_bytes: int = MAX_PAYLOAD,
                 max_devices_per_fleet: int = MAX_DEVICES_PER_FLEET) -> None:
        self.path = Path(path) if str(path) != ":memory:" else None
        self.max_payload_bytes = max(1024, int(max_payload_bytes))
        self.max_devices_per_fleet = max(1, int(max_devices_per_fleet))
        self._fleet_sizes: dict[str, int] = {}   # devices per fleet (rows + new in this transaction)
        self.reorder_window_s = float(reorder_window_s)
        self.keep_boots = max(2, int(keep_boots))
        self.max_replies = max(1, int(max_replies))
        self.transactions = 0          # committed write transactions (ingest_batch, check_gaps)
        self._lock = threading.RLock()
        self._devices: dict[tuple[str, str], _Device] = {}
        self._streams: dict[tuple[str, str, str], Stream] = {}
        self._pending: set[tuple[str, str, str]] = set()   # streams with a pending hole
        self._malformed_logged = 0
        target = ":memory:" if self.path is None else self.path
        # The collector can re-learn the last commits from retained state and resync: NORMAL is enough.
        self._db = sqlite_db.connect(
            target, error=FleetStoreError, what="the fleet database", synchronous="NORMAL",
            damaged_hint="if the file is damaged, move it aside (the collector rebuilds state from retained messages)")
        try:
            # Every device's stream appends to its own spot of the progress index and rewrites its devices row:
            # with a thousand devices that working set outgrows SQLite's default 2 MiB cache (pages re-read
            # every batch), and a larger WAL lets checkpoints write a hot page once for many commits.
            self._db.execute(f"PRAGMA cache_size = -{max(2, int(cache_mib)) * 1024}")
            self._db.execute("PRAGMA wal_autocheckpoint = 10000")
            self._migrate()
            self._load_pending()
        except sqlite_db.Error as exc:
            self._db.close()
            raise FleetStoreError(f"cannot open the fleet database {target}: {exc}; if the file is damaged, "
                                  "move it aside (the collector rebuilds state from retained messages)") from exc
        except BaseException:
            self._db.close()
            raise

    # -- writing ------------------------------------------------------------------------------------------

    def ingest_batch(self, msgs: Iterable[tuple[str, bytes, bool]], now: float | None = None) -> dict[str, Any]:
        """Apply ``(topic, payload, retained)`` messages in one transaction.

        Returns counts for this batch: ``messages`` (unique), ``duplicates``, ``malformed``, ``ignored``,
        ``late_fills``, ``stale_wills``, and ``replies`` (cmd_ids of the ``cmdres`` replies stored).
        ``now`` (epoch seconds, default the clock) is when the batch was received.
        """
        now = time.time() if now is None else float(now)
        now_ms = int(now * 1000)
        rep = _Report(messages=0, duplicates=0, malformed=0, ignored=0, late_fills=0, stale_wills=0, rejected=0)
        replies: list[str] = []
        parsed: list[Message] = []
        for topic, payload, retained in msgs:          # JSON decoding outside the lock
            m = self._parse(topic, payload, retained)
            if isinstance(m, Message):
                parsed.append(m)
            else:
                rep.add(m)
        with self._tx() as db:
            rows: dict[str, list[tuple]] = {"progress": [], "results": [], "replies": []}
            touched_devices: dict[tuple[str, str], _Device] = {}
            touched_streams: dict[tuple[str, str, str], Stream] = {}
            for m in parsed:
                applied = self._apply(db, m, now, now_ms, rep, rows)
                if applied is None:
                    continue
                dev, st = applied
                touched_devices[(dev.fleet, dev.device)] = dev
                touched_streams[st.key] = st
            if rows["progress"]:
                db.executemany("INSERT OR REPLACE INTO progress (fleet, device, job, epoch, ts, body_json)"
                               " VALUES (?, ?, ?, ?, ?, ?)", rows["progress"])
            if rows["results"]:
                db.executemany("INSERT OR REPLACE INTO results (fleet, device, job, ts, body_json)"
                               " VALUES (?, ?, ?, ?, ?)", rows["results"])
            if rows["replies"]:
                db.executemany("INSERT OR REPLACE INTO replies (cmd_id, fleet, device, body_json, ts)"
                               " VALUES (?, ?, ?, ?, ?)", rows["replies"])
                replies = [r[0] for r in rows["replies"]]
                db.execute("DELETE FROM replies WHERE rowid IN (SELECT rowid FROM replies ORDER BY ts DESC"
                           " LIMIT -1 OFFSET ?)", (self.max_replies,))
            self._save_streams(db, touched_streams.values())
            self._save_devices(db, touched_devices.values())
            for dev in touched_devices.values():
                if dev.switched:
                    self._prune_boots(db, dev)
            self._bump(db, {"messages_total": rep["messages"], "duplicates_total": rep["duplicates"],
                            "malformed_total": rep["malformed"], "ignored_total": rep["ignored"],
                            "late_fills_total": rep["late_fills"], "stale_wills_total": rep["stale_wills"],
                            "rejected_total": rep["rejected"]})
        out: dict[str, Any] = dict(rep)
        out["replies"] = replies
        return out

    def check_gaps(self, now: float | None = None) -> list[dict[str, Any]]:
        """Count the holes open for at least ``reorder_window_s``; returns the newly counted ones.

        Each: ``fleet``, ``device``, ``boot``, ``missing_from``, ``missing_to`` (inclusive), ``ts`` (ms).
        """
        now = time.time() if now is None else float(now)
        cutoff = now - self.reorder_window_s
        counted: list[dict[str, Any]] = []
        with self._lock:
            if not self._pending:
                return counted
            with self._tx() as db:
                for key in sorted(self._pending):
                    st = self._streams.get(key)
                    if st is None:
                        self._pending.discard(key)
                        continue
                    before = st.contiguous
                    ranges = st.write_off(cutoff)
                    if not st.pending:
                        self._pending.discard(key)
                    if st.contiguous == before:
                        continue
                    for a, b in ranges:
                        gid = db.execute(
                            "INSERT INTO gaps (fleet, device, boot, missing_from, missing_to, ts) VALUES"
                            " (?, ?, ?, ?, ?, ?)", (st.fleet, st.device, st.boot, a, b, int(now * 1000))).lastrowid
                        st.holes.append(Hole(gid, a, b))
                        counted.append({"fleet": st.fleet, "device": st.device, "boot": st.boot,
                                        "missing_from": a, "missing_to": b, "ts": int(now * 1000)})
                    self._save_stream(db, st)
                self._bump(db, {"seq_gaps_total": len(counted)})
        for h in counted:
            log.warning("seq hole %s/%s boot %s: %d..%d missing for %.1f s", h["fleet"], h["device"], h["boot"],
                        h["missing_from"], h["missing_to"], self.reorder_window_s)
        return counted

    # -- reading ------------------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> FleetStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals: parsing -------------------------------------------------------------------------------

    def _parse(self, topic: Any, payload: bytes, retained: bool) -> Message | str:
        m = parse(topic, payload, retained, self.max_payload_bytes)
        if isinstance(m, Message):
            return m
        verdict, shown, why = m
        return self._malformed(shown, why) if verdict == "malformed" else verdict

    def _malformed(self, topic: str, why: str) -> str:
        self._malformed_logged += 1
        level = logging.WARNING if self._malformed_logged <= 20 else logging.DEBUG
        log.log(level, "malformed message on %s: %s", topic, why)
        return "malformed"

    # -- internals: applying ------------------------------------------------------------------------------

    def _apply(self, db: sqlite_db.Connection, m: Message, now: float, now_ms: int, rep: _Report,
               rows: dict[str, list[tuple]]) -> tuple[_Device, Stream] | None:
        dev = self._device(db, m.fleet, m.device)
        if dev is None:
            rep.add("rejected")
            self._malformed_logged += 1
            log.log(logging.WARNING if self._malformed_logged <= 20 else logging.DEBUG,
                    "rejected a message of %s/%s: the fleet already has %d devices; raise the cap "
                    "(--max-devices-per-fleet) if the fleet really is that large", m.fleet, m.device,
                    self.max_devices_per_fleet)
            return None
        sighting = now_ms if m.seq != 0 and m.body.get("hist") is not True else 0
        st = self._stream(db, m.fleet, m.device, m.boot, now, create_ts=m.ts, now_ms=sighting)
        will = m.seq == 0
        fresh = self._will_is_new(db, m, dev) if will else self._seq_is_new(db, st, m, now, rep)
        if not fresh:
            rep.add("duplicates")
            return dev, st
        rep.add("messages")
        st.max_seq = max(st.max_seq, m.seq)
        current = self._settle_boot(db, dev, st, now)
        if will:
            pass   # published by the broker, not the device: says nothing about when it was last seen
        elif m.retained:
            dev.last_seen_ms = max(dev.last_seen_ms or 0, min(m.ts, now_ms))
        else:
            dev.last_seen_ms = max(dev.last_seen_ms or 0, now_ms)
        if not current:
            if will:
                rep.add("stale_wills")
                log.info("ignoring the Will of %s/%s boot %s: boot %s started later", m.fleet, m.device, m.boot,
                         dev.boot)
        else:
            dev.last_seq = st.max_seq
            if (not will and not m.retained and m.kind != "status" and dev.state == "offline"
                    and dev.reason == "lwt" and "will" in dev.marks and m.seq > dev.marks["will"]):
                dev.state, dev.reason = "online", "reconnect"
                del dev.marks["will"]
        thinned = bool(m.body.get("thinned"))
        body = m.body
        if m.kind == "status":
            if current and will:
                dev.state = _str(body.get("state")) or "offline"
                dev.reason = _str(body.get("reason")) or "lwt"
                dev.status_ts = m.ts
                dev.marks["will"] = st.max_seq
            elif current and self._newer(dev, "status", m.seq) and not thinned:
                dev.state, dev.reason, dev.status_ts = _str(body.get("state")), _str(body.get("reason")), m.ts
                dev.marks.pop("will", None)
        elif m.kind == "meta":
            if current and not thinned and self._newer(dev, "meta", m.seq):
                dev.meta = m.text
                av = body.get("active_version")
                dev.active_version = None if av is None else str(av)
        elif m.kind == "job":
            if current and not thinned and self._newer(dev, "job", m.seq):
                dev.job = m.text
        elif m.kind == "progress":
            if not thinned and _is_int(body.get("epoch")) and abs(body["epoch"]) < _INT64:
                rows["progress"].append((m.fleet, m.device, m.job, body["epoch"], m.ts, m.text))
                if current and self._newer(dev, "metrics", m.seq):
                    dev.metrics = m.text
        elif m.kind == "result":
            rows["results"].append((m.fleet, m.device, m.job, m.ts, m.text))
        elif m.kind == "cmdres":
            cmd_id = body.get("cmd_id")
            if isinstance(cmd_id, str) and cmd_id:
                rows["replies"].append((cmd_id, m.fleet, m.device, m.text, now_ms))
        return dev, st

    @staticmethod
    def _newer(dev: _Device, kind: str, seq: int) -> bool:
        if seq < dev.marks.get(kind, 0):
            return False
        dev.marks[kind] = seq
        return True

    def _will_is_new(self, db: sqlite_db.Connection, m: Message, dev: _Device) -> bool:
        if db.execute("INSERT OR IGNORE INTO seen (fleet, device, boot, seq) VALUES (?, ?, ?, 0)",
                      (m.fleet, m.device, m.boot)).rowcount:
            return True
        # The same Will fires again (same bytes) if the device came back and dropped off again.
        return not m.retained and dev.boot == m.boot and dev.state == "online"

    def _seq_is_new(self, db: sqlite_db.Connection, st: Stream, m: Message, now: float, rep: _Report) -> bool:
        def recorded(seq: int) -> bool:
            return bool(db.execute("INSERT OR IGNORE INTO seen (fleet, device, boot, seq) VALUES (?, ?, ?, ?)",
                                   (st.fleet, st.device, st.boot, seq)).rowcount)

        offer = st.offer(m.seq, m.retained, now, recorded)
        if offer.filled is not None:
            hole = offer.filled
            rep.add("late_fills")
            db.execute("UPDATE gaps SET filled = ?, filled_ts = ? WHERE id = ?",
                       (hole.filled, int(now * 1000) if hole.complete else None, hole.id))
        if st.pending:
            self._pending.add(st.key)
        else:
            self._pending.discard(st.key)
        return offer.new

    def _settle_boot(self, db: sqlite_db.Connection, dev: _Device, st: Stream, now: float) -> bool:
        """Make ``st`` the device's current boot if it started later; True if it is the current boot."""
        if dev.boot == st.boot:
            return True
        if dev.boot is not None:
            cur = self._stream(db, dev.fleet, dev.device, dev.boot, now)
            if cur is not None and not started_later(st, cur):
                return False
            if dev.state is not None and dev.state != "online":
                dev.state, dev.reason = "online", "new_boot"   # it restarted after going offline
        dev.boot, dev.marks, dev.last_seq, dev.switched = st.boot, {}, st.max_seq, True
        return True

    def _device(self, db: sqlite_db.Connection, fleet: str, device: str) -> _Device | None:
        """The device's cached state; None if it is new and its fleet is full (``max_devices_per_fleet``)."""
        key = (fleet, device)
        dev = self._devices.get(key)
        if dev is None:
            row = db.execute(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE fleet = ? AND device = ?",
                             key).fetchone()
            if row is None:
                size = self._fleet_sizes.get(fleet)
                if size is None:
                    size = db.execute("SELECT COUNT(*) FROM devices WHERE fleet = ?", (fleet,)).fetchone()[0]
                if size >= self.max_devices_per_fleet:
                    self._fleet_sizes[fleet] = size
                    return None
                self._fleet_sizes[fleet] = size + 1
                dev = _Device(fleet, device)
            else:
                dev = _Device(*row[:12], marks=json.loads(row[12] or "{}"), stored=True)
            self._devices[key] = dev
        return dev

    def _stream(self, db: sqlite_db.Connection, fleet: str, device: str, boot: str, now: float,
                create_ts: int | None = None, now_ms: int = 0) -> Stream | None:
        key = (fleet, device, boot)
        st = self._streams.get(key)
        if st is None:
            st = self._load_stream(db, key, now)
            if st is None:
                if create_ts is None:
                    return None
                st = Stream(fleet, device, boot, create_ts, now_ms)
            self._streams[key] = st
        if create_ts is not None and create_ts < st.first_ts:
            st.first_ts = create_ts
        if now_ms and not st.first_seen_ms:   # the first sighting of the running boot (not a Will, not hist)
            st.first_seen_ms = now_ms
        return st

    def _load_stream(self, db: sqlite_db.Connection, key: tuple[str, str, str], now: float) -> Stream | None:
        row = db.execute("SELECT first_ts, first_seen_ms, contiguous, max_seq FROM boots"
                         " WHERE fleet = ? AND device = ? AND boot = ?", key).fetchone()
        if row is None:
            return None
        st = Stream(*key, *row, stored=True)
        st.above = {s for (s,) in db.execute("SELECT seq FROM seen WHERE fleet = ? AND device = ? AND boot = ?"
                                              " AND seq > ?", (*key, st.contiguous))}
        st.holes = [Hole(*r) for r in db.execute(
            "SELECT id, missing_from, missing_to, filled FROM gaps WHERE fleet = ? AND device = ? AND boot = ?"
            " AND filled_ts IS NULL", key)]
        if st.above:   # pending holes survive a restart: noticed again now
            st.mark_max = max(st.above)
            st.marks = [(st.mark_max, now)]
            self._pending.add(key)
        return st

    def _load_pending(self) -> None:
        """Streams with seqs beyond their contiguous mark: their holes are pending again after a restart."""
        now = time.time()
        keys = self._db.execute(
            "SELECT DISTINCT s.fleet, s.device, s.boot FROM seen s JOIN boots b ON b.fleet = s.fleet"
            " AND b.device = s.device AND b.boot = s.boot WHERE s.seq > b.contiguous").fetchall()
        for key in keys:
            st = self._load_stream(self._db, tuple(key), now)
            if st is not None:
                self._streams[st.key] = st

    # -- internals: persistence ---------------------------------------------------------------------------

    def _save_stream(self, db: sqlite_db.Connection, st: Stream) -> None:
        self._save_streams(db, (st,))

    def _save_streams(self, db: sqlite_db.Connection, streams: Iterable[Stream]) -> None:
        new, old, full = [], [], []
        for st in streams:
            row = (st.fleet, st.device, st.boot, st.first_ts, st.first_seen_ms, st.contiguous, st.max_seq)
            full.append(row)
            if st.stored:
                old.append((st.first_ts, st.first_seen_ms, st.contiguous, st.max_seq, st.fleet, st.device,
                            st.boot))
            else:
                new.append(row)
                st.stored = True
            if st.purge:   # seqs <= contiguous need no row, except inside holes (late fills) and the Will (0)
                lo = 1
                for hole in sorted(st.holes, key=lambda h: h.lo):
                    if hole.lo > lo:
                        self._delete_seen(db, st, lo, min(hole.lo - 1, st.contiguous))
                    lo = max(lo, hole.hi + 1)
                self._delete_seen(db, st, lo, st.contiguous)
                st.purge = False
        if old and db.executemany("UPDATE boots SET first_ts = ?, first_seen_ms = ?, contiguous = ?, max_seq = ?"
                                  " WHERE fleet = ? AND device = ? AND boot = ?", old).rowcount != len(old):
            new = full   # a row vanished under us (the file edited by hand?): write every row in full
        if new:
            db.executemany(
                "INSERT INTO boots (fleet, device, boot, first_ts, first_seen_ms, contiguous, max_seq)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (fleet, device, boot) DO UPDATE SET"
                " first_ts = excluded.first_ts, first_seen_ms = excluded.first_seen_ms,"
                " contiguous = excluded.contiguous, max_seq = excluded.max_seq", new)

    @staticmethod
    def _delete_seen(db: sqlite_db.Connection, st: Stream, lo: int, hi: int) -> None:
        if lo <= hi:
            db.execute("DELETE FROM seen WHERE fleet = ? AND device = ? AND boot = ? AND seq BETWEEN ? AND ?",
                       (st.fleet, st.device, st.boot, lo, hi))

    def _save_devices(self, db: sqlite_db.Connection, devices: Iterable[_Device]) -> None:
        new, old, full = [], [], []
        for dev in devices:
            marks = "{" + ",".join([f'"{k}":{v}' for k, v in dev.marks.items()]) + "}"   # str keys, int values
            values = (dev.state, dev.reason, dev.last_seen_ms, dev.boot, dev.last_seq, dev.meta, dev.job,
                      dev.metrics, dev.active_version, dev.status_ts, marks)
            full.append((dev.fleet, dev.device, *values))
            if dev.stored:
                old.append((*values, dev.fleet, dev.device))
            else:
                new.append(full[-1])
                dev.stored = True
        if old and db.executemany(
                "UPDATE devices SET state = ?, reason = ?, last_seen_ms = ?, boot = ?, last_seq = ?, meta_json = ?,"
                " job_json = ?, metrics_json = ?, active_version = ?, status_ts = ?, marks_json = ?"
                " WHERE fleet = ? AND device = ?", old).rowcount != len(old):
            new = full   # a row vanished under us (the file edited by hand?): write every row in full
        if new:
            db.executemany(f"INSERT OR REPLACE INTO devices ({_DEVICE_COLUMNS}) VALUES"
                           " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", new)

    def _prune_boots(self, db: sqlite_db.Connection, dev: _Device) -> None:
        """Keep the newest ``keep_boots`` boots of a device for de-duplication."""
        dev.switched = False
        old = db.execute("SELECT boot FROM boots WHERE fleet = ? AND device = ? AND boot != ?"
                         " ORDER BY first_seen_ms DESC, first_ts DESC LIMIT -1 OFFSET ?",
                         (dev.fleet, dev.device, dev.boot, self.keep_boots - 1)).fetchall()
        for (boot,) in old:
            key = (dev.fleet, dev.device, boot)
            db.execute("DELETE FROM seen WHERE fleet = ? AND device = ? AND boot = ?", key)
            db.execute("DELETE FROM boots WHERE fleet = ? AND device = ? AND boot = ?", key)
            self._streams.pop(key, None)
            self._pending.discard(key)

    @staticmethod
    def _bump(db: sqlite_db.Connection, deltas: dict[str, int]) -> None:
        db.executemany("UPDATE counters SET value = value + ? WHERE name = ?",
                       [(n, k) for k, n in deltas.items() if n])

    @contextmanager
    def _tx(self) -> Iterator[sqlite_db.Connection]:
        """One write transaction under the lock; on failure the in-memory caches are dropped (reloaded)."""
        with self._lock:
            try:
                with sqlite_db.transaction(self._db) as db:
                    yield db
                self.transactions += 1
            except BaseException:
                self._devices.clear()
                self._fleet_sizes.clear()
                self._streams.clear()
                self._pending.clear()
                try:
                    self._load_pending()
                except sqlite_db.Error:
                    log.exception("could not reload pending holes")
                raise

    def _migrate(self) -> None:
        """Bring the file to SCHEMA_VERSION (``PRAGMA user_version``), one transaction per step."""
        with self._lock:
            sqlite_db.migrate(self._db, _SCHEMA, error=FleetStoreError, what=f"the fleet database {self.path}",
                              newer_hint="upgrade ftedge or use another --db")


# -- helpers -------------------------------------------------------------------------------------------------

def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _str(x: Any) -> str | None:
    return x if isinstance(x, str) else None
