"""The fleet collector: an MQTT v5 subscriber that feeds a :class:`~ftedge.fleet.store.FleetStore`.

Threads: paho's network thread (``loop_start``) owns the socket; its callbacks only put messages on a
queue and never block. One *writer* thread drains the queue in batches (up to ``batch_size`` messages or
``batch_interval_s`` after the first one) into ``FleetStore.ingest_batch`` (one transaction per batch),
runs ``check_gaps`` every ``gap_check_s`` and, for every device with a newly counted seq hole, publishes
a ``resync`` command (``cmd/resync``, ResponseTopic under the device's ``cmdres/<collector id>``).

The session is persistent (``clean_start=False`` + ``SessionExpiryInterval``): messages published while
the collector is down are queued by the broker and arrive when it returns; retained state is replayed
on every subscribe and de-duplicated by ``(boot, seq)``. Messages are acknowledged (PUBACK) by paho when
received, before they are committed: a collector killed mid-batch loses at most what was queued (well
under a second of traffic), which shows up as seq holes and triggers ``resync``.

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
import threading
import time
import uuid
from dataclasses import dataclass, fields, replace
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
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: int = 30
    session_expiry: int = 86400
    share: str | None = None            # shared-subscription group: several collectors split the fleet
    listen: bool = True                 # False: subscribe only to this collector's replies (a one-shot `send`)
    detect_gaps: bool | None = None     # None: on unless `share` is set (see the module docstring)
    batch_size: int = 500
    batch_interval_s: float = 0.1
    gap_check_s: float = 1.0
    command_expiry_s: int = 300         # MessageExpiryInterval of resync commands

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
        self.stats: dict[str, int] = {"received": 0, "processed": 0, "batches": 0, "errors": 0, "resyncs": 0,
                                      "connections": 0}
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cv = threading.Condition()     # notified after every committed batch
        self._writer: threading.Thread | None = None
        self._closing = False
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=s.client_id, protocol=mqtt.MQTTv5)
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
        The reply is stored (``FleetStore.reply``), so a late one can still be looked up by cmd_id.
        """
        deadline = time.monotonic() + timeout
        if self._writer is None:
            raise CollectorError("start() the collector before send()")
        if not self.subscribed.wait(timeout):   # the reply subscription must exist before the command leaves
            raise TimeoutError(f"not connected to the broker {self.settings.host}:{self.settings.port} "
                               f"within {timeout:g} s")
        remaining = max(0.0, deadline - time.monotonic())
        cmd_id = self.publish_command(fleet, device, verb, args, expiry_s=max(1, math.ceil(remaining)))
        with self._cv:
            while True:
                reply = self.store.reply(cmd_id)
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
            batch: list[tuple[str, bytes, bool]] = []
            wait = max(0.0, next_check - time.monotonic()) if self.detect_gaps else 0.5
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is _STOP:
                stopping = True
            elif item is not None:
                batch.append(item)
                deadline = time.monotonic() + s.batch_interval_s
                while len(batch) < s.batch_size:
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
                    batch.append(item)
            if batch:
                self._ingest(batch)
            if self.detect_gaps and (time.monotonic() >= next_check or stopping):
                next_check = time.monotonic() + s.gap_check_s
                if not stopping:
                    self._check_gaps()

    def _ingest(self, batch: list[tuple[str, bytes, bool]]) -> None:
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
            with self._cv:
                self.stats["processed"] += len(batch)
                self._cv.notify_all()

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

    def _connected(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("broker refused the collector's connection: %s (check credentials, certificates, ACL)",
                      reason_code)
            return
        client.subscribe([(t, SubscribeOptions(qos=1)) for t in self.subscriptions])
        self.stats["connections"] += 1
        self.connected.set()
        log.info("collector %s connected to %s:%s (session present: %s)", self.settings.client_id,
                 self.settings.host, self.settings.port, getattr(flags, "session_present", "?"))

    def _disconnected(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                      properties: Any) -> None:
        was = self.connected.is_set()
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

    def _message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.stats["received"] += 1
        self._queue.put((msg.topic, bytes(msg.payload), bool(msg.retain)))
