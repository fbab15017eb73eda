"""`ftedge demo`: the whole story on one machine, in about half a minute.

1. Pretrain a small 1-D CNN (PyTorch) on *synthetic* 3-axis motion gestures
   recorded by "factory" boxes.
2. `ftedge export` it: frozen backbone + trainable head, checked against PyTorch.
3. On a simulated edge box whose sensor is mounted differently (rotated axes,
   other gain: synthetic too), `ftedge train` the head torch-free with ONNX
   Runtime on 20 local examples per gesture (backbone run once per sample,
   validation split, safety gate, personalized model.onnx).
4. `ftedge evaluate` the untuned bundle and the personalized model.onnx on that
   box's held-out examples.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

GESTURES = ["wave", "shake", "tap", "circle"]
STEPS = 64


def make_gestures(n_per_class: int, seed: int, rotation: np.ndarray | None = None, gain: float = 1.0):
    """Synthetic 3-axis accelerometer clips [n, 3, 64]; labelled SYNTHETIC everywhere they are reported."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, STEPS, dtype=np.float32)
    xs, ys = [], []
    for label in range(len(GESTURES)):
        for _ in range(n_per_class):
            phase, f = rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 1.2)
            if label == 0:
                sig = np.stack([np.sin(2 * np.pi * 2 * f * t + phase), 0.2 * np.sin(2 * np.pi * f * t), 0 * t])
            elif label == 1:
                sig = np.stack([0 * t, np.sign(np.sin(2 * np.pi * 6 * f * t + phase)), 0.3 * np.cos(2 * np.pi * 3 * f * t)])
            elif label == 2:
                centre = rng.uniform(0.3, 0.7)
                sig = np.stack([0 * t, 0 * t, 3 * np.exp(-((t - centre) ** 2) / 0.001)])
            else:
                sig = np.stack([np.cos(2 * np.pi * f * t + phase), np.sin(2 * np.pi * f * t + phase), 0 * t])
            sig = sig + rng.normal(0, 0.25, sig.shape)
            if rotation is not None:
                sig = rotation @ sig
            xs.append(gain * sig)
            ys.append(label)
    return np.asarray(xs, np.float32), np.asarray(ys, np.int64)


def _pretrain(x: np.ndarray, y: np.ndarray, seed: int):
    import torch
    import torch.nn as nn

    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("backbone", nn.Sequential(
        nn.Conv1d(3, 24, 5, padding=2), nn.BatchNorm1d(24), nn.ReLU(),
        nn.Conv1d(24, 32, 5, padding=2, stride=2), nn.BatchNorm1d(32), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten()))
    model.add_module("head", nn.Linear(32, len(GESTURES)))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(15):
        for idx in torch.randperm(len(xt)).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def run_demo(workdir: Path, seed: int = 0, say=print) -> dict:
    from ftedge.export import ExportOptions, export_bundle
    from ftedge.runtime.evaluate import evaluate
    from ftedge.runtime.manifest import parse_input_spec
    from ftedge.runtime.trainer import TrainConfig, train

    t0 = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    say("1/4 pretraining a 1-D CNN on SYNTHETIC factory gestures (PyTorch, host)")
    x_src, y_src = make_gestures(150, seed)
    model = _pretrain(x_src, y_src, seed)

    say("2/4 ftedge export: frozen backbone + trainable head, parity-checked against PyTorch")
    bundle_dir = workdir / "gestures-bundle"
    manifest = export_bundle(ExportOptions(
        model=model, output=bundle_dir, inputs=[parse_input_spec(f"x:float32:1,3,{STEPS}")], head="head",
        labels=GESTURES, lr=0.02, name="gestures", force=True))
    parity = max(manifest["parity"]["max_abs_diff"].values())

    say("3/4 edge box: sensor mounted rotated, other gain (SYNTHETIC); `ftedge train` torch-free")
    angle = np.deg2rad(70)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]], np.float32)
    x_dev, y_dev = make_gestures(20, seed + 1, rot, gain=1.6)
    x_test, y_test = make_gestures(100, seed + 2, rot, gain=1.6)
    np.savez(workdir / "box-data.npz", x=x_dev, labels=y_dev)
    np.savez(workdir / "box-heldout.npz", x=x_test, labels=y_test)
    run_dir = workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    trained = train(bundle_dir, workdir / "box-data.npz", run_dir,
                    TrainConfig(epochs=40, batch_size=16, lr=0.02, seed=seed, cache_dir=workdir / "cache"))
    before = evaluate(bundle_dir, workdir / "box-heldout.npz")["accuracy"]
    after = evaluate(run_dir, workdir / "box-heldout.npz")["accuracy"]
    losses = [json.loads(ln)["train_loss"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]

    result = {
        "data": "synthetic gestures (generated, not recorded)",
        "bundle": str(bundle_dir),
        "parity_max_abs_diff": parity,
        "run": str(run_dir),
        "promoted": trained["promoted"],
        "val_accuracy_untuned": trained["baseline"]["accuracy"],
        "val_accuracy_tuned": trained["metrics"]["accuracy"],
        "device_examples": int(len(y_dev)),
        "test_examples": int(len(y_test)),
        "accuracy_before": round(before, 4),
        "accuracy_after": round(after, 4),
        "first_loss": round(losses[0], 4),
        "last_loss": round(losses[-1], 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    say(f"4/4 on the box's held-out SYNTHETIC clips: accuracy {before:.1%} before → {after:.1%} after "
        f"fine-tuning on {len(y_dev)} local clips ({result['seconds']} s in all)")
    (workdir / "demo-result.json").write_text(json.dumps(result, indent=2))
    return result


def register(sub) -> None:  # noqa: ANN001 - argparse subparsers
    import argparse

    p = sub.add_parser(
        "demo",
        help="run the whole story end to end on this machine (needs the export extra)",
        description=__doc__,
        epilog="example:\n  ftedge demo --workdir /tmp/ftedge-demo --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workdir", type=Path, default=Path("ftedge-demo"), help="where to write the bundle and result")
    p.add_argument("--seed", type=int, default=0, help="seed for data and training (default 0)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=_run)


def _run(args) -> int:  # noqa: ANN001
    import sys

    from ftedge.errors import FtedgeError

    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise FtedgeError("the demo pretrains a model with PyTorch: pip install 'ftedge[export]'") from exc
    say = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr if args.json else sys.stdout))
    result = run_demo(args.workdir, args.seed, say)
    if args.json:
        print(json.dumps(result))
    return 0 if result["accuracy_after"] > result["accuracy_before"] else 1
