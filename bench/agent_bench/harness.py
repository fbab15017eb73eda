"""The bench's run: set up, start the broker and the collector, the four measurements, the report."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import ROOT, progress
from bench.agent_bench.collector import Collector
from bench.agent_bench.measurements import bench_idle, bench_outbox, bench_telemetry
from bench.agent_bench.processes import fs_type
from bench.agent_bench.report import build_report, print_report
from bench.device_venv import child_env, pick_device_python
from bench.signing import keygen
from tests.helpers.broker import MOSQUITTO, Broker
from tests.helpers.common import ZOO

say = progress()


def setup(args: argparse.Namespace, work: Path) -> dict:
    """SYNTHETIC clips and the bundle (`ftedge export tests/helpers/zoo.py:cnn`), signed with a key from `ftedge keygen`
    (bench/signing.py): the agent refuses unsigned bundles, and its configs trust that key."""
    import numpy as np

    data_root, bundle_root = work / "data", work / "bundles"
    data_root.mkdir(parents=True, exist_ok=True)
    bundle_root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    y = np.arange(args.samples) % 4
    rng.shuffle(y)
    x = (0.7 * y[:, None, None] + rng.standard_normal((args.samples, 101, 40))).astype(np.float32)
    np.savez(data_root / "clips.npz", x=x, labels=y.astype(np.int64))
    keys = keygen(work / "keys" / "bench", [sys.executable, "-m", "ftedge"], child_env())
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "ftedge", "export", f"{ZOO}:cnn", "-o",
           str(bundle_root / "kws"), "--input", "x:float32:1,101,40", "--head", "classifier",
           "--labels", "yes,no,up,down", "--quiet", "--force", *keys.sign_args()]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=child_env())
    if p.returncode != 0:
        raise RuntimeError(f"export failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    export_s = time.perf_counter() - t
    say(f"data: SYNTHETIC {args.samples} x [101, 40] float32, 4 classes -> {data_root / 'clips.npz'}; "
        f"bundle exported in {export_s:.1f} s")
    return {"data_root": data_root, "bundle_root": bundle_root, "keys": keys, "export_s": round(export_s, 2)}


def warm_up(args: argparse.Namespace, ctx: dict) -> None:
    """Untimed: page-cache the device stack along the code path the timed runs take: one epoch of the same cached-mode
    job through the real CLI (the default engine, a throw-away cache dir), and the agent's own imports (paho)."""
    cmds = [[ctx["py"], "-m", "ftedge", "train", str(ctx["bundle_root"] / "kws"), "--data",
             str(ctx["data_root"] / "clips.npz"), "-o", str(ctx["work"] / "run-warmup"), "--cache-dir",
             str(ctx["work"] / "cache-warmup"), "--epochs", "1", "--batch-size", str(args.batch_size), "--mode",
             "cached", "--seed", str(args.seed), "--quiet", "--json"],
            [ctx["py"], "-c", "import paho.mqtt.client, ftedge.device_agent.agent"]]
    for cmd in cmds:
        p = subprocess.run(cmd, env=ctx["env"], cwd=ctx["work"], capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise RuntimeError(f"warm-up failed: {cmd[1:4]}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")


def run(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    """Check the arguments (``ap.error`` on bad ones), run, print the report (and the JSON object)."""
    if args.samples < 20 or args.messages < 1 or args.repeat < 1:
        ap.error("--samples must be >= 20, --messages and --repeat >= 1")

    t_start = time.perf_counter()
    load_before = os.getloadavg()
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="ftedge-agent-bench-"))).absolute()
    work.mkdir(parents=True, exist_ok=True)
    broker = None
    col = None
    ok = False
    try:
        ctx: dict[str, Any] = {"work": work, **setup(args, work)}
        ctx["py"], ctx["env"], ctx["py_desc"] = pick_device_python(work, child_env())
        ctx["fs"] = fs_type(work)
        v = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True)
        ctx["broker_version"] = next((ln.strip() for ln in (v.stdout + v.stderr).splitlines() if "version" in ln),
                                     "mosquitto")
        say(f"device python: {ctx['py_desc']}; state dir filesystem: {ctx['fs']}")
        broker = Broker(work / "broker").start()
        ctx["broker"] = broker
        col = Collector(broker.port)
        ctx["collector"] = col
        warm_up(args, ctx)

        say("(1) agent idle")
        idle = bench_idle(args, ctx)
        say(f"  {idle['cpu_percent']:.2f} % CPU, {idle['rss_mb']:.1f} MB RSS")
        say("(2) telemetry overhead: ftedge train vs agent job")
        tele = bench_telemetry(args, ctx)
        say(f"  overhead {100 * tele['overhead']:+.1f} %")
        say(f"(3) outbox throughput: {args.messages} messages")
        tput = bench_outbox(args, ctx, "live")
        say(f"  {tput['rate_msg_s']:.0f} msg/s")
        say(f"(4) outage replay: {args.messages} messages")
        outage = bench_outbox(args, ctx, "outage")
        say(f"  {outage['replay_s']:.2f} s")
        report = build_report(args, ctx, idle, tele, tput, outage, load_before, time.perf_counter() - t_start)
        ok = True
    finally:
        if col is not None:
            col.close()
        if broker is not None:
            broker.stop()
        if args.workdir is None and ok:
            shutil.rmtree(work, ignore_errors=True)
        elif not ok:
            say(f"logs and state kept in {work}")
    print_report(report, print)
    if args.json:
        print(json.dumps(report))
    return 0

