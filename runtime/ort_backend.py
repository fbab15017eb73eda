"""The one module that talks to ONNX Runtime: inference sessions, the portable engine's step sessions
(plain ``onnxruntime``), and the training API of ``onnxruntime-training`` (the second engine).

``import onnxruntime.training`` imports torch (through ``training/optim``).
On the device we register a bare package object for ``onnxruntime.training``
before importing ``onnxruntime.training.api``, so training runs with no torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ftedge.errors import RuntimeBackendError

_INSTALL_HINT = "install the device extra: pip install 'ftedge[device]' (plain onnxruntime; onnxruntime-gpu on CUDA boxes)"
_TRAINING_HINT = (
    "the ort-training engine needs onnxruntime-training 1.19.2 (x86_64 Linux, CPython 3.10-3.12) installed "
    "instead of onnxruntime: pip uninstall -y onnxruntime && pip install 'ftedge[ort-training]'; "
    "or use the portable engine (--engine portable)"
)


_ORTMODULE = "onnxruntime.training.ortmodule"


def ort() -> types.ModuleType:
    """The ``onnxruntime`` module, or a clear error saying how to install it."""
    if "onnxruntime" not in sys.modules:
        # onnxruntime's build-info check imports onnxruntime.training.ortmodule, which imports torch when
        # torch is installed (0.1-1.7 s, and defeats the torch-free training import below). ftedge never
        # uses ORTModule: hide it for that first import only.
        sys.modules.setdefault(_ORTMODULE, None)
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeBackendError(f"onnxruntime is not installed ({exc}); {_INSTALL_HINT}") from exc
    finally:
        if _ORTMODULE in sys.modules and sys.modules[_ORTMODULE] is None:
            del sys.modules[_ORTMODULE]
    onnxruntime.set_default_logger_severity(3)
    return onnxruntime


def training_api() -> types.ModuleType:
    """``onnxruntime.training.api`` imported without importing torch."""
    rt = ort()
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


def has_training_api() -> bool:
    """Whether this onnxruntime build is onnxruntime-training (checked without importing it)."""
    try:
        ort()
    except RuntimeBackendError:
        return False
    if "onnxruntime.training" in sys.modules:  # training_api() registered its bare package (no __spec__)
        return True
    return importlib.util.find_spec("onnxruntime.training") is not None


def available_providers() -> list[str]:
    return list(ort().get_available_providers())


def resolve_providers(requested: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Requested execution providers that this ORT build has, CPU always last; plus the unavailable ones."""
    have = available_providers()
    wanted = [p.strip() for p in (requested or []) if p.strip()]
    wanted = [p if p.endswith("ExecutionProvider") else f"{p}ExecutionProvider" for p in wanted]
    chosen = [p for p in wanted if p in have and p != "CPUExecutionProvider"]
    missing = [p for p in wanted if p not in have]
    return chosen + ["CPUExecutionProvider"], missing


def set_seed(seed: int) -> None:
    """Seed ORT's random generators (dropout in training graphs)."""
    ort().set_seed(int(seed))


def _session_options(threads: int | None) -> Any:
    so = ort().SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return so


class InferenceModel:
    """A plain ``InferenceSession`` with name-keyed inputs and outputs."""

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        rt = ort()
        try:
            self.session = rt.InferenceSession(
                str(path), sess_options=_session_options(threads), providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as exc:  # ORT raises its own exception types
            raise RuntimeBackendError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = list(self.session.get_providers())

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs or self.output_names)
        values = self.session.run(names, {k: feeds[k] for k in self.input_names})
        return dict(zip(names, values))


class StepSession:
    """A graph run step after step with its state kept as OrtValues on the session's device.

    ``state`` maps input names to OrtValues; each run feeds them plus the batch, and the outputs named
    ``<input>_out`` replace them, with no numpy round trip.
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        rt = ort()
        try:
            self.session = rt.InferenceSession(
                str(path), sess_options=_session_options(threads), providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as exc:
            raise RuntimeBackendError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        self.providers = list(self.session.get_providers())
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        # initializers that are also graph inputs: bound when given, their stored value otherwise
        self.overridable = [i.name for i in self.session.get_overridable_initializers()]
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def to_device(self, value: np.ndarray) -> Any:
        return ort().OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), self.device, 0)

    def run(self, state: dict[str, Any], feeds: dict[str, np.ndarray], fetch: Sequence[str]) -> dict[str, np.ndarray]:
        """Run once; ``state`` is updated in place from the ``_out`` outputs; returns ``fetch`` as numpy."""
        binding = self.session.io_binding()
        for name in self.overridable:
            if name in state:
                binding.bind_ortvalue_input(name, state[name])
        for name in self.input_names:
            if name in state:
                binding.bind_ortvalue_input(name, state[name])
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(feeds[name]))
        for name in self.output_names:
            binding.bind_output(name, "cpu" if name in fetch else self.device)
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:
            raise RuntimeBackendError(f"ONNX Runtime failed to run a step: {exc}") from exc
        outs = dict(zip(self.output_names, binding.get_outputs()))
        for name in state:
            if name + "_out" in outs:
                state[name] = outs[name + "_out"]
        return {name: outs[name].numpy() for name in fetch}


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


def quiet_ort_env() -> None:
    """Silence ORT's INFO logging for this process (used around artifact generation)."""
    os.environ.setdefault("ORT_LOG_LEVEL", "ERROR")
    ort().set_default_logger_severity(3)
