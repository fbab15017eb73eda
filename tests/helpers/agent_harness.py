"""Device-agent test harness: a recording MQTT v5 collector, the agent as a real process, fixtures.

Shared by every test that drives a real agent over a real Mosquitto broker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.helpers.broker import Broker
from tests.helpers.common import ROOT, ZOO, export

FLEET, DEV = "demo", "dev-001"
ROOT_TOPIC = f"ftedge/v1/{FLEET}/{DEV}/"



class Collector:
    """A persistent MQTT v5 subscriber that records every message of the fleet."""

    def __init__(self, broker: Broker, client_id: str = "collector", username: str | None = None,
                 password: str | None = None) -> None:
        self.messages: list[tuple[str, dict, bool]] = []
        self.lock = threading.Lock()
        self.replies: dict[str, list[dict]] = {}
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if username:
            c.username_pw_set(username, password)
        c.on_connect = lambda cl, *_: cl.subscribe(f"ftedge/v1/{FLEET}/#", qos=1)
        c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.reconnect_delay_set(0.2, 1)
        c.connect_async("127.0.0.1", broker.port, clean_start=False, properties=props)
        c.loop_start()
        self.client = c
        assert self.wait(lambda: c.is_connected(), 10), "collector could not connect"

    def _on_message(self, client, userdata, msg) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = {"raw": msg.payload.decode(errors="replace")}
        with self.lock:
            self.messages.append((msg.topic, body, bool(msg.retain)))
            if "/cmdres/" in msg.topic:
                self.replies.setdefault(body.get("cmd_id"), []).append(body)

    @staticmethod
    def wait(cond, timeout: float = 30) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cond():
                return True
            time.sleep(0.05)
        return False

    def wait_online(self, count: int = 1) -> None:
        """Commands sent before the agent subscribed would be lost: wait for its birth message(s)."""
        assert self.wait(lambda: sum(b.get("reason") == "birth" for b in self.of("status")) >= count, 30), \
            "the agent never came online"

    def of(self, suffix: str) -> list[dict]:
        with self.lock:
            return [b for t, b, _ in self.messages if t == ROOT_TOPIC + suffix]

    def topics(self, prefix: str) -> list[tuple[str, dict]]:
        with self.lock:
            return [(t, b) for t, b, _ in self.messages if t.startswith(ROOT_TOPIC + prefix)]

    def send(self, verb: str, args: dict | None = None, cmd_id: str | None = None, raw: bytes | None = None,
             wait_for: str | None = "any", timeout: float = 30) -> dict | None:
        cmd_id = cmd_id or uuid.uuid4().hex[:12]
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = ROOT_TOPIC + "cmdres/test-host"
        props.CorrelationData = cmd_id.encode()
        payload = raw if raw is not None else json.dumps({"cmd_id": cmd_id, "args": args or {}}).encode()
        self.client.publish(ROOT_TOPIC + f"cmd/{verb}", payload, qos=1, properties=props)
        if wait_for is None:
            return None
        key = cmd_id if raw is None else None

        def got() -> dict | None:
            with self.lock:
                for r in self.replies.get(key, []):
                    if wait_for == "any" or r["status"] == wait_for:
                        return r
            return None
        assert self.wait(lambda: got() is not None, timeout), f"no {wait_for} reply to {verb} {cmd_id}"
        return got()

    def seqs(self) -> dict[str, list[int]]:
        """Distinct seqs per boot of every enveloped D→H message (de-duplicated as a consumer would)."""
        out: dict[str, set[int]] = {}
        with self.lock:
            for t, b, _ in self.messages:
                if t.startswith(ROOT_TOPIC) and "/cmd/" not in t and b.get("seq", 0) > 0:
                    out.setdefault(b["boot"], set()).add(b["seq"])
        return {boot: sorted(s) for boot, s in out.items()}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def assert_no_holes(seqs: dict[str, list[int]]) -> None:
    for boot, s in seqs.items():
        assert s == list(range(1, len(s) + 1)), f"boot {boot}: holes in seq {sorted(set(range(1, s[-1] + 1)) - set(s))}"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> Path:
    from tests.helpers.zoo import FAMILIES

    root = tmp_path_factory.mktemp("bundles")
    export(f"{ZOO}:mlp", root / "mlp", "--input", "x:float32:1,20", "--labels", "a,b,c,d", "--lr", "0.01")
    model, args = FAMILIES["cnn-batchnorm-depthwise"]
    export(f"{ZOO}:{model}", root / "kws", *args, "--lr", "0.02")
    return root


def agent_config(state: Path, broker: Broker, data: Path, bundle_root: Path, extra_toml: str = "",
                 **mqtt_extra) -> Path:
    """Write ``state``/../agent.toml for one device; ``extra_toml`` is appended as is (e.g. a ``[deploy]`` table)."""
    lines = [f'device_id = "{DEV}"', f'fleet = "{FLEET}"', f'state_dir = "{state}"',
             'log_level = "info"', "[mqtt]", f'url = "{broker.url}"', "will_delay = 1", "keepalive = 5"]
    lines += [f"{k} = {json.dumps(str(v))}" for k, v in mqtt_extra.items()]
    if "[deploy]" not in extra_toml:  # the test bundles are unsigned: opt out unless a test signs
        extra_toml = "[deploy]\nrequire_signed = false\n" + extra_toml
    lines += ["[paths]", f'data_root = "{data}"', f'bundle_root = "{bundle_root}"', extra_toml]
    cfg = state.parent / "agent.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


@pytest.fixture()
def device(tmp_path, bundles):
    """State dir, data root with SYNTHETIC datasets, bundle root, and a config writer."""
    data = tmp_path / "data"
    data.mkdir()
    import numpy as np

    from tests.helpers.zoo import gaussian_classes

    x, y = gaussian_classes(seed=5)
    np.savez(data / "blobs.npz", x=x, labels=y)
    rng = np.random.default_rng(0)
    yk = np.repeat(np.arange(4), 32)
    np.savez(data / "clips.npz", x=(0.7 * yk[:, None, None] + rng.standard_normal((128, 101, 40))).astype(np.float32),
             labels=yk)
    bundle_root = tmp_path / "bundles"
    shutil.copytree(bundles, bundle_root)

    def write(broker: Broker, extra_toml: str = "", **mqtt_extra) -> Path:
        """The agent config; ``extra_toml`` is appended as is (e.g. a ``[deploy]`` table)."""
        return agent_config(tmp_path / "state", broker, data, bundle_root, extra_toml, **mqtt_extra)
    return write


class AgentProc:
    def __init__(self, config: Path, log: Path, python: str | None = None) -> None:
        self.log = log
        # In CI the agent runs in the torch-free [device] venv, as on a box (or the one a test names, e.g. the
        # onnxruntime-openvino venv).
        python = python or os.environ.get("FTEDGE_DEVICE_PYTHON") or sys.executable
        self.proc = subprocess.Popen([python, "-m", "ftedge", "agent", "run", "--config", str(config)],
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "ab"))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(30)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture()
def agents(tmp_path):
    started: list[AgentProc] = []

    def start(config: Path, python: str | None = None) -> AgentProc:
        a = AgentProc(config, tmp_path / "agent.log", python)
        started.append(a)
        return a
    yield start
    for a in started:
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()
