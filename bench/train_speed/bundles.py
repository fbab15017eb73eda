"""The set-up (host venv, torch): SYNTHETIC data, the weights, the three bundles exported with the CLI, and the
checks that the bench's copies of ftedge's split and schedule agree and every contender starts from the same
head; plus which venvs there are and what `import onnx` costs in them."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench._common import LEGACY_PY, ROOT, median
from bench.train_speed.contenders import child_env
from bench.train_speed.data import F, T, learning_rate, make_data, stratified_split
from bench.train_speed.model import HEAD, SPEC, make_weights


def run_checked(cmd: list[str], env: dict[str, str]) -> float:
    """Seconds ``cmd`` took (cwd: the repository root); raises with its output if it failed."""
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return time.perf_counter() - t


def count_ops(path: Path) -> dict[str, int]:
    """Node count per op type of an ONNX graph."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def setup(args: argparse.Namespace, work: Path, say: Callable[[str], None]) -> dict:
    """Data, weights and the three bundles (split, --no-split, int8), checked to start from the torch weights."""
    import torch
    from safetensors.numpy import load_file

    from ftedge.runtime import load_bundle
    from ftedge.runtime.engines.engine import bundle_engines
    from ftedge.runtime.training.schedule import learning_rate as ft_lr
    from ftedge.runtime.tasks.classify.folds import stratified_split as ft_split

    info: dict = {}
    x, y = make_data(args.samples, args.classes, args.seed)
    data = work / "data.npz"
    np.savez(data, x=x, labels=y)
    calib, _ = make_data(256, args.classes, args.seed + 1000)
    weights = work / "weights.pt"
    info["params"] = make_weights(weights, args.classes, args.seed, calib)
    say(f"model: KWSNet (DS-CNN, BatchNorm, GAP, Linear head '{HEAD}'), {info['params']:,} parameters; "
        f"RANDOM init (torch seed {args.seed}) + BN statistics calibrated on 256 synthetic samples; not pretrained")
    if not 50_000 <= info["params"] <= 150_000:
        raise SystemExit(f"parameter count {info['params']} outside 50k-150k")
    say(f"data: SYNTHETIC, {args.samples} samples x [{T}, {F}] float32, {args.classes} classes -> {data}")

    # the bench's copies of ftedge's split, shuffle and schedule must agree with ftedge's own
    tr, va = stratified_split(y, args.val_fraction, args.seed)
    ftr, fva = ft_split(y, args.val_fraction, args.seed, True)
    steps = math.ceil(len(tr) / args.batch_size) * args.epochs
    same_lr = all(abs(learning_rate(s, steps, args.lr, int(steps * 0.1)) - ft_lr(s, steps, args.lr, int(steps * 0.1), "cosine"))
                  < 1e-12 for s in range(steps))
    if not (np.array_equal(tr, ftr) and np.array_equal(va, fva) and same_lr):
        raise SystemExit("the bench's split/schedule copies disagree with ftedge's; update them")
    info["train_samples"], info["val_samples"] = int(len(tr)), int(len(va))

    env = child_env()
    env["FTEDGE_BENCH_WEIGHTS"], env["FTEDGE_BENCH_CLASSES"] = str(weights), str(args.classes)
    labels = ",".join(f"kw{i}" for i in range(args.classes))
    # with the legacy venv: one bundle per layout carries BOTH engines (--engine all needs onnxruntime-training)
    export_py, engines = (str(LEGACY_PY), ["--engine", "all"]) if args.legacy else (sys.executable, [])
    info["export_python"] = export_py
    base = [export_py, "-m", "ftedge", "export", SPEC, "--input", f"x:float32:1,{T},{F}",
            "--head", HEAD, "--labels", labels, "--lr", str(args.lr), *engines, "--quiet", "--force"]
    bundles = {"split": work / "bundle-split", "full": work / "bundle-full", "int8": work / "bundle-int8"}
    extra = {"split": [], "full": ["--no-split"], "int8": ["--quantize-backbone", "int8-conv"]}
    info["export_s"] = {}
    for kind, out in bundles.items():
        info["export_s"][kind] = round(run_checked(base + ["-o", str(out)] + extra[kind], env), 2)
    say("exported bundles (s): " + ", ".join(f"{k} {v}" for k, v in info["export_s"].items())
        + f" with {export_py} {' '.join(engines)}")

    # same starting point: the bundle's initial head (both engines) == the torch workers' initial head
    split = load_bundle(bundles["split"])
    carried = bundle_engines(split)
    info["engines_in_bundle"] = sorted(carried)
    init = load_file(str(split.path / carried["portable"]["files"]["init"]))
    sd = torch.load(str(weights), weights_only=True)
    diffs = [float(np.abs(v - sd[k].numpy()).max()) for k, v in init.items() if k in sd]
    if len(diffs) != 2 or max(diffs) > 0:
        raise SystemExit(f"bundle head init (portable) differs from the torch weights ({diffs})")
    if args.legacy:
        if "ort-training" not in carried:
            raise SystemExit(f"the --engine all bundle carries only {sorted(carried)}")
        check = ("import json, sys, numpy as np; from safetensors.numpy import load_file; "
                 "from ftedge.runtime import load_bundle; from ftedge.runtime.engines.ort_training import OrtTrainingEngine; "
                 "b = load_bundle(sys.argv[1]); p = OrtTrainingEngine(b).parameters(); i = load_file(sys.argv[2]); "
                 "print(json.dumps([float(np.abs(p[k] - i[k]).max()) for k in i]))")
        out = subprocess.run([str(LEGACY_PY), "-c", check, str(split.path),
                              str(split.path / carried["portable"]["files"]["init"])],
                             env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        d2 = json.loads(out.strip().splitlines()[-1])
        if len(d2) != 2 or max(d2) > 0:
            raise SystemExit(f"the ort-training checkpoint's head differs from the portable init ({d2})")
    info["parity_max_abs_diff"] = split.manifest.get("parity", {}).get("max_abs_diff")
    fp32_ops, int8_ops = count_ops(split.file("backbone")), count_ops(load_bundle(bundles["int8"]).file("backbone_int8"))
    info["int8_quantized_nodes"] = sum(v for k, v in int8_ops.items() if k in ("MatMulInteger", "ConvInteger",
                                                                                "DynamicQuantizeLinear", "QLinearConv",
                                                                                "QLinearMatMul", "DequantizeLinear"))
    info["backbone_ops"] = fp32_ops
    info["int8_backbone_ops"] = int8_ops
    return {"data": data, "weights": weights, "bundles": bundles, "info": info}


def legacy_ok() -> bool:
    """Whether the legacy venv exists and its onnxruntime has the training API (checked without importing torch)."""
    if not LEGACY_PY.exists():
        return False
    code = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('onnxruntime.training') else 1)"
    return subprocess.run([str(LEGACY_PY), "-c", code], capture_output=True).returncode == 0


def onnx_import_costs(device_py: Path, legacy: bool, env: dict[str, str]) -> dict:
    """Seconds to `import onnx` in a fresh process (median of 3), per venv: the trainer imports it to write model.onnx."""
    code = ("import time, numpy; t = time.perf_counter(); import onnx; dt = time.perf_counter() - t; import sys, json; "
            "m = sys.modules.get('ml_dtypes'); print(json.dumps({'s': dt, 'onnx': onnx.__version__, "
            "'ml_dtypes': getattr(m, '__version__', None)}))")
    out = {}
    for name, py in [("device", device_py)] + ([("legacy", LEGACY_PY)] if legacy else []):
        recs = [json.loads(subprocess.run([str(py), "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                                          check=True).stdout.strip().splitlines()[-1]) for _ in range(3)]
        out[name] = {**recs[-1], "s": round(median([x["s"] for x in recs]), 3)}
    return out
