"""What one received message changes: its device's row and its boot's stream, in a
:class:`~ftedge.fleet.store.FleetStore` write transaction (a mixin; pure decisions come from
:mod:`.sequence`), and the progress, result and reply rows it adds.

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
newest ``max_replies_per_device`` per device, ``max_replies`` in all) for ``fleet send``, keyed on
``(fleet, device, cmd_id)``: a device answering another's command only files a reply of its own.
"""

from __future__ import annotations

import logging
from typing import Any

from . import personalization
from .device_rows import DeviceRow, TransactionState
from .envelope import Message
from .sequence import Stream, started_later

_INT64 = 2**63
KINDS = ("messages", "duplicates", "malformed", "ignored", "late_fills", "stale_wills", "rejected")

log = logging.getLogger(__name__)


class Report(dict):
    """Counts of one batch (every key present, zero when nothing happened) and the cmd_ids of replies stored."""

    def __init__(self, *kinds: str) -> None:
        super().__init__(dict.fromkeys(kinds, 0))
        self.replies: list[str] = []

    def add(self, key: str, n: int = 1) -> None:
        self[key] = self.get(key, 0) + n


class Precedence(TransactionState):
    """Applies messages to the state a transaction loaded (see the module docstring for which state wins)."""

    _malformed_logged: int

    def _apply(self, db: Any, m: Message, now: float, now_ms: int, rep: Report,
               rows: dict[str, list[tuple]]) -> tuple[DeviceRow, Stream] | None:
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
        fresh = self._will_is_new(db, m, dev) if will else self._seq_is_new(db, st, m, now, rep, dev)
        if not fresh:
            rep.add("duplicates")
            return dev, st
        rep.add("messages")
        dev.new_messages += 1
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
                dev.policy_state = personalization.policy_state(body)
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
            rows["personalization"].append(personalization.history_row(m.fleet, m.device, m.job, m.ts, body))
        elif m.kind == "cmdres":
            cmd_id = body.get("cmd_id")
            if isinstance(cmd_id, str) and cmd_id:
                rows["replies"].append((cmd_id, m.fleet, m.device, m.text, now_ms,
                                        0 if body.get("status") == "accepted" else 1))
        return dev, st

    @staticmethod
    def _newer(dev: DeviceRow, kind: str, seq: int) -> bool:
        if seq < dev.marks.get(kind, 0):
            return False
        dev.marks[kind] = seq
        return True

    def _will_is_new(self, db: Any, m: Message, dev: DeviceRow) -> bool:
        if db.execute("INSERT INTO seen (fleet, device, boot, seq) VALUES (?, ?, ?, 0) ON CONFLICT DO NOTHING",
                      (m.fleet, m.device, m.boot)).rowcount:
            return True
        # The same Will fires again (same bytes) if the device came back and dropped off again.
        return not m.retained and dev.boot == m.boot and dev.state == "online"

    def _seq_is_new(self, db: Any, st: Stream, m: Message, now: float, rep: Report, dev: DeviceRow) -> bool:
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
            dev.new_late_fills += 1
            db.execute("UPDATE gaps SET filled = ?, filled_ts = ? WHERE id = ?",
                       (hole.filled, int(now * 1000) if hole.complete else None, hole.id))
        return offer.new

    def _settle_boot(self, db: Any, dev: DeviceRow, st: Stream, now: float) -> bool:
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


# -- helpers -------------------------------------------------------------------------------------------------

def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _str(x: Any) -> str | None:
    return x if isinstance(x, str) else None
