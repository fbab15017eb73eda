"""Run a bundle on the device: backbone inference, head training steps, predictions.

The building block the trainer and agent use. For split bundles the backbone
runs as a plain inference session (optionally on NPU/GPU providers) and the
trainable head sees only its outputs ("embeddings").
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ftedge.errors import DataError
from ftedge.bundle.loader import Bundle
from ftedge.runtime.engines.engine import Engine, open_engine, resolve_engine
from ftedge.runtime.engines.ort_backend import InferenceModel


class BundleSession:
    """One bundle's graphs loaded for training and inference."""

    def __init__(
        self,
        bundle: Bundle,
        providers: Sequence[str] | None = None,
        checkpoint: str | Path | None = None,
        backbone_variant: str = "backbone",
        engine: str = "auto",
        step_providers: Sequence[str] | None = None,
    ) -> None:
        self.bundle = bundle
        self.engine_name = resolve_engine(engine, bundle)
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.step_providers = list(step_providers or self.providers)   # the training step's own placement
        self.backbone = InferenceModel(bundle.file(backbone_variant), providers) if bundle.layout == "split" else None
        self._checkpoint = checkpoint
        self._model: Engine | None = None
        self.head_inputs = bundle.head_inputs
        self.output_name = bundle.output.name

    @property
    def model(self) -> Engine:
        """The training engine, loaded on first use: an idle training session slows the backbone pass."""
        if self._model is None:
            self._model = open_engine(self.engine_name, self.bundle, self._checkpoint, self.step_providers)
        return self._model

    def placements(self) -> dict[str, dict]:
        """Per stage (backbone, step, head): the providers its session ran on and its CPU fallbacks."""
        out = {"backbone": self.backbone.placement()} if self.backbone is not None else {}
        return out | (self._model.placements() if self._model is not None else {})

    def embed(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Model inputs → head inputs (backbone outputs plus passed-through inputs)."""
        check_feeds(self.bundle, feeds)
        values = dict(feeds)
        if self.backbone is not None:
            values.update(self.backbone.run(feeds))
        return {s.name: values[s.name] for s in self.head_inputs}

    def labels_array(self, labels: np.ndarray) -> np.ndarray:
        if self.bundle.loss == "cross-entropy":
            return np.asarray(labels, dtype=np.int64).reshape(-1)
        return np.asarray(labels, dtype=np.float32)

    def _args(self, head_feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.ascontiguousarray(head_feeds[s.name]) for s in self.head_inputs]

    def train_step(self, head_feeds: dict[str, np.ndarray], labels: np.ndarray,
                   weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """One optimizer step on a batch of head inputs (``weights``: per sample); returns (loss, outputs)."""
        return self.model.train_step(self._args(head_feeds), self.labels_array(labels), weights)

    def eval_step(self, head_feeds: dict[str, np.ndarray], labels: np.ndarray) -> tuple[float, np.ndarray]:
        """Loss and outputs with dropout off; parameters unchanged."""
        return self.model.eval_step(self._args(head_feeds), self.labels_array(labels))

    def predict(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Model outputs for raw model inputs (backbone + head, eval mode)."""
        head_feeds = self.embed(feeds)
        n = next(iter(head_feeds.values())).shape[self.head_inputs[0].batch_axis or 0]
        dummy = np.zeros((n,), np.int64) if self.bundle.loss == "cross-entropy" else np.zeros(
            self.bundle.output.concrete_shape(n), np.float32)
        return self.eval_step(head_feeds, dummy)[1]

    def set_learning_rate(self, lr: float) -> None:
        self.model.set_learning_rate(lr)


def check_feeds(bundle: Bundle, feeds: dict[str, np.ndarray]) -> None:
    """Raise a clear error when ``feeds`` do not match the bundle's input spec."""
    for spec in bundle.inputs:
        if spec.name not in feeds:
            raise DataError(f"missing input {spec.name!r}; the bundle expects {[s.name for s in bundle.inputs]}")
        arr = feeds[spec.name]
        if list(arr.shape[1:]) != spec.sample_shape or str(arr.dtype) != spec.dtype:
            raise DataError(
                f"input {spec.name!r} is {arr.dtype}{list(arr.shape)}, the bundle expects {spec.dtype}[batch, "
                + ", ".join(map(str, spec.sample_shape)) + "]"
            )
