"""Training engines behind one interface, and which one a bundle and this box can use.

- ``portable`` (default): the bundle's ``step.onnx`` (forward, loss, backward and optimizer update in standard
  ONNX ops) run by plain ``onnxruntime`` on any execution provider; parameters and optimizer state stay
  OrtValues between steps; checkpoints are safetensors files.
- ``ort-training``: onnxruntime-training 1.19.2's artifacts (training/eval/optimizer graphs + checkpoint).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from ftedge.errors import BundleError, RuntimeBackendError, UsageError
from ftedge.bundle.loader import Bundle
from ftedge.bundle.manifest import ENGINE_ROLES
from ftedge.runtime.engines import ENGINES
from ftedge.runtime.engines import ort_backend
from ftedge.runtime.engines.ort_backend import has_training_api

ORT_TRAINING_ROLES = ENGINE_ROLES["ort-training"]


class Engine(Protocol):
    name: str

    def train_step(self, head_feeds: list[np.ndarray], labels: np.ndarray,
                   weights: np.ndarray | None = None) -> tuple[float, np.ndarray]: ...
    def eval_step(self, head_feeds: list[np.ndarray], labels: np.ndarray) -> tuple[float, np.ndarray]: ...
    def set_learning_rate(self, lr: float) -> None: ...
    def set_seed(self, seed: int) -> None: ...
    def save_checkpoint(self, path: str | Path, include_optimizer_state: bool = True) -> None: ...
    def parameters(self) -> dict[str, np.ndarray]: ...
    def export_inference(self, path: str | Path, output_names: Sequence[str]) -> None: ...
    def placements(self) -> dict[str, dict[str, Any]]: ...


def bundle_engines(bundle: Bundle) -> dict[str, dict[str, Any]]:
    """The engines a bundle carries (schema 1 bundles: ort-training only)."""
    if bundle.manifest.get("engines"):
        return dict(bundle.manifest["engines"])
    roles = bundle.manifest.get("roles") or {}
    if all(r in roles for r in ORT_TRAINING_ROLES):
        return {"ort-training": {"files": {r: roles[r] for r in ORT_TRAINING_ROLES}}}
    return {}


def available_engines() -> list[str]:
    """Engines this box can run: portable wherever onnxruntime imports; ort-training with onnxruntime-training."""
    if not ort_backend.is_installed():
        return []
    return ["portable", "ort-training"] if has_training_api() else ["portable"]


def resolve_engine(requested: str | None, bundle: Bundle) -> str:
    """The engine to train ``bundle`` with: ``auto`` prefers portable; a clear error when none fits."""
    requested = requested or "auto"
    if requested not in ("auto", *ENGINES):
        raise UsageError(f"--engine {requested!r}: use auto, portable or ort-training")
    carried = bundle_engines(bundle)
    here = available_engines()
    reexport = ("re-export it with this ftedge (`ftedge export …` writes the portable engine by default; "
                "`--engine all` on a host with onnxruntime-training writes both)")
    if requested == "auto":
        for name in ENGINES:
            if name in carried and name in here:
                return name
        if "portable" not in carried:
            raise BundleError(
                f"bundle {bundle.path} carries only the {', '.join(carried) or 'no'} engine, which this box cannot "
                f"run (onnxruntime {ort_backend.version()} has no training API): {reexport}, or install the "
                "ort-training engine: pip uninstall -y onnxruntime && pip install 'ftedge[ort-training]'")
        raise RuntimeBackendError("onnxruntime is not installed; pip install 'ftedge[device]'")
    if requested not in carried:
        raise BundleError(f"bundle {bundle.path} does not carry the {requested} engine (it has: "
                          f"{', '.join(carried) or 'none'}); {reexport}")
    if requested not in here:
        if requested == "ort-training":
            training_api_hint = (f"onnxruntime {ort_backend.version()} here has no training API: pip uninstall -y "
                                 "onnxruntime && pip install 'ftedge[ort-training]' (x86_64, CPython 3.10-3.12), "
                                 "or use --engine portable")
            raise RuntimeBackendError(f"--engine ort-training: {training_api_hint}")
        raise RuntimeBackendError("onnxruntime is not installed; pip install 'ftedge[device]'")
    return requested


def open_engine(name: str, bundle: Bundle, checkpoint: str | Path | None, providers: Sequence[str]) -> Engine:
    """Engine ``name`` (a key of :data:`ftedge.runtime.engines.ENGINES`) on ``bundle``, from ``checkpoint``; its
    training sessions on ``providers`` (the run's step providers)."""
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)(bundle, checkpoint, providers)
