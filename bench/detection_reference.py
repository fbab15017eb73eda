"""PyTorch reference fine-tune of the detection head: the torch-side baseline for the detection benchmark.

This is NOT device code. ``ftedge train`` fine-tunes a detection bundle's anchor-free head on cached backbone
feature maps with plain onnxruntime; this module does the same fine-tune the way a PyTorch user would, so
bench/detection_personalization.py can compare mAP, time, memory and inference speed side by side.

Run as its own process (the benchmark does so, under bench/proc_launcher.py, so wall time and peak RSS are this
process's own: the torch import, the MobileNetV2 weights, the data, training, writing the parameters):

    .venv/bin/python -m bench.detection_reference train --bundle B --data DATA --out params.safetensors --json
    .venv/bin/python -m bench.detection_reference evaluate --bundle B --params params.safetensors --data DATA --json

What is shared with ftedge, so that only the training machinery differs:
  data        ftedge's own loaders: ``load_detection(DATA, labels, split="train")`` and ``load_letterboxed`` (the
              bundle's letterbox + normalization; boxes mapped with ``to_input_boxes``), so inputs and boxes are
              identical; the images are decoded and letterboxed once, up front (kept as tensors).
  split       the trainer's: ``default_rng(seed).permutation(n)``, ``n_val = 0 if n < 5 else max(1, round(n *
              val_fraction))``, the first n_val of the permutation validate, both sides sorted.
  model       ``ftedge.export.detect_sources.mobilenet_v2`` (torchvision's ImageNet MobileNetV2, frozen, eval mode)
              + ``DetectionHead`` initialised from the bundle's ``portable/init.safetensors``.
  loss        ``detection_loss`` with the bundle's points / strides (``grid_of(manifest["detection"], size)``);
              targets from ``batch_targets`` (``assign``), per-image weights 1.
  schedule    ``runtime/schedule.learning_rate(step, total, lr, warmup = max(1, round(0.05 * total)), "cosine")``
              with the 0-based step, set before every optimizer step (as the device trainer does).
  order       per epoch ``rng = default_rng(seed + epoch)`` (epochs 1..E): ``rng.permutation(n)``, then flips
              ``rng.random(n) < 0.5``; batches of ``batch_size``, the last short batch kept.
  best epoch  validation mAP@0.5 (COCO, ``coco_map``, boxes in model-input pixels, at most 100 detections per
              image) after every epoch; the first epoch with the highest value is kept (strictly better replaces).

Differences from ftedge (documented, deliberate):
  * flips are applied in the INPUT domain: the letterboxed image is mirrored and the frozen backbone is run on it
    every step (``torch.no_grad()``, eval mode); ftedge computes the backbone's maps of every training image and of
    its mirror image once and caches both: the same augmentation, the same feature maps.
  * no feature cache: the backbone runs on every training batch, and on the validation images after every epoch
    (as ``model.eval(); model(images)`` would); that is the point of the comparison.
  * optimizer: ``torch.optim.AdamW`` (betas 0.9/0.999, eps 1e-6, weight decay 1e-4). torch decays the parameter
    before the Adam update (``p -= lr * wd * p``, then ``p -= lr * m_hat / (sqrt(v_hat) + eps)``); ftedge's step
    graph (onnxruntime-training's AdamW, adam_mode 1) applies the update first and then decays the updated
    parameter, with the bias correction folded into the step size (so its eps is not scaled by sqrt(1 - b2^t)).
  * NMS: PyTorch has no NonMaxSuppression without torchvision (PyPI torchvision does not import here), so
    :func:`nms` is a greedy per-class NMS on an IoU matrix (one vectorised suppression per kept box), the same
    rule as ONNX's NonMaxSuppression in the bundle (score > 0.01, suppress IoU > 0.6, 100 per class), then the
    best 100 per image as ``split_detections``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench._common import peak_rss_mib
from ftedge.export.tasks.detect.model import DetectionHead, decode, detection_loss
from ftedge.export.tasks.detect.sources import mobilenet_v2
from ftedge.runtime.tasks.detect.data import load_detection
from ftedge.runtime.tasks.detect.letterbox import letterbox_spec, load_letterboxed, to_image_boxes, to_input_boxes
from ftedge.runtime.tasks.detect.metrics import coco_map
from ftedge.runtime.tasks.detect.targets import Grid, batch_targets, flip_boxes, grid_of
from ftedge.runtime.training.schedule import learning_rate

MAX_DETS = 100


class Setup:
    """The bundle's manifest, grid, head initialisation and the frozen backbone."""

    def __init__(self, bundle: Path, threads: int) -> None:
        torch.set_num_threads(threads)
        self.manifest = json.loads((bundle / "manifest.json").read_text())
        self.labels: list[str] = list(self.manifest["labels"])
        self.k = len(self.labels)
        self.det = self.manifest["detection"]
        self.spec = letterbox_spec(self.manifest["preprocessing"])
        self.grid: Grid = grid_of(self.det, self.spec.size)
        self.points = torch.from_numpy(self.grid.points)
        self.strides = torch.from_numpy(self.grid.strides)
        self.nms_cfg = self.det["nms"]
        portable = self.manifest["engines"]["portable"]
        self.param_names: list[str] = list(portable["params"])
        self.init_path = bundle / portable["files"]["init"]
        self.backbone = mobilenet_v2().eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def head(self, params: Path | None = None) -> DetectionHead:
        from safetensors.torch import load_file

        values = load_file(str(params or self.init_path))
        return DetectionHead({n: values[n] for n in self.param_names})


def load_images(setup: Setup, samples: list[Any]) -> tuple[torch.Tensor, list[np.ndarray], list[np.ndarray],
                                                            list[Any], float]:
    """Letterboxed inputs [n, 3, H, W], boxes in input pixels, classes, letterboxes, and the largest difference
    between these boxes and the device trainer's box mapping (its float-pad letterbox formula)."""
    xs, boxes, classes, lbs, diff = [], [], [], [], 0.0
    for s in samples:
        x, lb = load_letterboxed(s.image, setup.spec)
        xs.append(torch.from_numpy(x))
        b = to_input_boxes(s.boxes, lb).astype(np.float32)
        h, w = s.size
        scale = min(setup.spec.size[0] / h, setup.spec.size[1] / w)
        pads = np.array([(setup.spec.size[1] - w * scale) / 2, (setup.spec.size[0] - h * scale) / 2] * 2)
        if len(b):
            diff = max(diff, float(np.abs(s.boxes * scale + pads - b).max()))
        boxes.append(b)
        classes.append(np.asarray(s.classes, np.int64))
        lbs.append(lb)
    stacked = torch.stack(xs) if xs else torch.zeros((0, 3, *setup.spec.size))
    return stacked, boxes, classes, lbs, diff


def box_iou(a: torch.Tensor) -> torch.Tensor:
    """IoU matrix of boxes [m, 4] x1 y1 x2 y2 with themselves."""
    area = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)
    lt = torch.maximum(a[:, None, :2], a[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], a[None, :, 2:])
    wh = (rb - lt).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    union = area[:, None] + area[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, score_threshold: float,
        max_per_class: int, max_dets: int = MAX_DETS) -> list[dict[str, np.ndarray]]:
    """Greedy per-image, per-class NMS: ``boxes`` [B, N, 4], ``scores`` [B, N, K] → per image the kept boxes,
    scores and labels, best ``max_dets`` by score (ties: class order, then score order, as the ONNX graph's
    outputs go through ``split_detections``)."""
    out = []
    for b in range(boxes.shape[0]):
        kb, ks, kl = [], [], []
        for c in range(scores.shape[2]):
            s = scores[b, :, c]
            cand = torch.nonzero(s > score_threshold).flatten()
            if len(cand) == 0:
                continue
            cand = cand[torch.argsort(s[cand], descending=True, stable=True)]
            iou = box_iou(boxes[b, cand])
            alive = torch.ones(len(cand), dtype=torch.bool)
            keep: list[int] = []
            while len(keep) < max_per_class:        # one vectorised suppression per kept box
                rest = torch.nonzero(alive)
                if len(rest) == 0:
                    break
                i = int(rest[0])
                keep.append(i)
                alive &= iou[i] <= iou_threshold
                alive[i] = False
            idx = cand[keep]
            kb.append(boxes[b, idx])
            ks.append(s[idx])
            kl.append(torch.full((len(idx),), c, dtype=torch.int64))
        if kb:
            bx, sc, lb = torch.cat(kb), torch.cat(ks), torch.cat(kl)
            top = torch.argsort(sc, descending=True, stable=True)[:max_dets]
            out.append({"boxes": bx[top].numpy(), "scores": sc[top].numpy(), "labels": lb[top].numpy()})
        else:
            out.append({"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
                        "labels": np.zeros(0, np.int64)})
    return out


def detect(setup: Setup, head: DetectionHead, images: torch.Tensor, batch: int = 16) -> list[dict[str, np.ndarray]]:
    """Backbone + head + decode + NMS on letterboxed images: detections in model-input pixels."""
    out: list[dict[str, np.ndarray]] = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            preds = head(list(setup.backbone(images[i:i + batch])))
            boxes, scores = decode(preds, setup.points, setup.strides, setup.k)
            out += nms(boxes, scores, setup.nms_cfg["iou_threshold"], setup.nms_cfg["score_threshold"],
                       setup.nms_cfg["max_per_class"])
    return out


def val_map50(setup: Setup, head: DetectionHead, images: torch.Tensor, boxes: list[np.ndarray],
              classes: list[np.ndarray]) -> float | None:
    if not len(images):
        return None
    head.eval()
    dets = detect(setup, head, images)
    head.train()
    return coco_map(dets, [{"boxes": b, "labels": c} for b, c in zip(boxes, classes)], setup.labels, MAX_DETS)["map50"]


def train(a: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    setup = Setup(Path(a.bundle), a.threads)
    base_lr = a.lr if a.lr is not None else float(setup.manifest["optimizer"]["lr"])
    data = load_detection(a.data, setup.labels, split="train")
    n_all = len(data.samples)
    perm = np.random.default_rng(a.seed).permutation(n_all)
    n_val = 0 if n_all < 5 else max(1, round(n_all * a.val_fraction))
    train_items = [data.samples[i] for i in np.sort(perm[n_val:])]
    val_items = [data.samples[i] for i in np.sort(perm[:n_val])]
    x_train, b_train, c_train, _, d1 = load_images(setup, train_items)
    x_val, b_val, c_val, _, d2 = load_images(setup, val_items)
    head = setup.head()
    load_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    n = len(train_items)
    steps_per_epoch = math.ceil(n / a.batch_size)
    total = steps_per_epoch * a.epochs
    warmup = max(1, round(0.05 * total))
    opt = torch.optim.AdamW(head.parameters(), lr=base_lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=a.weight_decay)
    width = float(setup.spec.size[1])
    tv = time.perf_counter()
    baseline = val_map50(setup, head, x_val, b_val, c_val)
    val_s = time.perf_counter() - tv
    step, best, losses, curve = 0, None, [], []
    head.train()
    for epoch in range(1, a.epochs + 1):
        rng = np.random.default_rng(a.seed + epoch)
        order = rng.permutation(n)
        flips = (rng.random(n) < 0.5) if not a.no_flip else np.zeros(n, bool)
        ep_losses, sizes = [], []
        for s in range(steps_per_epoch):
            idx = order[s * a.batch_size:(s + 1) * a.batch_size]
            fl = flips[idx]
            x = x_train[torch.from_numpy(idx)]
            if fl.any():
                mask = torch.from_numpy(fl)
                x[mask] = x[mask].flip(-1)              # mirror the letterboxed input
            with torch.no_grad():
                feats = list(setup.backbone(x))          # frozen backbone, every step
            items = [(flip_boxes(b_train[i], width) if f else b_train[i], c_train[i]) for i, f in zip(idx, fl)]
            labels = torch.from_numpy(batch_targets(items, setup.grid, setup.k))
            for g in opt.param_groups:
                g["lr"] = learning_rate(step, total, base_lr, warmup, "cosine")
            loss = detection_loss(head(feats), labels, torch.ones(len(idx)), setup.points, setup.strides, setup.k)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            ep_losses.append(float(loss))
            sizes.append(len(idx))
        train_loss = float(np.average(ep_losses, weights=sizes))
        tv = time.perf_counter()
        m50 = val_map50(setup, head, x_val, b_val, c_val)
        val_s += time.perf_counter() - tv
        losses.append(train_loss)
        curve.append(m50)
        score = -train_loss if m50 is None else m50
        if best is None or score > best[0]:
            best = (score, epoch, {k: p.detach().clone() for k, p in zip(head.names, head.params)})
    train_s = time.perf_counter() - t1

    from safetensors.torch import save_file

    assert best is not None
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in best[2].items()}, a.out,
              metadata={"producer": "bench/detection_reference.py", "best_epoch": str(best[1])})
    return {"train_s": train_s, "load_s": load_s, "val_s": val_s, "epochs": a.epochs, "steps": step,
            "best_epoch": best[1], "best_val_map50": curve[best[1] - 1], "baseline_val_map50": baseline,
            "val_map50": curve, "train_loss": losses, "lr": base_lr, "weight_decay": a.weight_decay,
            "warmup_steps": warmup, "batch_size": a.batch_size, "seed": a.seed, "flip": not a.no_flip,
            "samples": {"train": n, "val": len(val_items)}, "box_mapping_max_diff_px": max(d1, d2),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "params": str(a.out),
            "peak_rss_mb": peak_rss_mib(), "whole_s": time.perf_counter() - t0}


def evaluate(a: argparse.Namespace) -> dict[str, Any]:
    """Held-out COCO mAP of the tuned head with PyTorch decode + NMS (boxes mapped back to image pixels, as
    ``Detector.evaluate``), then PyTorch eager images/s at batch 1."""
    setup = Setup(Path(a.bundle), a.threads)
    head = setup.head(Path(a.params)).eval()
    data = load_detection(a.data, setup.labels, split=a.split)
    images, _, _, lbs, _ = load_images(setup, data.samples)
    t = time.perf_counter()
    dets = detect(setup, head, images)
    eval_s = time.perf_counter() - t
    dets = [{**d, "boxes": to_image_boxes(d["boxes"], lb)} for d, lb in zip(dets, lbs)]
    m = coco_map(dets, [{"boxes": s.boxes, "labels": s.classes} for s in data.samples], setup.labels, MAX_DETS)
    out: dict[str, Any] = {"map50": m["map50"], "map50_95": m["map50_95"], "map75": m["map75"],
                           "per_class": m["per_class"], "samples": len(data.samples), "eval_s": eval_s}
    if a.bench_runs > 0:
        pool = images[:max(1, min(len(images), a.bench_images))]
        with torch.inference_mode():
            for i in range(min(5, len(pool))):  # warm-up, not timed
                detect(setup, head, pool[i:i + 1], batch=1)
            t = time.perf_counter()
            for r in range(a.bench_runs):
                i = r % len(pool)
                detect(setup, head, pool[i:i + 1], batch=1)
            s = time.perf_counter() - t
        out["eager"] = {"images_per_s": a.bench_runs / s, "runs": a.bench_runs, "distinct_images": len(pool),
                        "seconds": s, "threads": torch.get_num_threads(), "batch": 1, "mode": "inference_mode"}
    out["torch"] = torch.__version__
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.detection_reference", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="fine-tune the head; write its best-epoch parameters (safetensors)")
    t.add_argument("--bundle", required=True, help="the detection bundle (manifest, portable/init.safetensors)")
    t.add_argument("--data", required=True, help="data.yaml folder; its train split is split 80/20 as ftedge's")
    t.add_argument("--out", required=True, help="params.safetensors to write (the head's names)")
    t.add_argument("--epochs", type=int, default=60)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=None, help="default: the bundle's")
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--val-fraction", type=float, default=0.2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-flip", action="store_true")
    e = sub.add_parser("evaluate", help="held-out mAP with PyTorch decode + NMS, and eager images/s")
    e.add_argument("--bundle", required=True)
    e.add_argument("--params", required=True, help="head parameters (safetensors, the head's names)")
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="val")
    e.add_argument("--bench-runs", type=int, default=100, help="timed batch-1 runs for images/s; 0 disables")
    e.add_argument("--bench-images", type=int, default=100, help="distinct held-out images the runs cycle over")
    for p in (t, e):
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--json", action="store_true", help="last output line: one JSON object of figures")
    a = ap.parse_args(argv)
    r = train(a) if a.cmd == "train" else evaluate(a)
    if a.cmd == "train":
        print(f"load {r['load_s']:.1f} s; train {r['train_s']:.1f} s ({r['steps']} steps, validation "
              f"{r['val_s']:.1f} s); best epoch {r['best_epoch']} val mAP@0.5 {r['best_val_map50']}; whole "
              f"{r['whole_s']:.1f} s; peak RSS {r['peak_rss_mb']:.0f} MiB", file=sys.stderr)
    else:
        print(f"held-out mAP@0.5 {r['map50']}, mAP@0.5:0.95 {r['map50_95']} on {r['samples']} images"
              + (f"; eager {r['eager']['images_per_s']:.1f} images/s" if "eager" in r else ""), file=sys.stderr)
    if a.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
