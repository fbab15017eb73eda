"""Export coverage: export and train every wide-zoo family (tests/helpers/zoo_wide.py, plus the bidirectional LSTM/GRU
top layers of tests/helpers/zoo.py) with the CLI, as a new user would; prints one line per family and the pass counts.

Each family runs in a process of its own with a time limit: `ftedge export` (default engine), then
`ftedge train` on 90 SYNTHETIC samples (random inputs and labels; 3 epochs, batch 32, embedding in chunks of 64),
per engine the bundle carries. Reproduce (repo root):

    .venv/bin/python -m bench.zoo_coverage                    # host venv: the portable engine
    .venv-legacy/bin/python -m bench.zoo_coverage --engine all # with onnxruntime-training: both engines
    .venv/bin/python -m bench.zoo_coverage --families gpt2,llama-last --json

Against an older ftedge (the "before" counts of BENCHMARKS.md): `git worktree add /tmp/old <commit>`,
`pip install --no-deps --target /tmp/oldpkg /tmp/old`, then run with `PYTHONPATH=/tmp/oldpkg`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import ROOT
from tests.helpers.common import ZOO, ZOO_WIDE


def _error(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.startswith("error:")] or text.strip().splitlines() or [""]
    return lines[-1][:300]


def one(family: str, work: Path, engine: str) -> dict:
    """Export + train ``family`` in this process (called in a child: ``--one``)."""
    import contextlib
    import io

    import numpy as np

    from ftedge.cli import main
    from ftedge.export.graph_split import random_feeds
    from ftedge.runtime import load_bundle
    from tests.helpers.common import random_targets
    from tests.helpers.zoo import PORTABLE_ONLY
    from tests.helpers.zoo_wide import WIDE

    model, args = WIDE[family] if family in WIDE else PORTABLE_ONLY[family]
    zoo = ZOO_WIDE if family in WIDE else ZOO
    rec: dict = {"family": family}
    err = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stderr(err):
        rc = main(["export", f"{zoo}:{model}", "-o", str(work / family), "--quiet", "--engine", engine, *args])
    rec["export_s"] = round(time.perf_counter() - t, 1)
    if rc:
        rec["export_error"] = _error(err.getvalue())
        return rec
    bundle = load_bundle(work / family)
    rec["engines"] = sorted(bundle.manifest["engines"])
    np.savez(work / f"{family}.npz", labels=random_targets(bundle, 90, seed=0), **random_feeds(bundle.inputs, 90, seed=3))
    for eng in rec["engines"]:
        err = io.StringIO()
        t = time.perf_counter()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(["train", str(work / family), "--data", str(work / f"{family}.npz"), "-o",
                       str(work / f"{family}-{eng}"), "--epochs", "3", "--quiet", "--engine", eng])
        rec[f"train_{eng}_s"] = round(time.perf_counter() - t, 1)
        if rc:
            rec[f"train_{eng}_error"] = _error(err.getvalue())
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.zoo_coverage", description=__doc__.splitlines()[0])
    ap.add_argument("--families", help="comma-separated (default: all)")
    ap.add_argument("--engine", default="auto", help="export --engine (auto, portable, ort-training, all)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per family (export + training)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one", nargs=2, metavar=("FAMILY", "WORKDIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], Path(args.one[1]), args.engine)))
        return
    from tests.helpers.zoo_wide import WIDE

    families = args.families.split(",") if args.families else [*WIDE, "bilstm-top-layer", "bigru-top-layer"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in families:
            try:
                p = subprocess.run([sys.executable, "-m", "bench.zoo_coverage", "--engine", args.engine, "--one", family,
                                    tmp],
                                   capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
                lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
                rec = json.loads(lines[-1]) if lines else {"family": family, "crash": p.stderr[-300:]}
            except subprocess.TimeoutExpired:
                rec = {"family": family, "timeout_s": args.timeout}
            rows.append(rec)
            trained = [k for k in rec if k.startswith("train_") and k.endswith("_s")]
            errors = {k: v for k, v in rec.items() if k.endswith("error") or k in ("crash", "timeout_s")}
            print(f"{family:26s} export {rec.get('export_s', '-')!s:>6} s  "
                  + "  ".join(f"{k[6:-2]} {rec[k]} s" for k in trained)
                  + (f"  FAILED {errors}" if errors else ""), flush=True)
    exported = [r for r in rows if "export_s" in r and "export_error" not in r]
    ok = [r for r in exported if r.get("engines") and not any(k.endswith("_error") for k in r)]
    print(f"export passed {len(exported)}/{len(rows)}, training passed {len(ok)}/{len(rows)} (every engine the "
          "bundle carries)")
    if args.json:
        print(json.dumps({"engine": args.engine, "families": rows}))


if __name__ == "__main__":
    main()
