"""The detection bundle's graphs, traced from :mod:`ftedge.export.tasks.detect.model`.

``backbone.onnx``  ``image`` [B, 3, H, W] → one feature map per level (``p16``, ``p32``, …): frozen, eval mode,
                   ORT-optimized; run once per image on the device (the split cache).
``step.onnx``      the portable engine's training step on cached feature maps: head forward, detection loss
                   (focal + GIoU + centerness BCE), backward, AdamW. Inputs as :mod:`ftedge.export.step_graph`
                   (``p:``/``m:``/``v:``, ``lr``, ``lr_wd``, ``max_grad_norm``) plus the feature maps, ``labels``
                   [B, N, K + 6] and ``weights`` [B]; outputs the state ``_out``, ``loss``, ``preds``.
``head.onnx``      inference on feature maps, head parameters as overridable initializers: decode, then ONNX
                   ``NonMaxSuppression`` per image and class → ``det_boxes`` [D, 4] (x1 y1 x2 y2, input pixels),
                   ``det_scores`` [D], ``det_labels`` [D], ``det_batch`` [D] (image index in the batch). The
                   personalized ``model.onnx`` is backbone + this graph with the tuned parameters baked in.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ftedge.errors import ExportError
from ftedge.export.tasks.detect.model import decode, detection_loss, head_forward
from ftedge.export.graph_io import FnModule, quiet_export, step_differences
from ftedge.export.step_graph import adamw_all

STEP_TOLERANCE = 1e-4
OUTPUTS = ["det_boxes", "det_scores", "det_labels", "det_batch"]


def write_backbone(backbone: torch.nn.Module, size: tuple[int, int], names: list[str], path: Path) -> None:
    """Export the frozen backbone (dynamic batch) and optimize it with ORT's basic level."""
    from ftedge.export.backbone import save_optimized

    example = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    axes = {"image": {0: "batch"}, **{n: {0: "batch"} for n in names}}
    with tempfile.TemporaryDirectory(prefix="ftedge-det-") as tmp:
        raw = Path(tmp) / "backbone.onnx"
        try:
            quiet_export(lambda: torch.onnx.export(
                FnModule(lambda x: tuple(backbone(x))), (example,), os.fspath(raw), input_names=["image"],
                output_names=names, dynamic_axes=axes, opset_version=17, dynamo=False, do_constant_folding=True))
        except Exception as exc:
            raise ExportError(f"exporting the detection backbone failed: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0]}") from exc
        save_optimized(onnx.load(os.fspath(raw)), path)


def _nms_tail(graph: onnx.GraphProto, boxes: str, scores_t: str, nms: dict[str, Any]) -> None:
    """Append NonMaxSuppression + gathers: (boxes [B,N,4], scores [B,K,N]) → the four ``det_*`` outputs."""
    def const(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    mx = const("nms_max_per_class", np.array([nms["max_per_class"]], np.int64))
    iou = const("nms_iou_threshold", np.array([nms["iou_threshold"]], np.float32))
    thr = const("nms_score_threshold", np.array([nms["score_threshold"]], np.float32))
    i0, i1, i2 = (const(f"nms_col{k}", np.array(k, np.int64)) for k in range(3))
    i02 = const("nms_cols_02", np.array([0, 2], np.int64))
    graph.node.extend([
        helper.make_node("NonMaxSuppression", [boxes, scores_t, mx, iou, thr], ["nms_selected"],
                         center_point_box=0, name="nms"),
        helper.make_node("Gather", ["nms_selected", i0], ["det_batch"], axis=1, name="nms_batch"),
        helper.make_node("Gather", ["nms_selected", i1], ["det_labels"], axis=1, name="nms_labels"),
        helper.make_node("Gather", ["nms_selected", i02], ["nms_box_index"], axis=1, name="nms_box_index"),
        helper.make_node("GatherND", [boxes, "nms_box_index"], ["det_boxes"], name="nms_boxes"),
        helper.make_node("GatherND", [scores_t, "nms_selected"], ["det_scores"], name="nms_scores"),
    ])
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, ["detections", 4]),
                         helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, ["detections"]),
                         helper.make_tensor_value_info("det_labels", TensorProto.INT64, ["detections"]),
                         helper.make_tensor_value_info("det_batch", TensorProto.INT64, ["detections"])])


def write_head(init: dict[str, torch.Tensor], feats: list[torch.Tensor], feat_names: list[str], points: torch.Tensor,
               strides: torch.Tensor, num_classes: int, nms: dict[str, Any], path: Path) -> None:
    """The inference head: parameters are graph inputs with the initial values as initializers (overridable)."""
    names = list(init)
    n_feat = len(feat_names)

    def fn(*a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        preds = head_forward(dict(zip(names, a[n_feat:])), list(a[:n_feat]))
        boxes, scores = decode(preds, points, strides, num_classes)
        return boxes, scores.transpose(1, 2).contiguous()

    axes = {n: {0: "batch"} for n in feat_names} | {"boxes": {0: "batch"}, "scores_t": {0: "batch"}}
    with tempfile.TemporaryDirectory(prefix="ftedge-det-") as tmp:
        raw = Path(tmp) / "head.onnx"
        try:
            quiet_export(lambda: torch.onnx.export(
                FnModule(fn), (*feats, *[init[k] for k in names]), os.fspath(raw),
                input_names=[*feat_names, *names], output_names=["boxes", "scores_t"], dynamic_axes=axes,
                opset_version=17, dynamo=False, do_constant_folding=True))
        except Exception as exc:
            raise ExportError(f"exporting the detection head failed: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0]}") from exc
        model = onnx.load(os.fspath(raw))
    present = {i.name for i in model.graph.initializer}
    for k in names:  # overridable: fed, they replace the exported values (the engine's eval, bake_initializers)
        if k not in present:
            model.graph.initializer.append(numpy_helper.from_array(init[k].detach().numpy(), k))
    _nms_tail(model.graph, "boxes", "scores_t", nms)
    onnx.checker.check_model(model)
    onnx.save(model, os.fspath(path))


def write_step(init: dict[str, torch.Tensor], feat_specs: list[tuple[str, list[int]]], points: torch.Tensor,
               strides: torch.Tensor, num_classes: int, make_labels: Callable[[int, int], torch.Tensor],
               path: Path) -> dict[str, Any]:
    """Trace the training step (dynamic batch) and verify it against the eager step; returns the check."""
    from torch._decomp import core_aten_decompositions
    from torch.func import grad_and_value
    from torch.fx.experimental.proxy_tensor import make_fx

    from ftedge.export.conv_grad import decompositions
    from ftedge.export.step_graph import _batch_symbolic

    names = list(init)
    n, n_feat = len(names), len(feat_specs)

    def step(*a: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ps, ms, vs = list(a[:n]), list(a[n:2 * n]), list(a[2 * n:3 * n])
        lr, lr_wd, clip = a[3 * n:3 * n + 3]
        feats = list(a[3 * n + 3:3 * n + 3 + n_feat])
        labels, weights = a[3 * n + 3 + n_feat:]

        def loss_fn(p: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            preds = head_forward(dict(zip(names, p)), feats)
            return detection_loss(preds, labels, weights, points, strides, num_classes), preds

        grads, (value, preds) = grad_and_value(loss_fn, has_aux=True)(ps)
        out_p, out_m, out_v = adamw_all(ps, grads, ms, vs, lr, lr_wd, clip)
        return (*out_p, *out_m, *out_v, value.detach(), preds.detach())

    def batch(b: int, seed: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        feats = [torch.randn(b, *shape, generator=g) for _, shape in feat_specs]
        weights = torch.ones(b)
        weights[-1] = 0.5 if b > 1 else 1.0
        return [*feats, make_labels(b, seed), weights]

    p0 = [init[k].clone() for k in names]
    state = [*p0, *[torch.zeros_like(p) for p in p0], *[torch.zeros_like(p) for p in p0]]
    scalars = [torch.tensor(1e-3), torch.tensor(1e-5), torch.tensor(0.0)]
    example = (*state, *scalars, *batch(3, 1))
    in_names = [f"{s}:{k}" for s in "pmv" for k in names] + ["lr", "lr_wd", "max_grad_norm"] + [
        f for f, _ in feat_specs] + ["labels", "weights"]
    out_names = [f"{k}_out" for k in in_names[:3 * n]] + ["loss", "preds"]
    axes = [None] * (3 * n + 3) + [0] * (n_feat + 2)
    try:
        gm = quiet_export(lambda: make_fx(step, decomposition_table={**core_aten_decompositions(), **decompositions()},
                                          tracing_mode="fake", _allow_non_fake_inputs=True)(
            *_batch_symbolic(example, axes)))
    except Exception as exc:
        raise ExportError(f"tracing the detection training step failed: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0]}") from exc
    B = torch.export.Dim("batch", min=1, max=1 << 12)
    dyn: list[Any] = [None] * (3 * n + 3) + [{0: B}] * (n_feat + 2)
    try:
        program = quiet_export(lambda: torch.onnx.export(
            FnModule(gm), example, dynamo=True, input_names=in_names, output_names=out_names,
            dynamic_shapes=(tuple(dyn),), optimize=True, verbose=False, report=False))
        program.save(os.fspath(path))
    except Exception as exc:
        cause = exc.__cause__ or exc
        raise ExportError(f"exporting the detection training step failed: {type(cause).__name__}: "
                          f"{str(cause).splitlines()[0] if str(cause) else ''}") from exc
    return _verify_step(step, state, batch, path, in_names, out_names, n)


def _verify_step(step: Callable[..., Any], state: list[torch.Tensor], batch: Callable[[int, int], list[torch.Tensor]],
                 path: Path, in_names: list[str], out_names: list[str], n: int) -> dict[str, Any]:
    """``step.onnx`` against the eager step on two batch sizes: loss, predictions, AdamW moments (the
    gradients), each relative to its largest value."""
    from ftedge.runtime.engines.ort_backend import InferenceModel

    sess = InferenceModel(path).session
    worst: dict[str, float] = {}
    bad = []
    for b, seed in ((5, 11), (2, 12)):
        g = torch.Generator().manual_seed(seed)
        st = [s + 0.01 * torch.randn(s.shape, generator=g) if i < n else s for i, s in enumerate(state)]
        args = [*st, torch.tensor(0.01), torch.tensor(1e-5), torch.tensor(0.0), *batch(b, seed)]
        ref = [r.detach().numpy() for r in step(*args)]
        got = sess.run(None, {k: v.numpy() for k, v in zip(in_names, args)})
        for name, diff in step_differences(out_names, ref, got).items():
            worst[name] = max(worst.get(name, 0.0), diff)
            if not diff <= STEP_TOLERANCE:
                bad.append(f"{name} (batch {b}): {diff:.3g}")
    if bad:
        raise ExportError("the detection training-step graph disagrees with the PyTorch step: " + "; ".join(bad[:8]))
    return {"max_rel_diff": max(worst.values()), "tolerance": STEP_TOLERANCE, "batch_sizes": [5, 2],
            "reference": "eager pytorch step of the same head and loss (torch.func.grad_and_value + AdamW)"}
