"""Build ONNX Runtime training artifacts for the trainable graph."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from pathlib import Path

import onnx

from ftedge.errors import ExportError, GradientError
from ftedge.export.onnx_export import add_training_outputs
from ftedge.runtime.engines import ort_training_backend

# Ops ORT 1.19.2 has no gradient builder for (checked on the trainable path).
NO_GRADIENT_OPS = {"InstanceNormalization", "GroupNormalization", "HardSwish", "CastLike"}
# Its LSTMGrad / GRUGrad kernels run the forward direction only (lstm_io_utils.cc: "only supports the forward
# direction for now"): a bidirectional or reverse recurrent layer fails when the artifacts load.
FORWARD_ONLY_OPS = {"LSTM", "GRU", "RNN"}

ROLE_FILES = {
    "training": "training_model.onnx",
    "eval": "eval_model.onnx",
    "optimizer": "optimizer_model.onnx",
    "checkpoint": "checkpoint",
}


def _module_of(node: onnx.NodeProto) -> str:
    """TorchScript names nodes ``/enc/layers.1/norm/LayerNormalization``: recover ``enc.layers.1.norm``."""
    parts = [p for p in (node.name or "").split("/") if p][:-1]
    if parts and parts[0] == "model":  # the exporter's wrapper (ftedge.export.wrapper)
        parts = parts[1:]
    return ".".join(parts) or "(top level)"


def check_differentiable(model: onnx.ModelProto, trainable: list[str]) -> None:
    """Fail early, naming op and module, when a trainable path needs a gradient ORT lacks."""
    tainted = set(trainable)
    bad: list[str] = []
    for node in model.graph.node:
        if any(i in tainted for i in node.input):
            tainted.update(node.output)
            if node.op_type in NO_GRADIENT_OPS:
                bad.append(f"{node.op_type} in module {_module_of(node)}")
            direction = next((a.s.decode() for a in node.attribute if a.name == "direction"), "forward")
            if node.op_type in FORWARD_ONLY_OPS and direction != "forward":
                bad.append(f"{node.op_type} (direction={direction}) in module {_module_of(node)}")
    if bad:
        raise GradientError(
            "ONNX Runtime training has no gradient for: " + "; ".join(bad)
            + ". Freeze those modules (choose --trainable parameters after them) or replace the layer"
        )


@contextlib.contextmanager
def _native_stderr_silenced():
    """The gradient builder logs INFO lines from C++ straight to fd 2, ignoring ORT's severity."""
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            logging.getLogger(__name__).debug("ORT artifact generation log:\n%s", sink.read().decode(errors="replace")[-4000:])


def build_artifacts(
    model: onnx.ModelProto,
    trainable: list[str],
    frozen: list[str],
    loss: str,
    optimizer: str,
    output_name: str,
    out_dir: Path,
) -> dict[str, Path]:
    """Write training/eval/optimizer graphs and the checkpoint to ``out_dir``.

    The training and eval graphs also return the model output (after the loss)
    so the runtime gets predictions from the same pass as the loss.
    """
    add_training_outputs(model)
    check_differentiable(model, trainable)
    in_graph = {i.name for i in model.graph.initializer}
    out_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # generate_artifacts logs at INFO through the root logger
    try:
        with contextlib.redirect_stdout(io.StringIO()), _native_stderr_silenced():
            ort_training_backend.generate_artifacts(
                model, requires_grad=trainable, frozen_params=[f for f in frozen if f in in_graph], loss=loss,
                optimizer=optimizer, out_dir=out_dir, additional_output_names=[output_name])
    except Exception as exc:
        msg = str(exc)
        ops = sorted(set(re.findall(r"(?:op|Op|operator)\W+([A-Z][A-Za-z]+)", msg)))
        hint = f" (operator(s): {', '.join(ops)})" if ops else ""
        raise GradientError(
            f"ONNX Runtime could not build the training graph{hint}: {msg.splitlines()[0] if msg else type(exc).__name__}. "
            "Freeze the layers that use that operator (narrow --trainable) or try --opset 16"
        ) from exc
    finally:
        root.setLevel(level)
    paths = {role: out_dir / fname for role, fname in ROLE_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise ExportError(f"ONNX Runtime did not write {', '.join(missing)}; re-run with --debug")
    _fix_eval_batchnorm(paths["eval"])
    return paths


def _fix_eval_batchnorm(path: Path) -> int:
    """generate_artifacts turns a trainable (training-mode) BatchNormalization into ``training_mode=0`` in the eval
    graph but keeps its running-statistics outputs, which opset 15+ forbids ("This number of op outputs should be 1
    when Training_mode = False"): the eval graph would not load. Drop those (unused) outputs."""
    model = onnx.load(os.fspath(path))
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    fixed = 0
    for node in model.graph.node:
        mode = next((a.i for a in node.attribute if a.name == "training_mode"), 0)
        if node.op_type == "BatchNormalization" and not mode and len(node.output) > 1:
            if any(o in used for o in node.output[1:]):
                raise ExportError(f"the eval graph reads the running statistics of {node.name}; export with "
                                  "--engine portable")
            del node.output[1:]
            fixed += 1
    if fixed:
        onnx.save(model, os.fspath(path))
    return fixed
