"""The measured workers (``--worker``), each in its own subprocess, last stdout line = JSON: the plain ORT pass
(device and legacy venvs: numpy and onnxruntime only) and the two PyTorch fine-tunes (host venv)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from bench.train_speed.data import epoch_order, learning_rate, stratified_split
from bench.train_speed.model import load_model

THREADS = 2
EMBED_BATCH = 64        # ftedge embeds with max(batch_size, 64); the torch/ORT passes use the same


def worker_ort_infer(args: argparse.Namespace) -> dict:
    """(ref) one plain onnxruntime pass of backbone.onnx over all samples, batch 64 (no torch)."""
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
    """(c) eager: the frozen backbone every step; (d) ``cached``: the backbone once under no_grad, then the head."""
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
    """``--worker``: run it and print its figures as one JSON line."""
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
