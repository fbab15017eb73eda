"""The ort-training engine: onnxruntime-training 1.19.2's artifacts (training/eval/optimizer graphs +
checkpoint) behind the engine interface (x86_64, CPython <= 3.12)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ftedge.bundle.loader import Bundle
from ftedge.errors import UsageError
from ftedge.runtime.engines import ort_backend
from ftedge.runtime.engines.engine import bundle_engines

# onnxruntime-training's Module runs on "cpu" or "cuda" only: a step on any other EP trains on the CPU (reported).
_TRAINING_API_DEVICE = {"CUDAExecutionProvider": "cuda"}


class OrtTrainingEngine:
    """onnxruntime-training 1.19.2's artifacts (``TrainableModel``), behind the engine interface."""

    name = "ort-training"

    def __init__(self, bundle: Bundle, checkpoint: str | Path | None = None, providers: Sequence[str] = (),
                 device: str | None = None) -> None:
        device = device or next((_TRAINING_API_DEVICE[p] for p in providers if p in _TRAINING_API_DEVICE), "cpu")
        self.requested = list(providers or [ort_backend.CPU])
        self.device = device
        files = bundle_engines(bundle)["ort-training"]["files"]
        self.loss = bundle.loss
        from ftedge.runtime.engines.ort_training_backend import TrainableModel

        self.model = TrainableModel(bundle.path / files["training"], bundle.path / files["eval"],
                                    bundle.path / files["optimizer"], checkpoint or bundle.path / files["checkpoint"],
                                    device=device)

    def placements(self) -> dict[str, dict]:
        """The training sessions' placement (the training API reports no per-node placement)."""
        used = ["CUDAExecutionProvider", ort_backend.CPU] if self.device == "cuda" else [ort_backend.CPU]
        return {"step": {"requested": self.requested, "providers": used, "cpu_fallback_nodes": None,
                         "fallback": None}}

    def train_step(self, head_feeds: list[np.ndarray], labels: np.ndarray,
                   weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        if weights is not None:
            raise UsageError("per-sample weights (--class-weight, --auto) need the portable engine; "
                             "use --engine portable")
        loss, out = self.model.train_step(*head_feeds, labels)[:2]
        return float(loss), out

    def eval_step(self, head_feeds: list[np.ndarray], labels: np.ndarray) -> tuple[float, np.ndarray]:
        loss, out = self.model.eval_step(*head_feeds, labels)[:2]
        return float(loss), out

    def set_learning_rate(self, lr: float) -> None:
        self.model.set_learning_rate(lr)

    def learning_rate(self) -> float:
        return self.model.learning_rate()

    def set_seed(self, seed: int) -> None:
        ort_backend.set_seed(seed)

    def save_checkpoint(self, path: str | Path, include_optimizer_state: bool = True) -> None:
        self.model.save_checkpoint(path, include_optimizer_state)

    def parameters(self) -> dict[str, np.ndarray]:
        return self.model.parameters()

    def export_inference(self, path: str | Path, output_names: Sequence[str]) -> None:
        self.model.export_inference(path, output_names)


