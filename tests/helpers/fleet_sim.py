"""A simulated fleet for the collector's tests and benches: plain paho clients that publish contract messages with
an envelope (docs/mqtt.md: topic tree ftedge/v1/{fleet}/{device}/…, envelope v, ts, dev, boot, seq, hist; the Last
Will carries seq 0 and will: true), message builders, and the ``running`` fixture that starts collectors."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from ftedge.fleet.ingest import Collector, CollectorSettings
from ftedge.fleet.store import FleetStore
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.helpers.broker import Broker

FLEET = "demo"


def wait_for(cond, timeout: float = 20.0, interval: float = 0.02) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())


def env(device: str, boot: str, seq: int, ts: int | None = None, **body: Any) -> dict[str, Any]:
    return {**body, "v": 1, "ts": int(time.time() * 1000) if ts is None else ts, "dev": device, "boot": boot,
            "seq": seq, "hist": False}


def msg(device: str, suffix: str, body: dict, retained: bool = False, fleet: str = FLEET) -> tuple[str, bytes, bool]:
    return f"ftedge/v1/{fleet}/{device}/{suffix}", json.dumps(body).encode(), retained


def will_body(device: str, boot: str, ts: int) -> dict[str, Any]:
    return {"state": "offline", "reason": "lwt", **env(device, boot, 0, ts), "will": True}


def result_body(job: str, before: float, after: float, promoted: bool = True, status: str = "succeeded") -> dict:
    return {"job": job, "status": status, "final": {"accuracy": after, "loss": 0.3},
            "baseline": {"accuracy": before, "loss": 0.9}, "promoted": promoted, "duration_s": 1.5, "error": None}


class SimDevice:
    """A plain paho client publishing contract messages with an envelope (no agent)."""

    def __init__(self, broker: Broker, device: str, fleet: str = FLEET, boot: str | None = None,
                 t0: int | None = None, auto_reply: bool = True,
                 responder: Callable[[str, dict], dict] | None = None) -> None:
        self.device, self.fleet = device, fleet
        self.boot = boot or uuid.uuid4().hex[:12]
        self.t0 = int(time.time() * 1000) if t0 is None else t0
        self.root = f"ftedge/v1/{fleet}/{device}/"
        self.seq = 0
        self.lock = threading.Lock()
        self.commands: list[tuple[str, dict, str | None, bytes | None]] = []
        self.auto_reply = auto_reply
        self.responder = responder   # (verb, args) -> fields of the reply (status, code, detail, and the verb's own)
        self.infos: list[mqtt.MQTTMessageInfo] = []
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-{device}-{self.boot}",
                        protocol=mqtt.MQTTv5)
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        wp = Properties(PacketTypes.WILLMESSAGE)
        wp.WillDelayInterval = 0
        c.will_set(self.root + "status", json.dumps(will_body(device, self.boot, self.t0)), qos=1, retain=True,
                   properties=wp)
        self.subscribed = threading.Event()
        c.on_connect = lambda cl, *_: cl.subscribe(self.root + "cmd/#", qos=1)
        c.on_subscribe = lambda *_: self.subscribed.set()
        c.on_message = self._on_command
        c.connect("127.0.0.1", broker.port, keepalive=30, clean_start=True)
        c.loop_start()
        self.client = c
        assert self.subscribed.wait(10), f"{device} could not connect"

    def envelope(self, body: dict, seq: int | None = None) -> dict:
        with self.lock:
            if seq is None:
                self.seq += 1
                seq = self.seq
            else:
                self.seq = max(self.seq, seq)
        return {**body, **env(self.device, self.boot, seq, self.t0 + seq)}

    def publish(self, suffix: str, body: dict, retain: bool = False, seq: int | None = None,
                props: Properties | None = None) -> dict:
        full = self.envelope(body, seq)
        self.raw(suffix, json.dumps(full).encode(), retain, props)
        return full

    def raw(self, suffix: str, payload: bytes, retain: bool = False, props: Properties | None = None) -> None:
        info = self.client.publish(self.root + suffix, payload, qos=1, retain=retain, properties=props)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, mqtt.error_string(info.rc)
        self.infos.append(info)

    def sync(self, timeout: float = 30) -> None:
        """Wait for the PUBACK of everything published so far."""
        for info in self.infos:
            info.wait_for_publish(timeout)
        self.infos.clear()

    def _on_command(self, client, userdata, m) -> None:
        body = json.loads(m.payload)
        rt = getattr(m.properties, "ResponseTopic", None)
        corr = getattr(m.properties, "CorrelationData", None)
        self.commands.append((m.topic, body, rt, corr))
        if self.auto_reply and rt and rt.startswith(self.root + "cmdres/"):
            verb = m.topic.rsplit("/", 1)[-1]
            fields = {"status": "done", "code": "ok", "detail": verb}
            if self.responder is not None:
                fields.update(self.responder(verb, body.get("args") or {}))
            reply = self.envelope({"cmd_id": body["cmd_id"], **fields, "correlation": (corr or b"").hex()})
            props = Properties(PacketTypes.PUBLISH)
            if corr:
                props.CorrelationData = corr
            client.publish(rt, json.dumps(reply).encode(), qos=1, properties=props)

    def kill(self) -> None:
        """Drop the connection without DISCONNECT: the broker publishes the Will."""
        self.client.loop_stop()
        self.client.socket().close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture()
def running(tmp_path, broker):
    """Start collectors (stopped at teardown): running(store, **settings) -> Collector."""
    started: list[Collector] = []

    def start(store: FleetStore, **kw: Any) -> Collector:
        kw.setdefault("client_id", f"collector-{uuid.uuid4().hex[:6]}")
        kw.setdefault("gap_check_s", 0.1)
        c = Collector(store, CollectorSettings(host="127.0.0.1", port=broker.port), **kw).start()
        assert c.wait_connected(10), "collector could not connect and subscribe"
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


def simulate_training(dev: SimDevice, job: str, before: float, after: float, epochs: int = 3) -> None:
    dev.publish("status", {"state": "online", "reason": "birth"}, retain=True)
    dev.publish("meta", {"agent": "0.1", "providers": ["CPUExecutionProvider"], "models": ["v0001"],
                         "active_version": "v0001"}, retain=True)
    dev.publish("job", {"job": job, "status": "running", "bundle": "kws"}, retain=True)
    for e in range(1, epochs + 1):
        dev.publish(f"jobs/{job}/progress", {"job": job, "epoch": e, "step": 8 * e, "loss": 1.0 / e,
                                             "metrics": {"val_accuracy": before + (after - before) * e / epochs},
                                             "lr": 0.01, "samples_per_s": 900.0, "rss_mb": 120.0})
    dev.publish(f"jobs/{job}/result", result_body(job, before, after))
    dev.publish("job", {"job": job, "status": "succeeded", "bundle": "kws", "version": "v0002"}, retain=True)
    dev.publish("meta", {"agent": "0.1", "models": ["v0001", "v0002"], "active_version": "v0002"}, retain=True)
    dev.sync()
