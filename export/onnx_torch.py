"""Run an exported ONNX graph (the bundle's trainable part) as PyTorch operations.

The portable engine's training step is derived with PyTorch's own autograd (``torch.func``): the trainable
graph the split produced is replayed op by op as ``torch`` calls, so ``make_fx`` can trace its forward and
backward. Shape arithmetic (``Shape`` → ``Gather`` → ``Concat`` → ``Reshape``) is kept as Python lists of
(symbolic) ints, which keeps the batch dimension dynamic under symbolic tracing. The operators themselves:
:mod:`ftedge.export.onnx_ops`; here the graph walk and what it refuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ftedge.errors import ExportError
from ftedge.export.onnx_ops import OPS, Sh, _attrs, _const, _tensor
from ftedge.export.wrapper import PREFIX


@dataclass
class DropoutSite:
    """A training-mode Dropout of the graph: its mask is an input of the step graph."""

    name: str          # step-graph input name
    node_output: str
    ratio: float
    shape: list[Any] = field(default_factory=list)  # with "batch" on the batch axis


@dataclass
class Trace:
    """What one run of the graph produced besides its outputs."""

    buffers: dict[str, torch.Tensor] = field(default_factory=dict)   # updated BatchNorm running statistics
    dropout_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # node output -> input tensor (discovery)


# Ops whose outputs carry no gradient, so the backward treats them as constants -- exactly what PyTorch's autograd
# does with the same values. Predicates, comparisons and logic produce booleans; ArgMax/ArgMin, Shape and Size
# produce integers; Where's condition is such a boolean (Where itself is differentiable in its two branches);
# Floor, Ceil and Sign are piecewise constant, derivative 0 wherever it exists. No gradient is dropped: none
# exists to drop. (docs/engines.md lists them; tests/export/test_step_graph_ops.py checks each.)
GRADIENT_FREE = frozenset({
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Not", "IsNaN", "IsInf",
    "ArgMax", "ArgMin", "Shape", "Size", "Floor", "Ceil", "Sign",
})


def _module_of(node: onnx.NodeProto) -> str:
    """The PyTorch module a node came from: ``/model/pool/TopK`` -> ``pool`` (the exporter names nodes by module
    path)."""
    parts = [p for p in (node.name or "").split("/") if p][:-1]
    if parts[:1] == [PREFIX.rstrip(".")]:  # the export wrapper holds the user's model as ``model``
        parts = parts[1:]
    return ".".join(parts) or "(top level)"


def unsupported_ops(graph: onnx.GraphProto) -> dict[str, list[str]]:
    """Op types of ``graph`` this interpreter cannot run (so the portable engine has no gradient for them), each
    with the modules that use it."""
    found: dict[str, list[str]] = {}
    for n in graph.node:
        name = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
        if (n.op_type not in OPS and n.op_type != "Constant") or n.domain not in ("", "ai.onnx"):
            mods = found.setdefault(name, [])
            if _module_of(n) not in mods:
                mods.append(_module_of(n))
    return dict(sorted(found.items()))


class GraphFunction:
    """An ONNX graph as a PyTorch function of its inputs and (trainable) initializers."""

    def __init__(self, model: onnx.ModelProto, overridable: list[str]) -> None:
        bad = unsupported_ops(model.graph)
        if bad:
            where = "; ".join(f"{op} in module {', '.join(mods[:3])}{' …' if len(mods) > 3 else ''}"
                              for op, mods in bad.items())
            raise ExportError(f"the portable engine has no gradient for operator(s) {where}: freeze those modules "
                              "(narrow --trainable so they stay in the backbone) or use --engine ort-training")
        self.graph = model.graph
        self.overridable = set(overridable)
        self.constants = {i.name: _const(numpy_helper.to_array(i)) for i in model.graph.initializer
                          if i.name not in self.overridable}
        self.initial = {i.name: torch.from_numpy(np.array(numpy_helper.to_array(i))) for i in model.graph.initializer
                        if i.name in self.overridable}
        self.input_names = [i.name for i in model.graph.input if i.name not in self.initial]
        self.output_names = [o.name for o in model.graph.output]
        self.bn_buffers = self._bn_buffers()

    def _bn_buffers(self) -> dict[str, tuple[str, int]]:
        """running_mean/var initializer -> (node output carrying its update, index) of training-mode BatchNorms."""
        found = {}
        for n in self.graph.node:
            if n.op_type == "BatchNormalization" and _attrs(n).get("training_mode", 0):
                for k in (3, 4):
                    found[n.input[k]] = (n.name or n.output[0], k - 2)
        return found

    def __call__(self, feeds: dict[str, Any], params: dict[str, torch.Tensor], training: bool,
                 masks: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor], Trace]:
        env: dict[str, Any] = dict(self.constants)
        env.update(params)
        env.update(feeds)
        trace = Trace()
        ctx = {"training": training, "masks": masks or {}, "trace": trace}
        for node in self.graph.node:
            at = _attrs(node)
            if node.op_type == "Constant":
                env[node.output[0]] = _const(at["value"]) if "value" in at else Sh(
                    [at["value_int"]] if "value_int" in at else list(at["value_ints"]), scalar="value_int" in at)
                continue
            ins = [env[i] if i else None for i in node.input]
            ctx["node_output"] = node.output[0]
            ctx["n_outputs"] = len(node.output)
            if node.op_type == "BatchNormalization" and at.get("training_mode", 0) and not training:
                at = {**at, "training_mode": 0}
            try:
                out = OPS[node.op_type](ins, at, ctx)
            except ExportError:
                raise
            except Exception as exc:
                raise ExportError(f"the portable engine could not replay node {node.name or node.output[0]} "
                                  f"({node.op_type}): {type(exc).__name__}: {exc}") from exc
            if node.op_type == "BatchNormalization" and isinstance(out, tuple):
                y, new_mean, new_var = out
                trace.buffers[node.input[3]], trace.buffers[node.input[4]] = new_mean, new_var
                out = y
            outs = out if isinstance(out, tuple) else (out,)
            for name, value in zip(node.output, outs):
                if name:
                    env[name] = value
        return {n: _tensor(env[n]) for n in self.output_names}, trace
