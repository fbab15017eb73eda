"""Durable outbox for every device→host MQTT message (SQLite in WAL mode, stdlib only).

The agent enqueues a message *before* publishing it and deletes it on PUBACK, so nothing it produced is
lost to a broker outage, a process kill or a power cut. ``enqueue`` adds the envelope of the MQTT
contract (ARCHITECTURE.md, "The MQTT contract"): ``v`` (1), ``ts`` (epoch ms), ``dev``, ``boot`` (a new id per agent start),
``seq`` (per boot 1, 2, 3, … with no holes, assigned in the same transaction that stores the message and
never reused, even after acknowledged rows are deleted) and ``hist``. ``hist`` is stored as false and
set at publish time by ``Message.payload``: true when the message is re-published (handed to the client
before, or left over from an earlier boot). ``pending()`` lists unacknowledged messages, older boots
first, then by ``seq``. Bodies are JSON objects; NaN and ±Infinity (a diverged loss) are stored as
``null`` rather than failing the message.

Bounds (``max_bytes`` of stored payload, default 64 MiB; ``max_age_s``, default 7 days), enforced inside
every ``enqueue``:

1. Messages are **thinned, never dropped**: the body is replaced by a stub that keeps the envelope and
   ``seq`` plus ``{"job": <job, if the body had one>, "thinned": true}``. Consumers still see every
   ``seq`` (no false loss alarms); only the bytes are gone.
2. Thinnable messages older than ``max_age_s`` are thinned.
3. Over ``max_bytes``, the oldest ``progress`` messages are thinned first, then ``meta`` and ``job``
   snapshots superseded by a newer one on the same topic (retained state: only the newest matters),
   until the outbox is back under 90 % of ``max_bytes``.
4. ``result``, ``status`` and ``cmdres`` messages, and the newest ``meta``/``job`` snapshot of each
   topic, are never thinned or dropped. If the outbox is still over ``max_bytes`` after everything
   allowed was thinned, everything is kept and ``enforce_bounds()`` reports ``over_budget: True``
   (``Outbox.last_bounds`` holds the report of the latest ``enqueue``; a warning is logged once per
   transition).

``max_bytes`` counts payload bytes, not the size of the SQLite file (page overhead, indexes and the WAL
come on top; freed pages are reused, the file does not shrink).
"""

from __future__ import annotations

import json
import logging
import math
from ftedge import sqlite_db
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftedge.errors import FtedgeError, OutboxError
from ftedge.mqtt.contract import CMDRES, ENVELOPE_KEYS, JOB, MESSAGE_KINDS, META, PROGRESS, RESULT, STATUS

ENVELOPE_VERSION = 1
SCHEMA_VERSION = 1
KINDS = MESSAGE_KINDS  # status meta job progress result cmdres (ftedge.mqtt.contract)

# messages.thin_rank: what enforce_bounds may thin, in this order. NULL: never (status, result,
# cmdres) or already thinned. _CURRENT: the newest meta/job snapshot of its topic (kept).
_PROGRESS, _SUPERSEDED, _CURRENT = 1, 2, 3
_LOW_WATER = 0.9  # thin down to this fraction of max_bytes so the next enqueues need no thinning
_BATCH = 256

log = logging.getLogger(__name__)

_SCHEMA = [
    # Migration i brings the file from user_version i to i + 1 (one transaction each).
    """
    CREATE TABLE boots (
        ord INTEGER PRIMARY KEY AUTOINCREMENT,      -- creation order of boots
        boot TEXT NOT NULL UNIQUE,
        last_seq INTEGER NOT NULL DEFAULT 0,        -- the seq counter: survives deleted rows
        started_ms INTEGER NOT NULL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,       -- never reused: a late ack cannot hit a new row
        boot_ord INTEGER NOT NULL REFERENCES boots (ord),
        boot TEXT NOT NULL,
        seq INTEGER NOT NULL,
        topic TEXT NOT NULL,
        kind TEXT NOT NULL,
        qos INTEGER NOT NULL,
        retain INTEGER NOT NULL,
        ts_ms INTEGER NOT NULL,
        body TEXT NOT NULL,                         -- compact JSON incl. envelope, hist false
        nbytes INTEGER NOT NULL,                    -- UTF-8 size of body
        attempts INTEGER NOT NULL DEFAULT 0,
        thinned INTEGER NOT NULL DEFAULT 0,
        thin_rank INTEGER,
        UNIQUE (boot_ord, seq)
    );
    CREATE INDEX messages_thin ON messages (thin_rank, boot_ord, seq) WHERE thin_rank IS NOT NULL;
    CREATE INDEX messages_age ON messages (ts_ms) WHERE thin_rank IS NOT NULL;
    CREATE TABLE totals (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        depth INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    );
    INSERT INTO totals VALUES (1, 0, 0);
    CREATE TRIGGER messages_ins AFTER INSERT ON messages BEGIN
        UPDATE totals SET depth = depth + 1, bytes = bytes + NEW.nbytes;
    END;
    CREATE TRIGGER messages_del AFTER DELETE ON messages BEGIN
        UPDATE totals SET depth = depth - 1, bytes = bytes - OLD.nbytes;
    END;
    CREATE TRIGGER messages_upd AFTER UPDATE OF nbytes ON messages BEGIN
        UPDATE totals SET bytes = bytes + NEW.nbytes - OLD.nbytes;
    END;
    """,
]
assert len(_SCHEMA) == SCHEMA_VERSION

_COLUMNS = "id, topic, kind, qos, retain, boot, seq, body, attempts, thinned"


_POWER_SAFE = frozenset({RESULT, STATUS, CMDRES})  # fsynced at enqueue


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True)
class Message:
    """One stored message, as of when it was read (``attempts`` does not update itself)."""

    id: int
    topic: str
    kind: str
    qos: int
    retain: bool
    boot: str
    seq: int
    body: dict[str, Any]
    attempts: int = 0
    thinned: bool = False

    def is_replay(self, current_boot: str) -> bool:
        """True if this publish is a re-publish: handed to the client before, or from an older boot."""
        return self.attempts > 0 or self.boot != current_boot

    def payload(self, hist: bool) -> bytes:
        return _dumps({**self.body, "hist": bool(hist)}).encode("utf-8")


class Outbox:
    """Durable, bounded, thread-safe queue of device→host messages (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        device: str,
        boot: str | None = None,
        max_bytes: int = 64 * 2**20,
        max_age_s: float = 7 * 86400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not device:
            raise OutboxError("Outbox needs a non-empty device id (the `dev` of the envelope)")
        if max_bytes <= 0 or max_age_s <= 0:
            raise OutboxError(f"max_bytes ({max_bytes}) and max_age_s ({max_age_s}) must be positive")
        self.path = Path(path)
        self.device = device
        self.boot = boot or uuid.uuid4().hex[:12]
        self.max_bytes = int(max_bytes)
        self.max_age_s = float(max_age_s)
        self.last_bounds: dict[str, Any] = {}
        self._clock = clock
        self._lock = threading.Lock()
        self._sync = ""
        self._boot_ord: int | None = None
        self._ephemeral_seq = 0  # the highest seq handed out by `ephemeral` (not stored)
        self._db = sqlite_db.connect(
            self.path, error=OutboxError, what="outbox", synchronous=None,
            damaged_hint="if the file is damaged, move it aside (it may hold unsent messages) and restart the agent")
        try:
            self._migrate()
        except sqlite_db.Error as exc:
            self._db.close()
            raise OutboxError(
                f"cannot open outbox {self.path}: {exc}; if the file is damaged, move it aside "
                "(it may hold unsent messages) and restart the agent"
            ) from exc
        except BaseException:
            self._db.close()
            raise

    # -- writing --------------------------------------------------------------------------------

    def enqueue(self, topic: str, body: dict, *, kind: str, qos: int = 1, retain: bool = False) -> Message:
        """Store ``body`` + envelope under the next ``seq`` of this boot.

        When this returns the message survives a process kill; ``result``, ``status`` and ``cmdres`` also
        survive a power cut (fsynced commit). Telemetry (``progress``) and retained snapshots (``meta``,
        ``job``) skip the per-message fsync — the next fsynced commit carries them — which more than
        doubles the enqueue rate; a power cut can lose only the newest of them, together with their seqs,
        so no hole appears (the next start is a new boot).
        """
        _check(topic, body, kind, qos)
        rank = {PROGRESS: _PROGRESS, META: _CURRENT, JOB: _CURRENT}.get(kind)
        try:
            with self._tx(durable=kind in _POWER_SAFE) as db:
                # The boot is registered by its first message, so opening only to read (stats) writes nothing.
                boot_ord = self._boot_ord if self._boot_ord is not None else self._register_boot(db)
                # MAX(): seqs handed out by `ephemeral` while the disk was full are never reused.
                db.execute("UPDATE boots SET last_seq = MAX(last_seq + 1, ?) WHERE ord = ?",
                           (self._ephemeral_seq + 1, boot_ord))
                seq = db.execute("SELECT last_seq FROM boots WHERE ord = ?", (boot_ord,)).fetchone()[0]
                ts = int(self._clock() * 1000)
                envelope = {"v": ENVELOPE_VERSION, "ts": ts, "dev": self.device, "boot": self.boot, "seq": seq,
                            "hist": False}
                try:
                    text = _encode({**body, **envelope})
                except (TypeError, ValueError) as exc:
                    raise OutboxError(
                        f"the {kind} body for {topic} is not JSON ({exc}); use only dict/list/str/int/float/"
                        "bool/None (e.g. float() numpy scalars, .tolist() arrays)"
                    ) from exc
                mid = db.execute(
                    "INSERT INTO messages (boot_ord, boot, seq, topic, kind, qos, retain, ts_ms, body, nbytes,"
                    " thin_rank) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (boot_ord, self.boot, seq, topic, kind, qos, int(retain), ts, text,
                     len(text.encode("utf-8")), rank),
                ).lastrowid
                if rank == _CURRENT:
                    db.execute(
                        "UPDATE messages SET thin_rank = ? WHERE thin_rank = ? AND topic = ? AND id < ?",
                        (_SUPERSEDED, _CURRENT, topic, mid),
                    )
                report = self._enforce(db)
            self._boot_ord = boot_ord  # only once committed
        except sqlite_db.Error as exc:
            raise OutboxError(f"cannot store a {kind} message in {self.path}: {exc}; check free space") from exc
        if report["over_budget"] and not self.last_bounds.get("over_budget"):
            log.warning("outbox %s over its %d-byte budget (%d bytes) with nothing left to thin; keeping all",
                        self.path, self.max_bytes, report["bytes"])
        self.last_bounds = report
        return Message(mid, topic, kind, qos, bool(retain), self.boot, seq, json.loads(text))

    def ephemeral(self, topic: str, body: dict, *, kind: str) -> Message:
        """The next ``seq`` and envelope for a message that cannot be stored (a full disk), without storing it.

        The caller publishes it directly: it is not retried after a reconnect or a restart (if it is lost,
        consumers see the hole it leaves, which is the truth). Later :meth:`enqueue` calls continue after it,
        so every seq of the boot stays unique. Needs the boot's first message to have been stored.
        """
        _check(topic, body, kind, 1)
        if self._boot_ord is None:
            raise OutboxError(f"cannot send a {kind} message before the boot's first message is stored in "
                              f"{self.path}; free space on its filesystem")
        with self._lock:
            row = self._db.execute("SELECT last_seq FROM boots WHERE ord = ?", (self._boot_ord,)).fetchone()
            self._ephemeral_seq = seq = max(self._ephemeral_seq, row[0] if row else 0) + 1
        envelope = {"v": ENVELOPE_VERSION, "ts": int(self._clock() * 1000), "dev": self.device, "boot": self.boot,
                    "seq": seq, "hist": False}
        return Message(0, topic, kind, 1, False, self.boot, seq, json.loads(_encode({**body, **envelope})))

    def mark_attempt(self, id: int) -> bool:
        """Count one hand-over to the MQTT client; False if ``id`` is gone (already acknowledged)."""
        with self._tx(durable=False) as db:
            return db.execute("UPDATE messages SET attempts = attempts + 1 WHERE id = ?", (id,)).rowcount > 0

    def ack(self, id: int) -> bool:
        """Delete the message (on PUBACK); False if it was already gone."""
        with self._tx(durable=False) as db:
            return db.execute("DELETE FROM messages WHERE id = ?", (id,)).rowcount > 0

    def settle(self, acked: list[int], attempted: list[int]) -> None:
        """Batch form of :meth:`ack` and :meth:`mark_attempt`: one transaction per pump pass."""
        if not acked and not attempted:
            return
        with self._tx(durable=False) as db:
            if acked:
                db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in acked])
            if attempted:
                db.executemany("UPDATE messages SET attempts = attempts + 1 WHERE id = ?", [(i,) for i in attempted])

    def enforce_bounds(self) -> dict[str, Any]:
        """Thin per the module docstring; returns ``thinned``, ``depth``, ``bytes``, ``over_budget``."""
        with self._tx(durable=False) as db:
            self.last_bounds = self._enforce(db)
        return self.last_bounds

    # -- reading --------------------------------------------------------------------------------

    def pending(self, limit: int | None = None) -> list[Message]:
        """Unacknowledged messages, oldest first: boots in creation order, then ``seq``."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM messages ORDER BY boot_ord, seq LIMIT ?",
                (-1 if limit is None else int(limit),),
            ).fetchall()
        return [
            Message(i, t, k, q, bool(r), b, s, json.loads(body), a, bool(th))
            for i, t, k, q, r, b, s, body, a, th in rows
        ]

    def depth(self) -> int:
        with self._lock:
            return self._totals()[0]

    def size_bytes(self) -> int:
        """Stored payload bytes (what ``max_bytes`` bounds)."""
        with self._lock:
            return self._totals()[1]

    def stats(self) -> dict[str, Any]:
        """Depth, bytes, age of the oldest message, counts per kind. Scans the table: not per message."""
        with self._lock:
            depth, nbytes = self._totals()
            first = self._db.execute("SELECT ts_ms FROM messages ORDER BY boot_ord, seq LIMIT 1").fetchone()
            kinds = dict(self._db.execute("SELECT kind, COUNT(*) FROM messages GROUP BY kind").fetchall())
            thinned = self._db.execute("SELECT COUNT(*) FROM messages WHERE thinned = 1").fetchone()[0]
        return {
            "depth": depth,
            "bytes": nbytes,
            "max_bytes": self.max_bytes,
            "oldest_age_s": None if first is None else max(0.0, self._clock() - first[0] / 1000),
            "kinds": {k: kinds.get(k, 0) for k in KINDS},
            "thinned": thinned,
            "over_budget": nbytes > self.max_bytes,
            "boot": self.boot,
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    @contextmanager
    def _tx(self, durable: bool) -> Iterator[sqlite_db.Connection]:
        """One write transaction under the lock.

        WAL + ``synchronous=FULL`` fsyncs the WAL at every commit, so an enqueued message survives a
        power cut, not only a process kill (``NORMAL`` may lose the last commits on power loss).
        Acks, attempt counts and thinning commit with ``NORMAL``: losing one to a power cut only means
        a duplicate re-publish (consumers de-duplicate) or a body thinned again, and the next FULL
        commit fsyncs them along.
        """
        with self._lock:
            sync = "FULL" if durable else "NORMAL"
            if sync != self._sync:
                self._db.execute(f"PRAGMA synchronous={sync}")
                self._sync = sync
            with sqlite_db.transaction(self._db) as db:
                yield db

    def _migrate(self) -> None:
        """Bring the file to SCHEMA_VERSION (``PRAGMA user_version``); checked inside the write lock."""
        with self._lock:
            self._db.execute("PRAGMA synchronous=FULL")
            self._sync = "FULL"
            sqlite_db.migrate(self._db, _SCHEMA, error=OutboxError, what=f"the outbox {self.path}",
                              newer_hint="upgrade ftedge, or move the file aside (it may hold unsent messages)")

    def _register_boot(self, db: sqlite_db.Connection) -> int:
        now = int(self._clock() * 1000)
        db.execute("INSERT OR IGNORE INTO boots (boot, started_ms) VALUES (?, ?)", (self.boot, now))
        ord_ = db.execute("SELECT ord FROM boots WHERE boot = ?", (self.boot,)).fetchone()[0]
        # Forget old boots with nothing left (an explicitly reused boot id keeps its counter meanwhile).
        db.execute(
            "DELETE FROM boots WHERE ord != ? AND started_ms < ?"
            " AND NOT EXISTS (SELECT 1 FROM messages WHERE messages.boot_ord = boots.ord)",
            (ord_, now - int(self.max_age_s * 1000)),
        )
        return ord_

    def _totals(self) -> tuple[int, int]:
        return self._db.execute("SELECT depth, bytes FROM totals WHERE id = 1").fetchone()

    def _enforce(self, db: sqlite_db.Connection) -> dict[str, Any]:
        """Age, then byte bounds; O(log n) when nothing needs thinning (partial indexes)."""
        thinned = 0
        cutoff = int((self._clock() - self.max_age_s) * 1000)
        thinnable = "thin_rank IS NOT NULL AND thin_rank < ?"  # progress, superseded snapshots
        oldest = db.execute(
            f"SELECT ts_ms FROM messages INDEXED BY messages_age WHERE {thinnable} ORDER BY ts_ms LIMIT 1",
            (_CURRENT,),
        ).fetchone()
        if oldest is not None and oldest[0] < cutoff:
            while rows := db.execute(
                f"SELECT id, body, nbytes FROM messages INDEXED BY messages_age WHERE {thinnable} AND ts_ms < ?"
                " ORDER BY ts_ms LIMIT ?",
                (_CURRENT, cutoff, _BATCH),
            ).fetchall():
                thinned += _thin(db, rows)[0]
        depth, total = db.execute("SELECT depth, bytes FROM totals WHERE id = 1").fetchone()
        if total > self.max_bytes:
            excess = total - int(self.max_bytes * _LOW_WATER)
            for rank in (_PROGRESS, _SUPERSEDED):
                while excess > 0 and (rows := db.execute(
                    "SELECT id, body, nbytes FROM messages WHERE thin_rank = ? ORDER BY boot_ord, seq LIMIT ?",
                    (rank, _BATCH),
                ).fetchall()):
                    n, saved = _thin(db, rows, excess)
                    thinned += n
                    excess -= saved
            total = db.execute("SELECT bytes FROM totals WHERE id = 1").fetchone()[0]
        return {"thinned": thinned, "depth": depth, "bytes": total, "over_budget": total > self.max_bytes}


def _check(topic: str, body: dict, kind: str, qos: int) -> None:
    if kind not in KINDS:
        raise OutboxError(f"unknown message kind {kind!r}; use one of {', '.join(KINDS)}")
    if not isinstance(topic, str) or not topic or "+" in topic or "#" in topic or "\0" in topic:
        raise OutboxError(f"cannot publish to topic {topic!r}; give a non-empty topic without + or # wildcards")
    if qos not in (0, 1, 2):
        raise OutboxError(f"qos must be 0, 1 or 2, not {qos!r}")
    if not isinstance(body, dict):
        raise OutboxError(f"a message body must be a dict (a JSON object), not {type(body).__name__}")
    clash = [k for k in ENVELOPE_KEYS if k in body]
    if clash:
        raise OutboxError(f"the body for {topic} sets envelope field(s) {clash}; the outbox adds them, rename yours")


def _encode(obj: dict[str, Any]) -> str:
    """Compact JSON; NaN and ±Infinity (not JSON) become null instead of failing the message."""
    try:
        return _dumps(obj)
    except ValueError:
        json.dumps(obj)  # re-raises if the problem is not an out-of-range float (e.g. a cycle)
    return _dumps(_finite(obj))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _stub(text: str) -> str:
    old = json.loads(text)
    stub: dict[str, Any] = {"job": old["job"]} if "job" in old else {}
    stub["thinned"] = True
    stub.update((k, old[k]) for k in ENVELOPE_KEYS if k in old)
    return _dumps(stub)


def _thin(db: sqlite_db.Connection, rows: list[tuple[int, str, int]], excess: int | None = None) -> tuple[int, int]:
    """Thin ``rows`` in order (until ``excess`` bytes are saved, if given); returns (rows thinned, bytes saved).

    A body already smaller than its stub is left as is but no longer counts as thinnable.
    """
    updates, saved = [], 0
    for mid, text, nbytes in rows:
        stub = _stub(text)
        size = len(stub.encode("utf-8"))
        if size < nbytes:
            updates.append((stub, size, 1, mid))
            saved += nbytes - size
        else:
            updates.append((text, nbytes, 0, mid))
        if excess is not None and saved >= excess:
            break
    db.executemany("UPDATE messages SET body = ?, nbytes = ?, thinned = ?, thin_rank = NULL WHERE id = ?", updates)
    return sum(u[2] for u in updates), saved
