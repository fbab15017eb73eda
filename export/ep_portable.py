"""Graph rewrites that let every execution provider load the exported graphs (issue 35, docs/openvino-probe.md).

Inference EPs (OpenVINO first) implement a subset of ONNX and place the rest on the CPU EP, or refuse the model.
Each rewrite here keeps the values and replaces a form some EP does not take with standard ops every EP takes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper


def ep_portable_decompositions() -> dict[Any, Any]:
    """Ops whose ONNX form only training kernels accept, written as standard ops instead.

    ``aten.native_layer_norm`` exports as ``LayerNormalization`` with its mean and inverse-std outputs (the backward
    reads them): inference EPs refuse that form (OpenVINO's frontend: "used for training, not supported"), so the
    step graph computes them with ReduceMean / Sub / Mul / Sqrt (docs/openvino-probe.md).
    """
    from torch._decomp import decomposition_table

    ln = torch.ops.aten.native_layer_norm.default
    return {ln: decomposition_table[ln]}


REDUCE_OPS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare", "ReduceL2")


def ep_portable_reductions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reductions of a whole tensor to a 0-d scalar rewritten as ``Reduce(axes=0..r-1, keepdims=1)`` + ``Squeeze``.

    torch.onnx writes ``sum()`` as a reduction with an empty ``axes`` input and ``keepdims=0``; the OpenVINO EP
    (onnxruntime-openvino 1.24.1) leaves those nodes to the CPU EP, so no step graph loaded with CPU fallback
    disabled (docs/openvino-probe.md). Same values; only nodes whose input rank is known are rewritten.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in [*inferred.graph.value_info, *inferred.graph.input]
            if v.type.tensor_type.HasField("shape")}
    empty = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT64 and not any(t.dims)
             and numpy_helper.to_array(t).size == 0}
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        nodes.append(node)
        at = {a.name: a for a in node.attribute}
        if (node.op_type not in REDUCE_OPS or len(node.input) < 2 or node.input[1] not in empty
                or node.input[0] not in rank or "keepdims" not in at or at["keepdims"].i != 0
                or ("noop_with_empty_axes" in at and at["noop_with_empty_axes"].i)):
            continue
        r = rank[node.input[0]]
        axes = f"{node.name}__axes"
        model.graph.initializer.append(numpy_helper.from_array(np.arange(r, dtype=np.int64), axes))
        kept, out = f"{node.output[0]}__kept", node.output[0]
        node.input[1], node.output[0] = axes, kept
        at["keepdims"].i = 1
        nodes.append(helper.make_node("Squeeze", [kept], [out], name=f"{node.name}__squeeze"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def ep_portable_isnan(model: onnx.ModelProto) -> onnx.ModelProto:
    """``IsNaN(x)`` rewritten as ``Not(Equal(x, x))`` (NaN is the one value unequal to itself).

    The OpenVINO EP (onnxruntime-openvino 1.24.1) has no IsNaN: scaled_dot_product_attention's export guards fully
    masked rows with it, which left sdpa-masks' step and head partly on the CPU EP. Same values, same bool output.
    """
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.op_type != "IsNaN" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        x, out = node.input[0], node.output[0]
        same = f"{out}__self_equal"
        nodes.append(helper.make_node("Equal", [x, x], [same], name=f"{node.name}__equal"))
        nodes.append(helper.make_node("Not", [same], [out], name=f"{node.name}__not"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def ep_portable_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every rewrite of this module, in place; returns ``model``."""
    return ep_portable_reductions(ep_portable_isnan(model))
