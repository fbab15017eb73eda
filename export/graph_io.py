"""Tracing helpers shared by the task-specific graph writers (causal LM, detection): quiet exporters, a module
around a function, TorchScript export with dynamic axes, weights as initializers and external data."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ftedge.errors import ExportError


def quiet_export(fn: Callable[[], Any]) -> Any:
    """Run an exporter or ORT's quantizers without their per-node chatter (torch's logger, ORT's quantizers log
    INFO on the root logger, and both print)."""
    logs = [logging.getLogger("torch"), logging.getLogger()]
    levels = [lg.level for lg in logs]
    for lg in logs:
        lg.setLevel(max(lg.level, logging.WARNING) if lg.name == "root" else logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return fn()
    finally:
        for lg, level in zip(logs, levels):
            lg.setLevel(level)


class FnModule(torch.nn.Module):
    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *a: torch.Tensor) -> Any:
        return self.fn(*a)


def torchscript(fn: Callable[..., Any], example: tuple, path: Path, inputs: list[str], outputs: list[str],
                 axes: dict[str, dict[int, str]], what: str) -> None:
    try:
        quiet_export(lambda: torch.onnx.export(
            FnModule(fn), example, os.fspath(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
            opset_version=17, dynamo=False, do_constant_folding=True))
    except Exception as exc:
        raise ExportError(f"exporting the {what} graph failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    constants_to_initializers(path)
    externalize(path)


def externalize(path: Path) -> None:
    """Weights in ``<graph>.onnx.data`` beside the graph: onnxruntime then reads them without first holding the
    whole protobuf in memory (a session's load peak drops from ~2x to ~1x the weights)."""
    import onnx

    model = onnx.load(os.fspath(path))
    data = path.name + ".data"
    (path.parent / data).unlink(missing_ok=True)
    onnx.save(model, os.fspath(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
              size_threshold=1024)


def constants_to_initializers(path: Path, min_elements: int = 64) -> None:
    """The weights the traced functions close over come out as ``Constant`` nodes; make them initializers (what
    weight quantizers and ORT's pre-packing look for)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(os.fspath(path))
    keep, inits = [], []
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = node.attribute[0].t
            if int(np.prod(t.dims)) >= min_elements:
                arr = numpy_helper.to_array(t)
                inits.append(numpy_helper.from_array(arr, node.output[0]))
                continue
        keep.append(node)
    if not inits:
        return
    del model.graph.node[:]
    model.graph.node.extend(keep)
    model.graph.initializer.extend(inits)
    onnx.save(model, os.fspath(path))


def step_differences(out_names: list[str], ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, float]:
    """An AdamW step graph's outputs vs the eager step's: max |diff| of each, relative to the largest value of its
    kind (``m:`` moments, i.e. gradients; ``v:`` moments; loss; …). Updated parameters are left out: an AdamW update
    is ±lr whatever the gradient's size, so the moments carry the check."""
    groups: dict[str, float] = {}
    for name, r in zip(out_names, ref):
        groups[name[:2]] = max(groups.get(name[:2], 0.0), float(np.abs(r).max()) if r.size else 0.0)
    return {name: float(np.abs(r - o).max()) / max(groups[name[:2]], 1e-6) if r.size else 0.0
            for name, r, o in zip(out_names, ref, got) if not name.startswith("p:")}
