"""The bench's run: the arguments checked, the phases in order (or the store comparison, or one profiled phase),
the Markdown report and the JSON object."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.fleet_ingest.baselines import run_baselines
from bench.fleet_ingest.old_revision import export_revision
from bench.fleet_ingest.paint import first_paint, paint_during
from bench.fleet_ingest.phase import run_phase
from bench.fleet_ingest.progress import print_progress
from bench.fleet_ingest.publisher import raise_nofile
from bench.fleet_ingest.report import details, details_stores, report, report_stores
from bench.fleet_ingest.stores import run_store_comparison

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def run(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    """Check the arguments (``ap.error`` on bad ones), run, report; 0 when every phase verified."""
    try:
        args.device_list = [int(x) for x in str(args.devices).split(",") if x.strip()]
        args.collector_list = [int(x) for x in str(args.collectors).split(",") if x.strip()]
    except ValueError:
        ap.error("--devices and --collectors take comma-separated numbers")
    if not args.device_list or min(args.device_list) < 1 or not args.collector_list or min(args.collector_list) < 1:
        ap.error("--devices and --collectors need positive numbers")
    if args.phases is None:
        args.phases = "max,paint,soak" if args.store == "postgresql" else "baselines,before,max,paced,soak,paint"
    if args.store == "sqlite":
        if len(args.device_list) > 1:
            ap.error("--store sqlite runs one device count (several: --store postgresql)")
        args.devices = args.device_list[0]
    raise_nofile()   # inherited by the publisher and Mosquitto: a socket per simulated device
    tmp = Path(tempfile.mkdtemp(prefix="fleet-ingest-"))
    phases = args.phases.split(",")
    common = {"devices": args.devices, "connections": args.connections, "dup_every": args.dup_every}
    version = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True).stdout.split("\n")[0]
    out: dict[str, Any] = {"args": vars(args), "tmp": str(tmp), "loadavg_before": os.getloadavg(),
                           "mosquitto": version.replace("mosquitto version ", "").strip()}
    t_bench = time.time()
    if args.store == "postgresql":
        try:
            run_store_comparison(args, tmp, out, phases)
        finally:
            end_run(args, out, tmp, t_bench)
        print(report_stores(out))
        print(details_stores(out))
        emit_json(args, out)
        return 0 if all(r["verify"]["ok"] for r in out.get("runs", []) + [out[k] for k in ("soak",) if k in out]) else 1
    try:
        if args.profile:
            cfg = ({**common, "messages": args.messages} if args.profile == "max"
                   else {**common, "rate": args.rate, "seconds": args.seconds})
            res = run_phase(args.profile, tmp, cfg, child={"profile": str(tmp / "profile")})
            print(json.dumps({k: v for k, v in res.items() if k != "timeline"}, default=str))
            import pstats
            for p in sorted((tmp / "profile").glob("*.prof")):
                print(f"\n===== {p.name}")
                pstats.Stats(str(p)).sort_stats("tottime").print_stats(30)
            return 0
        if "baselines" in phases:
            out["baselines"] = run_baselines(tmp, args.devices)
            print_progress("baselines", out["baselines"])
        if "before" in phases:
            src = export_revision(args.before, tmp)
            out["before"] = run_phase("before", tmp, {**common, "messages": args.messages},
                                      child={"src": str(src)})
            out["before"]["ref"] = args.before
            print_progress("before", out["before"])
        if "max" in phases:
            out["max"] = run_phase("max", tmp, {**common, "messages": args.messages}, keep_db=True)
            print_progress("max", out["max"])
        if "paced" in phases:
            during = (args.seconds / 2, paint_during()) if "paint" in phases else None
            out["paced"] = run_phase("paced", tmp, {**common, "rate": args.rate, "seconds": args.seconds},
                                     during=during)
            print_progress("paced", out["paced"])
        if "soak" in phases and args.soak_seconds > 0:
            out["soak"] = run_phase("soak", tmp, {**common, "rate": args.soak_rate, "seconds": args.soak_seconds})
            print_progress("soak", out["soak"])
        if "paint" in phases:
            out["paint"] = first_paint(tmp, Path(out["max"]["db"]) if "max" in out else None, args.devices)
            print_progress("paint", out["paint"])
    finally:
        end_run(args, out, tmp, t_bench)
    print(report(out))
    print(details(out))
    emit_json(args, out)
    ok = all(out[p]["verify"]["ok"] for p in ("before", "max", "paced", "soak") if p in out)
    return 0 if ok else 1



def emit_json(args: argparse.Namespace, out: dict[str, Any]) -> None:
    if args.json or args.json_out:
        text = json.dumps(out, default=str)
        if args.json:
            print(text)
        if args.json_out:
            args.json_out.write_text(text + "\n")


def end_run(args: argparse.Namespace, out: dict[str, Any], tmp: Path, t_bench: float) -> None:
    """Record the load average after and the run's length; remove the temporary directory unless --keep."""
    out["loadavg_after"] = os.getloadavg()
    out["bench_s"] = time.time() - t_bench
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)

