"""Many simulated boxes on one MQTT connection that answer rollout commands like an agent (SYNTHETIC results).

For the rollout tests and ``bench/rollout``: each virtual device publishes its birth and meta, then answers
``deploy`` (accepted, then done with the folder its ``replace`` kept, or an error), ``train`` (accepted with a
job id, then the job's result: accuracy before → after, promoted when it rose) and ``rollback`` (done), with
envelopes like a real agent's. A device's behaviour is a :class:`Box`: fail its deploy, regress when it trains,
stay silent (offline), answer after a delay. Replies are cached by cmd_id as the agent's are, so a repeated
command is answered the same and counted (``repeats``).
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.helpers.fleet_sim import env


@dataclass
class Box:
    """How one simulated device behaves."""

    fail_deploy: bool = False
    fail_detail: str = "the bundle from … was rejected: signed by an untrusted key"   # the failed deploy's detail
    regress: bool = False          # its training makes the model worse (not promoted)
    offline: bool = False          # never answers (and says it is offline)
    silent: bool = False           # online, but never answers (a hung agent)
    before: float = 0.6
    gain: float = 0.1
    delay_s: float = 0.0           # before each final answer
    active_version: str | None = "v0001"
    deploys: int = 0               # deploys it ran (a repeated cmd_id is answered from the cache, not counted)
    commands: list[tuple[str, str, dict]] = field(default_factory=list)   # (verb, cmd_id, args)


class FleetSim:
    """``devices`` virtual boxes of ``fleet`` on one connection to the broker at ``port``."""

    def __init__(self, port: int, fleet: str, boxes: dict[str, Box], seed: int = 0) -> None:
        self.fleet, self.boxes = fleet, boxes
        self.boot = {d: uuid.uuid4().hex[:12] for d in boxes}
        self.seq = {d: 0 for d in boxes}
        self.replies: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.repeats = 0
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.work: queue.Queue = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.subscribed = threading.Event()
        self.client.on_connect = lambda cl, *_: cl.subscribe(f"ftedge/v1/{fleet}/+/cmd/#", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.work.put(m)
        self.client.connect("127.0.0.1", port, keepalive=30, clean_start=True)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the simulator could not subscribe"
        self.worker = threading.Thread(target=self._work, daemon=True)
        self.worker.start()
        for d, box in boxes.items():
            self.publish(d, "status", {"state": "offline" if box.offline else "online",
                                       "reason": "lwt" if box.offline else "birth"}, retain=True)
            self.publish(d, "meta", {"agent": "sim", "models": [box.active_version] if box.active_version else [],
                                     "active_version": box.active_version}, retain=True)

    def publish(self, device: str, suffix: str, body: dict[str, Any], retain: bool = False,
                props: Properties | None = None, topic: str | None = None) -> None:
        with self.lock:
            self.seq[device] += 1
            full = {**body, **env(device, self.boot[device], self.seq[device])}
        self.client.publish(topic or f"ftedge/v1/{self.fleet}/{device}/{suffix}", json.dumps(full).encode(), qos=1,
                            retain=retain, properties=props)

    def come_online(self, device: str) -> None:
        self.boxes[device].offline = False
        self.publish(device, "status", {"state": "online", "reason": "birth"}, retain=True)

    def close(self) -> None:
        self.work.put(None)
        self.client.disconnect()
        self.client.loop_stop()

    # -- answering ------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            m = self.work.get()
            if m is None:
                return
            try:
                self._answer(m)
            except Exception as exc:  # noqa: BLE001 - a simulator bug must show, not hang the test
                print(f"rollout simulator: {type(exc).__name__}: {exc}")

    def _reply(self, device: str, rt: str, corr: bytes | None, body: dict[str, Any]) -> None:
        props = Properties(PacketTypes.PUBLISH)
        if corr:
            props.CorrelationData = corr
        self.publish(device, "", body, props=props, topic=rt)

    def _answer(self, m: mqtt.MQTTMessage) -> None:
        parts = m.topic.split("/")
        device, verb = parts[3], parts[-1]
        box = self.boxes.get(device)
        rt = getattr(m.properties, "ResponseTopic", None)
        corr = getattr(m.properties, "CorrelationData", None)
        if box is None or rt is None:
            return
        body = json.loads(m.payload)
        cmd_id, args = body["cmd_id"], body.get("args") or {}
        if box.offline or box.silent:
            return
        box.commands.append((verb, cmd_id, args))
        cached = self.replies.get((device, cmd_id))
        if cached:
            self.repeats += 1
            for r in cached:
                self._reply(device, rt, corr, r)
            return
        out: list[dict[str, Any]] = []

        def say(status: str, code: str, detail: str, **extra: Any) -> None:
            r = {"cmd_id": cmd_id, "status": status, "code": code, "detail": detail, **extra}
            out.append(r)
            self._reply(device, rt, corr, r)

        if verb == "deploy":
            say("accepted", "downloading", "fetching")
            if box.delay_s:
                time.sleep(box.delay_s)
            if box.fail_deploy:
                say("error", "deploy_failed", box.fail_detail, reason="bundle")
            else:
                box.deploys += 1
                say("done", "deployed", "bundle at kws", bundle=args.get("name"),
                    replaced=f"{args.get('name')}.replaced-2026{box.deploys:04d}")
        elif verb == "train":
            job = f"j{uuid.uuid4().hex[:10]}"
            say("accepted", "queued", f"job {job} queued", job=job)
            if box.delay_s:
                time.sleep(box.delay_s)
            after = box.before - box.gain if box.regress else box.before + box.gain
            promoted = after > box.before
            version = f"v{len(self.replies) + 2:04d}" if promoted else None
            self.publish(device, f"jobs/{job}/result", {
                "job": job, "status": "succeeded", "final": {"accuracy": after}, "baseline": {"accuracy": box.before},
                "promoted": promoted, "duration_s": 1.0, "error": None,
                "headline": {"metric": "accuracy", "label": "accuracy", "higher_is_better": True, "tuned": after,
                             "untuned": box.before}, **({"version": version} if version else {})})
            if promoted:
                box.active_version = version
        elif verb == "rollback":
            to = args.get("to")
            if to:
                box.active_version = None if to == "none" else to
            say("done", "ok", "rolled back", active_version=box.active_version, restored=args.get("restore"))
        else:
            say("done", "ok", verb)
        self.replies[(device, cmd_id)] = out
