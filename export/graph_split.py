"""Split an exported graph into a frozen backbone and a trainable head.

The head is every node that depends on a trainable parameter; the backbone is
everything that computes the head's other inputs. The tensors crossing the
cut ("embeddings") must carry the batch on one axis so the device can run the
backbone once per sample and cache the result; a crossing tensor without a
batch axis (e.g. a ``Shape`` feeding a ``Reshape``) pulls its producer into
the head until every crossing tensor does. Parameter-free constant subgraphs
are copied to whichever side uses them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ftedge.errors import ExportError
from ftedge.export.onnx_export import value_info
from ftedge.runtime.manifest import BATCH, TensorSpec
from ftedge.runtime.ort_backend import ort


_LAYOUT_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten"}


@dataclass
class Split:
    backbone: onnx.ModelProto
    head: onnx.ModelProto
    head_inputs: list[TensorSpec]  # meta: {"source": "backbone"|"input"}


def random_feeds(specs: list[TensorSpec], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random (synthetic) inputs for ``specs``; integer inputs within their ``value_range``."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for s in specs:
        shape = s.concrete_shape(batch)
        if s.dtype.startswith("float"):
            feeds[s.name] = rng.standard_normal(shape).astype(s.dtype)
        elif s.dtype == "bool":
            feeds[s.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            lo, hi = s.value_range or (0, 2)
            feeds[s.name] = rng.integers(lo, hi, shape).astype(s.dtype)
    return feeds


def measure_tensors(model: onnx.ModelProto, specs: list[TensorSpec], names: list[str]) -> dict[int, dict[str, np.ndarray]]:
    """Run ``model`` at batch sizes 2 and 3 with ``names`` exposed as outputs."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in existing)
    so = ort().SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort().GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort().InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out: dict[int, dict[str, np.ndarray]] = {}
    for batch in (2, 3):
        values = sess.run(names, random_feeds(specs, batch, seed=batch))
        out[batch] = dict(zip(names, values))
    return out


def _batch_axis(a: np.ndarray, b: np.ndarray) -> int | None:
    if a.ndim != b.ndim:
        return None
    diff = [i for i in range(a.ndim) if a.shape[i] != b.shape[i]]
    if len(diff) == 1 and a.shape[diff[0]] == 2 and b.shape[diff[0]] == 3:
        return diff[0]
    return None


def split_graph(model: onnx.ModelProto, trainable: list[str], inputs: list[TensorSpec]) -> Split | None:
    """Cut ``model`` at the first trainable parameter; ``None`` when nothing is left to freeze."""
    graph = model.graph
    nodes = list(graph.node)
    inits = {i.name: i for i in graph.initializer}
    input_names = [s.name for s in inputs]
    producer = {out: idx for idx, n in enumerate(nodes) for out in n.output if out}

    tainted, input_dep = set(trainable), set(input_names)
    head: set[int] = set()
    static: set[int] = set()
    for idx, n in enumerate(nodes):
        ins = [i for i in n.input if i]
        # Training-mode Dropout (a trainable module's, exported with its training_mode input) is random:
        # it must run in the head's training graph, never in the cached inference backbone.
        if any(i in tainted for i in ins) or (n.op_type == "Dropout" and len(n.input) >= 3 and n.input[2]):
            head.add(idx)
            tainted.update(n.output)
        if any(i in input_dep for i in ins):
            input_dep.update(n.output)
        elif idx not in head:
            static.add(idx)
    if not head:
        raise ExportError("no node uses a trainable parameter; check --head / --trainable")

    def static_closure(seed: set[int]) -> set[int]:
        todo, seen = list(seed), set()
        while todo:
            idx = todo.pop()
            if idx in seen:
                continue
            seen.add(idx)
            todo.extend(producer[i] for i in nodes[idx].input if i in producer and producer[i] in static)
        return seen

    shapes = measure_tensors(model, inputs, sorted({o for n in nodes for o in n.output if o and o in input_dep}))
    while True:
        head_all = head | static_closure({producer[i] for idx in head for i in nodes[idx].input if i in producer and producer[i] in static})
        boundary: list[str] = []
        for idx in sorted(head_all):
            for i in nodes[idx].input:
                if not i or i in inits or i in boundary:
                    continue
                if i in producer and producer[i] in head_all:
                    continue
                boundary.append(i)
        movers = [producer[t] for t in boundary if t in producer and _batch_axis(shapes[2][t], shapes[3][t]) is None]
        # A pure layout op over another crossing tensor would only cache the same values twice.
        movers += [
            producer[t] for t in boundary
            if t in producer and nodes[producer[t]].op_type in _LAYOUT_OPS and nodes[producer[t]].input[0] in boundary
        ]
        if not movers:
            break
        head.update(movers)

    crossing = [t for t in boundary if t not in input_names]
    if not crossing:
        return None  # the trainable part starts at the inputs: nothing to cache

    head_inputs: list[TensorSpec] = []
    renames: dict[str, str] = {}
    for k, t in enumerate(boundary):
        if t in input_names:
            spec = next(s for s in inputs if s.name == t)
            head_inputs.append(TensorSpec(t, spec.dtype, list(spec.shape), meta={"source": "input"}))
            continue
        a, b = shapes[2][t], shapes[3][t]
        axis = _batch_axis(a, b)
        shape: list = list(a.shape)
        shape[axis] = BATCH
        new = f"embedding_{k}"
        renames[t] = new
        head_inputs.append(TensorSpec(new, str(a.dtype), shape, meta={"source": "backbone", "tensor": t}))

    # Backbone: every non-head node needed for the crossing tensors.
    need, todo = set(), [producer[t] for t in crossing]
    while todo:
        idx = todo.pop()
        if idx in need:
            continue
        need.add(idx)
        todo.extend(producer[i] for i in nodes[idx].input if i in producer)
    if need & head:
        raise ExportError("internal: backbone and head overlap; export with --no-split")

    def build(node_ids: set[int], g_inputs, g_outputs, name: str, extra: list[onnx.NodeProto]) -> onnx.ModelProto:
        chosen = []
        for idx in sorted(node_ids):
            dst = onnx.NodeProto()
            dst.CopyFrom(nodes[idx])
            for j, v in enumerate(dst.input):
                if v in renames and name == "head":
                    dst.input[j] = renames[v]
            chosen.append(dst)
        chosen.extend(extra)
        used = {i for n in chosen for i in n.input}
        g = helper.make_graph(chosen, name, g_inputs, g_outputs, [inits[i] for i in inits if i in used])
        m = helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version)
        m.producer_name, m.producer_version = model.producer_name, model.producer_version
        return m

    graph_inputs = {vi.name: vi for vi in graph.input}
    bb_inputs = sorted({i for idx in need for i in nodes[idx].input if i in graph_inputs}, key=input_names.index)
    backbone = build(
        need,
        [graph_inputs[i] for i in bb_inputs],
        [value_info(renames[t], shapes[2][t].dtype, _sym(s.shape)) for t, s in zip(boundary, head_inputs) if t in renames],
        "backbone",
        [helper.make_node("Identity", [t], [new], name=f"ftedge_{new}") for t, new in renames.items()],
    )
    head_model = build(
        head_all,
        [value_info(s.name, np.dtype(s.dtype), _sym(s.shape)) for s in head_inputs],
        list(graph.output),
        "head",
        [],
    )
    return Split(backbone=backbone, head=head_model, head_inputs=head_inputs)


def _sym(shape: list) -> list:
    return [d if d != BATCH else "batch" for d in shape]
