"""Personalization speed and memory: `ftedge train` (torch-free) vs PyTorch, and the two training engines, whole
processes, side by side.

Reproduce (repo root, host venv; 4-7 minutes on this 2-core box with the defaults, depending on its load):

    .venv/bin/python bench/train_speed.py                 # 1,024 samples, 10 epochs, batch 32, 3 repeats
    .venv/bin/python bench/train_speed.py --json          # + one JSON object on the last line
    .venv/bin/python bench/train_speed.py --samples 256 --epochs 3 --repeat 1    # quick check

Three venvs (paths fixed, see the constants below): the host `.venv` (torch, plain onnxruntime: the parent, the
torch workers), the torch-free device venv `.venv-device` (plain onnxruntime, `pip install '.[device]'`: every
portable-engine ftedge run and the ORT reference pass) and the legacy venv `.venv-legacy` (onnxruntime-training
1.19.2 + onnx 1.17: the only one that can run the ort-training engine, and the exporter of `--engine all` bundles).
Without `.venv-legacy` the ort-training rows read "not measured (no onnxruntime-training venv)" and the bundles are
exported by the host venv (portable engine only).

ALL DATA IS SYNTHETIC: log-mel-shaped arrays x float32 [101, 40] = Gaussian noise + a class-dependent
level and spectro-temporal ripple under a random time envelope (`make_data`); nothing is recorded audio.
The model is a keyword-spotting style depthwise-separable CNN (`KWSNet`, ~97k parameters) with RANDOM
weights (torch seed 0) whose BatchNorm running statistics are calibrated on 256 unlabeled synthetic
samples; it is not pretrained. Only the head (`classifier`, a fresh Linear) trains.

Setup (host, torch): write the data .npz, the weights, and three bundles with the CLI
(`ftedge export ... --head classifier --labels ... --quiet --force`, run by the legacy venv with `--engine all` so
ONE bundle carries both engines — same backbone, same initial head — or by the host venv without it): split
(default), `--no-split`, and split + `--quantize-backbone int8-conv`. Then every contender runs as its own subprocess
(wall time of the whole process, including interpreter start and imports; peak RSS = the child's ru_maxrss from
os.wait4, taken in a tiny fork+exec launcher because ru_maxrss survives execve: a child forked straight from this
torch-holding parent would report at least the parent's RSS), all with OMP_NUM_THREADS=2 (torch.set_num_threads(2)
in the torch workers; ORT's default is one thread per core = 2 here), same data, same stratified 0.2 validation
split, same batch order, same AdamW (eps 1e-6, no weight decay, as in the ORT artifacts), same peak lr with ftedge's
10 % warm-up + cosine:

  (a)     ftedge cached  `python -m ftedge train SPLIT --mode cached --no-cache --engine portable`, device venv (no torch)
  (a-L)   (a) in the legacy venv (onnxruntime-training 1.19.2's InferenceSession, onnx 1.17): same runtime as (a-ort)
  (a-ort) (a) with `--engine ort-training`, legacy venv (ftedge imports its training API without torch)
  (b)     ftedge full    `--mode full --engine portable` on the --no-split bundle (backbone runs every step), device venv
  (b-ort) (b) with `--engine ort-training`, legacy venv
  (c)     torch eager    frozen backbone (eval), head in train mode, backbone forward on every step
  (d)     torch cached   backbone forward once under no_grad, head trained on the cached features
  (e)     ftedge int8    (a) with `--backbone int8` on the int8 bundle (portable, device venv)
  (ref)   ORT pass       plain onnxruntime InferenceSession on SPLIT/backbone.onnx over all samples, batch 64, device venv
  (ref-L) the same pass in the legacy venv (onnxruntime-training 1.19.2)

The full-mode contenders (b), (b-ort) run only in the first --full-repeat rounds (default 1): the ort-training
merged graph takes tens of seconds per run. Also measured once, untimed by the rest: the import time of `onnx` in the
device and legacy venvs (the trainer imports it to write and check model.onnx).

The ftedge runs do more than the torch workers: they verify bundle hashes, evaluate the untuned model,
evaluate on the validation split after every epoch, write two checkpoints per epoch (fsync), reload the
best checkpoint, evaluate it and write model.onnx. The torch workers evaluate once, at the end, and
write nothing. Each contender runs --repeat times (round-robin; fewer if another round would pass
--budget-s); the tables show medians and list every run's wall time. Progress goes to stderr; the report
(Markdown) to stdout, with --json followed by one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()
HOST_PY = ROOT / ".venv" / "bin" / "python"
DEVICE_PY = ROOT / ".venv-device" / "bin" / "python"
LEGACY_PY = ROOT / ".venv-legacy" / "bin" / "python"    # onnxruntime-training 1.19.2: the ort-training engine
NO_LEGACY = "not measured (no onnxruntime-training venv)"
T, F = 101, 40          # frames x mel bins
HEAD = "classifier"
THREADS = 2
EMBED_BATCH = 64        # ftedge embeds with max(batch_size, 64); the torch/ORT passes use the same


# ---------------------------------------------------------------------------------------------------
# Synthetic data, split and schedule (numpy only: also imported by the device-venv worker)
# ---------------------------------------------------------------------------------------------------
def make_data(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SYNTHETIC log-mel-like samples: x float32 [n, 101, 40], labels int64 [n] (balanced).

    x = N(0, 1) noise + gain * envelope(t) * (level[c] + cos(2*pi*(ft[c]*t + fm[c]*mel) + phase)):
    a class-dependent overall level plus a class-dependent spectro-temporal ripple, with random gain,
    time shift, phase and +-5 % ripple-rate jitter per sample. Class prototypes use a fixed seed (1234).
    """
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    rng.shuffle(y)
    proto = np.random.default_rng(1234)
    ft = proto.uniform(0.02, 0.25, classes)          # temporal ripple, cycles per frame
    fm = proto.uniform(-0.25, 0.25, classes)         # spectral ripple, cycles per mel bin
    level = 2.0 * (np.arange(classes) - (classes - 1) / 2) / max(classes - 1, 1)
    t = np.arange(T, dtype=np.float64)[None, :, None]
    mel = np.arange(F, dtype=np.float64)[None, None, :]
    gain = rng.uniform(0.6, 1.0, (n, 1, 1))
    shift = rng.integers(-20, 21, (n, 1, 1))
    env = np.exp(-(((t - 50 - shift) / 25.0) ** 2))
    ftn = ft[y][:, None, None] * rng.uniform(0.95, 1.05, (n, 1, 1))
    fmn = fm[y][:, None, None] * rng.uniform(0.95, 1.05, (n, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    signal = gain * env * (level[y][:, None, None] + np.cos(2 * np.pi * (ftn * t + fmn * mel) + phase))
    x = rng.standard_normal((n, T, F)) + signal
    return x.astype(np.float32), y.astype(np.int64)


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Copy of ftedge.runtime.tasks.classify.folds.stratified_split (classification); setup checks they agree."""
    rng = np.random.default_rng(seed)
    if fraction <= 0:
        return np.arange(len(y)), np.arange(0)
    train, val = [], []
    for c in np.unique(y):
        g = rng.permutation(np.flatnonzero(y == c))
        k = min(len(g) - 1, max(1 if len(g) >= 2 else 0, int(round(len(g) * fraction))))
        val.extend(g[:k])
        train.extend(g[k:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def learning_rate(step: int, total: int, base: float, warmup: int) -> float:
    """Copy of ftedge.runtime.training.schedule.learning_rate, cosine (ftedge's default); setup checks they agree."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def epoch_order(train_idx: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """ftedge's per-epoch shuffle (epoch counts from 1)."""
    return train_idx[np.random.default_rng([seed, epoch]).permutation(len(train_idx))]


# ---------------------------------------------------------------------------------------------------
# The model (torch imported lazily so the device venv can run this file's ORT worker)
# ---------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _model_class():  # noqa: ANN202
    import torch.nn as nn

    class DSBlock(nn.Module):
        """Depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU."""

        def __init__(self, ch: int, stride: int) -> None:
            super().__init__()
            self.dw = nn.Conv2d(ch, ch, 3, stride=stride, padding=1, groups=ch, bias=False)
            self.bn1 = nn.BatchNorm2d(ch)
            self.pw = nn.Conv2d(ch, ch, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(ch)
            self.act = nn.ReLU()

        def forward(self, x):  # noqa: ANN001, ANN201
            return self.act(self.bn2(self.pw(self.act(self.bn1(self.dw(x))))))

    class KWSNet(nn.Module):
        """DS-CNN keyword spotter on log-mel [batch, 101, 40]: conv stem (10x4, stride 2), 5 depthwise-
        separable blocks (128 ch, the first with stride 2), global average pooling, BatchNorm1d on the
        pooled embedding, head = Dropout + Linear."""

        def __init__(self, classes: int, ch: int = 128, blocks: int = 5) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, ch, (10, 4), stride=(2, 2), padding=(5, 1), bias=False),
                                      nn.BatchNorm2d(ch), nn.ReLU())
            self.blocks = nn.Sequential(*[DSBlock(ch, 2 if i == 0 else 1) for i in range(blocks)])
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.norm = nn.BatchNorm1d(ch)
            self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(ch, classes))

        def embed(self, x):  # noqa: ANN001, ANN201
            return self.norm(self.pool(self.blocks(self.stem(x.unsqueeze(1)))).flatten(1))

        def forward(self, x):  # noqa: ANN001, ANN201
            return self.classifier(self.embed(x))

    return KWSNet


def load_model(weights: str | Path, classes: int):  # noqa: ANN201
    import torch

    model = _model_class()(classes)
    model.load_state_dict(torch.load(str(weights), weights_only=True))
    return model.eval()


def export_model():  # noqa: ANN201
    """Zero-argument factory for `ftedge export bench/train_speed.py:export_model` (weights via env)."""
    return load_model(os.environ["FTEDGE_BENCH_WEIGHTS"], int(os.environ["FTEDGE_BENCH_CLASSES"]))


def make_weights(path: Path, classes: int, seed: int, calib: np.ndarray) -> int:
    """Random init (seed), BatchNorm statistics calibrated on ``calib``, head re-initialised exactly as
    `ftedge export --labels` does (seed 0), saved as a state dict. Returns the parameter count."""
    import torch
    import torch.nn as nn
    from ftedge.export.tasks.classify.head import replace_head

    torch.manual_seed(seed)
    model = _model_class()(classes)
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for i in range(0, len(calib), 64):
            model(torch.from_numpy(calib[i:i + 64]))
    for m in bns:
        m.momentum = 0.1
    model.eval()
    replace_head(model, HEAD, classes, 0)
    torch.save(model.state_dict(), str(path))
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------
# Workers (each runs in its own subprocess; last stdout line = JSON)
# ---------------------------------------------------------------------------------------------------
def worker_ort_infer(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    # onnxruntime-training's build-info check imports onnxruntime.training.ortmodule, which imports torch when
    # torch is installed (the legacy venv): hide it for the import, as ftedge.runtime.engines.ort_backend.ort() does
    sys.modules.setdefault("onnxruntime.training.ortmodule", None)
    import onnxruntime as ort

    if sys.modules.get("onnxruntime.training.ortmodule", 0) is None:
        del sys.modules["onnxruntime.training.ortmodule"]
    ort.set_default_logger_severity(3)
    t1 = time.perf_counter()
    x = np.load(args.data)["x"]
    t2 = time.perf_counter()
    sess = ort.InferenceSession(str(Path(args.bundle) / "backbone.onnx"), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    t3 = time.perf_counter()
    for i in range(0, len(x), EMBED_BATCH):
        sess.run(None, {name: x[i:i + EMBED_BATCH]})
    t4 = time.perf_counter()
    return {"import_s": t1 - t0, "data_s": t2 - t1, "session_s": t3 - t2, "infer_s": t4 - t3,
            "work_s": t4 - t1, "samples": int(len(x)), "ort": ort.__version__, "torch_imported": "torch" in sys.modules}


def worker_torch(args: argparse.Namespace, cached: bool) -> dict:
    t0 = time.perf_counter()
    import torch
    import torch.nn.functional as Fn

    torch.set_num_threads(THREADS)
    t1 = time.perf_counter()
    z = np.load(args.data)
    x, y = torch.from_numpy(z["x"]), z["labels"].astype(np.int64)
    model = load_model(args.weights, args.classes)
    train_idx, val_idx = stratified_split(y, args.val_fraction, args.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    head = model.classifier
    params = list(head.parameters())
    for p in params:
        p.requires_grad_(True)
    model.eval()
    head.train()  # only the head in training mode (its dropout); the backbone stays in eval
    t_opt = time.perf_counter()
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0)  # imports torch._dynamo
    yt = torch.from_numpy(y)
    t2 = time.perf_counter()
    feats = None
    if cached:
        with torch.no_grad():
            feats = torch.cat([model.embed(x[i:i + EMBED_BATCH]) for i in range(0, len(x), EMBED_BATCH)])
    t3 = time.perf_counter()
    torch.manual_seed(args.seed)
    steps = math.ceil(len(train_idx) / args.batch_size) * args.epochs
    warmup, step, last_loss = int(steps * 0.1), 0, float("nan")
    for epoch in range(1, args.epochs + 1):
        order = epoch_order(train_idx, args.seed, epoch)
        for start in range(0, len(order), args.batch_size):
            b = torch.from_numpy(order[start:start + args.batch_size])
            for g in opt.param_groups:
                g["lr"] = learning_rate(step, steps, args.lr, warmup)
            out = head(feats[b]) if cached else model(x[b])
            loss = Fn.cross_entropy(out, yt[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            last_loss = loss.item()
    t4 = time.perf_counter()
    head.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(val_idx), EMBED_BATCH):
            b = torch.from_numpy(val_idx[i:i + EMBED_BATCH])
            out = head(feats[b]) if cached else model(x[b])
            correct += int((out.argmax(1) == yt[b]).sum())
    t5 = time.perf_counter()
    return {"import_s": t1 - t0, "setup_s": t2 - t1, "optimizer_init_s": t2 - t_opt, "embed_s": t3 - t2,
            "train_s": t4 - t3, "eval_s": t5 - t4,
            "work_s": t5 - t1, "accuracy": correct / max(len(val_idx), 1), "last_train_loss": last_loss,
            "steps": step, "threads": torch.get_num_threads(), "torch": torch.__version__}


def run_worker(args: argparse.Namespace) -> int:
    if args.worker == "ort-infer":
        out = worker_ort_infer(args)
    elif args.worker == "torch-eager":
        out = worker_torch(args, cached=False)
    elif args.worker == "torch-cached":
        out = worker_torch(args, cached=True)
    else:
        raise SystemExit(f"unknown worker {args.worker}")
    print(json.dumps(out))
    return 0


# ---------------------------------------------------------------------------------------------------
# Parent: setup, measured subprocesses, report
# ---------------------------------------------------------------------------------------------------
def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(THREADS)
    env.pop("FTEDGE_BENCH_WEIGHTS", None)
    return env


# Peak RSS caveat: on Linux ru_maxrss survives execve (the exec'd program inherits the high-water mark of the
# address space it replaced), and a child forked from this parent (which holds torch, ~300+ MiB) would report at
# least the parent's RSS. So every measured command is started by this tiny launcher (a bare `python -I -S`,
# ~6 MiB, below any Python worker's own RSS): it forks, execs the command, and reports os.wait4's rusage.
from proc_launcher import run_measured  # noqa: E402  (bench/ is sys.path[0] when run as a script)


def measure(cmd: list[str], env: dict[str, str]) -> dict:
    """Whole-process wall time of ``cmd``, its peak RSS (ru_maxrss, KiB → MiB), CPU time and last-line JSON."""
    rec = run_measured(cmd, ROOT, env)
    return {**rec, "stderr": rec["stderr"].strip()}


def run_checked(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return time.perf_counter() - t


def count_ops(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def setup(args: argparse.Namespace, work: Path, say) -> dict:  # noqa: ANN001
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
    base = [export_py, "-m", "ftedge", "export", f"{THIS}:export_model", "--input", f"x:float32:1,{T},{F}",
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


FTEDGE_RUNS = ("a", "a-L", "a-ort", "b", "b-ort", "e")
FULL_MODE = ("b", "b-ort")


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


def median(vals: list[float]) -> float:
    return float(statistics.median(vals))


def fmt_ratio(num: float, den: float) -> str:
    return f"{num / den:.2f}×" if den else "n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--classes", type=int, default=8, help="4-12 (default 8)")
    ap.add_argument("--lr", type=float, default=0.01, help="peak learning rate, all contenders (default 0.01)")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="runs per contender, round-robin; medians reported")
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="stop repeating once another round would end the bench after this many seconds (default 300)")
    ap.add_argument("--full-repeat", type=int, default=1,
                    help="rounds in which the full-mode contenders (b), (b-ort) run (default 1; 0 skips them)")
    ap.add_argument("--workdir", type=Path, help="keep data, bundles and runs here (default: a temp dir, removed)")
    ap.add_argument("--json", action="store_true", help="also print one JSON object on the last line")
    # worker mode (internal)
    ap.add_argument("--worker", choices=["ort-infer", "torch-eager", "torch-cached"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--bundle", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return run_worker(args)
    if not 4 <= args.classes <= 12:
        ap.error("--classes must be 4-12")

    if args.samples < 5 * args.classes:
        ap.error("--samples must be at least 5 per class")
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731 - progress; the report goes to stdout
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ftedge-train-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        args.legacy = legacy_ok()
        if not args.legacy:
            say(f"NOTE: {LEGACY_PY} (onnxruntime-training) is missing or has no training API: the ort-training rows "
                f"are {NO_LEGACY}; bundles exported by the host venv (portable engine only)")
        ctx = setup(args, work, say)
        device_py = DEVICE_PY
        if not device_py.exists():
            say(f"NOTE: {DEVICE_PY} is missing; running the device contenders with the host venv ({sys.executable}) "
                "instead: NOT a torch-free environment, so start-up time and RSS are not representative of a device "
                "(create it: python3.11 -m venv .venv-device && .venv-device/bin/pip install --no-deps . && "
                ".venv-device/bin/pip install '.[device]')")
            device_py = Path(sys.executable)
        env = child_env()
        # untimed warm-up: page-cache the shared libraries of every stack
        run_checked([str(device_py), "-c", "import onnx, onnxruntime, safetensors, ftedge.runtime.engines.engine"], env)
        if args.legacy:
            run_checked([str(LEGACY_PY), "-c", "import onnx; from ftedge.runtime.engines.ort_training_backend import training_api; "
                                               "training_api()"], env)
        run_checked([str(HOST_PY if HOST_PY.exists() else sys.executable), "-c", "import torch"], env)
        floor_rec = run_measured([shutil.which("true") or "/bin/true"], ROOT, env)  # RSS the launcher passes on
        ctx["info"]["rss_floor_mib"] = round(floor_rec["rss_mib"], 1)
        ctx["info"]["onnx_import"] = onnx_import_costs(device_py, args.legacy, env)
        say("import onnx (s, median of 3): " + ", ".join(f"{k} {v['s']:.2f} (onnx {v['onnx']}, ml_dtypes {v['ml_dtypes']})"
                                                        for k, v in ctx["info"]["onnx_import"].items()))

        d, b = ctx["data"], ctx["bundles"]
        common = ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                  "--val-fraction", str(args.val_fraction), "--seed", str(args.seed)]
        ft_opts = ["--data", str(d), *common, "--no-cache", "--quiet", "--json"]
        torch_py = str(HOST_PY if HOST_PY.exists() else sys.executable)
        torch_opts = ["--data", str(d), "--weights", str(ctx["weights"]), "--classes", str(args.classes), *common]

        def ft(py: Path, name: str, bundle: str, mode: str, engine: str, *more: str):  # noqa: ANN202
            return lambda r: [str(py), "-m", "ftedge", "train", str(b[bundle]), "-o", str(work / f"run-{name}-{r}"),
                              "--mode", mode, "--engine", engine, *more, *ft_opts]

        contenders = {
            "ref": lambda r: [str(device_py), str(THIS), "--worker", "ort-infer", "--data", str(d), "--bundle", str(b["split"])],
            "a": ft(device_py, "a", "split", "cached", "portable"),
            "b": ft(device_py, "b", "full", "full", "portable"),
            "c": lambda r: [torch_py, str(THIS), "--worker", "torch-eager", *torch_opts],
            "d": lambda r: [torch_py, str(THIS), "--worker", "torch-cached", *torch_opts],
            "e": ft(device_py, "e", "int8", "cached", "portable", "--backbone", "int8"),
        }
        if args.legacy:
            contenders |= {
                "ref-L": lambda r: [str(LEGACY_PY), str(THIS), "--worker", "ort-infer", "--data", str(d),
                                    "--bundle", str(b["split"])],
                "a-L": ft(LEGACY_PY, "a-L", "split", "cached", "portable"),
                "a-ort": ft(LEGACY_PY, "a-ort", "split", "cached", "ort-training"),
                "b-ort": ft(LEGACY_PY, "b-ort", "full", "full", "ort-training"),
            }
        # run order: the pairs being compared side by side (ref/ref-L, a/a-L/a-ort, b/b-ort), so load drift on a shared
        # box hits both sides of a ratio alike
        run_order = ("ref", "ref-L", "a", "a-L", "a-ort", "e", "b", "b-ort", "c", "d")
        contenders = {k: contenders[k] for k in run_order if k in contenders}
        runs: dict[str, list[dict]] = {k: [] for k in contenders}
        for r in range(args.repeat):
            for name, cmd in contenders.items():
                if name in FULL_MODE and r >= args.full_repeat:
                    continue
                shutil.rmtree(work / f"run-{name}-{r}", ignore_errors=True)  # a reused --workdir
                m = measure(cmd(r), env)
                if name in FTEDGE_RUNS:
                    lines = (work / f"run-{name}-{r}" / "metrics.jsonl").read_text().splitlines()
                    m["last_epoch_accuracy"] = json.loads(lines[-1])["val_accuracy"]
                    want = "ort-training" if name.endswith("-ort") else "portable"
                    if m["result"].get("engine") != want:
                        raise SystemExit(f"{name} ran the {m['result'].get('engine')} engine, not {want}")
                if name.startswith("ref") and m["result"].get("torch_imported"):
                    raise SystemExit(f"{name}: the ORT pass imported torch")
                runs[name].append(m)
                say(f"  repeat {r + 1}/{args.repeat} {name}: {m['wall_s']:.2f} s, {m['rss_mib']:.0f} MiB")
            # the next round's cost: each contender that runs in it, at its last wall time
            elapsed = time.perf_counter() - t_start
            next_round = sum(v[-1]["wall_s"] for k, v in runs.items() if v and not (k in FULL_MODE and r + 1 >= args.full_repeat))
            if r + 1 < args.repeat and elapsed + next_round > args.budget_s:
                say(f"  stopping after {r + 1} repeat(s): another round (~{next_round:.0f} s) would pass --budget-s "
                    f"{args.budget_s:g} (elapsed {elapsed:.0f} s)")
                break
        runs = {k: v for k, v in runs.items() if v}
        load_after = os.getloadavg()
        report = build_report(args, ctx, runs, device_py, load_before, load_after, time.perf_counter() - t_start)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print_report(report, print)
    if args.json:
        print(json.dumps(report))
    return 0


NAMES = {
    "a": "(a) ftedge train, split, --mode cached, portable (device venv, no torch)",
    "a-L": "(a-L) = (a), portable, in the legacy venv (ORT-training 1.19.2 runtime)",
    "a-ort": "(a-ort) = (a) with --engine ort-training (legacy venv)",
    "b": "(b) ftedge train, --no-split, --mode full, portable (device venv)",
    "b-ort": "(b-ort) = (b) with --engine ort-training (legacy venv)",
    "e": "(e) ftedge train, split, cached, --backbone int8, portable (device venv)",
    "c": "(c) PyTorch eager, frozen backbone every step",
    "d": "(d) PyTorch, backbone once (no_grad), head on cached features",
    "ref": "(ref) ORT InferenceSession, backbone.onnx, one pass (device venv)",
    "ref-L": "(ref-L) = (ref) in the legacy venv (onnxruntime-training 1.19.2)",
}
ORDER = ("a", "a-L", "a-ort", "b", "b-ort", "e", "c", "d", "ref", "ref-L")
TIMING_KEYS = ("load_s", "embed_s", "train_s", "export_s")


def build_report(args, ctx, runs, device_py, load_before, load_after, total_s) -> dict:  # noqa: ANN001
    rows: dict[str, dict] = {}
    for name, ms in runs.items():
        row = {"n": len(ms), "wall_s": round(median([m["wall_s"] for m in ms]), 3),
               "wall_s_all": [round(m["wall_s"], 3) for m in ms],
               "rss_mib": round(median([m["rss_mib"] for m in ms]), 1),
               "rss_mib_max": round(max(m["rss_mib"] for m in ms), 1),
               "cpu_s": round(median([m["cpu_s"] for m in ms]), 3)}
        res = [m["result"] for m in ms]
        if name in FTEDGE_RUNS:
            row["engine"] = res[-1].get("engine")
            row["accuracy"] = res[-1]["metrics"].get("accuracy")            # best epoch (ftedge's pick)
            row["last_epoch_accuracy"] = ms[-1]["last_epoch_accuracy"]
            row["baseline_accuracy"] = res[-1]["baseline"].get("accuracy")
            row["duration_s"] = round(median([x["duration_s"] for x in res]), 3)
            row["timings"] = {k: round(median([x["timings"].get(k, 0.0) for x in res]), 4) for k in TIMING_KEYS}
            row["best_epoch"], row["status"] = res[-1]["best_epoch"], res[-1]["status"]
            row["in_process_s"] = row["duration_s"]
        elif name in ("c", "d"):
            row["accuracy"] = res[-1]["accuracy"]
            row["last_epoch_accuracy"] = res[-1]["accuracy"]
            row["timings"] = {k: round(median([x[k] for x in res]), 4)
                              for k in ("import_s", "setup_s", "optimizer_init_s", "embed_s", "train_s", "eval_s", "work_s")}
            row["in_process_s"] = row["timings"]["work_s"]
        else:
            row["ort"] = res[-1]["ort"]
            row["timings"] = {k: round(median([x[k] for x in res]), 4)
                              for k in ("import_s", "data_s", "session_s", "infer_s", "work_s")}
            row["in_process_s"] = row["timings"]["work_s"]
        rows[name] = row

    a, ref = rows["a"], rows["ref"]
    beyond = a["duration_s"] - a["timings"]["load_s"] - a["timings"]["embed_s"]
    overheads = {
        "internal": {
            "value": beyond / a["timings"]["embed_s"],
            "formula": "(a) (duration_s - load_s - embed_s) / embed_s, ftedge's own timers",
            "includes": "numerator: session creation (backbone InferenceSession + training engine), run "
                        "fingerprint, baseline eval, training loop with per-epoch val eval + 2 fsynced checkpoints, "
                        "best-checkpoint reload + eval + model.onnx export; denominator: ftedge's embedding pass "
                        "(sample hashing + backbone over all samples + pack/unpack). Excludes interpreter start, "
                        "imports of ftedge/numpy, CLI parsing, and load_s (bundle hash verification, data loading and "
                        "the lazy `import onnxruntime`).",
        },
        "vs_pure_pass_compute": {
            "value": beyond / ref["timings"]["infer_s"],
            "formula": "(a) (duration_s - load_s - embed_s) / (ref) infer_s",
            "includes": "same numerator; denominator: one plain ORT pass over all samples, batch 64, session already "
                        "created, no imports",
        },
        "in_process_vs_minimal_program": {
            "value": (a["duration_s"] - ref["timings"]["work_s"]) / ref["timings"]["work_s"],
            "formula": "((a) duration_s - (ref) work_s) / (ref) work_s",
            "includes": "both exclude interpreter start and imports; (a) duration_s = all of ftedge.train (verify, "
                        "load data, sessions, embed, train, checkpoints, export); (ref) work_s = np.load + "
                        "InferenceSession + one pass",
        },
        "whole_process": {
            "value": (a["wall_s"] - ref["wall_s"]) / ref["wall_s"],
            "formula": "((a) wall_s - (ref) wall_s) / (ref) wall_s",
            "includes": "both whole processes in the device venv, interpreter start and imports included",
        },
    }
    rss_torch = {k: rows[k]["rss_mib"] for k in ("c", "d")}
    targets = {
        "speed_vs_eager_>=20x": {"value": rows["c"]["wall_s"] / a["wall_s"], "target": 20.0},
        "speed_vs_cached_features_>=2x": {"value": rows["d"]["wall_s"] / a["wall_s"], "target": 2.0},
        "overhead_beyond_one_backbone_pass_<=20%": {"value": overheads["internal"]["value"], "target": 0.20,
                                                     "measure": "internal (the brief's formula)"},
        "peak_rss_<=half_of_torch": {"value": a["rss_mib"] / max(rss_torch.values()), "target": 0.5,
                                     "value_vs_c": a["rss_mib"] / rss_torch["c"], "value_vs_d": a["rss_mib"] / rss_torch["d"],
                                     "measure": "RSS(a) / RSS(torch), met only if <= 0.5 against both (c) and (d)"},
    }
    for k, t in targets.items():
        if k.startswith("speed"):
            t["met"] = t["value"] >= t["target"]
        elif k.startswith("overhead"):
            t["met"] = t["value"] <= t["target"]
        else:
            t["met"] = max(t["value_vs_c"], t["value_vs_d"]) <= t["target"]
    for o in overheads.values():
        o["met_<=20%"] = o["value"] <= 0.20

    # the engines: portable vs ort-training, whole processes (speed = ort wall / portable wall: >= 1 means portable
    # is at least as fast; RSS = portable / ort: <= 1 means portable uses no more)
    def pair(p: str, o: str, what: str) -> dict:
        if p not in rows or o not in rows:
            return {"measured": False, "note": NO_LEGACY if not args.legacy else "not run", "what": what}
        return {"measured": True, "what": what, "portable": p, "ort_training": o,
                "speed_ort_wall_over_portable_wall": round(rows[o]["wall_s"] / rows[p]["wall_s"], 4),
                "wall_ratio_portable_over_ort": round(rows[p]["wall_s"] / rows[o]["wall_s"], 4),
                "rss_ratio_portable_over_ort": round(rows[p]["rss_mib"] / rows[o]["rss_mib"], 4),
                "train_s_ratio_portable_over_ort": round(rows[p]["timings"]["train_s"] / rows[o]["timings"]["train_s"], 4)
                if rows[o]["timings"]["train_s"] else None}
    engines = {
        "cached_deployed": pair("a", "a-ort", "cached CNN job: portable in the device venv (ORT 1.32, onnx 1.23) vs "
                                              "ort-training in the legacy venv (ORT-training 1.19.2, onnx 1.17)"),
        "cached_same_runtime": pair("a-L", "a-ort", "cached CNN job, both in the legacy venv: the engine alone"),
        "full_deployed": pair("b", "b-ort", "full mode (--no-split): portable (device venv) vs ort-training (legacy)"),
    }
    cd = engines["cached_deployed"]
    if cd["measured"]:
        targets["cached_job_speed_portable_>=1.0x_ort_training"] = {
            "value": cd["speed_ort_wall_over_portable_wall"], "target": 1.0,
            "met": cd["speed_ort_wall_over_portable_wall"] >= 1.0, "measure": "wall(a-ort) / wall(a)"}
        targets["cached_job_rss_portable_<=_ort_training"] = {
            "value": cd["rss_ratio_portable_over_ort"], "target": 1.0,
            "met": cd["rss_ratio_portable_over_ort"] <= 1.0, "measure": "RSS(a) / RSS(a-ort)"}
    else:
        for k in ("cached_job_speed_portable_>=1.0x_ort_training", "cached_job_rss_portable_<=_ort_training"):
            targets[k] = {"value": None, "target": 1.0, "met": None, "measure": NO_LEGACY}
    info = ctx["info"]
    return {
        "bench": "train_speed",
        "data": f"SYNTHETIC (generated): {args.samples} samples x [{T}, {F}] float32, {args.classes} classes",
        "model": {"name": "KWSNet DS-CNN", "params": info["params"], "head": HEAD,
                  "weights": "random init (torch seed) + BN stats calibrated on 256 synthetic samples; not pretrained",
                  "parity_max_abs_diff": info["parity_max_abs_diff"]},
        "config": {"samples": args.samples, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                   "val_fraction": args.val_fraction, "seed": args.seed, "classes": args.classes,
                   "repeat": len(runs["a"]), "full_repeat": len(runs.get("b", [])), "threads": THREADS,
                   "train": info["train_samples"], "val": info["val_samples"]},
        "device_python": str(device_py), "device_venv": device_py == DEVICE_PY,
        "legacy_python": str(LEGACY_PY) if args.legacy else None,
        "export_python": info["export_python"], "engines_in_bundle": info["engines_in_bundle"],
        "export_s": info["export_s"],
        "rss_floor_mib": info["rss_floor_mib"],
        "onnx_import": info["onnx_import"],
        "int8": {"quantized_nodes_in_backbone_int8": info["int8_quantized_nodes"],
                 "backbone_ops": info["backbone_ops"], "int8_backbone_ops": info["int8_backbone_ops"],
                 "accuracy_fp32": rows["a"]["accuracy"], "accuracy_int8": rows["e"]["accuracy"],
                 "accuracy_delta": round(rows["e"]["accuracy"] - rows["a"]["accuracy"], 4)
                 if rows["a"]["accuracy"] is not None and rows["e"]["accuracy"] is not None else None},
        "runs": rows,
        "engines": engines,
        "overheads": {k: {**v, "value": round(v["value"], 4)} for k, v in overheads.items()},
        "targets": {k: {kk: (round(vv, 4) if isinstance(vv, float) else vv) for kk, vv in t.items()}
                    for k, t in targets.items()},
        "loadavg_before": [round(v, 2) for v in load_before], "loadavg_after": [round(v, 2) for v in load_after],
        "bench_total_s": round(total_s, 1),
    }


def _met(flag) -> str:  # noqa: ANN001
    return "not measured" if flag is None else ("met" if flag else "NOT met")


def print_report(rep: dict, say) -> None:  # noqa: ANN001
    rows, cfg = rep["runs"], rep["config"]
    say("")
    say(f"## Personalization speed and memory: {rep['model']['name']} ({rep['model']['params']:,} params, head-only), "
        f"{cfg['samples']} SYNTHETIC samples ({cfg['train']} train / {cfg['val']} val), {cfg['epochs']} epochs, "
        f"batch {cfg['batch_size']}, lr {cfg['lr']}, {cfg['threads']} threads; median of {cfg['repeat']} run(s) "
        f"({cfg['full_repeat']} for the full-mode rows)")
    say("")
    say("| contender | runs | whole-process s | in-process s | CPU s | peak RSS MiB | val acc (best / last epoch) | "
        "× faster than (c) | × faster than (d) | RSS ÷ (c) | RSS ÷ (d) |")
    say("|---|---|---|---|---|---|---|---|---|---|---|")
    c, d = rows["c"], rows["d"]
    for name in ORDER:
        if name not in rows:
            if name in ("a-L", "a-ort", "b-ort", "ref-L") and rep["legacy_python"] is None:
                say(f"| {NAMES[name]} | 0 | {NO_LEGACY} | | | | | | | | |")
            continue
        r = rows[name]
        if name in FTEDGE_RUNS:
            acc = f"{r['accuracy']:.3f} / {r['last_epoch_accuracy']:.3f}"
        elif name in ("c", "d"):
            acc = f"— / {r['accuracy']:.3f}"
        else:
            acc = "n/a (no training)"
        say(f"| {NAMES[name]} | {r['n']} | {r['wall_s']:.2f} | {r['in_process_s']:.2f} | {r['cpu_s']:.2f} | "
            f"{r['rss_mib']:.0f} | {acc} | {fmt_ratio(c['wall_s'], r['wall_s'])} | {fmt_ratio(d['wall_s'], r['wall_s'])} | "
            f"{r['rss_mib'] / c['rss_mib']:.2f} | {r['rss_mib'] / d['rss_mib']:.2f} |")
    say("")
    say("whole-process s: wall time of the subprocess (interpreter start + imports + everything); in-process s: "
        "ftedge's duration_s (from Trainer start: excludes interpreter start, ftedge/numpy imports and CLI parsing, "
        "includes the lazy `import onnxruntime`) / the torch and ORT workers' time after their imports. (c)/(d) "
        "report final-epoch accuracy (evaluated once); ftedge "
        "reports its best-epoch checkpoint (selected on the same val split) and the last epoch.")
    say("")
    say("### Engines: portable vs ort-training (whole processes, same bundle)")
    say("")
    say("| comparison | portable s | ort-training s | portable ÷ ort-training (time) | portable RSS MiB | "
        "ort-training RSS MiB | portable ÷ ort-training (RSS) | train_s portable / ort-training |")
    say("|---|---|---|---|---|---|---|---|")
    for key, e in rep["engines"].items():
        if not e["measured"]:
            say(f"| {e['what']} | {e['note']} | | | | | | |")
            continue
        p, o = rows[e["portable"]], rows[e["ort_training"]]
        say(f"| {e['what']} ({e['portable']} vs {e['ort_training']}) | {p['wall_s']:.2f} | {o['wall_s']:.2f} | "
            f"{e['wall_ratio_portable_over_ort']:.2f}× | {p['rss_mib']:.0f} | {o['rss_mib']:.0f} | "
            f"{e['rss_ratio_portable_over_ort']:.2f}× | {p['timings']['train_s']:.3f} / {o['timings']['train_s']:.3f} |")
    say("")
    say("import onnx in a fresh process (the trainer imports it to write/check model.onnx), median of 3: " + "; ".join(
        f"{k} venv {v['s']:.2f} s (onnx {v['onnx']}, ml_dtypes {v['ml_dtypes']})" for k, v in rep["onnx_import"].items()))
    say("")
    say("ftedge timings (median, s): " + "; ".join(
        f"{n}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[n]["timings"].items()) + f", duration {rows[n]['duration_s']:.3f}"
        for n in ORDER if n in rows and n in FTEDGE_RUNS))
    say("torch timings (median, s): " + "; ".join(
        f"{n}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[n]["timings"].items()) for n in ("c", "d")))
    say("ORT pass (median, s): " + "; ".join(
        f"{n} (onnxruntime {rows[n]['ort']}): " + ", ".join(f"{k} {v:.3f}" for k, v in rows[n]["timings"].items())
        for n in ("ref", "ref-L") if n in rows))
    say("every run's whole-process s: " + "; ".join(
        f"{n} " + ", ".join(f"{w:.2f}" for w in rows[n]["wall_s_all"]) for n in ORDER if n in rows))
    say("torch setup_s includes optimizer_init_s: constructing the first torch.optim.AdamW imports torch._dynamo "
        "(torch 2.13); a cost any PyTorch program using AdamW pays, counted in (c)/(d). The torch runs are plain "
        "fp32 eager (no torch.compile, channels_last or inference_mode).")
    say("")
    say("Training overhead beyond one backbone inference pass ((a), portable):")
    for k, o in rep["overheads"].items():
        say(f"- {k}: {o['value'] * 100:.0f} %  [{o['formula']}] ({'≤ 20 %: met' if o['met_<=20%'] else '> 20 %: not met'})")
    say("")
    i8 = rep["int8"]
    say(f"int8: val accuracy fp32 {i8['accuracy_fp32']:.4f} vs int8 {i8['accuracy_int8']:.4f} (Δ {i8['accuracy_delta']:+.4f}); "
        f"quantized nodes in backbone.int8.onnx: {i8['quantized_nodes_in_backbone_int8']}"
        + (" — NOTHING was quantized: ftedge's int8 path quantizes MatMul only and this backbone is all Conv, so (e) "
           "runs an fp32 graph" if not i8["quantized_nodes_in_backbone_int8"] else ""))
    say("")
    say("Targets ((a) = the portable engine):")
    t = rep["targets"]
    say(f"- whole-process ≥ 20× faster than PyTorch eager (c): {t['speed_vs_eager_>=20x']['value']:.2f}× → "
        f"{_met(t['speed_vs_eager_>=20x']['met'])}")
    say(f"- whole-process ≥ 2× faster than PyTorch cached features (d): {t['speed_vs_cached_features_>=2x']['value']:.2f}× → "
        f"{_met(t['speed_vs_cached_features_>=2x']['met'])}")
    o = t["overhead_beyond_one_backbone_pass_<=20%"]
    say(f"- training overhead beyond one backbone pass ≤ 20 % (brief's formula, ftedge timers): {o['value'] * 100:.0f} % → "
        f"{_met(o['met'])} (other definitions above)")
    r = t["peak_rss_<=half_of_torch"]
    say(f"- peak RSS of ftedge train ≤ ½ of PyTorch: {r['value_vs_c']:.2f} of (c), {r['value_vs_d']:.2f} of (d) → "
        f"{_met(r['met'])}")
    sp, rs = t["cached_job_speed_portable_>=1.0x_ort_training"], t["cached_job_rss_portable_<=_ort_training"]
    if sp["value"] is None:
        say(f"- cached job, portable ≥ 1.0× ort-training speed and RSS ≤ its own: {NO_LEGACY}")
    else:
        say(f"- cached job, portable ≥ 1.0× ort-training speed: {sp['value']:.2f}× ({sp['measure']}) → {_met(sp['met'])}")
        say(f"- cached job, portable peak RSS ≤ ort-training's: {rs['value']:.2f}× ({rs['measure']}) → {_met(rs['met'])}")
    say("")
    say(f"peak RSS = ru_maxrss of each process, started via a fork+exec launcher (floor it passes on: "
        f"{rep['rss_floor_mib']} MiB, measured with /bin/true)")
    say(f"bundles exported by {rep['export_python']} (engines: {', '.join(rep['engines_in_bundle'])}; "
        f"export s: " + ", ".join(f"{k} {v}" for k, v in rep["export_s"].items()) + ")")
    say(f"load average before/after: {rep['loadavg_before']} / {rep['loadavg_after']}; bench total {rep['bench_total_s']} s; "
        f"device python: {rep['device_python']}{'' if rep['device_venv'] else ' (HOST venv fallback: not torch-free)'}; "
        f"legacy python: {rep['legacy_python'] or NO_LEGACY}")


if __name__ == "__main__":
    sys.exit(main())
