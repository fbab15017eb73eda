"""The bench's MQTT side: a persistent MQTT v5 subscriber of the bench fleet (QoS 1, clean_start=False) that records
arrival times and sends commands to the agents."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

FLEET = "bench"
REPLY_SUFFIX = "cmdres/bench-host"


def topic_root(dev: str) -> str:
    return f"ftedge/v1/{FLEET}/{dev}/"


class Collector:
    """Persistent MQTT v5 subscriber of the bench fleet (QoS 1, clean_start=False); records arrival times."""

    def __init__(self, port: int, client_id: str = "bench-collector") -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self._Properties, self._PacketTypes = Properties, PacketTypes
        self.lock = threading.Lock()
        self.messages: list[tuple[float, str, dict]] = []          # everything but the watched topics
        self.watches: dict[str, dict[str, Any]] = {}                # topic -> counters (high-volume topics)
        self.connects: list[float] = []
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.reconnect_delay_set(0.1, 0.5)
        c.connect_async("127.0.0.1", port, clean_start=False, properties=props)
        c.loop_start()
        self.client = c
        if not self.wait(lambda: c.is_connected(), 15):
            raise RuntimeError("the collector could not connect to the bench broker")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self.connects.append(time.monotonic())
        client.subscribe(f"ftedge/v1/{FLEET}/#", qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        t = time.monotonic()
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = {"raw": msg.payload.decode(errors="replace")}
        with self.lock:
            w = self.watches.get(msg.topic)
            if w is None:
                self.messages.append((t, msg.topic, body))
                return
            w["received"] += 1
            w["hist"] += bool(body.get("hist"))
            w["seqs"].add((body.get("boot"), body.get("seq")))
            if w["t_first"] is None:
                w["t_first"] = t
            if w["t_all"] is None and len(w["seqs"]) >= w["expect"]:
                w["t_all"] = t

    def watch(self, topic: str, expect: int) -> dict[str, Any]:
        w = {"expect": expect, "received": 0, "hist": 0, "seqs": set(), "t_first": None, "t_all": None}
        with self.lock:
            self.watches[topic] = w
        return w

    @staticmethod
    def wait(cond: Callable[[], Any], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            time.sleep(0.01)
        return False

    def of(self, topic: str) -> list[tuple[float, dict]]:
        with self.lock:
            return [(t, b) for t, tp, b in self.messages if tp == topic]

    def online(self, dev: str, timeout: float = 60) -> float:
        """Wait for the agent's birth status and its meta; returns when the later of the two arrived."""
        root = topic_root(dev)

        def both() -> float | None:
            birth = [t for t, b in self.of(root + "status") if b.get("reason") == "birth"]
            meta = [t for t, _ in self.of(root + "meta")]
            return max(birth[0], meta[0]) if birth and meta else None
        if not self.wait(both, timeout):
            raise RuntimeError(f"agent {dev} never came online (no birth + meta within {timeout:g} s)")
        return both()

    def send(self, dev: str, verb: str, args: dict) -> tuple[str, float]:
        cmd_id = uuid.uuid4().hex[:12]
        props = self._Properties(self._PacketTypes.PUBLISH)
        props.ResponseTopic = topic_root(dev) + REPLY_SUFFIX
        props.CorrelationData = cmd_id.encode()
        payload = json.dumps({"cmd_id": cmd_id, "args": args}).encode()
        t = time.monotonic()
        self.client.publish(topic_root(dev) + f"cmd/{verb}", payload, qos=1, properties=props)
        return cmd_id, t

    def reply(self, dev: str, cmd_id: str, timeout: float = 30) -> tuple[float, dict]:
        def got() -> tuple[float, dict] | None:
            return next(((t, b) for t, b in self.of(topic_root(dev) + REPLY_SUFFIX) if b.get("cmd_id") == cmd_id), None)
        if not self.wait(got, timeout):
            raise RuntimeError(f"no reply to command {cmd_id} on {dev} within {timeout:g} s")
        return got()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
