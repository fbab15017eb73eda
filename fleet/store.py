"""Fleet state built from the MQTT contract (SQLite in WAL mode, or PostgreSQL): persistence and migrations.

Three rooms (ARCHITECTURE.md): :mod:`.envelope` parses a received message against the contract,
:mod:`.sequence` decides de-duplication, holes and boot order (pure logic), this module stores what they decide
(the transaction flow: batches, retries, counted holes, counters); the read models are :mod:`.views`.

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
one ``seq_gaps_total`` per missing range, at most ``MAX_HOLES_PER_WRITE_OFF`` per boot and check) and returned
so the collector can ask the device to ``resync``; in a share group only once no member of the group can still
deliver it (:mod:`.liveness`).
A late arrival that fills a counted hole is accepted (``late_fills_total``) and the hole is marked filled
once complete; the counter is not decremented. Retained replays (``retained=True``) never open a hole
by themselves: they are old by nature. A boot first seen mid-way (a collector that joins a running
fleet) shows its unseen beginning as one hole. Only the newest ``keep_boots`` boots per device are kept
for de-duplication. ``seq 0`` is the Last Will (not part of the sequence): de-duplicated by
``(boot, will)``, except that a live repeat of the current boot's Will after the device came back counts.

**Which state wins** (the current boot, snapshots newer by seq, Wills, online inferences) is decided per
message by :mod:`.precedence`; the devices and boot streams a transaction locks, loads and writes back are
:mod:`.device_rows`.

**Limits** (issue 12). Bodies are type-checked and size-capped (:mod:`~ftedge.fleet.validate`;
``max_payload_bytes``, default 64 KiB): what fails counts in ``malformed_total`` and is stored nowhere. A
fleet holds at most ``max_devices_per_fleet`` devices (default 100,000): messages of a further device count in
``rejected_total`` and create no row (so no Prometheus series). A device keeps at most ``max_jobs_per_device``
jobs, ``max_epochs_per_job`` progress rows per job, ``max_gaps_per_device`` counted holes and
``max_history_per_device`` personalization history rows (:mod:`.personalization`, issue 36); the oldest are
pruned (:mod:`.device_caps`, issue 33).

**Several collectors** (issue 17). ``FleetStore(path_or_url)`` opens a SQLite file (one collector: it keeps
the per-device and per-boot state it loaded between batches) or a PostgreSQL database shared by a share
group of collectors (:mod:`.store_backend`). On a shared database every transaction locks the rows of the
devices it touches (in one global order) and reloads their state — boots, the seqs beyond the contiguous
mark, the pending marks (``boots.marks_json``/``mark_ms``) and the open holes — inside the transaction, so
de-duplication, holes and "which state wins" are decided on what every collector committed; a deadlock or
lost connection retries the whole transaction (:class:`~ftedge.errors.StoreUnavailable` once the database
stays away). Each collector adds to its own shard of the counters (``instance``); reads sum them.
A ``FleetStore`` is thread-safe (one writer lock; PostgreSQL reads use their own connection). Counters: ``messages_total`` (unique device messages), ``duplicates_total``,
``seq_gaps_total``, ``malformed_total``, ``late_fills_total``, ``stale_wills_total``, ``ignored_total``,
``rejected_total``; per device (``devices`` columns) ``messages_total``, ``seq_gaps_total``, ``late_fills_total``.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ftedge.errors import FleetStoreError, FtedgeError, StoreUnavailable  # noqa: F401 - re-exported
from ftedge.mqtt.contract import TOPIC_ROOT  # noqa: F401 - re-exported: fleet.store.TOPIC_ROOT

from . import liveness, personalization
from .device_caps import (
    MAX_EPOCHS_PER_JOB,
    MAX_GAPS_PER_DEVICE,
    MAX_HISTORY_PER_DEVICE,
    MAX_JOBS_PER_DEVICE,
    DeviceCaps,
)
from .device_rows import DeviceRow, TransactionState
from .envelope import Message, parse
from .precedence import KINDS, Precedence, Report
from .rollout.records import ROLLOUT_CMD_PREFIX
from .schema import COUNTERS, SCHEMA_VERSION  # noqa: F401 - re-exported
from .sequence import MAX_HOLES_PER_WRITE_OFF, Hole, Stream
from .store_backend import PostgresBackend, SqliteBackend, is_postgres_url
from .validate import MAX_PAYLOAD
from .views import FleetReadModel

MAX_DEVICES_PER_FLEET = 100_000
# Command replies kept: per device, so that one device flooding its cmdres topic evicts only its own replies,
# and in all (the table's bound).
MAX_REPLIES_PER_DEVICE = 100
MAX_REPLIES = 10_000
ROLLOUT_REPLY_KEEP_S = 3600   # a rollout command's reply outlives the global cap this long (the per-device cap holds)
HOLE_LOGS_PER_MINUTE = 20    # WARNING lines about counted holes; the rest are summed up in one line a minute
_T = TypeVar("_T")

log = logging.getLogger(__name__)


class FleetStore(Precedence, TransactionState, DeviceCaps, FleetReadModel):
    """The collector's database (SQLite file or PostgreSQL URL); see the module docstring for the rules."""

    def __init__(self, path: Path | str, reorder_window_s: float = 5.0, keep_boots: int = 4,
                 max_replies: int = MAX_REPLIES, cache_mib: int = 32, max_payload_bytes: int = MAX_PAYLOAD,
                 max_devices_per_fleet: int = MAX_DEVICES_PER_FLEET, instance: str | None = None,
                 member_hold_s: float = liveness.MEMBER_HOLD_S,
                 max_replies_per_device: int = MAX_REPLIES_PER_DEVICE,
                 max_epochs_per_job: int = MAX_EPOCHS_PER_JOB, max_jobs_per_device: int = MAX_JOBS_PER_DEVICE,
                 max_gaps_per_device: int = MAX_GAPS_PER_DEVICE,
                 max_history_per_device: int = MAX_HISTORY_PER_DEVICE) -> None:
        self.max_payload_bytes = max(1024, int(max_payload_bytes))
        self.max_devices_per_fleet = max(1, int(max_devices_per_fleet))
        self.reorder_window_s = float(reorder_window_s)
        self.member_hold_s = float(member_hold_s)
        self.keep_boots = max(2, int(keep_boots))
        self.max_replies = max(1, int(max_replies))
        self.max_replies_per_device = max(1, int(max_replies_per_device))
        self.instance = instance if instance is not None else socket.gethostname()
        self.transactions = 0          # committed write transactions (ingest_batch, check_gaps)
        self.deferred = 0              # messages moved to a second transaction: their devices were locked
        TransactionState.__init__(self)
        DeviceCaps.__init__(self)
        self.max_epochs_per_job = max(1, int(max_epochs_per_job))
        self.max_jobs_per_device = max(1, int(max_jobs_per_device))
        self.max_gaps_per_device = max(1, int(max_gaps_per_device))
        self.max_history_per_device = max(1, int(max_history_per_device))
        self._malformed_logged = 0
        self._hole_log = [0.0, 0, 0]   # start of the current minute, holes logged in it, holes not logged
        if is_postgres_url(str(path)):
            self.path = None
            self.backend: SqliteBackend | PostgresBackend = PostgresBackend(str(path))
        else:
            self.path = Path(path) if str(path) != ":memory:" else None
            self.backend = SqliteBackend(path, cache_mib=cache_mib)
        self.shared = self.backend.shared   # several collectors may write the same database

    @contextmanager
    def _reading(self) -> Iterator[Any]:
        with self.backend.read() as db:
            yield db

    # -- writing ------------------------------------------------------------------------------------------

    def ingest_batch(self, msgs: Iterable[tuple[str, bytes, bool]], now: float | None = None) -> dict[str, Any]:
        """Apply ``(topic, payload, retained)`` messages in one transaction.

        Returns counts for this batch: ``messages`` (unique), ``duplicates``, ``malformed``, ``ignored``,
        ``late_fills``, ``stale_wills``, and ``replies`` (cmd_ids of the ``cmdres`` replies stored).
        ``now`` (epoch seconds, default the clock) is when the batch was received. Raises
        :class:`~ftedge.errors.StoreUnavailable` when the database cannot be reached (nothing committed).
        """
        now = time.time() if now is None else float(now)
        parsed: list[Message] = []
        verdicts = Report()
        for topic, payload, retained in msgs:          # JSON decoding outside the transaction
            m = self._parse(topic, payload, retained)
            if isinstance(m, Message):
                parsed.append(m)
            else:
                verdicts.add(m)
        # On a shared database the first round takes the devices no other collector's transaction holds right
        # now (SKIP LOCKED) and the next round waits for the rest: collectors work side by side on different
        # devices instead of queueing behind one another's locks on all of them.
        rep = Report(*KINDS)
        pending, first, skip = parsed, True, self.backend.shared
        while pending or first:
            part, pending = self._retrying(
                lambda todo=pending, v=(verdicts if first else Report()), sk=skip: self._ingest_tx(todo, v, now, sk))
            for k, n in part.items():
                rep.add(k, n)
            rep.replies += part.replies
            if pending:
                self.deferred += len(pending)
            first, skip = False, False
        out: dict[str, Any] = dict(rep)
        out["replies"] = rep.replies
        if rep.replies:
            self._prune_replies({(m.fleet, m.device) for m in parsed if m.kind == "cmdres"})
        return out

    def _ingest_tx(self, parsed: list[Message], verdicts: Report, now: float,
                   skip_locked: bool = False) -> tuple[Report, list[Message]]:
        """One transaction over ``parsed``; returns its counts and the messages of devices it left for later
        (``skip_locked``: their rows were locked by another collector)."""
        now_ms = int(now * 1000)
        rep = Report(*KINDS)
        for k, n in verdicts.items():
            rep.add(k, n)
        with self._tx() as db:
            later = self._load(db, parsed, now, skip_locked)
            if later:
                parsed, deferred = [m for m in parsed if (m.fleet, m.device) not in later], \
                    [m for m in parsed if (m.fleet, m.device) in later]
            else:
                deferred = []
            rows: dict[str, list[tuple]] = {"progress": [], "results": [], "replies": [], "personalization": []}
            touched_devices: dict[tuple[str, str], DeviceRow] = {}
            touched_streams: dict[tuple[str, str, str], Stream] = {}
            for m in parsed:
                applied = self._apply(db, m, now, now_ms, rep, rows)
                if applied is None:
                    continue
                dev, st = applied
                touched_devices[(dev.fleet, dev.device)] = dev
                touched_streams[st.key] = st
            if rows["progress"]:
                db.executemany("INSERT INTO progress (fleet, device, job, epoch, ts, body_json) VALUES"
                               " (?, ?, ?, ?, ?, ?) ON CONFLICT (fleet, device, job, epoch) DO UPDATE SET"
                               " ts = excluded.ts, body_json = excluded.body_json", rows["progress"])
            if rows["results"]:
                db.executemany("INSERT INTO results (fleet, device, job, ts, body_json) VALUES (?, ?, ?, ?, ?)"
                               " ON CONFLICT (fleet, device, job) DO UPDATE SET ts = excluded.ts,"
                               " body_json = excluded.body_json", rows["results"])
            runs = personalization.write_history(db, rows["personalization"]) if rows["personalization"] else {}
            if rows["replies"]:
                db.executemany("INSERT INTO replies (cmd_id, fleet, device, body_json, ts, final) VALUES"
                               " (?, ?, ?, ?, ?, ?) ON CONFLICT (fleet, device, cmd_id) DO UPDATE SET"
                               " body_json = excluded.body_json, ts = excluded.ts, final = excluded.final"
                               " WHERE excluded.final >= replies.final", rows["replies"])
                rep.replies = [r[0] for r in rows["replies"]]
            for fleet, device in self._prune_due((r[0], r[1]) for r in rows["progress"] + rows["results"]):
                self._prune_jobs(db, fleet, device)
            self._save_streams(db, touched_streams.values())
            self._save_devices(db, touched_devices.values())
            for dev in touched_devices.values():
                if dev.switched:
                    self._prune_boots(db, dev)
            self._bump(db, {"messages_total": rep["messages"], "duplicates_total": rep["duplicates"],
                            "malformed_total": rep["malformed"], "ignored_total": rep["ignored"],
                            "late_fills_total": rep["late_fills"], "stale_wills_total": rep["stale_wills"],
                            "rejected_total": rep["rejected"], **runs})
        return rep, deferred

    def check_gaps(self, now: float | None = None, group: str | None = None) -> list[dict[str, Any]]:
        """Count the holes open for at least ``reorder_window_s``; returns the newly counted ones.

        Each: ``fleet``, ``device``, ``boot``, ``missing_from``, ``missing_to`` (inclusive), ``ts`` (ms).
        Any collector of a shared database may count a hole; it is counted once (under the device's lock).
        With ``group`` (the share group, on a shared database) a hole waits, beyond the window, while a member
        of the group that may still deliver it is down or draining its backlog (:mod:`.liveness`).
        """
        now = time.time() if now is None else float(now)
        cutoff: float | None = now - self.reorder_window_s
        with self.backend.read() as db:
            if group is not None and self.backend.shared:
                cutoff = liveness.judgement_cutoff(db, group, now, self.reorder_window_s, self.member_hold_s)
            due = [] if cutoff is None else [tuple(r) for r in db.execute(
                "SELECT fleet, device, boot FROM boots WHERE mark_ms IS NOT NULL AND mark_ms <= ?"
                " ORDER BY mark_ms LIMIT 2000", (int(cutoff * 1000),)).fetchall()]
        judged = cutoff if cutoff is not None else 0.0
        counted = self._retrying(lambda: self._gaps_tx(due, now, judged)) if due else []
        self._log_holes(counted, now)
        return counted

    def beat(self, group: str, member: str, up_ms: int, now: float | None = None) -> None:
        """Record that collector ``member`` of share ``group`` is connected to the broker since ``up_ms`` (its
        own short transaction; see :mod:`.liveness`)."""
        now = time.time() if now is None else float(now)
        with self.backend.write() as db:
            liveness.beat(db, group, member, int(up_ms), int(now * 1000))

    def _log_holes(self, counted: list[dict[str, Any]], now: float) -> None:
        """One WARNING per counted hole, at most ``HOLE_LOGS_PER_MINUTE`` a minute; the rest in one line a
        minute (a device publishing sparse seqs must not flood the log)."""
        lg = self._hole_log
        if now - lg[0] >= 60.0:
            if lg[2]:
                log.warning("%d more seq hole(s) counted in the last minute were not logged one by one "
                            "(see ftedge_seq_gaps_total and the per-device seq_gaps)", lg[2])
            lg[:] = [now, 0, 0]
        for h in counted:
            if lg[1] < HOLE_LOGS_PER_MINUTE:
                lg[1] += 1
                log.warning("seq hole %s/%s boot %s: %d..%d missing for %.1f s", h["fleet"], h["device"], h["boot"],
                            h["missing_from"], h["missing_to"], self.reorder_window_s)
            else:
                lg[2] += 1

    def _gaps_tx(self, due: list[tuple], now: float, cutoff: float) -> list[dict[str, Any]]:
        counted: list[dict[str, Any]] = []
        ts = int(now * 1000)
        with self._tx() as db:
            self._lock_and_load(db, {(f, d) for f, d, _ in due}, set(due), now)
            changed = []
            per_device: dict[tuple[str, str], int] = {}
            for key in sorted(due):
                st = self._streams.get(key)
                if st is None:
                    continue
                before = st.contiguous
                ranges = st.write_off(cutoff)
                if st.contiguous == before and not ranges:
                    continue
                for a, b in ranges:
                    filled = st.arrived(a, b) if len(ranges) == MAX_HOLES_PER_WRITE_OFF else 0
                    gid = db.execute("INSERT INTO gaps (fleet, device, boot, missing_from, missing_to, ts, filled)"
                                     " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id", (*key, a, b, ts, filled)).fetchone()[0]
                    st.holes.append(Hole(gid, a, b, filled))
                    counted.append({"fleet": st.fleet, "device": st.device, "boot": st.boot,
                                    "missing_from": a, "missing_to": b, "ts": ts})
                changed.append(st)
                if ranges:
                    per_device[(st.fleet, st.device)] = per_device.get((st.fleet, st.device), 0) + len(ranges)
            self._save_streams(db, changed)
            if per_device:
                db.executemany("UPDATE devices SET seq_gaps_total = seq_gaps_total + ? WHERE fleet = ? AND device = ?",
                               [(n, f, d) for (f, d), n in sorted(per_device.items())])
            for fleet, device in self._prune_due((h["fleet"], h["device"]) for h in counted):
                self._prune_gaps(db, fleet, device)
            self._bump(db, {"seq_gaps_total": len(counted)})
        return counted

    # -- reading ------------------------------------------------------------------------------------------

    def close(self) -> None:
        self.backend.close()

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

    def _prune_replies(self, devices: set[tuple[str, str]]) -> None:
        """Keep the newest ``max_replies_per_device`` command replies of each of ``devices`` (those that just
        replied) and the newest ``max_replies`` in all (its own short transaction)."""
        try:
            with self.backend.write() as db:
                for fleet, device in sorted(devices):
                    old = db.execute(f"SELECT fleet, device, cmd_id FROM replies WHERE fleet = ? AND device = ? ORDER"
                                     f" BY ts DESC, {self.backend.newest} DESC LIMIT 1000000000 OFFSET ?",
                                     (fleet, device, self.max_replies_per_device)).fetchall()
                    if old:
                        db.executemany("DELETE FROM replies WHERE fleet = ? AND device = ? AND cmd_id = ?", old)
                # A rollout's replies stay for ROLLOUT_REPLY_KEEP_S whatever the cap: its driver learns each box's
                # outcome from them, and a wave of 10⁵ boxes answers more than the cap between two of its ticks.
                keep_from = int((time.time() - ROLLOUT_REPLY_KEEP_S) * 1000)
                old = db.execute(f"SELECT fleet, device, cmd_id FROM replies WHERE NOT (cmd_id LIKE ? AND ts > ?)"
                                 f" ORDER BY ts DESC, {self.backend.newest} DESC LIMIT 1000000000 OFFSET ?",
                                 (ROLLOUT_CMD_PREFIX + "%", keep_from, self.max_replies)).fetchall()
                if old:
                    db.executemany("DELETE FROM replies WHERE fleet = ? AND device = ? AND cmd_id = ?", old)
        except FleetStoreError as exc:   # a later batch prunes again
            log.debug("could not prune old command replies: %s", exc)

    def _bump(self, db: Any, deltas: dict[str, int]) -> None:
        """Add to this collector's shard of the counters (collectors never wait on each other's rows)."""
        rows = [(k, self.instance, n) for k, n in deltas.items() if n]
        if rows:
            db.executemany("INSERT INTO counters (name, instance, value) VALUES (?, ?, ?) ON CONFLICT (name, instance)"
                           " DO UPDATE SET value = counters.value + excluded.value", rows)

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """One write transaction. The state it loaded is dropped afterwards on a shared database, and after a
        failure anywhere (it is reloaded from what was committed)."""
        try:
            with self.backend.write() as db:
                yield db
            self.transactions += 1
            self._committed()
        except BaseException:
            self._forget()
            self._rolled_back()
            raise
        finally:
            self._new_seen.clear()
        if self.backend.shared:
            self._forget()

    def _retrying(self, work: Callable[[], _T]) -> _T:
        """Run a transaction, again on a deadlock or a lost connection (its state is reloaded each time); raises
        StoreUnavailable if the database stays out of reach for a few seconds (the caller keeps the batch)."""
        delays = (0.05, 0.2, 0.5, 1.0, 2.0)
        for attempt in range(len(delays) + 1):
            try:
                return work()
            except StoreUnavailable as exc:
                if attempt == len(delays):
                    raise
                log.info("%s; retrying in %.2f s", exc, delays[attempt])
                time.sleep(delays[attempt])
        raise AssertionError("unreachable")
