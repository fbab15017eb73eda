"""Where an agent's memory goes per job: the agent in-process under tracemalloc, a real Mosquitto, real jobs.

Companion of bench/soak.py (which watches RSS from outside, with faults): this one runs ``Agent`` in this
process, sends ``--jobs`` train commands (each followed by one malformed command) one after the other, and
prints RSS next to the Python-traced memory every 50 jobs, then the 12 allocation sites that grew most
between job 100 and the end. Native growth = RSS growth − traced growth.

    .venv-device/bin/python -m bench.agent_memory --jobs 400     # torch-free, as on a box
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import tracemalloc
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench._common import rss_mib
from bench.soak import setup  # exports and signs the mlp bundle, writes SYNTHETIC blobs
from tests.helpers.broker import Broker


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.agent_memory", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=400)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    from ftedge.device_agent.agent import Agent
    from ftedge.device_agent.config import load_config

    work = Path(tempfile.mkdtemp(prefix="ftedge-agent-memory-"))
    bundles, data, keys = setup(work)
    broker = Broker(work / "broker").start()
    root = "ftedge/v1/bench/d1/"
    cfg = work / "agent.toml"
    cfg.write_text("\n".join([
        'device_id = "d1"', 'fleet = "bench"', f'state_dir = "{work / "state"}"', "[mqtt]",
        f'url = "mqtt://127.0.0.1:{broker.port}"', "[paths]", f'data_root = "{data}"',
        f'bundle_root = "{bundles}"', *keys.deploy_toml()]) + "\n")
    tracemalloc.start(1)
    agent = Agent(load_config(cfg))
    agent.start()
    finished = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-driver", protocol=mqtt.MQTTv5)
    client.on_message = lambda _c, _u, m: finished.set() if m.topic.endswith("/result") else None
    client.on_connect = lambda c, *_: c.subscribe(root + "#", qos=1)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = root + "cmdres/bench"
    base = None
    try:
        for i in range(args.jobs + 1):
            finished.clear()
            body = {"cmd_id": uuid.uuid4().hex, "args": {"bundle": "mlp", "data": "blobs.npz", "epochs": 3}}
            client.publish(root + "cmd/train", json.dumps(body), qos=1, properties=props)
            client.publish(root + "cmd/train", b"{not json", qos=1, properties=props)
            if not finished.wait(60):
                raise SystemExit(f"job {i} did not finish within 60 s; see {work}")
            if i == 100:
                base = tracemalloc.take_snapshot()
            if i % 50 == 0:
                print(f"job {i:5d}  RSS {rss_mib():7.1f} MiB  Python-traced {tracemalloc.get_traced_memory()[0] / 2**20:6.2f} MiB",
                      flush=True)
        if base is not None:
            print("grew most since job 100:")
            for stat in tracemalloc.take_snapshot().compare_to(base, "lineno")[:12]:
                print(" ", stat)
    finally:
        client.loop_stop()
        agent.shutdown()
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
