"""Fleet state built from the MQTT contract (SQLite in WAL mode, or PostgreSQL): persistence and migrations.

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
``rejected_total``.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ftedge.errors import FleetStoreError, FtedgeError, StoreUnavailable  # noqa: F401 - re-exported
from ftedge.mqtt.contract import TOPIC_ROOT  # noqa: F401 - re-exported: fleet.store.TOPIC_ROOT

from .envelope import Message, parse
from .schema import COUNTERS, SCHEMA_VERSION  # noqa: F401 - re-exported
from .sequence import Hole, Stream, started_later
from .store_backend import PostgresBackend, SqliteBackend, is_postgres_url
from .validate import MAX_PAYLOAD
from .views import _DEVICE_COLUMNS, FleetReadModel

MAX_DEVICES_PER_FLEET = 100_000
_INT64 = 2**63

log = logging.getLogger(__name__)


# -- in-memory state (flushed at the end of every transaction) -------------------------------------------------

# What a transaction reads of a device: not the snapshot bodies (meta, job, metrics), which are only ever
# replaced by a newer message's text, never read back — None in _Device means "unchanged" (COALESCE).
_LOCK_COLUMNS = ("fleet, device, state, reason, last_seen_ms, boot, last_seq, active_version, status_ts,"
                 " marks_json")


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


_T = TypeVar("_T")
_KINDS = ("messages", "duplicates", "malformed", "ignored", "late_fills", "stale_wills", "rejected")


class _Report(dict):
    """Counts of one batch (every key present, zero when nothing happened) and the cmd_ids of replies stored."""

    def __init__(self, *kinds: str) -> None:
        super().__init__(dict.fromkeys(kinds, 0))
        self.replies: list[str] = []

    def add(self, key: str, n: int = 1) -> None:
        self[key] = self.get(key, 0) + n


class FleetStore(FleetReadModel):
    """The collector's database (SQLite file or PostgreSQL URL); see the module docstring for the rules."""

    def __init__(self, path: Path | str, reorder_window_s: float = 5.0, keep_boots: int = 4,
                 max_replies: int = 1000, cache_mib: int = 32, max_payload_bytes: int = MAX_PAYLOAD,
                 max_devices_per_fleet: int = MAX_DEVICES_PER_FLEET, instance: str | None = None) -> None:
        self.max_payload_bytes = max(1024, int(max_payload_bytes))
        self.max_devices_per_fleet = max(1, int(max_devices_per_fleet))
        self.reorder_window_s = float(reorder_window_s)
        self.keep_boots = max(2, int(keep_boots))
        self.max_replies = max(1, int(max_replies))
        self.instance = instance if instance is not None else socket.gethostname()
        self.transactions = 0          # committed write transactions (ingest_batch, check_gaps)
        self.deferred = 0              # messages moved to a second transaction: their devices were locked
        self._fleet_sizes: dict[str, int] = {}   # devices per fleet (approximate across collectors)
        self._known: set[tuple[str, str]] = set()  # devices known to have a row (rows are never deleted)
        # The state of one transaction: loaded (under the transaction's locks) at its start, written at its end.
        self._devices: dict[tuple[str, str], _Device] = {}
        self._streams: dict[tuple[str, str, str], Stream] = {}
        self._new_seen: list[tuple[str, str, str, int]] = []
        self._malformed_logged = 0
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
        verdicts = _Report()
        for topic, payload, retained in msgs:          # JSON decoding outside the transaction
            m = self._parse(topic, payload, retained)
            if isinstance(m, Message):
                parsed.append(m)
            else:
                verdicts.add(m)
        # On a shared database the first round takes the devices no other collector's transaction holds right
        # now (SKIP LOCKED) and the next round waits for the rest: collectors work side by side on different
        # devices instead of queueing behind one another's locks on all of them.
        rep = _Report(*_KINDS)
        pending, first, skip = parsed, True, self.backend.shared
        while pending or first:
            part, pending = self._retrying(
                lambda todo=pending, v=(verdicts if first else _Report()), sk=skip: self._ingest_tx(todo, v, now, sk))
            for k, n in part.items():
                rep.add(k, n)
            rep.replies += part.replies
            if pending:
                self.deferred += len(pending)
            first, skip = False, False
        out: dict[str, Any] = dict(rep)
        out["replies"] = rep.replies
        if rep.replies:
            self._prune_replies()
        return out

    def _ingest_tx(self, parsed: list[Message], verdicts: _Report, now: float,
                   skip_locked: bool = False) -> tuple[_Report, list[Message]]:
        """One transaction over ``parsed``; returns its counts and the messages of devices it left for later
        (``skip_locked``: their rows were locked by another collector)."""
        now_ms = int(now * 1000)
        rep = _Report(*_KINDS)
        for k, n in verdicts.items():
            rep.add(k, n)
        with self._tx() as db:
            later = self._load(db, parsed, now, skip_locked)
            if later:
                parsed, deferred = [m for m in parsed if (m.fleet, m.device) not in later], \
                    [m for m in parsed if (m.fleet, m.device) in later]
            else:
                deferred = []
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
                db.executemany("INSERT INTO progress (fleet, device, job, epoch, ts, body_json) VALUES"
                               " (?, ?, ?, ?, ?, ?) ON CONFLICT (fleet, device, job, epoch) DO UPDATE SET"
                               " ts = excluded.ts, body_json = excluded.body_json", rows["progress"])
            if rows["results"]:
                db.executemany("INSERT INTO results (fleet, device, job, ts, body_json) VALUES (?, ?, ?, ?, ?)"
                               " ON CONFLICT (fleet, device, job) DO UPDATE SET ts = excluded.ts,"
                               " body_json = excluded.body_json", rows["results"])
            if rows["replies"]:
                db.executemany("INSERT INTO replies (cmd_id, fleet, device, body_json, ts) VALUES (?, ?, ?, ?, ?)"
                               " ON CONFLICT (fleet, device, cmd_id) DO UPDATE SET body_json = excluded.body_json,"
                               " ts = excluded.ts", rows["replies"])
                rep.replies = [r[0] for r in rows["replies"]]
            self._save_streams(db, touched_streams.values())
            self._save_devices(db, touched_devices.values())
            for dev in touched_devices.values():
                if dev.switched:
                    self._prune_boots(db, dev)
            self._bump(db, {"messages_total": rep["messages"], "duplicates_total": rep["duplicates"],
                            "malformed_total": rep["malformed"], "ignored_total": rep["ignored"],
                            "late_fills_total": rep["late_fills"], "stale_wills_total": rep["stale_wills"],
                            "rejected_total": rep["rejected"]})
        return rep, deferred

    def check_gaps(self, now: float | None = None) -> list[dict[str, Any]]:
        """Count the holes open for at least ``reorder_window_s``; returns the newly counted ones.

        Each: ``fleet``, ``device``, ``boot``, ``missing_from``, ``missing_to`` (inclusive), ``ts`` (ms).
        Any collector of a shared database may count a hole; it is counted once (under the device's lock).
        """
        now = time.time() if now is None else float(now)
        cutoff = now - self.reorder_window_s
        with self.backend.read() as db:
            due = [tuple(r) for r in db.execute(
                "SELECT fleet, device, boot FROM boots WHERE mark_ms IS NOT NULL AND mark_ms <= ?"
                " ORDER BY mark_ms LIMIT 2000", (int(cutoff * 1000),)).fetchall()]
        if not due:
            return []
        counted = self._retrying(lambda: self._gaps_tx(due, now, cutoff))
        for h in counted:
            log.warning("seq hole %s/%s boot %s: %d..%d missing for %.1f s", h["fleet"], h["device"], h["boot"],
                        h["missing_from"], h["missing_to"], self.reorder_window_s)
        return counted

    def _gaps_tx(self, due: list[tuple], now: float, cutoff: float) -> list[dict[str, Any]]:
        counted: list[dict[str, Any]] = []
        ts = int(now * 1000)
        with self._tx() as db:
            self._lock_and_load(db, {(f, d) for f, d, _ in due}, set(due), now)
            changed = []
            for key in sorted(due):
                st = self._streams.get(key)
                if st is None:
                    continue
                before = st.contiguous
                ranges = st.write_off(cutoff)
                if st.contiguous == before and not ranges:
                    continue
                for a, b in ranges:
                    gid = db.execute("INSERT INTO gaps (fleet, device, boot, missing_from, missing_to, ts) VALUES"
                                     " (?, ?, ?, ?, ?, ?) RETURNING id", (*key, a, b, ts)).fetchone()[0]
                    st.holes.append(Hole(gid, a, b))
                    counted.append({"fleet": st.fleet, "device": st.device, "boot": st.boot,
                                    "missing_from": a, "missing_to": b, "ts": ts})
                changed.append(st)
            self._save_streams(db, changed)
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

    # -- internals: loading a transaction's state ---------------------------------------------------------

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
        size = self._fleet_sizes.get(fleet)
        if size is None or (self.backend.shared and size + 1 >= self.max_devices_per_fleet * 0.9):
            size = int(db.execute("SELECT COUNT(*) FROM devices WHERE fleet = ?", (fleet,)).fetchone()[0])
        if size >= self.max_devices_per_fleet:
            self._fleet_sizes[fleet] = size
            return False
        self._fleet_sizes[fleet] = size + 1
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
            dev = _Device(*row[:7], active_version=row[7], status_ts=row[8], marks=json.loads(row[9] or "{}"),
                          stored=True)
            self._devices[(dev.fleet, dev.device)] = dev
            self._known.add((dev.fleet, dev.device))
        later: set[tuple[str, str]] = set()
        if skip_locked:
            later = devices - self._devices.keys()
        else:
            for key in devices - self._devices.keys():   # SQLite: new rows are written at the end
                self._devices[key] = _Device(*key)
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

    # -- internals: applying ------------------------------------------------------------------------------

    def _apply(self, db: Any, m: Message, now: float, now_ms: int, rep: _Report,
               rows: dict[str, list[tuple]]) -> tuple[_Device, Stream] | None:
        dev = self._devices.get((m.fleet, m.device))
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

    def _will_is_new(self, db: Any, m: Message, dev: _Device) -> bool:
        if db.execute("INSERT INTO seen (fleet, device, boot, seq) VALUES (?, ?, ?, 0) ON CONFLICT DO NOTHING",
                      (m.fleet, m.device, m.boot)).rowcount:
            return True
        # The same Will fires again (same bytes) if the device came back and dropped off again.
        return not m.retained and dev.boot == m.boot and dev.state == "online"

    def _seq_is_new(self, db: Any, st: Stream, m: Message, now: float, rep: _Report) -> bool:
        # The stream was loaded under the device's lock: its seqs beyond `contiguous` and those recorded inside
        # open holes are all in memory; new ones are written at the end of the transaction.
        def recorded(seq: int) -> bool:
            if seq <= st.contiguous:
                if seq in st.hole_seen:
                    return False
                st.hole_seen.add(seq)
            self._new_seen.append((st.fleet, st.device, st.boot, seq))
            return True

        offer = st.offer(m.seq, m.retained, now, recorded)
        if offer.filled is not None:
            hole = offer.filled
            rep.add("late_fills")
            db.execute("UPDATE gaps SET filled = ?, filled_ts = ? WHERE id = ?",
                       (hole.filled, int(now * 1000) if hole.complete else None, hole.id))
        return offer.new

    def _settle_boot(self, db: Any, dev: _Device, st: Stream, now: float) -> bool:
        """Make ``st`` the device's current boot if it started later; True if it is the current boot."""
        if dev.boot == st.boot:
            return True
        if dev.boot is not None:
            cur = self._streams.get((dev.fleet, dev.device, dev.boot))
            if cur is not None and not started_later(st, cur):
                return False
            if dev.state is not None and dev.state != "online":
                dev.state, dev.reason = "online", "new_boot"   # it restarted after going offline
        dev.boot, dev.marks, dev.last_seq, dev.switched = st.boot, {}, st.max_seq, True
        return True

    def _stream(self, db: Any, fleet: str, device: str, boot: str, now: float, create_ts: int,
                now_ms: int = 0) -> Stream:
        key = (fleet, device, boot)
        st = self._streams.get(key)
        if st is None:
            st = self._streams[key] = Stream(fleet, device, boot, create_ts, now_ms)
        if create_ts < st.first_ts:
            st.first_ts = create_ts
        if now_ms and not st.first_seen_ms:   # the first sighting of the running boot (not a Will, not hist)
            st.first_seen_ms = now_ms
        return st

    # -- internals: persistence ---------------------------------------------------------------------------

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

    def _save_devices(self, db: Any, devices: Iterable[_Device]) -> None:
        new, old = [], []
        for dev in devices:
            marks = "{" + ",".join([f'"{k}":{v}' for k, v in dev.marks.items()]) + "}"   # str keys, int values
            values = (dev.state, dev.reason, dev.last_seen_ms, dev.boot, dev.last_seq, dev.meta, dev.job,
                      dev.metrics, dev.active_version, dev.status_ts, marks)
            dev.meta = dev.job = dev.metrics = None   # written: unchanged from now on
            if dev.stored:
                old.append((*values, dev.fleet, dev.device))
            else:
                new.append((dev.fleet, dev.device, *values))
                dev.stored = True
                self._known.add((dev.fleet, dev.device))
        if old:
            db.executemany(
                "UPDATE devices SET state = ?, reason = ?, last_seen_ms = ?, boot = ?, last_seq = ?,"
                " meta_json = COALESCE(?, meta_json), job_json = COALESCE(?, job_json),"
                " metrics_json = COALESCE(?, metrics_json), active_version = ?, status_ts = ?, marks_json = ?"
                " WHERE fleet = ? AND device = ?", old)
        if new:
            db.executemany(f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                           " ON CONFLICT (fleet, device) DO NOTHING", new)

    def _prune_boots(self, db: Any, dev: _Device) -> None:
        """Keep the newest ``keep_boots`` boots of a device for de-duplication."""
        dev.switched = False
        rows = db.execute("SELECT boot FROM boots WHERE fleet = ? AND device = ? AND boot != ?"
                          " ORDER BY first_seen_ms DESC, first_ts DESC", (dev.fleet, dev.device, dev.boot)).fetchall()
        for (boot,) in rows[self.keep_boots - 1:]:
            key = (dev.fleet, dev.device, boot)
            db.execute("DELETE FROM seen WHERE fleet = ? AND device = ? AND boot = ?", key)
            db.execute("DELETE FROM boots WHERE fleet = ? AND device = ? AND boot = ?", key)
            self._streams.pop(key, None)

    def _prune_replies(self) -> None:
        """Keep the newest ``max_replies`` command replies (its own short transaction)."""
        try:
            with self.backend.write() as db:
                old = db.execute(f"SELECT fleet, device, cmd_id FROM replies ORDER BY ts DESC, {self.backend.newest}"
                                 " DESC LIMIT 1000000000 OFFSET ?", (self.max_replies,)).fetchall()
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
        except BaseException:
            self._forget()
            raise
        finally:
            self._new_seen.clear()
        if self.backend.shared:
            self._forget()

    def _forget(self) -> None:
        self._devices.clear()
        self._streams.clear()

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


# -- helpers -------------------------------------------------------------------------------------------------

def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _str(x: Any) -> str | None:
    return x if isinstance(x, str) else None
