"""The agent's MQTT link: a persistent session with a Last Will, its subscriptions, publish and PUBACK
tracking, on the shared paho adapter (:mod:`ftedge.mqtt.client`; see ARCHITECTURE.md).

paho's network thread (``loop_start``) owns the socket; its callbacks only hand events to the agent
through the callables given here and never block. Publishes come from a single agent thread.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from ftedge.mqtt import client as mqtt
from ftedge.mqtt.client import Incoming

log = logging.getLogger(__name__)


@dataclass
class LinkSettings:
    host: str
    port: int
    client_id: str
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr, a log line or a traceback
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: int = 30
    session_expiry: int = 86400
    will_delay: int = 10
    max_packet_size: int = 256 * 1024  # told to the broker (CONNECT MaximumPacketSize); bigger is dropped


class MqttLink:
    """A persistent MQTT v5 session with a Last Will; reconnects by itself with backoff."""

    def __init__(self, settings: LinkSettings, will: tuple[str, bytes], subscriptions: list[str],
                 on_message: Callable[[Incoming], None], on_connection: Callable[[bool], None],
                 on_puback: Callable[[int, int, str], None]) -> None:
        self.settings = settings
        self.subscriptions = subscriptions
        self._on_message, self._on_connection, self._on_puback = on_message, on_connection, on_puback
        self.connected = threading.Event()
        self._closing = False
        c = mqtt.make_client(settings, will=will, will_delay=settings.will_delay, max_queued=0)
        c.on_connect = self._connected
        c.on_disconnect = self._disconnected
        c.on_message = self._message
        c.on_publish = self._published
        self.client = c

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; a broker that is down now is retried, never fatal."""
        mqtt.connect_in_background(self.client, self.settings)

    def stop(self, last: tuple[str, bytes] | None = None, timeout: float = 5.0) -> None:
        """Publish ``last`` (e.g. the offline status) if connected, then disconnect cleanly (no Will)."""
        if last is not None and self.connected.is_set():
            info = self.client.publish(last[0], last[1], qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()

    # -- traffic -----------------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                correlation: bytes | None = None) -> int | None:
        """Hand one message to paho; returns its mid, or None when not connected (the outbox keeps it)."""
        if not self.connected.is_set():
            return None
        info = self.client.publish(topic, payload, qos=qos, retain=retain,
                                   properties=mqtt.publish_properties(correlation=correlation))
        if info.rc != mqtt.ERR_SUCCESS:
            return None
        return info.mid

    # -- paho callbacks (network thread; never block) -------------------------------------------------
    def _connected(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s (check credentials, certificates and ACL)", reason_code)
            return
        for topic in self.subscriptions:  # Retain As Published: a live retained command is recognisable too
            client.subscribe(topic, options=mqtt.subscribe_options(qos=1, retain_as_published=True))
        self.connected.set()
        log.info("connected to %s:%s (session present: %s)", self.settings.host, self.settings.port,
                 getattr(flags, "session_present", "?"))
        self._on_connection(True)

    def _disconnected(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if was and not self._closing:
            log.warning("disconnected from the broker (%s); reconnecting with backoff", reason_code)
            self._on_connection(False)

    def _message(self, client: mqtt.Client, userdata: Any, msg: mqtt.Message) -> None:
        if len(msg.payload) > self.settings.max_packet_size:  # a broker that ignored our maximum
            log.warning("dropped a %d-byte message on %s: over mqtt.max_packet_size (%d)", len(msg.payload),
                        msg.topic, self.settings.max_packet_size)
            return
        self._on_message(mqtt.incoming(msg))

    def _published(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        value = getattr(reason_code, "value", 0)
        self._on_puback(mid, int(value), str(reason_code))
