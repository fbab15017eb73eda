"""The fleet collector: an MQTT v5 subscriber that feeds a :class:`~ftedge.fleet.store.FleetStore`.

Threads: paho's network thread (``loop_start``) owns the socket. Its read path (:class:`_FastClient`) decodes
every complete PUBLISH of a ``recv`` at once and puts the list on a queue; it never blocks. One *writer*
thread drains the queue in batches (up to ``batch_size`` messages or ``batch_interval_s`` after the first
one) into ``FleetStore.ingest_batch`` (one transaction per batch), then acknowledges the batch's QoS 1
messages (one PUBACK blob), runs ``check_gaps`` every ``gap_check_s`` and, for every device with a newly
counted seq hole, publishes a ``resync`` command (``cmd/resync``, ResponseTopic under the device's
``cmdres/<collector id>``). In a share group on one database it first records its heartbeat, and holes
wait while another member of the group is down or draining its backlog (:mod:`.liveness`).

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
collectors split a fleet, and additionally to its own reply topic so ``send`` always sees its replies.
Mosquitto hands out messages round-robin per message, so one device's stream is split across the
collectors. Writing one shared database (PostgreSQL, ``store.shared``), they still judge every stream whole:
de-duplication, holes and "which state wins" are decided in the database under the device's row lock (see
:mod:`.store`), and gap detection stays on; batches wait longer and grow larger there (``batch_interval_s``
1 s, ``batch_size`` 10,000), because each holds only a slice of every device's stream. Collectors of a
group that each write their own database see parts of streams, so gap detection is off by default then
(turn it on with ``detect_gaps=True`` on a broker that routes by publisher, e.g. EMQX ``hash_clientid``).
The broker need not replay retained messages to shared subscriptions (MQTT 5, 4.8.2).
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ftedge.errors import CollectorError, FtedgeError, StoreUnavailable, UsageError  # noqa: F401 - re-exported
from ftedge.mqtt import client as mqtt
from ftedge.mqtt.contract import BrokerSettings, collector_subscriptions

from .commander import CommandClient
from .fast_receive import _FastClient  # noqa: F401 - tests reach it here too
from .store import FleetStore

log = logging.getLogger(__name__)

_STOP = object()
_TOPIC_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


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
    batch_size: int | None = None       # messages per transaction at most (None: 5,000; 10,000 shared) …
    batch_interval_s: float | None = None   # … or what arrived this long after the first one (None: 0.2 s;
                                            # 1.0 s on a shared database, see Collector)
    receive_maximum: int = 20000        # unacknowledged messages the broker may send us (MQTT v5 Receive Maximum)
    fast_receive: bool = True           # False: stock paho receive path (also acked after commit)
    gap_check_s: float = 1.0
    command_expiry_s: int = 300         # MessageExpiryInterval of resync commands
    max_packet_size: int = 256 * 1024   # MQTT v5 Maximum Packet Size: the broker drops bigger messages for us

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> CollectorSettings:
        """``mqtt://HOST[:PORT]`` (default 1883) or ``mqtts://HOST[:PORT]`` (TLS, default 8883).

        Parsed by ``ftedge.mqtt.contract.BrokerSettings.from_url``; credentials in the URL are refused.
        """
        try:
            broker = BrokerSettings.from_url(url)
        except UsageError as exc:
            raise CollectorError(str(exc)) from None
        if broker.has_credentials:
            raise CollectorError("the broker URL must not contain credentials: pass username/password separately")
        return cls(host=broker.host, port=broker.port, tls=broker.tls, **kwargs)


class Collector(CommandClient):
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
        # On a database shared by a share group every collector gets a slice of every device's stream (the broker
        # deals messages round-robin), so a batch of a given age holds fewer messages per device, and the
        # per-device work of a transaction (row lock, boot and device rows) is spread over fewer of them.
        # Fuller batches (longer wait, higher cap) keep the cost per message near one collector's
        # (BENCHMARKS.md, issue 17); a second of extra latency is nothing for fleet telemetry.
        if s.batch_interval_s is None:
            s = replace(s, batch_interval_s=1.0 if store.shared else 0.2)
        if s.batch_size is None:
            s = replace(s, batch_size=10000 if store.shared else 5000)
        self.settings = s
        self.store = store
        self.host_id = _TOPIC_UNSAFE.sub("_", s.client_id)   # the {host} of cmdres/{host}
        # Sharing a fleet with collectors that write other databases, none sees whole streams: no gap judgement.
        # Sharing one database (PostgreSQL), the database sees every message: judge there.
        self.detect_gaps = (s.share is None or store.shared) if s.detect_gaps is None else bool(s.detect_gaps)
        self.connected = threading.Event()
        self.subscribed = threading.Event()   # SUBACK of the current connection received
        self.up_ms = 0                        # when the current connection's SUBACK arrived (epoch ms)
        self.refused: str | None = None       # the last CONNACK refusal reason (bad credentials, not authorized)
        self.stats: dict[str, int] = {"received": 0, "processed": 0, "batches": 0, "errors": 0, "resyncs": 0,
                                      "connections": 0, "unacked": 0, "store_retries": 0}
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cv = threading.Condition()     # notified after every committed batch
        self._writer: threading.Thread | None = None
        self._closing = False
        # manual_ack: on the stock path too, a message is acknowledged only after its batch is committed
        c = mqtt.make_client(s, client_class=_FastClient, manual_ack=True, sink=self._received)
        c.fast = c.fast and s.fast_receive
        c.on_connect = self._connected
        c.on_disconnect = self._disconnected
        c.on_message = self._message
        c.on_subscribe = self._subscribed
        self.client = c

    # -- lifecycle ---------------------------------------------------------------------------------------

    @property
    def subscriptions(self) -> list[str]:
        return collector_subscriptions(self.host_id, share=self.settings.share, listen=self.settings.listen)

    def start(self) -> Collector:
        """Connect in the background (a broker that is down is retried) and start the writer."""
        if self._writer is not None:
            return self
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name="ftedge-collector-writer", daemon=True)
        self._writer.start()
        mqtt.connect_in_background(self.client, self.settings, receive_maximum=self.settings.receive_maximum)
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
            committed = self._commit(batch)
        except Exception:  # noqa: BLE001 - a bad message (or a full disk) must not stop the collector
            self.stats["errors"] += 1
            log.exception("could not store a message on %s; it is lost to this collector", batch[0][0])
            committed = True   # acknowledged all the same: the broker resending it would not help
        if committed:
            # Acknowledge after the commit. Chunks of an older connection are not acknowledged: the broker
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

    def _commit(self, batch: list[tuple[Any, bytes, bool]]) -> bool:
        """Store ``batch``; True once committed. A database out of reach (restart, failover, lost network) is
        waited out for as long as it takes, acknowledging nothing meanwhile (the broker's Receive Maximum
        holds the rest back); False if the collector stops first: the broker keeps the messages in this
        collector's session. A batch that fails otherwise is bisected — each half stored in its own
        transaction, a failing half split again — so one bad message costs about 2·log2(n) transactions
        instead of n, and only itself is lost (raised for a single message)."""
        delay = 0.5
        while True:
            try:
                self.store.ingest_batch(batch)
                self.stats["batches"] += 1
                return True
            except StoreUnavailable as exc:
                self.stats["store_retries"] = self.stats.get("store_retries", 0) + 1
                if self.stats["store_retries"] <= 5 or self.stats["store_retries"] % 60 == 0:
                    log.warning("%s; %d message(s) wait unacknowledged", exc, len(batch))
            except Exception:  # noqa: BLE001 - isolate the message that breaks the batch, keep the rest
                if len(batch) == 1:
                    raise
                log.warning("a batch of %d message(s) failed; storing it in halves to isolate the bad one(s)",
                            len(batch))
                half = len(batch) // 2
                for part in (batch[:half], batch[half:]):
                    try:
                        if not self._commit(part):
                            return False
                    except Exception:  # noqa: BLE001 - a single message: lost, the rest of the batch is kept
                        self.stats["errors"] += 1
                        log.exception("could not store a message on %s; it is lost to this collector", part[0][0])
                return True
            if self._closing:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _ack(self, generation: int | None, mids: list[int]) -> None:
        try:
            if not self.client.ack_batch(generation, mids):
                self.stats["unacked"] += len(mids)
        except Exception:  # noqa: BLE001
            log.exception("could not acknowledge %d message(s)", len(mids))

    def _check_gaps(self) -> None:
        # A share group on one database judges holes together: a member that is down (or back for less than a
        # reorder window) may still deliver the missing messages from its session (ftedge.fleet.liveness).
        group = self.settings.share if self.store.shared else None
        try:
            if group is not None and self.subscribed.is_set() and self.up_ms:
                self.store.beat(group, self.settings.client_id, self.up_ms)
            holes = self.store.check_gaps(group=group)
        except StoreUnavailable as exc:   # judged again at the next check
            self.stats["store_retries"] += 1
            log.warning("gap check postponed: %s", exc)
            return
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
        client.subscribe([(t, mqtt.subscribe_options(qos=1)) for t in self.subscriptions])
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
        self.up_ms = int(time.time() * 1000)
        self.subscribed.set()

    def _received(self, generation: int, msgs: list[tuple[Any, bytes, bool]], packet_ids: list[int]) -> None:
        """The fast receive path's sink: one read's messages, acknowledged by the writer after commit."""
        self.stats["received"] += len(msgs)
        self._queue.put((generation, msgs, packet_ids))

    def _message(self, client: mqtt.Client, userdata: Any, msg: mqtt.Message) -> None:
        """Stock paho path (no fast path, or a QoS 2 delivery): acknowledged by the writer after commit, like
        the fast path's. (The fleet subscribes at QoS 1, so QoS 2 does not arrive; if a broker sends it anyway
        it is completed here, on receipt.)"""
        try:
            topic: Any = msg.topic
        except UnicodeDecodeError:
            topic = bytes(msg._topic)   # not a str: the store counts it as malformed
        self.stats["received"] += 1
        mids = [msg.mid] if msg.qos == 1 else []
        if msg.qos == 2:
            client.ack(msg.mid, 2)
        self._queue.put((self.client.generation, [(topic, bytes(msg.payload), bool(msg.retain))], mids))
