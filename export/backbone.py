"""Finalize the frozen backbone: ORT basic (portable) graph optimizations, optional int8."""

from __future__ import annotations

from pathlib import Path

import onnx

from ftedge.errors import ExportError, RuntimeBackendError
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
