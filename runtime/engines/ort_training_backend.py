"""The adapter for the ort-training engine: ``onnxruntime-training`` 1.19.2's training API on the device
(``TrainableModel``) and its artifact generator on the host (``generate_artifacts``). See ARCHITECTURE.md,
"Adapters"; plain-onnxruntime calls live in ``ort_backend``.

``import onnxruntime.training`` imports torch (through ``training/optim``). On the device we register a bare
package object for ``onnxruntime.training`` before importing ``onnxruntime.training.api``, so training runs
with no torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Sequence

import numpy as np

from ftedge.errors import RuntimeBackendError
from ftedge.runtime.engines.ort_backend import _onnxruntime

_TRAINING_HINT = (
    "the ort-training engine needs onnxruntime-training 1.19.2 (x86_64 Linux, CPython 3.10-3.12) installed "
    "instead of onnxruntime: pip uninstall -y onnxruntime && pip install 'ftedge[ort-training]'; "
    "or use the portable engine (--engine portable)"
)

def training_api() -> types.ModuleType:
    """``onnxruntime.training.api`` imported without importing torch."""
    rt = _onnxruntime()
    if "onnxruntime.training.api" in sys.modules:
        return sys.modules["onnxruntime.training.api"]
    if "onnxruntime.training" not in sys.modules:
        spec = importlib.util.find_spec("onnxruntime.training")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeBackendError(f"onnxruntime {rt.__version__} has no training support; {_TRAINING_HINT}")
        pkg = types.ModuleType("onnxruntime.training")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__file__ = spec.origin
        pkg.__package__ = "onnxruntime.training"
        pkg.__spec__ = spec
        sys.modules["onnxruntime.training"] = pkg
    try:
        return importlib.import_module("onnxruntime.training.api")
    except ImportError as exc:
        raise RuntimeBackendError(f"cannot load onnxruntime.training.api ({exc}); {_TRAINING_HINT}") from exc


class TrainableModel:
    """Training artifacts (training/eval/optimizer graphs + checkpoint) as one object."""

    def __init__(
        self,
        training: str | Path,
        eval_: str | Path,
        optimizer: str | Path,
        checkpoint: str | Path,
        device: str = "cpu",
    ) -> None:
        api = training_api()
        try:
            self.state = api.CheckpointState.load_checkpoint(str(checkpoint))
            self.module = api.Module(str(training), self.state, str(eval_), device=device)
            self.optimizer = api.Optimizer(str(optimizer), self.module)
        except Exception as exc:
            raise RuntimeBackendError(f"ONNX Runtime cannot load the training artifacts ({exc})") from exc
        self.input_names = list(self.module.input_names())
        self.output_names = list(self.module.output_names())

    def train_step(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Forward + backward + optimizer step; returns the training graph outputs (loss first)."""
        self.module.train()
        out = self.module(*inputs)
        self.optimizer.step()
        self.module.lazy_reset_grad()
        return tuple(out) if isinstance(out, (list, tuple)) else (out,)

    def eval_step(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Forward of the eval graph (dropout off); returns its outputs (loss first)."""
        self.module.eval()
        out = self.module(*inputs)
        return tuple(out) if isinstance(out, (list, tuple)) else (out,)

    def set_learning_rate(self, lr: float) -> None:
        self.optimizer.set_learning_rate(float(lr))

    def learning_rate(self) -> float:
        return float(self.optimizer.get_learning_rate())

    def save_checkpoint(self, path: str | Path, include_optimizer_state: bool = True) -> None:
        training_api().CheckpointState.save_checkpoint(self.state, str(path), include_optimizer_state)

    def parameters(self) -> dict[str, np.ndarray]:
        return {name: np.array(p.data) for name, p in self.state.parameters}

    def export_inference(self, path: str | Path, output_names: Sequence[str]) -> None:
        """Write the eval graph with the current parameters as a plain inference model."""
        self.module.export_model_for_inferencing(str(path), list(output_names))


def generate_artifacts(model: object, requires_grad: Sequence[str], frozen_params: Sequence[str], loss: str,
                       optimizer: str, out_dir: str | Path, additional_output_names: Sequence[str]) -> None:
    """onnxruntime-training's ``generate_artifacts`` (training/eval/optimizer graphs + checkpoint in ``out_dir``)
    with ftedge's loss and optimizer names. ORT's own exceptions pass through: the caller turns them into
    a GradientError naming the operator."""
    _onnxruntime().set_default_logger_severity(3)
    os.environ.setdefault("ORT_LOG_LEVEL", "ERROR")
    from onnxruntime.training import artifacts

    losses = {"cross-entropy": artifacts.LossType.CrossEntropyLoss, "bce": artifacts.LossType.BCEWithLogitsLoss,
              "mse": artifacts.LossType.MSELoss, "l1": artifacts.LossType.L1Loss}
    artifacts.generate_artifacts(
        model, requires_grad=list(requires_grad), frozen_params=list(frozen_params), loss=losses[loss],
        optimizer=artifacts.OptimType.AdamW if optimizer == "adamw" else artifacts.OptimType.SGD,
        artifact_directory=os.fspath(out_dir), additional_output_names=list(additional_output_names))
