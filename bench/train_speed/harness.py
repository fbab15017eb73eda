"""The bench's run: set up, every contender --repeat times round-robin (within --budget-s), the figures and the
report."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench._common import DEVICE_PY, HOST_PY, LEGACY_PY, ROOT, progress, run_measured
from bench.train_speed.bundles import legacy_ok, onnx_import_costs, run_checked, setup
from bench.train_speed.contenders import FTEDGE_RUNS, FULL_MODE, NO_LEGACY, child_env, commands, measure
from bench.train_speed.report import print_report
from bench.train_speed.summary import build_report


def run(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    """Check the arguments (``ap.error`` on bad ones), run, print the report (and the JSON object)."""
    if not 4 <= args.classes <= 12:
        ap.error("--classes must be 4-12")

    if args.samples < 5 * args.classes:
        ap.error("--samples must be at least 5 per class")
    say = progress()   # the report goes to stdout
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ftedge-train-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        args.legacy = legacy_ok()
        if not args.legacy:
            say(f"NOTE: {LEGACY_PY} (onnxruntime-training) is missing or has no training API: the ort-training rows "
                f"are {NO_LEGACY}; bundles exported by the host venv (portable engine only)")
        ctx = setup(args, work, say)
        device_py = DEVICE_PY
        if not device_py.exists():
            say(f"NOTE: {DEVICE_PY} is missing; running the device contenders with the host venv ({sys.executable}) "
                "instead: NOT a torch-free environment, so start-up time and RSS are not representative of a device "
                "(create it: python3.11 -m venv .venv-device && .venv-device/bin/pip install --no-deps . && "
                ".venv-device/bin/pip install '.[device]')")
            device_py = Path(sys.executable)
        env = child_env()
        # untimed warm-up: page-cache the shared libraries of every stack
        run_checked([str(device_py), "-c", "import onnx, onnxruntime, safetensors, ftedge.runtime.engines.engine"], env)
        if args.legacy:
            run_checked([str(LEGACY_PY), "-c", "import onnx; from ftedge.runtime.engines.ort_training_backend import training_api; "
                                               "training_api()"], env)
        run_checked([str(HOST_PY if HOST_PY.exists() else sys.executable), "-c", "import torch"], env)
        floor_rec = run_measured([shutil.which("true") or "/bin/true"], ROOT, env)  # RSS the launcher passes on
        ctx["info"]["rss_floor_mib"] = round(floor_rec["rss_mib"], 1)
        ctx["info"]["onnx_import"] = onnx_import_costs(device_py, args.legacy, env)
        say("import onnx (s, median of 3): " + ", ".join(f"{k} {v['s']:.2f} (onnx {v['onnx']}, ml_dtypes {v['ml_dtypes']})"
                                                        for k, v in ctx["info"]["onnx_import"].items()))

        torch_py = str(HOST_PY if HOST_PY.exists() else sys.executable)
        contenders = commands(args, ctx, work, device_py, torch_py)
        runs: dict[str, list[dict]] = {k: [] for k in contenders}
        for r in range(args.repeat):
            for name, cmd in contenders.items():
                if name in FULL_MODE and r >= args.full_repeat:
                    continue
                shutil.rmtree(work / f"run-{name}-{r}", ignore_errors=True)  # a reused --workdir
                m = measure(cmd(r), env)
                if name in FTEDGE_RUNS:
                    lines = (work / f"run-{name}-{r}" / "metrics.jsonl").read_text().splitlines()
                    m["last_epoch_accuracy"] = json.loads(lines[-1])["val_accuracy"]
                    want = "ort-training" if name.endswith("-ort") else "portable"
                    if m["result"].get("engine") != want:
                        raise SystemExit(f"{name} ran the {m['result'].get('engine')} engine, not {want}")
                if name.startswith("ref") and m["result"].get("torch_imported"):
                    raise SystemExit(f"{name}: the ORT pass imported torch")
                runs[name].append(m)
                say(f"  repeat {r + 1}/{args.repeat} {name}: {m['wall_s']:.2f} s, {m['rss_mib']:.0f} MiB")
            # the next round's cost: each contender that runs in it, at its last wall time
            elapsed = time.perf_counter() - t_start
            next_round = sum(v[-1]["wall_s"] for k, v in runs.items() if v and not (k in FULL_MODE and r + 1 >= args.full_repeat))
            if r + 1 < args.repeat and elapsed + next_round > args.budget_s:
                say(f"  stopping after {r + 1} repeat(s): another round (~{next_round:.0f} s) would pass --budget-s "
                    f"{args.budget_s:g} (elapsed {elapsed:.0f} s)")
                break
        runs = {k: v for k, v in runs.items() if v}
        load_after = os.getloadavg()
        report = build_report(args, ctx, runs, device_py, load_before, load_after, time.perf_counter() - t_start)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print_report(report, print)
    if args.json:
        print(json.dumps(report))
    return 0

