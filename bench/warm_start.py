"""Warm start vs from scratch (issue 36): a box that trained on part of its data trains again on all of it.

    .venv/bin/python -m bench.warm_start --json                          # both datasets, seeds 0,1,2 (~15 min, 2 cores)
    .venv/bin/python -m bench.warm_start --datasets accent --seeds 0     # quick check

Per dataset and seed:
1. data: ``accent`` — SYNTHETIC speech (espeak-ng, ``examples/demo/make_kws_dataset.py``) of one voice the shipped
   keyword model never saw (``--voice``, default es), ``--accent-shots`` clips per word for training and
   ``--accent-test`` more per word for the test, the bundle of ``bench/accent_personalization.py`` (the pretrained
   head kept); ``fashion`` — REAL Fashion-MNIST photos (``examples/vision/make_fashion.py``, Debian package
   ``dataset-fashion-mnist``), ``--fashion-shots`` training photos stratified from the train split (seed 1000 +
   seed) and a fixed test set of ``--fashion-test`` from t10k, the EfficientNet-Lite0 bundle of
   ``bench/fashion_personalization.py`` at ``--size``;
2. ``first``: ``ftedge train`` on the first half of the training samples (the first half of the shots per word /
   of the photos), hand-set settings (``--epochs 30 --lr 0.01``, 20 % validation, ``--seed SEED``);
3. the second run on all the training samples, three ways: ``scratch`` (the same settings, from the bundle),
   ``warm`` (the same settings, ``--warm-start`` the first run) and ``warm-short`` (``--warm-start``, a third of
   the epochs);
4. each run's model.onnx scored on the test samples (``ftedge evaluate``); the whole ``ftedge train`` process
   timed (bench/proc_launcher.py: fork+exec, wall time). Every train is ``--no-cache``, so each pays for its own
   backbone pass, as in the other personalization benchmarks.

Report: test accuracy and train seconds, mean ± sd over the seeds; ``promoted`` counts; for warm runs the
result.json ``previous_gain`` (the validation gain over the first run's model on the same stable split).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import ROOT, load_module, md_row, md_table, mean_sd_text, omp_env, progress, run_measured

say = progress("[warm] ")
SECOND = ("scratch", "warm", "warm-short")
DATA = {"accent": "SYNTHETIC speech (espeak-ng), a voice the base model never saw",
        "fashion": "REAL product photos (Fashion-MNIST, Zalando; Debian package dataset-fashion-mnist)"}


class Runner:
    """``ftedge train`` / ``ftedge evaluate`` as their own processes, with one interpreter."""

    def __init__(self, python: str, work: Path, epochs: int, lr: float, batch: int) -> None:
        self.python, self.work, self.epochs, self.lr, self.batch = python, work, epochs, lr, batch

    def train(self, bundle: Path, data: Path, run: Path, seed: int, *extra: str, epochs: int | None = None) -> dict:
        cmd = [self.python, "-m", "ftedge", "train", str(bundle), "--data", str(data), "-o", str(run), "--no-cache",
               "--epochs", str(epochs or self.epochs), "--lr", str(self.lr), "--batch-size", str(self.batch),
               "--seed", str(seed), "--quiet", "--json", *extra]
        m = run_measured(cmd, self.work, omp_env())
        return {"wall_s": round(m["wall_s"], 2), "rss_mib": round(m["rss_mib"], 1), "result": m["result"]}

    def evaluate(self, run: Path, test: Path) -> float:
        proc = subprocess.run([self.python, "-m", "ftedge", "evaluate", str(run), "--data", str(test), "--json"],
                              capture_output=True, text=True, cwd=self.work, env=omp_env())
        if proc.returncode:
            raise SystemExit(f"ftedge evaluate {run} failed:\n{proc.stderr[-2000:]}")
        return float(json.loads(proc.stdout)["accuracy"])


def contenders(r: Runner, bundle: Path, part: Path, full: Path, test: Path, seed: int, tag: str) -> list[dict]:
    """The first run on ``part``, then scratch / warm / warm-short on ``full``; one row each."""
    rows = []
    first = r.work / f"{tag}-first"
    plan = [("first", part, first, ()), ("scratch", full, r.work / f"{tag}-scratch", ()),
            ("warm", full, r.work / f"{tag}-warm", ("--warm-start", str(first))),
            ("warm-short", full, r.work / f"{tag}-warm-short", ("--warm-start", str(first)))]
    for method, data, run, extra in plan:
        epochs = max(1, r.epochs // 3) if method == "warm-short" else None
        m = r.train(bundle, data, run, seed, *extra, epochs=epochs)
        res = m["result"]
        rows.append({"method": method, "seed": seed, "test_accuracy": r.evaluate(run, test), "train_wall_s": m["wall_s"],
                     "train_rss_mib": m["rss_mib"], "promoted": res["promoted"], "epochs": epochs or r.epochs,
                     "samples": res["samples"], "val_accuracy": res["metrics"].get("accuracy"),
                     "previous_gain": res.get("previous_gain"), "stop_reason": res["stop_reason"]})
        say(f"  {tag} {method}: test {rows[-1]['test_accuracy']:.3f}, {m['wall_s']:.1f} s, "
            f"promoted {res['promoted']}" + (f", previous_gain {res['previous_gain']:+.3f}"
                                             if res.get("previous_gain") is not None else ""))
    return rows


def accent(args: argparse.Namespace, r: Runner, work: Path) -> list[dict]:
    from ftedge.cli import main as ftedge_main

    from bench.accent_personalization import KWS, split_user_data

    kws = load_module(KWS / "model.py", "kws_model")
    maker = load_module(ROOT / "examples" / "demo" / "make_kws_dataset.py", "make_kws_dataset")
    bundle = work / "kws-bundle"
    say("export the keyword bundle (bench/accent_personalization.py's)")
    assert ftedge_main(["export", f"{KWS / 'model.py'}:build_model", "-o", str(bundle), "--quiet", "--input",
                        "waveform:float32:1,16000", "--head", "classifier", "--labels", ",".join(kws.WORDS),
                        "--keep-head"]) == 0
    rows = []
    for seed in args.seeds:
        raw = work / f"accent-raw-{seed}"
        maker.make_dataset(raw, [args.voice], kws.WORDS, args.accent_shots + args.accent_test, seed)
        full, test = split_user_data(raw, work / f"accent-{seed}", args.accent_shots, kws.WORDS)
        part, _ = split_user_data(raw, work / f"accent-part-{seed}", args.accent_shots // 2, kws.WORDS)
        rows += [{"dataset": "accent", **row} for row in contenders(r, bundle, part, full, test, seed, f"accent-{seed}")]
    return rows


def fashion(args: argparse.Namespace, r: Runner, work: Path) -> list[dict]:
    from bench.fashion_personalization import VISION, export

    mk = load_module(VISION / "make_fashion.py", "make_fashion")
    bundle = work / f"fashion-bundle-{args.size}"
    say(f"export EfficientNet-Lite0 at {args.size}×{args.size} (bench/fashion_personalization.py's)")
    export(args.size, mk.LABELS, bundle)
    x_tr, y_tr = mk.load("train")
    x_te, y_te = mk.load("test")
    test_dir = work / "fashion-test"
    mk.write(test_dir, x_te, y_te, mk.stratified(y_te, args.fashion_test, seed=0))
    rows = []
    for seed in args.seeds:
        idx = mk.stratified(y_tr, args.fashion_shots, seed=1000 + seed)
        half = mk.stratified(y_tr[idx], args.fashion_shots // 2, seed=2000 + seed)   # stratified within idx
        full, part = work / f"fashion-{seed}", work / f"fashion-part-{seed}"
        mk.write(full, x_tr, y_tr, idx)
        mk.write(part, x_tr, y_tr, idx[half])
        rows += [{"dataset": "fashion", **row}
                 for row in contenders(r, bundle, part, full, test_dir, seed, f"fashion-{seed}")]
    return rows


def report(args: argparse.Namespace, rows: list[dict]) -> list[str]:
    lines = []
    for ds in args.datasets:
        rs = [x for x in rows if x["dataset"] == ds]
        if not rs:
            continue
        n = {m: next(x["samples"]["total"] for x in rs if x["method"] == m) for m in ("first", "scratch")}
        lines += ["", f"**{ds}** — {DATA[ds]}; first run on {n['first']} samples, second on {n['scratch']}; "
                  f"seeds {','.join(map(str, args.seeds))} (mean ± sd)", "",
                  *md_table(("run", "data", "epochs", "test accuracy", "train s (whole process)", "promoted",
                             "previous_gain (val)"))]
        for method in ("first", *SECOND):
            m = [x for x in rs if x["method"] == method]
            gains = [x["previous_gain"] for x in m if x["previous_gain"] is not None]
            lines.append(md_row((method, "first half" if method == "first" else "all", m[0]["epochs"],
                                 mean_sd_text([x["test_accuracy"] for x in m]),
                                 mean_sd_text([x["train_wall_s"] for x in m]).replace(".000", ""),
                                 f"{sum(x['promoted'] for x in m)}/{len(m)}",
                                 mean_sd_text(gains) if gains else "—")))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.warm_start", description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    p.add_argument("--datasets", type=lambda s: s.split(","), default=["accent", "fashion"])
    p.add_argument("--seeds", type=ints, default=[0, 1, 2])
    p.add_argument("--voice", default="es", help="held-out voice (default es: the least zero-shot accuracy in BENCHMARKS.md 3.1)")
    p.add_argument("--accent-shots", type=int, default=4, help="training clips per word (default 4: at 10 every run "
                   "scores 1.000, see BENCHMARKS.md)")
    p.add_argument("--accent-test", type=int, default=20, help="test clips per word (default 20)")
    p.add_argument("--fashion-shots", type=int, default=1000, help="training photos (default 1000)")
    p.add_argument("--fashion-test", type=int, default=1000, help="test photos from t10k (default 1000)")
    p.add_argument("--size", type=int, default=128, help="Fashion bundle input size (default 128)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--python", default=sys.executable, help="the interpreter of the ftedge processes (default: this "
                   "one; the device venv, .venv-device, for torch-free figures)")
    p.add_argument("--work", type=Path, help="keep files here (default: a temporary folder)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ftedge-warm-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        r = Runner(args.python, work, args.epochs, args.lr, args.batch_size)
        rows: list[dict] = []
        for ds in args.datasets:
            rows += {"accent": accent, "fashion": fashion}[ds](args, r, work)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    lines = report(args, rows)
    seconds = round(time.perf_counter() - t0, 1)
    print("\n".join([*lines, "", f"bench {seconds} s; settings: --epochs {args.epochs} --lr {args.lr:g} "
                     f"--batch-size {args.batch_size}, 20 % validation (stable split), --no-cache, "
                     "OMP_NUM_THREADS=2"]))
    if args.json:
        summary = {f"{ds}/{m}": {"test_accuracy": statistics.fmean(x["test_accuracy"] for x in rows
                                                                      if x["dataset"] == ds and x["method"] == m)}
                   for ds in args.datasets for m in ("first", *SECOND) if any(x["dataset"] == ds for x in rows)}
        print(json.dumps({"seconds": seconds, "seeds": args.seeds, "summary": summary, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
