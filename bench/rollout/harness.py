"""The bench's run: the simulated scenarios (default tick, fast tick, the fan-out baseline, a breach), the tick cost
against wave size, the real agents, the 10⁵-box model; then the report and the JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import cpu_times, progress, rounded

say = progress("[rollout] ")
CANARY, WAVES = 0.01, [0.1, 0.5, 1.0]
TRAIN = {"data": "user"}


def _settings(args: argparse.Namespace) -> None:
    from ftedge.fleet.rollout.plan import parse_share

    if args.quick:
        args.devices, args.wave_timeout, args.tick_sizes, args.agents = min(args.devices, 200), 3.0, "1000,5000", 0
        args.fast_tick = 0
    for name in ("fail_rate", "offline_rate", "regress_rate", "halt_regress_rate"):
        setattr(args, name, parse_share(getattr(args, name), "--" + name.replace("_", "-")))


def run_simulated(args: argparse.Namespace, work: Path, phases: set[str]) -> dict[str, Any]:
    """Every simulated scenario, each on a fresh broker, simulator (new boots, seqs from 1: a collector that met
    the simulator's later seqs first would count holes and send resyncs) and database."""
    from bench.fleet_ingest.collector import Mosquitto
    from bench.rollout.simulated import FLEET, make_boxes, run_baseline, run_scenario, set_regress
    from tests.helpers.rollout_sim import FleetSim

    out: dict[str, Any] = {}
    boxes = make_boxes(args.devices, args.fail_rate, args.offline_rate, args.regress_rate, args.seed)
    spec = {"canary": f"{CANARY:.0%}", "waves": WAVES, "train": TRAIN, "max_failures": args.max_failures,
            "min_devices": args.min_devices, "max_regressions": args.max_regressions,
            "wave_timeout_s": args.wave_timeout}
    limit = (len(WAVES) + 1) * (args.wave_timeout + 15) + 60
    runs: list[tuple[str, str, Any]] = []
    if "sim" in phases:
        runs.append(("sim", f"simulated: {args.devices} boxes, driver tick 1 s",
                     lambda port: run_scenario("tick1", port, work, boxes, spec, 1.0, limit)))
        if args.fast_tick:
            runs.append(("sim_fast", f"simulated: {args.devices} boxes, driver tick {args.fast_tick:g} s",
                         lambda port: run_scenario("fast", port, work, boxes, spec, args.fast_tick, limit)))
    if "baseline" in phases:
        runs.append(("baseline", f"baseline: fan-out deploy then train to {args.devices} boxes at once",
                     lambda port: run_baseline(port, work, boxes, TRAIN, args.wave_timeout, limit)))
    if "halt" in phases:
        def halt(port: int) -> dict[str, Any]:
            set_regress(boxes, args.halt_regress_rate, args.seed + 1)
            return run_scenario("halt", port, work, boxes, spec, 1.0, limit)
        runs.append(("halt", f"breach: regress rate {args.halt_regress_rate:.0%}: a wave halts and rolls back", halt))
    cpu = 0.0
    for key, what, fn in runs:
        say(what)
        broker = Mosquitto(work / f"broker-{key}")
        try:
            p0 = time.process_time()
            sim = FleetSim(broker.port, FLEET, boxes)
            try:
                out[key] = fn(broker.port)
                out[key]["simulator_repeats"] = sim.repeats
            finally:
                sim.close()
            cpu += time.process_time() - p0
        finally:
            broker.stop()
    out["simulator_cpu_s"] = cpu
    return out


def run(args: argparse.Namespace) -> int:
    from bench.rollout import capacity, report

    _settings(args)
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    t0, (busy0, _) = time.time(), cpu_times()
    res: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                       "platform": platform.platform()},
                           "settings": {"devices": args.devices, "fail_rate": args.fail_rate,
                                        "offline_rate": args.offline_rate, "regress_rate": args.regress_rate,
                                        "halt_regress_rate": args.halt_regress_rate, "wave_timeout_s": args.wave_timeout,
                                        "canary": CANARY, "waves": WAVES, "train": TRAIN,
                                        "max_failures": args.max_failures, "min_devices": args.min_devices,
                                        "max_regressions": args.max_regressions, "seed": args.seed}}
    try:
        if phases & {"sim", "baseline", "halt"}:
            res.update(run_simulated(args, work, phases))
        if "ticks" in phases:
            from bench.rollout.ticks import tick_cost

            res["ticks"] = []
            for n in (int(x) for x in args.tick_sizes.split(",") if x.strip()):
                say(f"driver tick cost, one wave of {n} devices")
                res["ticks"].append(tick_cost(n, work / "ticks", repeats=3 if n <= 10_000 else 1))
        if "agents" in phases and args.agents > 0:
            from bench.fleet_ingest.collector import Mosquitto
            from bench.rollout.agents import run_agents

            say(f"real agents: {args.agents}")
            broker = Mosquitto(work / "broker-agents")
            try:
                res["agents"] = run_agents(args.agents, broker.port, work / "agents", args.epochs, 120.0)
            finally:
                broker.stop()
        if "sim" in res and res.get("ticks"):
            res["capacity"] = capacity.model(res["sim"], res["ticks"], CANARY, WAVES)
        res["bench_wall_s"] = time.time() - t0
        res["host_busy_cores"] = (cpu_times()[0] - busy0) / res["bench_wall_s"]   # the whole box: a disturbed run
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    res = rounded(res, 5)
    for line in report.lines(res):
        print(line)
    text = json.dumps(res, separators=(",", ":"))
    if args.json_out:
        args.json_out.write_text(text + "\n")
    if args.json:
        print(text)
    return 0
