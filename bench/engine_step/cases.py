"""The cases and their bundles: each exported with ``--engine all`` (one bundle carries both engines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench._common import ROOT
from bench.engine_step.models import CLASSES, SPEC
from tests.helpers.common import ZOO

BATCH = 32
# name -> (d, heads, ff, seq, vocab, activation)
TF_SIZES = {"tf-base": (128, 4, 512, 32, 1000, "gelu"), "tf-wide": (256, 8, 1024, 64, 1000, "gelu")}
CASES = ("cnn-head", "cnn-full", "tf-tiny", "tf-base", "tf-wide")


def export_case(case: str, work: Path, say: Callable[[str], None], reuse: bool = False) -> tuple[Path, dict]:
    """Write the case's bundle with both engines; returns (bundle dir, facts)."""
    env = dict(os.environ)
    out = work / case
    common = ["--engine", "all", "--quiet", "--force", "-o", str(out)]
    if case.startswith("cnn"):
        from bench.train_speed import data as ts_data, model as ts_model  # torch only inside make_weights

        weights = work / "kws-weights.pt"
        if not weights.exists():
            calib, _ = ts_data.make_data(256, CLASSES, 1000)
            ts_model.make_weights(weights, CLASSES, 0, calib)
        env["FTEDGE_BENCH_WEIGHTS"], env["FTEDGE_BENCH_CLASSES"] = str(weights), str(CLASSES)
        labels = ",".join(f"kw{i}" for i in range(CLASSES))
        cmd = [sys.executable, "-m", "ftedge", "export", ts_model.SPEC, "--input", f"x:float32:1,{ts_data.T},{ts_data.F}",
               "--head", ts_model.HEAD, "--labels", labels, "--lr", "0.01", *common]
        if case == "cnn-full":
            cmd.append("--no-split")
    elif case == "tf-tiny":
        cmd = [sys.executable, "-m", "ftedge", "export", f"{ZOO}:transformer", "--input", "tokens:int64:1,10:0-50",
               "--trainable", r"encoder\.layers\.1\.", "--trainable", "^head", *common]
    else:
        d, heads, ff, seq, vocab, act = TF_SIZES[case]
        env["FTEDGE_STEP_TF"] = json.dumps(TF_SIZES[case])
        cmd = [sys.executable, "-m", "ftedge", "export", SPEC,
               "--input", f"tokens:int64:1,{seq}:0-{vocab}",
               "--trainable", r"encoder\.layers\.1\.", "--trainable", "^head", *common]
    if reuse and (out / "manifest.json").exists():
        say(f"  {case}: reusing the bundle in {out} (--reuse)")
        return out, {"export_cmd": " ".join(cmd[1:]), "export_s": None}
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"export of {case} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    dt = time.perf_counter() - t
    say(f"  exported {case} in {dt:.1f} s")
    return out, {"export_cmd": " ".join(cmd[1:]), "export_s": round(dt, 1)}
