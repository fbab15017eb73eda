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


def _static_dims(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Each value's inferred dimensions (None where symbolic), for values whose rank is known."""
    inferred = onnx.shape_inference.infer_shapes(model)
    return {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in [*inferred.graph.value_info, *inferred.graph.input] if v.type.tensor_type.HasField("shape")}


def ep_portable_scatter_add(model: onnx.ModelProto) -> onnx.ModelProto:
    """``ScatterND(data, indices, updates, reduction="add")`` rewritten as ``ScatterElements(reduction="add")`` on
    axis 0 of ``data`` with its first ``k`` axes flattened (``k`` = the indices' last dimension).

    An indexing op's gradient (``x[rows, cols]``, e.g. a sequence classifier picking each row's last token) exports as
    a ScatterND that adds; OpenVINO's ONNX frontend takes ScatterND only without reduction ("Only `none` is
    supported") and refuses the whole step graph, but takes ScatterElements with ``add``. Duplicate indices add up
    in both. Rewritten only where the data's rank and ``k`` are known.
    """
    dims = _static_dims(model)
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        at = {a.name: a for a in node.attribute}
        data, idx, upd = (list(node.input) + ["", "", ""])[:3]
        k = (dims.get(idx) or [None])[-1]
        if (node.op_type != "ScatterND" or node.domain not in ("", "ai.onnx") or "reduction" not in at
                or at["reduction"].s != b"add" or data not in dims or not k or k > len(dims[data])):
            nodes.append(node)
            continue
        r, pre = len(dims[data]), f"{node.name}__"

        def const(name: str, values: list[int]) -> str:
            model.graph.initializer.append(numpy_helper.from_array(np.array(values, dtype=np.int64), pre + name))
            return pre + name

        def add(op: str, ins: list[str], name: str, **attrs: Any) -> str:
            nodes.append(helper.make_node(op, ins, [pre + name], name=pre + name, **attrs))
            return pre + name

        shape = add("Shape", [data], "shape")
        head = add("Slice", [shape, const("zero", [0]), const("k", [k])], "head")
        tail = add("Slice", [shape, const("k2", [k]), const("r", [r])], "tail")
        # row of each update in the flattened data: Horner over the k index components, negatives wrapped
        row = ""
        for j in range(k):
            dj = add("Gather", [shape, const(f"j{j}", [j])], f"d{j}")
            ij = add("Gather", [idx, const(f"s{j}", [j])], f"i{j}", axis=-1)
            ij = add("Mod", [ij, dj], f"w{j}")
            row = ij if j == 0 else add("Add", [add("Mul", [row, dj], f"m{j}"), ij], f"r{j}")
        rows = add("ReduceProd", [head], "rows", keepdims=1)
        flat = add("Reshape", [data, add("Concat", [rows, tail], "flat_shape", axis=0)], "flat")
        upd2 = add("Reshape", [upd, add("Concat", [const("minus1", [-1]), tail], "upd_shape", axis=0)], "upd")
        row = add("Reshape", [row, const("col", [-1] + [1] * (r - k))], "row")
        index = add("Expand", [row, add("Shape", [upd2], "upd_dims")], "index")
        out2 = add("ScatterElements", [flat, index, upd2], "scattered", axis=0, reduction="add")
        nodes.append(helper.make_node("Reshape", [out2, shape], [node.output[0]], name=pre + "out"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def ep_portable_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Graph inputs that no node and no output reads, removed.

    The step graph can keep a head input its computation no longer reads (GPT-2's ``input_ids``, whose only use, the
    last-token position, arrives precomputed). The OpenVINO EP (onnxruntime-openvino 1.24.1) compiles the model
    without it and then binds the remaining inputs by position, one off ("the model input (shape=[?]) and the
    tensor (shape=(8.12.32)) are incompatible"). The runtime binds only the inputs a session declares.
    """
    def reads(graph: onnx.GraphProto) -> set[str]:  # with the subgraphs' (If / Loop bodies read outer names)
        names = {o.name for o in graph.output}
        for node in graph.node:
            names.update(node.input)
            for a in node.attribute:
                for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    names |= reads(g)
        return names

    used = reads(model.graph)
    keep = [i for i in model.graph.input if i.name in used]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model


def ep_portable_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every rewrite of this module, in place; returns ``model``."""
    return ep_portable_inputs(ep_portable_reductions(ep_portable_scatter_add(ep_portable_isnan(model))))
