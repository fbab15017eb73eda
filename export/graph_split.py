"""Split an exported graph into a frozen backbone and a trainable head.

The head is every node that depends on a trainable parameter; the backbone is
everything that computes the head's other inputs. The tensors crossing the
cut ("embeddings") are cached per sample on the device, so each must be a
*per-sample* function of the inputs: carry the batch on one axis, and give
the same values for a sample whether the backbone ran on it alone or in a
batch with others (checked by running the graph on a batch and on its pieces).
A crossing tensor that is not (a ``Shape`` feeding a ``Reshape``, the
``arange(batch)`` row index of a decoder's last-token pooling) pulls its
producer into the head until every crossing tensor is. Weight-free nodes the
frozen part needs too (sequence-length arithmetic, rotary tables, masks) are
then computed on both sides; a ``Shape`` pulled into the head reads an
equally-shaped crossing tensor instead of caching one more tensor.
Parameter-free constant subgraphs are copied to whichever side uses them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ftedge.errors import ExportError
from ftedge.export.onnx_export import value_info
from ftedge.bundle.manifest import BATCH, TensorSpec
from ftedge.runtime.engines.ort_backend import probe_session


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


def _session(model: onnx.ModelProto, names: list[str]):  # noqa: ANN202
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in existing)
    return probe_session(probe.SerializeToString())


def measure_tensors(model: onnx.ModelProto, specs: list[TensorSpec], names: list[str]) -> dict[int, dict[str, np.ndarray]]:
    """Run ``model`` at batch sizes 2 and 3 with ``names`` exposed as outputs."""
    sess = _session(model, names)
    out: dict[int, dict[str, np.ndarray]] = {}
    for batch in (2, 3):
        values = sess.run(names, random_feeds(specs, batch, seed=batch))
        out[batch] = dict(zip(names, values))
    return out


def not_per_sample(model: onnx.ModelProto, specs: list[TensorSpec], axes: dict[str, int]) -> set[str]:
    """Tensors (name -> batch axis) whose values for a sample depend on the other samples of the batch.

    Runs a batch of 3 whole and as pieces of 1 and 2 (the device embeds in chunks and caches per sample): a
    per-sample tensor, concatenated over the pieces, equals the whole-batch one.
    """
    names = sorted(axes)
    if not names:
        return set()
    sess = _session(model, names)
    feeds = random_feeds(specs, 3, seed=11)
    whole = dict(zip(names, sess.run(names, feeds)))
    pieces = [dict(zip(names, sess.run(names, {k: v[sl] for k, v in feeds.items()})))
              for sl in (slice(0, 1), slice(1, 3))]
    bad = set()
    for n in names:
        try:
            joined = np.concatenate([p[n] for p in pieces], axis=axes[n])
        except ValueError:
            bad.add(n)
            continue
        if joined.shape != whole[n].shape:
            bad.add(n)
            continue
        if not _close(joined.astype(np.float64), whole[n].astype(np.float64)):
            bad.add(n)
    return bad


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal within 1e-4 of ``b``'s largest finite magnitude, with NaN and +-inf (attention masks) in the same
    places: an infinite entry must not make the scale, and so the tolerance, infinite."""
    finite = np.isfinite(b)
    if not (np.array_equal(np.isfinite(a), finite) and np.array_equal(np.isnan(a), np.isnan(b))
            and np.array_equal(a[np.isinf(b)], b[np.isinf(b)])):
        return False
    if not finite.any():
        return True
    scale = max(1.0, float(np.abs(b[finite]).max()))  # relative to the tensor's own scale
    return float(np.abs(a[finite] - b[finite]).max()) <= 1e-4 * scale


def _batch_axis(a: np.ndarray, b: np.ndarray) -> int | None:
    if a.ndim != b.ndim:
        return None
    diff = [i for i in range(a.ndim) if a.shape[i] != b.shape[i]]
    if len(diff) == 1 and a.shape[diff[0]] == 2 and b.shape[diff[0]] == 3:
        return diff[0]
    return None


def split_graph(model: onnx.ModelProto, trainable: list[str], inputs: list[TensorSpec]) -> Split | None:
    """Cut ``model`` at the first trainable parameter; ``None`` when nothing is left to freeze."""
    model = _merge_duplicates(model)
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
    axes = {t: ax for t in shapes[2] if (ax := _batch_axis(shapes[2][t], shapes[3][t])) is not None}
    shared = not_per_sample(model, inputs, axes)  # batch-aligned, but mixes samples: never cached
    trained = set(head)  # nodes that use a trainable parameter: the backbone must not need any of them
    shape_src: dict[int, str] = {}  # a Shape node pulled into the head -> the crossing tensor it reads instead

    def node_inputs(idx: int) -> list[str]:
        ins = list(nodes[idx].input)
        if idx in shape_src:
            ins[0] = shape_src[idx]
        return ins

    def same_shape(a: str, b: str) -> bool:
        return all(shapes[k][a].shape == shapes[k][b].shape for k in (2, 3)) if a in shapes[2] and b in shapes[2] \
            else False

    while True:
        head_all = head | static_closure({producer[i] for idx in head for i in node_inputs(idx)
                                          if i in producer and producer[i] in static})
        boundary: list[str] = []
        for idx in sorted(head_all):
            for i in node_inputs(idx):
                if not i or i in inits or i in boundary:
                    continue
                if i in producer and producer[i] in head_all:
                    continue
                boundary.append(i)
        crossing_ok = [t for t in boundary if t in input_names or (t in axes and t not in shared)]
        movers = [producer[t] for t in boundary if t in producer and (t not in axes or t in shared)]
        # A pure layout op over another crossing tensor would only cache the same values twice.
        movers += [
            producer[t] for t in boundary
            if t in producer and nodes[producer[t]].op_type in _LAYOUT_OPS and nodes[producer[t]].input[0] in boundary
        ]
        # A tensor crossing only to have its shape read: read an equally-shaped crossing tensor's shape instead.
        readers = {t: [idx for idx in head_all if t in node_inputs(idx)] for t in boundary if t not in input_names}
        shape_only = {t for t, users in readers.items() if users and all(nodes[u].op_type == "Shape" for u in users)}
        substituted = False
        for t in sorted(shape_only):
            alt = next((u for u in crossing_ok if u in readers and u not in shape_only and same_shape(u, t)), None)
            if alt is not None:
                shape_src.update({u: alt for u in readers[t]})
                substituted = True
        movers = [m for m in movers if m not in head]
        if not movers and not substituted:
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
    if need & trained:
        raise ExportError("internal: the frozen backbone needs a tensor computed from trainable parameters; "
                          "export with --no-split")

    def build(node_ids: set[int], g_inputs, g_outputs, name: str, extra: list[onnx.NodeProto]) -> onnx.ModelProto:
        chosen = []
        for idx in sorted(node_ids):
            dst = onnx.NodeProto()
            dst.CopyFrom(nodes[idx])
            if name == "head" and idx in shape_src:
                dst.input[0] = shape_src[idx]
            for j, v in enumerate(dst.input):
                if v in renames and name == "head":
                    dst.input[j] = renames[v]
            chosen.append(dst)
        chosen = _topological(chosen + extra)
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


def _merge_duplicates(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` where a node computing exactly what an earlier one computes (same op, inputs and
    attributes; e.g. the two ``Cast`` of an RMSNorm input) is dropped and its readers read the earlier one's
    output, so the cut does not cache one tensor twice. Random ops are never merged."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph_outputs = {o.name for o in out.graph.output}
    seen: dict[tuple, list[str]] = {}
    alias: dict[str, str] = {}
    kept: list[onnx.NodeProto] = []
    for node in out.graph.node:
        for j, name in enumerate(node.input):
            if name in alias:
                node.input[j] = alias[name]
        key = (node.domain, node.op_type, tuple(node.input),
               tuple(a.SerializeToString() for a in sorted(node.attribute, key=lambda a: a.name)))
        random = node.op_type.startswith("Random") or node.op_type in ("Dropout", "Multinomial", "Bernoulli")
        earlier = seen.get(key)
        if not random and earlier is not None and len(earlier) == len(node.output) \
                and all(e or not o for o, e in zip(node.output, earlier)) \
                and not graph_outputs.intersection(node.output):
            alias.update({o: e for o, e in zip(node.output, earlier) if o})
            continue
        if not random:
            seen.setdefault(key, list(node.output))
        kept.append(node)
    if alias:
        del out.graph.node[:]
        out.graph.node.extend(kept)
    return out


def _topological(chosen: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``chosen`` reordered so every node follows the producers of its inputs (stable otherwise)."""
    made = {o: k for k, n in enumerate(chosen) for o in n.output if o}
    done: set[int] = set()
    order: list[onnx.NodeProto] = []

    def visit(k: int) -> None:
        stack = [(k, False)]
        while stack:
            j, expanded = stack.pop()
            if j in done:
                continue
            if expanded:
                done.add(j)
                order.append(chosen[j])
                continue
            stack.append((j, True))
            stack.extend((made[i], False) for i in reversed(chosen[j].input) if i in made and made[i] not in done)

    for k in range(len(chosen)):
        visit(k)
    return order


def _sym(shape: list) -> list:
    return [d if d != BATCH else "batch" for d in shape]
