"""The paho-mqtt adapter both sides use (paho 2.x, MQTT v5; see ARCHITECTURE.md, "Adapters"): one client
factory with the fleet's connection settings (persistent session, reconnect backoff, TLS, credentials, Last
Will), the CONNECT/PUBLISH properties and subscription options, and the reply fields of a received message.

The device agent's link (``device_agent/mqtt_link.py``) and the collector (``fleet/ingest.py``,
``fleet/commander.py``) talk to paho only through here; the collector's fast receive path
(``fleet/fast_receive.py``) subclasses :data:`Client` and is the one other module that touches paho, because it
relies on paho internals.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as _paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

Client = _paho.Client
Message = _paho.MQTTMessage
ErrorCode = _paho.MQTTErrorCode
MQTTv5 = _paho.MQTTv5
ERR_SUCCESS = _paho.MQTT_ERR_SUCCESS
ERR_NO_CONN = _paho.MQTT_ERR_NO_CONN


class ConnectionOptions(Protocol):
    """What a connection needs (``LinkSettings`` on the device, ``CollectorSettings`` in the fleet)."""

    host: str
    port: int
    client_id: str
    tls: bool
    username: str | None
    password: str | None
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    keepalive: int
    session_expiry: int
    max_packet_size: int


def make_client(opts: ConnectionOptions, *, client_class: type[Any] = Client, will: tuple[str, bytes] | None = None,
                will_delay: int = 0, max_queued: int | None = None, manual_ack: bool = False,
                **extra: Any) -> Any:
    """A paho client (callback API 2, MQTT v5) set up from ``opts``: reconnect backoff 1-5 s (replay soon
    after an outage ends), 100 in flight, credentials, TLS with certificate checks, and ``will`` as a
    retained QoS 1 Last Will sent ``will_delay`` s after an unclean loss. ``manual_ack``: QoS 1/2 messages
    are acknowledged by ``client.ack(mid, qos)``, not on receipt. ``extra`` goes to ``client_class``."""
    c = client_class(_paho.CallbackAPIVersion.VERSION2, client_id=opts.client_id, protocol=MQTTv5,
                     manual_ack=manual_ack, **extra)
    c.reconnect_delay_set(min_delay=1, max_delay=5)
    c.max_inflight_messages_set(100)
    if max_queued is not None:
        c.max_queued_messages_set(max_queued)
    if opts.username:
        c.username_pw_set(opts.username, opts.password)
    if opts.tls:
        c.tls_set(ca_certs=opts.ca_file, certfile=opts.cert_file, keyfile=opts.key_file, cert_reqs=ssl.CERT_REQUIRED)
    if will is not None:
        props = Properties(PacketTypes.WILLMESSAGE)
        props.WillDelayInterval = will_delay
        c.will_set(will[0], will[1], qos=1, retain=True, properties=props)
    return c


def connect_in_background(client: Any, opts: ConnectionOptions, receive_maximum: int | None = None) -> None:
    """Connect with a persistent session (clean start off, ``opts.session_expiry``) and the largest packet
    we accept; a broker that is down now is retried by paho's loop, never fatal. Starts the network thread."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = opts.session_expiry
    props.MaximumPacketSize = max(1024, min(268435455, int(opts.max_packet_size)))
    if receive_maximum is not None:
        props.ReceiveMaximum = max(1, min(65535, int(receive_maximum)))
    client.connect_async(opts.host, opts.port, keepalive=opts.keepalive, clean_start=False, properties=props)
    client.loop_start()


def publish_properties(correlation: bytes | None = None, response_topic: str | None = None,
                       expiry_s: int | None = None) -> Properties | None:
    """PUBLISH properties for request/response (None when there are none)."""
    if correlation is None and response_topic is None and expiry_s is None:
        return None
    props = Properties(PacketTypes.PUBLISH)
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    if expiry_s is not None:
        props.MessageExpiryInterval = int(expiry_s)
    return props


def subscribe_options(qos: int = 1, retain_as_published: bool = False) -> SubscribeOptions:
    return SubscribeOptions(qos=qos, retainAsPublished=retain_as_published)


def error_string(rc: Any) -> str:
    return str(_paho.error_string(rc))


@dataclass
class Incoming:
    """A received message with its request/response fields."""

    topic: str
    payload: bytes
    response_topic: str | None
    correlation: bytes | None
    expiry: int | None
    retain: bool = False  # the broker delivered it as retained (subscriptions use Retain As Published)


def incoming(msg: Message) -> Incoming:
    props = msg.properties
    return Incoming(topic=msg.topic, payload=bytes(msg.payload),
                    response_topic=getattr(props, "ResponseTopic", None),
                    correlation=getattr(props, "CorrelationData", None),
                    expiry=getattr(props, "MessageExpiryInterval", None), retain=bool(msg.retain))
