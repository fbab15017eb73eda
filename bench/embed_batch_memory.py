"""Peak memory of `ftedge train` vs `--embed-batch-size`: EfficientNet-Lite0 (real ImageNet weights) at 224×224.

The backbone pass dominates a big-image job's memory (activations of a whole embedding batch). Same bundle,
same REAL digits (scikit-learn, as PNG), same seed; only the embedding batch differs, each run its own
process in the torch-free device venv, started through bench/proc_launcher.py so its peak RSS is its own.

    .venv/bin/python -m bench.embed_batch_memory [--sizes 64,16,4] [--size 224] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._common import DEVICE_PY, ROOT, md_table, run_measured

LITE = ["--mean", "0.498039,0.498039,0.498039", "--std", "0.501961,0.501961,0.501961"]


def main() -> int:
    """Export once, train once per embedding batch size, print the table."""
    ap = argparse.ArgumentParser(prog="python -m bench.embed_batch_memory", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64,16,4", help="embedding batch sizes (64 = the default for batch 32)")
    ap.add_argument("--size", type=int, default=224, help="image input size (default 224, the native one)")
    ap.add_argument("--train", type=int, default=200, help="training digits (default 200)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    py = str(DEVICE_PY if DEVICE_PY.exists() else sys.executable)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, str(ROOT / "examples/vision/make_digits.py"), str(work / "digits"),
                        "--train", str(args.train), "--test", "100", "--seed", "0"], check=True, capture_output=True)
        s = args.size
        subprocess.run([sys.executable, "-m", "ftedge", "export", "examples/vision/efficientnet_lite0.py:build_model",
                        "-o", str(work / "bundle"), "--input", f"image:float32:1,3,{s},{s}", "--image-size", f"{s},{s}",
                        *LITE, "--head", "_fc", "--labels", ",".join(map(str, range(10))), "--quiet"],
                       check=True, cwd=ROOT, capture_output=True)
        for eb in [int(x) for x in args.sizes.split(",")]:
            rec = run_measured([py, "-m", "ftedge", "train", str(work / "bundle"), "--data",
                                str(work / "digits" / "train"), "-o", str(work / f"run-{eb}"), "--epochs",
                                str(args.epochs), "--no-cache", "--quiet", "--json", "--embed-batch-size", str(eb)],
                               ROOT)
            result = rec["result"]
            rows.append({"embed_batch": eb, "peak_rss_mib": round(rec["rss_mib"]), "wall_s": round(rec["wall_s"], 2),
                         "embed_s": round(result["timings"]["embed_s"], 2),
                         "val_accuracy": result["metrics"]["accuracy"]})
    base = rows[0]
    print(f"EfficientNet-Lite0 {args.size}×{args.size}, {args.train} REAL digits, {args.epochs} epochs, device venv")
    print("\n".join(md_table(("embed batch", "peak RSS MiB", "× first row", "embed s", "whole process s", "val accuracy"),
                             [(r["embed_batch"], r["peak_rss_mib"], f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f}×",
                               r["embed_s"], r["wall_s"], f"{r['val_accuracy']:.3f}") for r in rows])))
    if args.json:
        print(json.dumps({"size": args.size, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
