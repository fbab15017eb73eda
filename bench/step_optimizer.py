"""Export time and step time of the portable step graph with and without onnxscript's pattern rewriter (issue 18).

`step.onnx` used to go through onnxscript's full optimizer (constant folding + pattern rewriter + fusions); it now
gets constant folding, dead-code and common-subexpression elimination only (export/step_graph.py `_optimize`),
leaving the rewrites to onnxruntime's own graph optimizer at session creation. This measures both on the same
models in the same run: export wall time (a fresh `ftedge export` process each) and the portable engine's median
`train_step` time (both bundles' sessions open in one process, alternating blocks of steps).

Reproduce (repo root, host venv; ~4 minutes here):

    .venv/bin/python bench/step_optimizer.py                 # all cases
    .venv/bin/python bench/step_optimizer.py --cases bigru --steps 50 --json

ALL INPUTS ARE SYNTHETIC and all weights random:
  tf-base   bench/engine_step.py's tf-base: Embedding(1000, 128) + 2 TransformerEncoderLayer(d=128, ff 512), last block
            + head train, 32 tokens
  llama     tests/zoo_wide.py `llama-last`: a 2-layer Llama (d=32) whose last decoder layer + norm + score train
  bigru     tests/zoo.py `bigru-top-layer`: 2-layer bidirectional GRU, the top layer + head train (5 steps unrolled)
  cnn       tests/zoo.py `hardswish-block`: MobileNetV3-style block with trainable BatchNorm, 16x16 input
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))


def _case(name: str) -> tuple[list[str], dict[str, str]]:
    if name == "tf-base":
        import engine_step as es

        seq, vocab = es.TF_SIZES["tf-base"][3], es.TF_SIZES["tf-base"][4]
        return ([f"{ROOT / 'bench' / 'engine_step.py'}:token_classifier", "--input", f"tokens:int64:1,{seq}:0-{vocab}",
                 "--trainable", r"encoder\.layers\.1\.", "--trainable", "^head"],
                {"FTEDGE_STEP_TF": json.dumps(es.TF_SIZES["tf-base"])})
    if name == "llama":
        from zoo_wide import WIDE

        model, args = WIDE["llama-last"]
        return [f"{ROOT / 'tests' / 'zoo_wide.py'}:{model}", *args], {}
    from zoo import PORTABLE_ONLY

    model, args = PORTABLE_ONLY["bigru-top-layer" if name == "bigru" else "hardswish-block"]
    return [f"{ROOT / 'tests' / 'zoo.py'}:{model}", *args], {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="tf-base,llama,bigru,cnn")
    ap.add_argument("--steps", type=int, default=100, help="timed steps per variant (in 5 alternating blocks)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from conftest import random_targets

    from ftedge.export.graph_split import random_feeds
    from ftedge.runtime import load_bundle
    from ftedge.runtime.session import BundleSession

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            cli, env_extra = _case(case)
            bundles, export_s, nodes = {}, {}, {}
            for variant, flag in (("rewriter", "1"), ("folding only", "0")):
                out = Path(tmp) / f"{case}-{flag}"
                env = {**os.environ, **env_extra, "FTEDGE_STEP_REWRITER": flag}
                t = time.perf_counter()
                p = subprocess.run([sys.executable, "-m", "ftedge.cli", "export", *cli, "-o", str(out), "--quiet"],
                                   env=env, capture_output=True, text=True, cwd=ROOT)
                export_s[variant] = time.perf_counter() - t
                if p.returncode:
                    sys.exit(f"{case} ({variant}): export failed: {p.stderr[-2000:]}")
                import onnx

                nodes[variant] = len(onnx.load(str(out / "portable" / "step.onnx")).graph.node)
                bundles[variant] = load_bundle(out)
            sessions = {v: BundleSession(b) for v, b in bundles.items()}
            b0 = next(iter(bundles.values()))
            feeds = sessions["rewriter"].embed(random_feeds(b0.inputs, args.batch, seed=1))
            y = random_targets(b0, args.batch)
            times: dict[str, list[float]] = {v: [] for v in sessions}
            for s in sessions.values():
                for _ in range(5):
                    s.train_step(feeds, y)  # warm-up
            block = max(1, args.steps // 5)
            for r in range(5):
                order = list(sessions) if r % 2 == 0 else list(reversed(sessions))
                for v in order:
                    for _ in range(block):
                        t = time.perf_counter()
                        sessions[v].train_step(feeds, y)
                        times[v].append(time.perf_counter() - t)
            med = {v: statistics.median(ts) * 1e3 for v, ts in times.items()}
            row = {"case": case, "export_s": {v: round(x, 1) for v, x in export_s.items()},
                   "step_ms": {v: round(x, 3) for v, x in med.items()}, "step_nodes": nodes,
                   "export_ratio": round(export_s["folding only"] / export_s["rewriter"], 2),
                   "step_ratio": round(med["folding only"] / med["rewriter"], 2)}
            rows.append(row)
            print(f"{case:8s} export {export_s['rewriter']:6.1f} s -> {export_s['folding only']:6.1f} s "
                  f"({row['export_ratio']:.2f}x)   step {med['rewriter']:7.3f} -> {med['folding only']:7.3f} ms "
                  f"({row['step_ratio']:.2f}x)   nodes {nodes['rewriter']} -> {nodes['folding only']}", flush=True)
    if args.json:
        print(json.dumps({"batch": args.batch, "steps": args.steps, "cases": rows}))


if __name__ == "__main__":
    main()
