"""``python -m bench.engine_step``: each case in a process of its own (``--one-case``), then the report (see the
package docstring)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import ROOT, progress
from bench.engine_step import __doc__ as DOC
from bench.engine_step.cases import BATCH, CASES, export_case
from bench.engine_step.report import print_report
from bench.engine_step.timing import bench_case


def run_one(args: argparse.Namespace) -> int:
    """Worker: export one case and time it; its result as JSON on the last stdout line."""
    say = progress()
    bundle_dir, facts = export_case(args.one_case, args.workdir, say, args.reuse)
    res = bench_case(args.one_case, bundle_dir, args, say)
    res.update(facts)
    print(json.dumps(res))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.engine_step", description=DOC,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per engine per round (default 30)")
    ap.add_argument("--rounds", type=int, default=20, help="rounds, engines alternating (default 20)")
    ap.add_argument("--warmup", type=int, default=30,
                    help="untimed steps per engine first (default 30, fewer if that would take over ~3 s)")
    ap.add_argument("--seconds-per-case", type=float, default=40.0,
                    help="cap on the timed steps of a case (both engines, all rounds): slow cases run fewer steps "
                         "per round (at least 10; default 40)")
    ap.add_argument("--profile", action="store_true", help="also onnxruntime session profiles (kernel time per op)")
    ap.add_argument("--workdir", type=Path, help="keep the bundles here (default: a temp dir, removed)")
    ap.add_argument("--reuse", action="store_true", help="with --workdir: reuse bundles already exported there")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one-case", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one_case:
        return run_one(args)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        ap.error(f"unknown case(s) {bad}; choose from {CASES}")

    from ftedge.runtime.engines.ort_backend import has_training_api, version

    if not has_training_api():
        raise SystemExit(f"onnxruntime {version()} here has no training API: run this with the legacy venv "
                         "(.venv-legacy/bin/python -m bench.engine_step), which runs both engines")
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    tmp = None
    work = args.workdir
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="ftedge-engine-step-")
        work = Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for case in cases:
            # each case in its own process: its own allocator arenas, and a fresh onnxruntime import (in one
            # process, a second BundleSession after an ort-training engine was opened raises ValueError from
            # ftedge.runtime.engines.ort_backend.has_training_api: see BENCHMARKS.md, issue 11)
            cmd = [sys.executable, "-m", "bench.engine_step", "--one-case", case, "--workdir", str(work),
                   "--steps", str(args.steps), "--rounds", str(args.rounds), "--warmup", str(args.warmup),
                   "--seconds-per-case", str(args.seconds_per_case)] + (["--reuse"] if args.reuse else []) + (
                   ["--profile"] if args.profile else [])
            p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
            if p.returncode != 0:
                print(f"case {case} FAILED (exit {p.returncode}); see stderr above", file=sys.stderr)
                results.append({"case": case, "failed": p.returncode})
                continue
            results.append(json.loads(p.stdout.strip().splitlines()[-1]))
    finally:
        if tmp is not None:
            tmp.cleanup()
    report = {"bench": "engine_step", "data": "SYNTHETIC inputs, random weights", "batch": BATCH,
              "onnxruntime": version(), "python": sys.version.split()[0],
              "threads": "onnxruntime default (one per core)", "cores": os.cpu_count(),
              "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup, "cases": results,
              "loadavg_before": [round(v, 2) for v in load_before],
              "loadavg_after": [round(v, 2) for v in os.getloadavg()], "total_s": round(time.perf_counter() - t0, 1)}
    print_report(report)
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
