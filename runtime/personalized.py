"""Write the personalized model: backbone + tuned head as one plain inference ONNX graph."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ftedge.errors import RuntimeBackendError
from ftedge.runtime.bundle import Bundle
from ftedge.runtime.hashing import atomic_write_bytes
from ftedge.runtime.ort_backend import TrainableModel

HEAD_PREFIX = "head::"


def _onnx():  # noqa: ANN202 - onnx ships with onnxruntime-training (pinned 1.17.0)
    try:
        import onnx
        import onnx.compose
    except ImportError as exc:
        raise RuntimeBackendError(f"the onnx package is missing ({exc}); pip install 'ftedge[device]'") from exc
    return onnx


def merge(backbone_path: Path, head_path: Path, bundle: Bundle):  # noqa: ANN201 - onnx.ModelProto
    """Backbone graph + head inference graph, joined on the head inputs; inputs/outputs keep their names."""
    onnx = _onnx()
    backbone = onnx.load(str(backbone_path))
    head = onnx.compose.add_prefix(onnx.load(str(head_path)), HEAD_PREFIX)
    joins = {HEAD_PREFIX + s.name: s.name for s in bundle.head_inputs}
    out_name = bundle.output.name
    for node in head.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = joins.get(name, name)
        for i, name in enumerate(node.output):
            if name == HEAD_PREFIX + out_name:
                node.output[i] = out_name
    model_inputs = {vi.name: vi for vi in backbone.graph.input}
    head_inputs = {vi.name[len(HEAD_PREFIX):]: vi for vi in head.graph.input}
    inputs = []
    for spec in bundle.inputs:  # passthrough inputs feed the head directly
        vi = model_inputs.get(spec.name) or head_inputs.get(spec.name)
        if vi is not None:
            vi.name = spec.name
            inputs.append(vi)
    outputs = [o for o in head.graph.output if o.name == HEAD_PREFIX + out_name]
    for o in outputs:
        o.name = out_name
    graph = onnx.helper.make_graph(
        list(backbone.graph.node) + list(head.graph.node),
        f"{bundle.name}-personalized",
        inputs,
        outputs,
        list(backbone.graph.initializer) + list(head.graph.initializer),
    )
    opsets: dict[str, int] = {}
    for imp in list(backbone.opset_import) + list(head.opset_import):
        opsets[imp.domain] = max(opsets.get(imp.domain, 0), imp.version)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = min(max(backbone.ir_version, head.ir_version), 10)
    model.producer_name = "ftedge"
    return model


def write_personalized(bundle: Bundle, model: TrainableModel, out: Path, backbone_role: str = "backbone") -> None:
    """``out`` ← the model as trained (current parameters of ``model``), written atomically."""
    onnx = _onnx()
    with tempfile.TemporaryDirectory() as tmp:
        head = Path(tmp) / "head.onnx"
        model.export_inference(head, [bundle.output.name])
        if bundle.layout == "split":
            merged = merge(bundle.file(backbone_role), head, bundle)
            onnx.checker.check_model(merged)
            data = merged.SerializeToString()
        else:
            data = head.read_bytes()
    atomic_write_bytes(out, data)
