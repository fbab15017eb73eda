"""The portable engine: the bundle's ``step.onnx`` (forward, loss, backward and optimizer update in standard ONNX
ops) on plain onnxruntime and any execution provider; parameters and optimizer state stay OrtValues between
steps; checkpoints are safetensors files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ftedge.bundle.loader import Bundle
from ftedge.errors import BundleError
from ftedge.runtime.engines.engine import bundle_engines
from ftedge.runtime.engines.ort_backend import StepSession

def _loss_numpy(loss: str, out: np.ndarray, labels: np.ndarray) -> float:
    """The bundle loss (mean over the batch), as the training graphs compute it."""
    if loss == "cross-entropy":
        z = out - out.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(labels)), labels.astype(np.int64)].mean())
    if loss == "bce":
        return float((np.maximum(out, 0) - out * labels + np.log1p(np.exp(-np.abs(out)))).mean())
    if loss == "mse":
        return float(((out - labels) ** 2).mean())
    return float(np.abs(out - labels).mean())


class PortableEngine:
    """Runs ``step.onnx`` / ``head.onnx`` with plain onnxruntime."""

    name = "portable"

    def __init__(self, bundle: Bundle, checkpoint: str | Path | None = None,
                 providers: Sequence[str] | None = None) -> None:
        from safetensors.numpy import load_file

        self.bundle = bundle
        self.info = bundle_engines(bundle)["portable"]
        files = self.info["files"]
        self.params: list[str] = list(self.info["params"])
        self.buffers: list[str] = list(self.info["buffers"])
        self.masks: list[dict[str, Any]] = list(self.info.get("masks") or [])
        self.optimizer = self.info["optimizer"]
        hyper = dict(bundle.manifest.get("optimizer") or {})
        self.weight_decay = float(hyper.get("weight_decay", 0.0))
        self.max_grad_norm = float(hyper.get("max_grad_norm", 0.0))
        self.betas = list(hyper.get("betas", [0.9, 0.999]))
        self.bias_correction = bool(hyper.get("bias_correction", True))
        self.loss = bundle.loss
        self.output_name = bundle.output.name
        self.head_names = [s.name for s in bundle.head_inputs]
        prepack = bool(self.info.get("prepack", True))  # LLM bundles: off (memory)
        self.step = StepSession(bundle.path / files["step"], providers, prepack=prepack)
        self._head: StepSession | None = None
        self._head_args = (bundle.path / files["head"], providers, prepack)
        self.lr = float(hyper.get("lr", 1e-3))
        self.rng = np.random.default_rng(0)
        self._ones = np.ones(0, np.float32)
        self._max_norm = np.array(self.max_grad_norm, np.float32)
        init = load_file(os.fspath(bundle.path / files["init"]))
        self.steps_done = 0
        values = {f"p:{k}": init[k] for k in self.params} | {f"b:{k}": init[k] for k in self.buffers}
        if self.optimizer == "adamw":
            values |= {f"{s}:{k}": np.zeros_like(init[k]) for k in self.params for s in "mv"}
        self._initial = dict(values)
        if checkpoint is not None:
            values = self._load(Path(checkpoint), values)
        self.state = {k: self.step.to_device(v) for k, v in values.items()}

    def placements(self) -> dict[str, dict]:
        """Per session (``step``, and ``head`` once loaded): the providers it ran on and its CPU fallbacks."""
        out = {"step": self.step.placement()}
        if self._head is not None:
            out["head"] = self._head.placement()
        return out

    @property
    def head(self) -> StepSession:
        """The eval graph, loaded on first use (a run that never evaluates through it never holds it)."""
        if self._head is None:
            path, providers, prepack = self._head_args
            self._head = StepSession(path, providers, prepack=prepack)
        return self._head

    def step_loss(self, head_feeds: list[np.ndarray], labels: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray]:
        """Loss and output of the step graph at the current parameters, which stay unchanged: a zero step size
        and decay leave every parameter bit-identical, and the updated moments are dropped. For bundles whose
        eval graph would double the memory of the frozen weights (LLMs)."""
        feeds = self._batch(head_feeds, labels)
        feeds["weights"] = np.ascontiguousarray(weights, dtype=np.float32)
        zero = np.array(0.0, np.float32)
        feeds.update({"lr": zero, "lr_wd": zero, "max_grad_norm": self._max_norm})
        out = self.step.run(dict(self.state), feeds, ["loss", self.output_name])
        return float(out["loss"]), out[self.output_name]

    def reset(self) -> None:
        """Back to the initial parameters (the bundle's, or a warm start's), zero optimizer moments, step 0 (a new
        trial of a search)."""
        self.state = {k: self.step.to_device(v) for k, v in self._initial.items()}
        self.steps_done = 0

    def start_from(self, values: dict[str, np.ndarray]) -> None:
        """New initial values (a warm start: ``p:NAME`` / ``b:NAME`` of a previous model), then :meth:`reset` to
        them: zero optimizer moments, step 0. A later :meth:`reset` (the next trial of a search) returns here."""
        for k, v in values.items():
            if k not in self._initial or k[:2] not in ("p:", "b:"):
                continue
            if v.shape != self._initial[k].shape:
                raise BundleError(f"the warm-start weights do not fit this bundle ({k}: {v.shape} vs "
                                  f"{self._initial[k].shape}); train without warm_start")
            self._initial[k] = np.ascontiguousarray(v, dtype=self._initial[k].dtype)
        self.reset()

    def set_weight_decay(self, weight_decay: float) -> None:
        """Decoupled weight decay, fed to the step graph every step (``lr_wd``): no re-export needed."""
        self.weight_decay = float(weight_decay)

    def _load(self, path: Path, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from safetensors import safe_open

        try:
            with safe_open(os.fspath(path), framework="numpy") as f:
                meta = f.metadata() or {}
                if meta.get("engine") != "portable":
                    raise BundleError(f"{path} is not a portable-engine checkpoint; resume with the engine that wrote it")
                stored = {k: f.get_tensor(k) for k in f.keys()}
        except BundleError:
            raise
        except Exception as exc:
            raise BundleError(f"checkpoint {path} is unreadable ({exc}); start a new run directory") from exc
        for k in values:
            if k in stored:
                if stored[k].shape != values[k].shape:
                    raise BundleError(f"checkpoint {path} does not fit this bundle ({k}: {stored[k].shape} vs "
                                      f"{values[k].shape}); resume with the bundle that wrote it")
                values[k] = stored[k]
        self.steps_done = int(meta.get("steps", 0))
        return values

    def _batch(self, head_feeds: list[np.ndarray], labels: np.ndarray) -> dict[str, np.ndarray]:
        feeds = dict(zip(self.head_names, head_feeds))
        feeds["labels"] = labels
        return feeds

    def train_step(self, head_feeds: list[np.ndarray], labels: np.ndarray,
                   weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """One step; ``weights`` (per sample, e.g. class-balancing) make the loss their weighted mean."""
        feeds = self._batch(head_feeds, labels)
        n = len(labels)
        if weights is None:
            if len(self._ones) != n:
                self._ones = np.ones(n, np.float32)
            weights = self._ones
        feeds["weights"] = np.ascontiguousarray(weights, dtype=np.float32)
        self.steps_done += 1
        feeds.update({"lr": np.array(self._step_size(self.steps_done), np.float32),
                      "lr_wd": np.array(np.float32(self.lr) * np.float32(self.weight_decay), np.float32),
                      "max_grad_norm": self._max_norm})
        for m in self.masks:  # inverted dropout, drawn from the engine's seeded generator
            shape = [n if d == "batch" else int(d) for d in m["shape"]]
            keep = 1.0 - float(m["ratio"])
            feeds[m["name"]] = (self.rng.random(shape, dtype=np.float32) < keep).astype(np.float32) / keep
        out = self.step.run(self.state, feeds, ["loss", self.output_name])
        return float(out["loss"]), out[self.output_name]

    def _step_size(self, t: int) -> np.float32:
        """AdamW's bias-corrected step size, in float32 with pow in double (onnxruntime-training's AdamWOptimizer)."""
        lr = np.float32(self.lr)
        if self.optimizer != "adamw" or not self.bias_correction:
            return lr
        b1, b2 = (np.float32(b) for b in self.betas)
        bc1 = np.float32(1) - np.float32(float(b1) ** t)
        bc2 = np.float32(1) - np.float32(float(b2) ** t)
        return lr * np.float32(np.float32(np.sqrt(bc2)) / bc1)

    def eval_step(self, head_feeds: list[np.ndarray], labels: np.ndarray) -> tuple[float, np.ndarray]:
        feeds = dict(zip(self.head_names, head_feeds))
        params = {k[2:]: v for k, v in self.state.items() if k[:2] in ("p:", "b:")}
        out = self.head.run(params, feeds, [self.output_name])[self.output_name]
        return _loss_numpy(self.loss, out, labels), out

    def set_learning_rate(self, lr: float) -> None:
        self.lr = float(lr)

    def learning_rate(self) -> float:
        return self.lr

    def set_seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(int(seed))

    def save_checkpoint(self, path: str | Path, include_optimizer_state: bool = True) -> None:
        from safetensors.numpy import save_file

        keep = {k: v.numpy() for k, v in self.state.items() if include_optimizer_state or k[:2] in ("p:", "b:")}
        save_file(keep, os.fspath(path), metadata={"engine": "portable", "steps": str(self.steps_done),
                                                    "optimizer": self.optimizer})

    def parameters(self) -> dict[str, np.ndarray]:
        return {k[2:]: self.state[k].numpy() for k in self.state if k.startswith("p:")}

    def buffer_values(self) -> dict[str, np.ndarray]:
        return {k[2:]: self.state[k].numpy() for k in self.state if k.startswith("b:")}

    def export_inference(self, path: str | Path, output_names: Sequence[str]) -> None:
        """``head.onnx`` with the current parameters and statistics baked in as plain initializers."""
        from ftedge.runtime.training.personalized import bake_initializers

        bake_initializers(self.bundle.path / self.info["files"]["head"], {**self.parameters(), **self.buffer_values()},
                          Path(path))


