"""Finalize the frozen backbone: ORT basic (portable) graph optimizations, optional int8."""

from __future__ import annotations

from pathlib import Path

import onnx

from ftedge.errors import ExportError
from ftedge.runtime.ort_backend import ort


def save_optimized(model: onnx.ModelProto, path: Path) -> None:
    """Constant-fold and simplify with ORT's provider-independent (basic) level."""
    raw = path.with_suffix(".raw.onnx")
    onnx.save(model, raw)
    so = ort().SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort().GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(path)
    try:
        ort().InferenceSession(str(raw), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot load the backbone graph: {exc}") from exc
    finally:
        raw.unlink(missing_ok=True)


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of MatMul weights (ORT's CPU ConvInteger rejects int8 weights)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
    except Exception as exc:
        raise ExportError(f"int8 quantization of the backbone failed: {exc}; export without --quantize-backbone") from exc
