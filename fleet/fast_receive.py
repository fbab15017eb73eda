"""The collector's fast receive path: a paho client whose read loop decodes a whole socket buffer of QoS 1
PUBLISH packets at once and acks them only after the store has committed them (ack-after-commit).

It reaches into paho internals (listed in ``_PAHO_INTERNALS``), which is why it lives alone here and why the
``fleet`` extra pins paho-mqtt to the minor version it was tested on. A paho without those internals makes
``fast`` False and the collector falls back to paho's stock path. See ARCHITECTURE.md.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

log = logging.getLogger("ftedge.fleet.ingest")

# -- the receive path ------------------------------------------------------------------------------------------

_PAHO_INTERNALS = ("_in_packet", "_packet_handle", "_sock_recv", "_packet_queue", "_loop_rc_handle", "_msgtime_mutex",
                   "_sock", "_protocol")
_PUBACK = 0x40
_paho_clock = getattr(mqtt, "time_func", time.monotonic)   # the clock paho's keepalive compares against


class _FastClient(mqtt.Client):
    """A paho client whose read path hands PUBLISH packets over in bulk and acknowledges them after commit.

    Stock paho reads a packet with three or more ``recv`` calls (command byte, length bytes, body), builds an
    ``MQTTMessage`` and a ``Properties`` object, calls ``on_message`` and queues a PUBACK with a wake-up byte
    on its socketpair: about eight system calls per message and more CPU than the database work.
    Here :meth:`loop_read` (called by paho's loop when the socket is readable) reads up to 256 KiB at once,
    decodes every complete PUBLISH into a ``(topic, payload, retained)`` tuple and passes each read's list to
    ``sink(generation, messages, packet_ids)``; any other packet (CONNACK, SUBACK, PUBACK of our commands,
    PINGRESP, DISCONNECT) goes to paho's own handler, so connection, subscription, keepalive, reconnection,
    TLS and publishing stay paho's.

    QoS 1 messages are acknowledged by :meth:`ack` once the writer has committed them: one PUBACK blob per
    batch instead of one packet per message, and a collector that dies mid-batch loses nothing (the broker
    redelivers the unacknowledged messages of the persistent session; the store drops what it already had).
    The broker sends at most ``Receive Maximum`` (CONNECT property, ``CollectorSettings.receive_maximum``)
    unacknowledged messages, which bounds the collector's queue. A packet id is acknowledged only on the
    connection (``generation``) it arrived on.

    It relies on paho 2.x internals (``_in_packet``, ``_packet_handle``, ``_packet_queue``, …); if those are
    missing, :attr:`fast` is False and the client reads as stock paho; with ``manual_ack`` (as the collector
    makes it) :meth:`ack_batch` then acknowledges through paho's own ``ack``, still after commit.
    """

    def __init__(self, *args: Any, sink: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast = all(hasattr(self, name) for name in _PAHO_INTERNALS) and hasattr(self, "_last_bytes_received")
        self._sink = sink
        self._rbuf = bytearray()
        self._rsock: Any = None
        self._ack_lock = threading.Lock()
        self.generation = 0          # bumped at every CONNACK; acks of another generation are dropped
        self._acks_open = False

    # called from the Collector's on_connect / on_disconnect (paho's network thread)
    def session_up(self) -> None:
        with self._ack_lock:
            self.generation += 1
            self._acks_open = True

    def session_down(self) -> None:
        with self._ack_lock:   # after this no ack is queued until the next CONNACK (reconnect() clears the queue)
            self._acks_open = False

    def ack_batch(self, generation: int | None, packet_ids: list[int]) -> bool:
        """Queue PUBACKs for ``packet_ids`` (in arrival order) if still on that connection; any thread. A
        packet id of an older connection is never acknowledged: on this one it may name another message."""
        if not packet_ids:
            return True
        with self._ack_lock:
            if generation != self.generation or not self._acks_open:
                return False
            if self.fast:
                blob = struct.pack(f">{len(packet_ids)}I", *[0x40020000 | mid for mid in packet_ids])
                self._packet_queue(_PUBACK, blob, 0, 0)
            else:
                for mid in packet_ids:
                    self.ack(mid, 1)
        return True

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        if not self.fast:
            return super().loop_read(max_packets)
        sock = self._sock
        if sock is None:
            return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
        if sock is not self._rsock:      # a new connection: drop a partial packet of the old one
            self._rbuf.clear()
            self._rsock = sock
        try:
            data = self._sock_recv(262144)
        except BlockingIOError:
            return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        except OSError as err:
            log.debug("collector socket receive failed: %s", err)
            return self._loop_rc_handle(mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST)
        if not data:
            return self._loop_rc_handle(mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST)
        with self._msgtime_mutex:
            self._last_bytes_received = _paho_clock()
        buf = self._rbuf
        buf += data
        v5 = self._protocol == mqtt.MQTTv5
        msgs: list[tuple[Any, bytes, bool]] = []
        mids: list[int] = []
        gen = self.generation
        pos, end = 0, len(buf)
        rc = mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        while end - pos >= 2:
            first = buf[pos]
            i, length, shift, complete = pos + 1, 0, 0, False
            while i < end and shift <= 21:   # remaining length: a variable byte integer of 1..4 bytes
                b = buf[i]
                i += 1
                length |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    complete = True
                    break
            if not complete and shift > 21:
                rc = mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
                break
            if not complete or i + length > end:
                break                        # incomplete: wait for more bytes
            body_end = i + length
            qos = (first >> 1) & 3
            if first & 0xF0 == 0x30 and qos < 2 and length >= 2:      # PUBLISH, QoS 0 or 1
                tlen = buf[i] << 8 | buf[i + 1]
                j = i + 2 + tlen
                if j + (2 if qos else 0) > body_end:
                    rc = mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
                    break
                topic_b = bytes(buf[i + 2:j])
                if qos:
                    mids.append(buf[j] << 8 | buf[j + 1])
                    j += 2
                if v5:                       # skip the properties (none of them matters to the store)
                    plen, shift = 0, 0
                    while j < body_end:
                        b = buf[j]
                        plen |= (b & 0x7F) << shift
                        shift += 7
                        j += 1
                        if b < 0x80:
                            break
                    j += plen
                if j > body_end:
                    rc = mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
                    break
                try:
                    topic: Any = topic_b.decode("utf-8")
                except UnicodeDecodeError:
                    topic = topic_b          # not a str: the store counts it as malformed
                msgs.append((topic, bytes(buf[j:body_end]), bool(first & 1)))
                pos = body_end
                continue
            if msgs:                         # keep the order: what came before this packet goes first
                self._sink(gen, msgs, mids)
                msgs, mids = [], []
            self._in_packet = {"command": first, "have_remaining": 1, "remaining_count": [],
                               "remaining_mult": 1, "remaining_length": length,
                               "packet": bytearray(buf[i:body_end]), "to_process": 0, "pos": 0}
            pos = body_end
            try:
                rc = self._packet_handle()
            except Exception as exc:  # noqa: BLE001 - paho's MalformedPacket and decoding errors
                log.debug("malformed packet from the broker: %s", exc)
                rc = mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
            self._in_packet = {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
                               "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0}
            gen = self.generation
            if rc or self._sock is not sock:
                break
        if msgs:
            self._sink(gen, msgs, mids)
        if self._sock is not sock:
            return rc
        del buf[:pos]
        if rc:
            return self._loop_rc_handle(rc)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
