"""``ftedge export --task detect``: a pretrained backbone → a detection training bundle.

MODEL is the frozen backbone: an ``nn.Module`` (or a callable returning one) mapping ``image`` [B, 3, H, W] to a
tuple of feature maps (``ftedge.export.detect_sources:mobilenet_v2`` ships one). ftedge adds a fresh anchor-free
head for ``--labels`` (:mod:`ftedge.export.tasks.detect.model`), writes the graphs (:mod:`ftedge.export.tasks.detect.graphs`),
checks the backbone, the head + NMS and the training step against PyTorch, and records in the manifest
(``detection``) everything the device needs to assign targets and read the outputs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ftedge.bundle.manifest import BATCH, TensorSpec
from ftedge.errors import ExportError, UsageError
from ftedge.export.tasks.detect import graphs as detect_graphs
from ftedge.export.bundle_writer import BundleStage, manifest_header
from ftedge.export.tasks.detect.model import decode, head_forward, init_head, nms_reference
from ftedge.export.model_loader import load_model
from ftedge.export.options import ExportOptions
from ftedge.export.step_graph import OPTIMIZER_DEFAULTS
from ftedge.runtime.tasks.detect.targets import assign, make_grid

log = logging.getLogger(__name__)

DEFAULT_SIZE = (320, 320)
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
HIDDEN = 64             # channels of the head's tower
CENTER_RADIUS = 2.5     # centre sampling, in strides
RANGE_FACTOR = 3        # a box goes to level l when its largest point-to-side distance is in (3 s_{l-1}, 3 s_l]
NMS = {"iou_threshold": 0.6, "score_threshold": 0.01, "max_per_class": 100}
PAD_VALUE = 114
BACKBONE_TOLERANCE = 1e-4  # max |diff| relative to the largest activation


def _validate(opts: ExportOptions) -> None:
    if not opts.labels:
        raise UsageError("--task detect needs the classes to detect: --labels a,b,c (or --labels-file)")
    if opts.inputs or opts.head or opts.trainable or opts.num_classes:
        raise UsageError("--task detect takes no --input/--head/--trainable/--num-classes: the input is the image "
                         "(--image-size H,W) and what trains is the new detection head")
    if opts.engine not in ("auto", "portable"):
        raise UsageError("--task detect writes the portable engine only (onnxruntime-training is deprecated)")
    if opts.quantize_backbone:
        raise UsageError("--quantize-backbone is not supported with --task detect yet")


def _levels(feats: tuple[torch.Tensor, ...], size: tuple[int, int]) -> list[int]:
    strides = []
    for i, f in enumerate(feats):
        if f.dim() != 4:
            raise ExportError(f"backbone output {i} has shape {list(f.shape)}; a detection backbone returns "
                              "feature maps [B, C, H, W]")
        s = size[0] // f.shape[2]
        if s * f.shape[2] != size[0] or size[1] // s != f.shape[3]:
            raise ExportError(f"backbone output {i} ({list(f.shape)}) is not the input ({size[0]}x{size[1]}) "
                              "divided by an integer stride; choose --image-size a multiple of the largest stride")
        strides.append(int(s))
    if strides != sorted(set(strides)):
        raise ExportError(f"the backbone's feature maps must come finest first with distinct strides, got {strides}")
    return strides


def _parity(backbone: torch.nn.Module, init: dict[str, torch.Tensor], files: dict[str, Path], size: tuple[int, int],
            feat_names: list[str], points: torch.Tensor, strides: torch.Tensor, k: int) -> dict[str, Any]:
    """backbone.onnx vs the PyTorch backbone; head.onnx (decode + NonMaxSuppression) vs PyTorch decode + greedy NMS
    on the same feature maps (head parameters perturbed so that scores spread)."""
    from ftedge.runtime.engines.ort_backend import InferenceModel

    g = torch.Generator().manual_seed(7)
    image = torch.randn(2, 3, *size, generator=g)
    with torch.no_grad():
        ref = [t.numpy() for t in backbone(image)]
    got = InferenceModel(files["backbone"]).run({"image": image.numpy()}, feat_names)
    out: dict[str, Any] = {}
    failures = []
    for name, r in zip(feat_names, ref):
        diff = float(np.abs(got[name] - r).max())
        rel = diff / max(float(np.abs(r).max()), 1e-6)
        out[f"backbone {name}"] = {"max_abs_diff": diff, "relative": rel}
        if not rel <= BACKBONE_TOLERANCE:
            failures.append(f"backbone {name}: {rel:.3g} relative")
    params = {n: v + (0.3 * torch.randn(v.shape, generator=g) if ".out." in n else 0) for n, v in init.items()}
    # the backbone's maps scaled to a common range: large activations would saturate the sigmoids, and tied scores
    # of 1.0 make the order NMS keeps boxes in arbitrary (both sides are right, the comparison is not)
    feats = [torch.from_numpy(r) * (3.0 / max(float(np.abs(r).max()), 1e-6)) for r in ref]
    with torch.no_grad():
        boxes, scores = decode(head_forward(params, feats), points, strides, k)
    kept = nms_reference(boxes, scores, NMS["iou_threshold"], NMS["score_threshold"], NMS["max_per_class"])
    feeds = {**{n: f.numpy() for n, f in zip(feat_names, feats)},
             **{n: v.numpy() for n, v in params.items()}}  # parameters override
    head = dict(zip(detect_graphs.OUTPUTS, InferenceModel(files["head"]).session.run(detect_graphs.OUTPUTS, feeds)))
    onnx_kept = list(zip(head["det_batch"].tolist(), head["det_labels"].tolist()))
    same = len(kept) == len(onnx_kept) and all((b, c) == o for (b, c, _), o in zip(kept, onnx_kept))
    box_diff = score_diff = float("nan")
    if same and kept:
        rb = np.stack([boxes[b, i].numpy() for b, _, i in kept])
        rs = np.array([float(scores[b, i, c]) for b, c, i in kept])
        box_diff = float(np.abs(rb - head["det_boxes"]).max())
        score_diff = float(np.abs(rs - head["det_scores"]).max())
        same = box_diff <= 1e-3 and score_diff <= 1e-5
    out["head + nms"] = {"detections": len(kept), "onnx_detections": len(onnx_kept), "same_detections": same,
                         "max_box_diff_px": box_diff, "max_score_diff": score_diff,
                         "reference": "pytorch decode + greedy per-class NMS (export/tasks/detect/model.py)"}
    if not same:
        failures.append(f"head + NMS: {len(onnx_kept)} ONNX detections vs {len(kept)} PyTorch, boxes {box_diff:.3g} px, "
                        f"scores {score_diff:.3g}")
    if failures:
        raise ExportError("the detection bundle disagrees with PyTorch: " + "; ".join(failures)
                          + ". Report the backbone; --skip-parity writes it anyway")
    return out


def export_detector(opts: ExportOptions, progress: Callable[[str], None] = lambda _m: None,
                    sign_key: str | Path | None = None) -> dict[str, Any]:
    """Export ``opts.model`` (a backbone) + a new detection head into a bundle at ``opts.output``."""
    _validate(opts)
    signer = None
    if sign_key is not None:
        from ftedge.bundle.signing import manifest_signer

        signer = manifest_signer(sign_key)
    t0 = time.perf_counter()
    size = tuple(opts.image_size or DEFAULT_SIZE)
    mean, std = list(opts.mean or IMAGENET_MEAN), list(opts.std or IMAGENET_STD)
    labels = list(opts.labels or [])
    k = len(labels)
    progress("loading the backbone")
    backbone = load_model(opts.model).eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        try:
            feats = tuple(backbone(torch.zeros(1, 3, *size)))
        except Exception as exc:
            raise ExportError(f"the backbone does not run on a 1x3x{size[0]}x{size[1]} image: "
                              f"{type(exc).__name__}: {exc}") from exc
    strides = _levels(feats, size)
    feat_names = [f"p{s}" for s in strides]
    channels = [int(f.shape[1]) for f in feats]
    edges = [0.0] + [float(RANGE_FACTOR * s) for s in strides[:-1]] + [1e8]
    ranges = [[edges[i], edges[i + 1]] for i in range(len(strides))]
    grid = make_grid(size, strides, ranges, CENTER_RADIUS)  # type: ignore[arg-type]
    points, pt_strides = torch.from_numpy(grid.points), torch.from_numpy(grid.strides)
    init = init_head(channels, k, HIDDEN, opts.seed)

    def make_labels(b: int, seed: int) -> torch.Tensor:
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(b):
            n = int(rng.integers(0, 4))
            xy = rng.uniform(0, min(size) * 0.6, (n, 2))
            wh = rng.uniform(12, min(size) * 0.4, (n, 2))
            out.append(assign(np.concatenate([xy, xy + wh], 1), rng.integers(0, k, n), grid, k))
        return torch.from_numpy(np.stack(out))

    stage = BundleStage(opts.output, opts.force)
    try:
        files = {"backbone": stage.path("backbone.onnx"), "step": stage.path("portable/step.onnx"),
                 "head": stage.path("portable/head.onnx"), "init": stage.path("portable/init.safetensors")}
        files["step"].parent.mkdir(parents=True, exist_ok=True)
        progress(f"exporting the frozen backbone (feature maps {', '.join(feat_names)})")
        detect_graphs.write_backbone(backbone, size, feat_names, files["backbone"])  # type: ignore[arg-type]
        progress(f"building the training step (anchor-free head, {k} classes, {grid.size} points)")
        feat_specs = [(n, list(f.shape[1:])) for n, f in zip(feat_names, feats)]
        check = detect_graphs.write_step(init, feat_specs, points, pt_strides, k, make_labels, files["step"])
        detect_graphs.write_head(init, [f.repeat(2, 1, 1, 1) for f in feats], feat_names, points, pt_strides, k, NMS,
                                 files["head"])
        from safetensors.numpy import save_file

        save_file({n: np.ascontiguousarray(v.numpy()) for n, v in init.items()}, str(files["init"]))
        if opts.skip_parity:
            log.warning("--skip-parity: the bundle is NOT checked against PyTorch")
            parity: dict[str, Any] = {"skipped": True}
        else:
            progress("checking parity against PyTorch")
            parity = {**_parity(backbone, init, files, size, feat_names, points, pt_strides, k),  # type: ignore[arg-type]
                      "skipped": False}
        parity["step"] = check
        rel = {role: p.relative_to(stage.dir).as_posix() for role, p in files.items()}
        n_params = int(sum(v.numel() for v in init.values()))
        manifest = {
            **manifest_header(opts, 17),
            "task": "detection",
            "loss": "detection",
            "inputs": [TensorSpec("image", "float32", [BATCH, 3, size[0], size[1]]).to_json()],
            "head_inputs": [TensorSpec(n, "float32", [BATCH, *f.shape[1:]], None, {"source": f"backbone, stride {st}"}
                                       ).to_json() for n, f, st in zip(feat_names, feats, strides)],
            "output": TensorSpec("preds", "float32", [BATCH, grid.size, k + 5]).to_json(),
            "labels": labels,
            "optimizer": {"name": "adamw", "lr": opts.lr, **OPTIMIZER_DEFAULTS["adamw"]},
            "engines": {"portable": {"files": {r: rel[r] for r in ("step", "head", "init")}, "params": list(init),
                                     "buffers": [], "optimizer": "adamw", "masks": []}},
            "layout": "split",
            "roles": rel,
            "detection": {
                "strides": strides, "feature_maps": feat_names, "channels": channels,
                "grid": [list(s) for s in grid.shapes], "points": grid.size, "ranges": ranges,
                "center_radius": CENTER_RADIUS, "head_channels": HIDDEN,
                "targets": "labels [batch, points, classes + 6]: class one-hot, box x1 y1 x2 y2 (input pixels), "
                           "centerness, positive (runtime/tasks/detect/targets.py)",
                "preds": "[batch, points, classes + 5]: class logits, softplus box distances l t r b (x stride), "
                         "centerness logit",
                "score": "sqrt(sigmoid(class) * sigmoid(centerness))",
                "loss": {"class": "sigmoid focal (alpha 0.25, gamma 2) / positives",
                         "box": "GIoU on positives weighted by centerness target", "centerness": "BCE / positives"},
                "nms": NMS, "outputs": detect_graphs.OUTPUTS,
                "box_format": "x1 y1 x2 y2 in model-input pixels (undo the letterbox for image pixels)",
            },
            "trainable": list(init),
            "frozen": ["(every backbone weight)"],
            "trainable_parameter_count": n_params,
            "parameter_count": int(sum(p.numel() for p in backbone.parameters())) + n_params,
            "train_inputs": feat_names + ["labels", "weights"],
            "parity": parity,
            "preprocessing": {"type": "image", "input": "image", "size": list(size), "resize": "letterbox",
                              "pad_value": PAD_VALUE, "mean": mean, "std": std, "scale": 1 / 255, "layout": "NCHW",
                              "channels": 3},
            "export_seconds": round(time.perf_counter() - t0, 3),
        }
        stage.commit(manifest, signer)
    except BaseException:
        stage.discard()
        raise
    return manifest
