"""Accent personalization benchmark on SYNTHETIC speech (espeak-ng): zero-shot vs `ftedge train` vs PyTorch.

    .venv/bin/python -m bench.accent_personalization --holdout en-gb-scotland,es --shots 5 --seed 0 [--json]

For each held-out voice (never seen by the shipped base model, which was pretrained on en-us, en-gb,
en-gb-x-rp, en-us-nyc, en-029 and en-gb-x-gbclan only):
1. synthesize ``--shots`` + ``--test-per-word`` clips per word with ``examples/demo/make_kws_dataset.py``;
   the first ``--shots`` per word are the user's local data, the rest the test set;
2. export the shipped base model (``examples/kws/model.py``; pretrained head kept, classes named);
3. zero-shot: the untuned bundle on the test clips (``ftedge evaluate``);
4. personalize: ``ftedge train`` (fp32 backbone, and again with the int8 backbone) as a separate process on the device venv (torch-free, WAV decoding
   included in its wall time), then ``ftedge evaluate`` of the run's model.onnx on the test clips;
5. --auto (issue 14; ``--auto-seconds 0`` skips it): ``ftedge train --auto --max-seconds 30`` on the same 50
   files, no --lr/--epochs (the search starts from the bundle's defaults), scored on the same test clips;
6. reference: a separate PyTorch process fine-tunes the same head with the same hyperparameters (same
   data loader and validation split, AdamW with ORT's defaults, warm-up + cosine, same shuffling,
   best-epoch selection) and is scored on the same test clips.
With ``--json`` the last line is one JSON object (per-voice rows plus means).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._common import DEVICE_PY, ROOT, load_module, md_table, omp_env

KWS = ROOT / "examples" / "kws"


def _timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    """Whole-process seconds of ``cmd`` (OMP_NUM_THREADS=2, cwd: the repository root) and its output."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=omp_env())
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} … failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t, proc


VOICE_COLUMNS = ("held-out voice", "shots/word", "zero-shot", "ftedge personalized", "PyTorch reference",
                 "ftedge, int8 backbone", "promoted", "ftedge train s (whole process)", "PyTorch s", "PyTorch ÷ ftedge")
AUTO_COLUMNS = ("held-out voice", "hand-set (lr 0.01, 30 epochs, 20 % val)", "--auto", "--auto trials",
                "chosen lr / wd / epochs (schedule)", "CV accuracy (untuned)", "CV gain [95 %]", "--auto promoted",
                "--auto train s")


def report(rows: list[dict]) -> list[str]:
    """The per-voice table, then (if any voice ran --auto) the --auto table."""
    lines = md_table(VOICE_COLUMNS, [
        (r["holdout"], r["shots"], f"{r['zero_shot_accuracy']:.3f}", f"{r['personalized_accuracy']:.3f}",
         f"{r['torch_reference_accuracy']:.3f}", f"{r['personalized_accuracy_int8_backbone']:.3f}", r["promoted"],
         f"{r['ftedge_train_seconds']:.2f}", f"{r['torch_reference_seconds']:.2f}", f"{r['torch_over_ftedge']:.1f}×")
        for r in rows])
    autos = [r for r in rows if "auto_accuracy" in r]
    if autos:
        lines += ["", *md_table(AUTO_COLUMNS, [_auto_row(r) for r in autos])]
    return lines


def _auto_row(r: dict) -> tuple:
    c, e = r["auto_chosen"], r["auto_cv"]
    return (r["holdout"], f"{r['personalized_accuracy']:.3f}", f"{r['auto_accuracy']:.3f}", r["auto_trials"],
            f"{c['lr']:.3g} / {c['weight_decay']:.3g} / {c['epochs']} ({c['horizon']})",
            f"{e['tuned']:.3f} ({e['untuned']:.3f})", f"{e['gain']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}]",
            r["auto_promoted"], f"{r['ftedge_train_seconds_auto']:.2f}")


def split_user_data(src: Path, dst: Path, shots: int, words: list[str]) -> tuple[Path, Path]:
    """First ``shots`` clips per word (by index) → dst/train, the rest → dst/test."""
    for word in words:
        for f in sorted((src / word).glob("*.wav")):
            index = int(f.stem.rsplit("_", 1)[1])
            target = dst / ("train" if index < shots else "test") / word
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, target / f.name)
    return dst / "train", dst / "test"


def torch_reference(bundle: Path, train_dir: Path, test_dir: Path, epochs: int, lr: float, batch: int,
                    val_fraction: float, seed: int) -> dict:
    """The same head fine-tuning in PyTorch (run as its own process by ``--worker``)."""
    import torch

    from ftedge.bundle.loader import load_bundle
    from ftedge.runtime.data.samples import ModelIO, load_dataset
    from ftedge.runtime.training.schedule import learning_rate
    from ftedge.runtime.tasks.classify.folds import stratified_split

    torch.set_num_threads(2)
    torch.manual_seed(seed)
    kws = load_module(KWS / "model.py", "kws_model")
    model = kws.build_model()
    io = ModelIO.from_manifest(load_bundle(bundle).manifest)
    data = load_dataset(train_dir, io)
    test = load_dataset(test_dir, io)
    tr, va = stratified_split(data.targets, val_fraction, seed, True)
    with torch.no_grad():
        def feats(x: np.ndarray) -> torch.Tensor:
            return model.features(model.frontend(torch.from_numpy(x)).unsqueeze(1))
        f_all, f_test = feats(data.inputs["waveform"]), feats(test.inputs["waveform"])
    y_all, y_test = torch.from_numpy(data.targets), torch.from_numpy(test.targets)
    head = model.classifier
    opt = torch.optim.AdamW(head.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0)
    steps = epochs * math.ceil(len(tr) / batch)
    warmup, step = int(steps * 0.1), 0
    best = (-1.0, math.inf, None)

    def score(idx: np.ndarray) -> tuple[float, float]:
        head.eval()
        with torch.no_grad():
            out = head(f_all[idx])
            return float((out.argmax(1) == y_all[idx]).float().mean()), float(torch.nn.functional.cross_entropy(out, y_all[idx]))

    for epoch in range(1, epochs + 1):
        head.train()
        order = tr[np.random.default_rng([seed, epoch]).permutation(len(tr))]
        for s in range(0, len(order), batch):
            b = torch.from_numpy(order[s:s + batch])
            for g in opt.param_groups:
                g["lr"] = learning_rate(step, steps, lr, warmup, "cosine")
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(f_all[b]), y_all[b]).backward()
            opt.step()
            step += 1
        acc, loss = score(va)
        if acc > best[0] or (acc == best[0] and loss < best[1]):
            best = (acc, loss, {k: v.clone() for k, v in head.state_dict().items()})
    head.load_state_dict(best[2])
    head.eval()
    with torch.no_grad():
        test_acc = float((head(f_test).argmax(1) == y_test).float().mean())
    return {"accuracy": test_acc, "val_accuracy": best[0]}


def run_voice(voice: str, shots: int, test_per_word: int, seed: int, epochs: int, lr: float, batch: int,
              val_fraction: float, bundle: Path, work: Path, auto_seconds: float | None = None) -> dict:
    from ftedge.runtime.tasks.classify.evaluate import evaluate

    maker = load_module(ROOT / "examples" / "demo" / "make_kws_dataset.py", "make_kws_dataset")
    kws = load_module(KWS / "model.py", "kws_model")
    raw = work / f"{voice}-raw"
    maker.make_dataset(raw, [voice], kws.WORDS, shots + test_per_word, seed)
    train_dir, test_dir = split_user_data(raw, work / voice, shots, kws.WORDS)
    zero = evaluate(bundle, test_dir)["accuracy"]

    python = str(DEVICE_PY) if DEVICE_PY.exists() else sys.executable
    run_dir = work / f"{voice}-run"
    ftedge_s, proc = _timed([python, "-m", "ftedge", "train", str(bundle), "--data", str(train_dir), "-o", str(run_dir),
                             "--epochs", str(epochs), "--lr", str(lr), "--batch-size", str(batch),
                             "--val-fraction", str(val_fraction), "--seed", str(seed), "--no-cache", "--json"])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    personalized = evaluate(run_dir, test_dir)["accuracy"]
    int8_dir = work / f"{voice}-run-int8"
    int8_s, proc8 = _timed([python, "-m", "ftedge", "train", str(bundle), "--data", str(train_dir), "-o", str(int8_dir),
                            "--epochs", str(epochs), "--lr", str(lr), "--batch-size", str(batch), "--backbone", "int8",
                            "--val-fraction", str(val_fraction), "--seed", str(seed), "--no-cache", "--json"])
    personalized_int8 = evaluate(int8_dir, test_dir)["accuracy"]
    auto: dict = {}
    if auto_seconds:   # issue 14: settings by cross-validation, starting from the bundle's defaults
        auto_dir = work / f"{voice}-run-auto"
        auto_s, proc_a = _timed([python, "-m", "ftedge", "train", str(bundle), "--data", str(train_dir), "-o",
                                 str(auto_dir), "--auto", "--max-seconds", str(auto_seconds), "--batch-size",
                                 str(batch), "--seed", str(seed), "--no-cache", "--json"])
        res_a = json.loads(proc_a.stdout.strip().splitlines()[-1])
        sr = res_a["search"]
        auto = {"auto_accuracy": evaluate(auto_dir, test_dir)["accuracy"], "auto_promoted": res_a["promoted"],
                "auto_trials": len(sr["trials"]), "auto_chosen": sr["chosen"], "auto_search_s": sr["seconds"],
                "auto_cv": {k: sr["estimate"][k] for k in ("tuned", "untuned", "gain", "lo", "hi")},
                "ftedge_train_seconds_auto": round(auto_s, 2)}

    torch_s, tproc = _timed([sys.executable, "-m", "bench.accent_personalization", "--worker", json.dumps({
        "bundle": str(bundle), "train_dir": str(train_dir), "test_dir": str(test_dir), "epochs": epochs, "lr": lr,
        "batch": batch, "val_fraction": val_fraction, "seed": seed})])
    ref = json.loads(tproc.stdout.strip().splitlines()[-1])
    return {
        "holdout": voice, "shots": shots, "train_files": result["samples"]["total"],
        "test_clips": len(list(test_dir.rglob("*.wav"))),
        "zero_shot_accuracy": zero, "personalized_accuracy": personalized, "torch_reference_accuracy": ref["accuracy"],
        "personalized_accuracy_int8_backbone": personalized_int8, "ftedge_train_seconds_int8": round(int8_s, 2),
        "promoted": result["promoted"], "ftedge_train_seconds": round(ftedge_s, 2),
        "torch_reference_seconds": round(torch_s, 2), "torch_over_ftedge": round(torch_s / ftedge_s, 2),
        "ftedge_device_venv": python == str(DEVICE_PY), **auto,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.accent_personalization", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--holdout", default="en-gb-scotland,es", help="held-out voices, comma-separated")
    ap.add_argument("--shots", type=int, default=5, help="clips per word the user records")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-per-word", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--auto-seconds", type=float, default=30.0,
                    help="also run `ftedge train --auto --max-seconds S` per voice (0: skip; default 30)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        w = json.loads(args.worker)
        print(json.dumps(torch_reference(Path(w["bundle"]), Path(w["train_dir"]), Path(w["test_dir"]), w["epochs"],
                                         w["lr"], w["batch"], w["val_fraction"], w["seed"])))
        return 0
    from ftedge.cli import main as ftedge_main

    t0 = time.perf_counter()
    kws = load_module(KWS / "model.py", "kws_model")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = work / "kws-bundle"
        rc = ftedge_main(["export", f"{KWS / 'model.py'}:build_model", "-o", str(bundle), "--quiet",
                          "--input", "waveform:float32:1,16000", "--head", "classifier",
                          "--labels", ",".join(kws.WORDS), "--keep-head", "--quantize-backbone", "int8-conv"])
        if rc:
            return rc
        for voice in [v.strip() for v in args.holdout.split(",") if v.strip()]:
            rows.append(run_voice(voice, args.shots, args.test_per_word, args.seed, args.epochs, args.lr,
                                  args.batch_size, args.val_fraction, bundle, work, args.auto_seconds))
            print(f"done: {voice}", file=sys.stderr)
    print("data: SYNTHETIC speech (espeak-ng); base model never saw these voices")
    print("\n".join(report(rows)))
    summary = {
        "holdout": [r["holdout"] for r in rows], "shots": args.shots, "seed": args.seed,
        "zero_shot_accuracy": float(np.mean([r["zero_shot_accuracy"] for r in rows])),
        "personalized_accuracy": float(np.mean([r["personalized_accuracy"] for r in rows])),
        "torch_reference_accuracy": float(np.mean([r["torch_reference_accuracy"] for r in rows])),
        "seconds": round(time.perf_counter() - t0, 1), "per_voice": rows, "data": "synthetic speech (espeak-ng)",
    }
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
