"""Finalize the frozen backbone: ORT basic (portable) graph optimizations, optional int8."""

from __future__ import annotations

from pathlib import Path

import onnx

from ftedge.errors import ExportError, RuntimeBackendError
from ftedge.export.graph_io import quiet_export
from ftedge.runtime.engines import ort_backend


def save_optimized(model: onnx.ModelProto, path: Path) -> None:
    """Constant-fold and simplify with ORT's provider-independent (basic) level."""
    raw = path.with_suffix(".raw.onnx")
    onnx.save(model, raw)
    try:
        ort_backend.optimize_basic(raw, path)
    except RuntimeBackendError as exc:
        raise ExportError(f"ONNX Runtime cannot load the backbone graph: {exc}") from exc
    finally:
        raw.unlink(missing_ok=True)
    _rename_inlined(path)


_INLINED = "_inlfunc_"


def _rename_inlined(path: Path) -> None:
    """ORT names the tensors of function ops it inlines (HardSwish, …) ``_inlfunc_<op>_<var>``, the same for
    every graph: in the personalized model (backbone + head) a head's HardSwish inlined at load time would
    then redefine a backbone tensor. Give the backbone's its own prefix."""
    model = onnx.load(str(path))
    if not any(o.startswith(_INLINED) for n in model.graph.node for o in n.output):
        return
    rename = lambda name: "backbone" + name if name.startswith(_INLINED) else name  # noqa: E731
    for node in model.graph.node:
        node.input[:] = [rename(i) for i in node.input]
        node.output[:] = [rename(o) for o in node.output]
        node.name = rename(node.name)
    for vi in model.graph.value_info:
        vi.name = rename(vi.name)
    onnx.save(model, str(path))


def quantize_int8(src: Path, dst: Path, exclude_prefixes: tuple[str, ...] = (), conv: bool = False) -> dict[str, int]:
    """Dynamic int8 quantization of the backbone's weights: MatMul with int8 weights and, with ``conv``,
    Conv with uint8 weights (ORT's CPU ConvInteger has no int8-weight kernel; dynamic ConvInteger is
    usually *slower* than fp32 Conv on CPU — it saves size, not time). Nodes whose names start with one of
    ``exclude_prefixes`` (e.g. an in-graph audio frontend, whose DFT basis needs full precision) stay fp32.
    Returns how many nodes of each quantized op type the result holds.
    """
    names = [n.name for n in onnx.load(str(src)).graph.node]
    exclude = [n for n in names if n.startswith(exclude_prefixes)] if exclude_prefixes else []
    mid = dst.with_suffix(".matmul.onnx")
    try:
        ort_backend.quantize_weights(src, mid, ["MatMul"], signed=True, exclude=exclude)
        if conv:
            ort_backend.quantize_weights(mid, dst, ["Conv"], signed=False, exclude=exclude)
        else:
            mid.replace(dst)
    except (RuntimeBackendError, OSError) as exc:
        raise ExportError(f"int8 quantization of the backbone failed: {exc}; export without --quantize-backbone") from exc
    finally:
        mid.unlink(missing_ok=True)
    ops: dict[str, int] = {}
    for node in onnx.load(str(dst)).graph.node:
        if node.op_type in ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"):
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return ops


# The ops the static int8 backbone quantizes: the weight-heavy ones NPUs fuse into int8 kernels. Quantizing every op
# ORT can (Add, Mul, LayerNormalization, Gather too) cut MiniLM's embedding agreement with fp32 from cosine 0.87 to
# 0.68 (docs/execution-providers.md); the rest stays fp32 between QDQ pairs.
QDQ_OPS = ("Conv", "MatMul", "Gemm")


def quantize_qdq(src: Path, dst: Path, calibration: list[dict], exclude_prefixes: tuple[str, ...] = (),
                 method: str = "minmax") -> dict[str, int]:
    """Static int8 quantization in QDQ form (per-channel int8 weights, uint8 activations calibrated on
    ``calibration``): QuantizeLinear/DequantizeLinear pairs that NPU-class EPs (OpenVINO, QNN, VSI) fuse into int8
    kernels, where dynamic ConvInteger is not taken. Nodes whose names start with one of ``exclude_prefixes``
    stay fp32. Returns how many nodes of each op type read a dequantized weight (the quantized ops)."""
    names = [n.name for n in onnx.load(str(src)).graph.node]
    exclude = [n for n in names if n.startswith(exclude_prefixes)] if exclude_prefixes else []
    try:
        quiet_export(lambda: ort_backend.quantize_static_qdq(src, dst, calibration, QDQ_OPS, exclude=exclude,
                                                             method=method))
    except (RuntimeBackendError, OSError) as exc:
        raise ExportError(f"static int8 (QDQ) quantization of the backbone failed: {exc}; try --quantize-backbone "
                          "int8, or export without --quantize-backbone") from exc
    graph = onnx.load(str(dst)).graph
    weights = {i.name for i in graph.initializer}
    # a DequantizeLinear of an initializer is a quantized weight; the node reading it is a quantized op
    dq_weights = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights}
    ops: dict[str, int] = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" and any(i in dq_weights for i in node.input):
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return ops
