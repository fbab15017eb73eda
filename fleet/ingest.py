"""The fleet collector: an MQTT v5 subscriber that feeds a :class:`~ftedge.fleet.store.FleetStore`.

Threads: paho's network thread (``loop_start``) owns the socket. Its read path (:class:`_FastClient`) decodes
every complete PUBLISH of a ``recv`` at once and puts the list on a queue; it never blocks. One *writer*
thread drains the queue in batches (up to ``batch_size`` messages or ``batch_interval_s`` after the first
one) into ``FleetStore.ingest_batch`` (one transaction per batch), then acknowledges the batch's QoS 1
messages (one PUBACK blob), runs ``check_gaps`` every ``gap_check_s`` and, for every device with a newly
counted seq hole, publishes a ``resync`` command (``cmd/resync``, ResponseTopic under the device's
``cmdres/<collector id>``).

The session is persistent (``clean_start=False`` + ``SessionExpiryInterval``): messages published while
the collector is down are queued by the broker and arrive when it returns; retained state is replayed
on every subscribe and de-duplicated by ``(boot, seq)``. Messages are acknowledged only after they are
committed, so a collector killed mid-batch loses nothing: the broker redelivers what was not acknowledged
and the store drops what it already had. The CONNECT property ``Receive Maximum``
(``receive_maximum``, default 20,000) caps the messages the broker sends ahead of the acknowledgements,
which bounds the collector's queue (memory) and pushes a backlog back to the broker; set the broker's
per-client queue limit accordingly (Mosquitto: ``max_queued_messages``, default 1000, beyond which it
drops QoS 1 messages for the client).

With ``share="GROUP"`` the collector subscribes to ``$share/GROUP/ftedge/v1/+/+/#`` so several
collectors (each with its own database) split a fleet, and additionally to its own reply topic so
``send`` always sees its replies. Caveats of shared subscriptions: the broker does not replay retained
messages to them (MQTT 5, 4.8.2), and Mosquitto hands out messages round-robin per message, so one
device's stream is split across collectors — seq holes cannot be judged per collector, hence gap
detection is off by default when sharing (turn it on with ``detect_gaps=True`` on a broker that routes by
publisher, e.g. EMQX ``hash_clientid``).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import re
import ssl
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ftedge.errors import FtedgeError

from .store import TOPIC_ROOT, FleetStore

log = logging.getLogger(__name__)

_STOP = object()
_TOPIC_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class CollectorError(FtedgeError):
    """The collector cannot be configured or cannot send a command."""


@dataclass
class CollectorSettings:
    """Connection and batching options (connection fields as ``device_agent``'s ``LinkSettings``)."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "ftedge-collector"
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)   # never in a repr or a log line
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: int = 30
    session_expiry: int = 86400
    share: str | None = None            # shared-subscription group: several collectors split the fleet
    listen: bool = True                 # False: subscribe only to this collector's replies (a one-shot `send`)
    detect_gaps: bool | None = None     # None: on unless `share` is set (see the module docstring)
    batch_size: int = 5000              # messages per transaction at most …
    batch_interval_s: float = 0.2       # … or what arrived this long after the first one
    receive_maximum: int = 20000        # unacknowledged messages the broker may send us (MQTT v5 Receive Maximum)
    fast_receive: bool = True           # False: stock paho receive path (ack on receipt), e.g. on a new paho
    gap_check_s: float = 1.0
    command_expiry_s: int = 300         # MessageExpiryInterval of resync commands
    max_packet_size: int = 256 * 1024   # MQTT v5 Maximum Packet Size: the broker drops bigger messages for us

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> CollectorSettings:
        """``mqtt://HOST[:PORT]`` (default 1883) or ``mqtts://HOST[:PORT]`` (TLS, default 8883)."""
        usage = "write mqtt://HOST[:PORT], or mqtts://HOST[:PORT] for TLS"
        if "://" not in url:
            raise CollectorError(f"broker URL {url!r} has no scheme; {usage}")
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise CollectorError(f"broker URL scheme {parts.scheme!r} is not mqtt:// or mqtts://; {usage}")
        if parts.username is not None or parts.password is not None:
            raise CollectorError("the broker URL must not contain credentials: pass username/password separately")
        if parts.path not in ("", "/") or parts.query or parts.fragment or not parts.hostname:
            raise CollectorError(f"broker URL {url!r} is not of the form HOST[:PORT]; {usage}")
        try:
            port = parts.port
        except ValueError as exc:
            raise CollectorError(f"broker URL {url!r}: {exc}; {usage}") from exc
        tls = parts.scheme == "mqtts"
        return cls(host=parts.hostname, port=port or (8883 if tls else 1883), tls=tls, **kwargs)


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
    missing, :attr:`fast` is False and the client behaves as stock paho (acknowledging on receipt).
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

    def ack(self, generation: int, packet_ids: list[int]) -> bool:
        """Queue PUBACKs for ``packet_ids`` (in arrival order) if still on that connection; any thread."""
        if not packet_ids:
            return True
        with self._ack_lock:
            if generation != self.generation or not self._acks_open:
                return False
            blob = struct.pack(f">{len(packet_ids)}I", *[0x40020000 | mid for mid in packet_ids])
            self._packet_queue(_PUBACK, blob, 0, 0)
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


class Collector:
    """Subscribe to the fleet, write it into ``store`` in batches, ask for resync on loss, send commands."""

    def __init__(self, store: FleetStore, settings: CollectorSettings | None = None, **kwargs: Any) -> None:
        known = {f.name for f in fields(CollectorSettings)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise CollectorError(f"unknown collector option(s) {unknown}; known: {sorted(known)}")
        s = replace(settings, **kwargs) if settings is not None else CollectorSettings(**kwargs)
        if s.share is not None and (not s.share or _TOPIC_UNSAFE.search(s.share)):
            raise CollectorError(f"share group {s.share!r} must be a non-empty name of letters, digits, . _ -")
        if not s.client_id:
            raise CollectorError("the collector needs a client_id (its persistent session is keyed by it)")
        self.settings = s
        self.store = store
        self.host_id = _TOPIC_UNSAFE.sub("_", s.client_id)   # the {host} of cmdres/{host}
        self.detect_gaps = (s.share is None) if s.detect_gaps is None else bool(s.detect_gaps)
        self.connected = threading.Event()
        self.subscribed = threading.Event()   # SUBACK of the current connection received
        self.refused: str | None = None       # the last CONNACK refusal reason (bad credentials, not authorized)
        self.stats: dict[str, int] = {"received": 0, "processed": 0, "batches": 0, "errors": 0, "resyncs": 0,
                                      "connections": 0, "unacked": 0}
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cv = threading.Condition()     # notified after every committed batch
        self._writer: threading.Thread | None = None
        self._closing = False
        c = _FastClient(mqtt.CallbackAPIVersion.VERSION2, client_id=s.client_id, protocol=mqtt.MQTTv5,
                        sink=self._received)
        c.fast = c.fast and s.fast_receive
        c.reconnect_delay_set(min_delay=1, max_delay=5)
        c.max_inflight_messages_set(100)
        if s.username:
            c.username_pw_set(s.username, s.password)
        if s.tls:
            c.tls_set(ca_certs=s.ca_file, certfile=s.cert_file, keyfile=s.key_file, cert_reqs=ssl.CERT_REQUIRED)
        c.on_connect = self._connected
        c.on_disconnect = self._disconnected
        c.on_message = self._message
        c.on_subscribe = self._subscribed
        self.client = c

    # -- lifecycle ---------------------------------------------------------------------------------------

    @property
    def subscriptions(self) -> list[str]:
        own = f"{TOPIC_ROOT}/+/+/cmdres/{self.host_id}"
        if not self.settings.listen:
            return [own]
        if self.settings.share:
            return [f"$share/{self.settings.share}/{TOPIC_ROOT}/+/+/#", own]
        return [f"{TOPIC_ROOT}/+/+/#"]

    def start(self) -> Collector:
        """Connect in the background (a broker that is down is retried) and start the writer."""
        if self._writer is not None:
            return self
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name="ftedge-collector-writer", daemon=True)
        self._writer.start()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry
        props.ReceiveMaximum = max(1, min(65535, int(self.settings.receive_maximum)))
        props.MaximumPacketSize = max(1024, min(268435455, int(self.settings.max_packet_size)))
        self.client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive,
                                  clean_start=False, properties=props)
        self.client.loop_start()
        return self

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """True once connected and subscribed (SUBACK received)."""
        return self.subscribed.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Disconnect (the broker keeps the session and queues for it), then commit what was received."""
        if self._writer is None:
            return
        self._closing = True
        if self.connected.is_set():   # commit and acknowledge what arrived, so the broker does not resend it
            self.flush(min(timeout, 5.0))
        self.client.disconnect()
        self.client.loop_stop()
        self.connected.clear()
        self.subscribed.clear()
        self._queue.put(_STOP)
        self._writer.join(timeout)
        if self._writer.is_alive():
            log.error("the collector writer did not stop within %.0f s", timeout)
        self._writer = None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every message received so far is committed; False on timeout."""
        target = self.stats["received"]
        deadline = time.monotonic() + timeout
        with self._cv:
            while self.stats["processed"] < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cv.wait(min(remaining, 0.1))
        return True

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- commands ----------------------------------------------------------------------------------------

    def reply_topic(self, fleet: str, device: str) -> str:
        return f"{TOPIC_ROOT}/{fleet}/{device}/cmdres/{self.host_id}"

    def publish_command(self, fleet: str, device: str, verb: str, args: dict[str, Any] | None = None,
                        cmd_id: str | None = None, expiry_s: int | None = None) -> str:
        """Publish ``{"cmd_id", "args"}`` on ``cmd/{verb}`` (QoS 1, ResponseTopic, CorrelationData); returns
        the cmd_id. Does not wait (see :meth:`send`)."""
        for name, value in (("fleet", fleet), ("device", device), ("verb", verb)):
            if not isinstance(value, str) or not value or any(ch in value for ch in "/+#\0"):
                raise CollectorError(f"{name} {value!r} must be a non-empty topic segment (no / + #)")
        if args is not None and not isinstance(args, dict):
            raise CollectorError(f"command args must be a JSON object (dict), not {type(args).__name__}")
        cmd_id = cmd_id or f"{verb}-{uuid.uuid4().hex}"
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic(fleet, device)
        props.CorrelationData = cmd_id.encode()
        props.MessageExpiryInterval = max(1, int(expiry_s or self.settings.command_expiry_s))
        payload = json.dumps({"cmd_id": cmd_id, "args": args or {}}, separators=(",", ":")).encode()
        info = self.client.publish(f"{TOPIC_ROOT}/{fleet}/{device}/cmd/{verb}", payload, qos=1, retain=False,
                                   properties=props)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):   # NO_CONN: paho sends it later
            raise CollectorError(f"could not publish {verb} to {fleet}/{device}: {mqtt.error_string(info.rc)}")
        return cmd_id

    def request_resync(self, fleet: str, device: str) -> str:
        """Ask a device to republish its retained state; returns the cmd_id (``resync-<uuid>``)."""
        cmd_id = self.publish_command(fleet, device, "resync", {}, cmd_id=f"resync-{uuid.uuid4()}")
        self.stats["resyncs"] += 1
        return cmd_id

    def send(self, fleet: str, device: str, verb: str, args: dict[str, Any] | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        """Request/response: publish the command and return the device's first reply (its ``cmdres`` body:
        ``cmd_id``, ``status`` accepted/rejected/done/error, ``code``, ``detail``, …).

        Raises ``TimeoutError`` if the broker is not reachable or no reply arrives within ``timeout`` s.
        The reply is stored (``FleetStore.reply``), so a late one can still be looked up by cmd_id; only a
        reply published by ``device`` itself (on its own ``cmdres`` topic) counts.
        """
        deadline = time.monotonic() + timeout
        if self._writer is None:
            raise CollectorError("start() the collector before send()")
        if not self.subscribed.wait(timeout):   # the reply subscription must exist before the command leaves
            raise TimeoutError(self.not_connected(timeout))
        remaining = max(0.0, deadline - time.monotonic())
        cmd_id = self.publish_command(fleet, device, verb, args, expiry_s=max(1, math.ceil(remaining)))
        with self._cv:
            while True:
                reply = self.store.reply(cmd_id, fleet, device)
                if reply is not None:
                    return reply
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no reply from {fleet}/{device} to {verb} (cmd_id {cmd_id}) within "
                                       f"{timeout:g} s; is the device online?")
                self._cv.wait(min(remaining, 0.25))

    # -- writer thread -----------------------------------------------------------------------------------

    def _write_loop(self) -> None:
        s = self.settings
        next_check = time.monotonic() + s.gap_check_s
        stopping = False
        while not stopping:
            chunks: list[tuple[int | None, list[tuple[Any, bytes, bool]], list[int]]] = []
            n = 0
            wait = max(0.0, next_check - time.monotonic()) if self.detect_gaps else 0.5
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is _STOP:
                stopping = True
            elif item is not None:
                chunks.append(item)
                n = len(item[1])
                deadline = time.monotonic() + s.batch_interval_s
                while n < s.batch_size:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        try:
                            item = self._queue.get(timeout=remaining)
                        except queue.Empty:
                            break
                    if item is _STOP:
                        stopping = True
                        break
                    chunks.append(item)
                    n += len(item[1])
            if chunks:
                batch = chunks[0][1] if len(chunks) == 1 else [m for c in chunks for m in c[1]]
                self._ingest(batch, chunks)
            if self.detect_gaps and (time.monotonic() >= next_check or stopping):
                next_check = time.monotonic() + s.gap_check_s
                if not stopping:
                    self._check_gaps()

    def _ingest(self, batch: list[tuple[Any, bytes, bool]],
                chunks: list[tuple[int | None, list[Any], list[int]]] | None = None) -> None:
        try:
            try:
                self.store.ingest_batch(batch)
                self.stats["batches"] += 1
            except Exception:  # noqa: BLE001 - isolate the message that breaks the batch, keep the rest
                if len(batch) == 1:
                    raise
                log.warning("a batch of %d message(s) failed; storing them one by one", len(batch))
                for item in batch:
                    try:
                        self.store.ingest_batch([item])
                    except Exception:  # noqa: BLE001
                        self.stats["errors"] += 1
                        log.exception("could not store a message on %s; it is lost to this collector", item[0])
        except Exception:  # noqa: BLE001 - a bad batch (disk full, …) must not stop the collector
            self.stats["errors"] += 1
            log.exception("could not store a message on %s; it is lost to this collector", batch[0][0])
        finally:
            # Acknowledge after the commit (a message that could not be stored is acknowledged too: the broker
            # resending it would not help). Chunks of an older connection are not acknowledged: the broker
            # resends them on the new one and the store drops the duplicates.
            gen, mids = None, []
            for g, _, ids in chunks or ():
                if g != gen and mids:
                    self._ack(gen, mids)
                    mids = []
                gen = g
                mids.extend(ids)
            if mids:
                self._ack(gen, mids)
            with self._cv:
                self.stats["processed"] += len(batch)
                self._cv.notify_all()

    def _ack(self, generation: int | None, mids: list[int]) -> None:
        if generation is None:
            return   # stock paho path: acknowledged on receipt
        try:
            if not self.client.ack(generation, mids):
                self.stats["unacked"] += len(mids)
        except Exception:  # noqa: BLE001
            log.exception("could not acknowledge %d message(s)", len(mids))

    def _check_gaps(self) -> None:
        try:
            holes = self.store.check_gaps()
        except Exception:  # noqa: BLE001
            self.stats["errors"] += 1
            log.exception("gap check failed")
            return
        for fleet, device in sorted({(h["fleet"], h["device"]) for h in holes}):
            if not self.connected.is_set():
                break
            try:
                cmd_id = self.request_resync(fleet, device)
                log.info("asked %s/%s to resync (%s)", fleet, device, cmd_id)
            except Exception:  # noqa: BLE001
                log.exception("could not ask %s/%s to resync", fleet, device)

    # -- paho callbacks (network thread; never block) ----------------------------------------------------------

    def not_connected(self, timeout: float) -> str:
        """Why nothing could be sent: the broker's refusal if it gave one, else no connection in time."""
        why = f"; the broker refused the connection: {self.refused}" if self.refused else ""
        return f"not connected to the broker {self.settings.host}:{self.settings.port} within {timeout:g} s{why}"

    def _connected(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self.refused = str(reason_code)
            log.error("broker refused the collector's connection: %s (check credentials, certificates, ACL)",
                      reason_code)
            return
        self.client.session_up()
        client.subscribe([(t, SubscribeOptions(qos=1)) for t in self.subscriptions])
        self.stats["connections"] += 1
        self.connected.set()
        log.info("collector %s connected to %s:%s (session present: %s)", self.settings.client_id,
                 self.settings.host, self.settings.port, getattr(flags, "session_present", "?"))

    def _disconnected(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                      properties: Any) -> None:
        was = self.connected.is_set()
        self.client.session_down()
        self.connected.clear()
        self.subscribed.clear()
        if was and not self._closing:
            log.warning("collector disconnected from the broker (%s); reconnecting", reason_code)

    def _subscribed(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        for topic, rc in zip(self.subscriptions, reason_codes):
            if rc.is_failure:
                log.error("broker refused the subscription %s: %s (check the ACL; shared subscriptions need "
                          "MQTT v5 support)", topic, rc)
        self.subscribed.set()

    def _received(self, generation: int, msgs: list[tuple[Any, bytes, bool]], packet_ids: list[int]) -> None:
        """The fast receive path's sink: one read's messages, acknowledged by the writer after commit."""
        self.stats["received"] += len(msgs)
        self._queue.put((generation, msgs, packet_ids))

    def _message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """Stock paho path (no fast path, or a QoS 2 delivery): paho acknowledged it on receipt."""
        try:
            topic: Any = msg.topic
        except UnicodeDecodeError:
            topic = bytes(msg._topic)   # not a str: the store counts it as malformed
        self.stats["received"] += 1
        self._queue.put((None, [(topic, bytes(msg.payload), bool(msg.retain))], []))
