"""Adapter routing: which prompts the personalized adapter answers, and which the untuned model keeps answering.

A LoRA adapter trained on a site's few dozen questions changes the model's answers to every other question too
(measured: retention of general answers falls to 0–0.3 whatever the learning rate, on ftedge and on a PyTorch +
PEFT fine-tune alike). The device keeps the base model anyway (the adapter is side-loaded), so the personalized
model is *base + adapter + router*: a logistic regression on the prompt's mean hidden state at the backbone cut
(the frozen layers below every adapter, so the feature does not depend on the adapter) decides per prompt whether
the adapter is applied. It is fitted on the device, in a fraction of a second, from the training prompts (inside)
and a file of off-topic prompts (outside, ``--off-topic``), whose hidden states the backbone pass computes anyway.

The router is stored in the adapter file as ``router.*`` tensors; the decoder ignores them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PREFIX = "router."


@dataclass
class Router:
    mean: np.ndarray      # [D] feature standardization
    scale: np.ndarray     # [D]
    weight: np.ndarray    # [D]
    bias: float
    threshold: float = 0.5

    def probability(self, features: np.ndarray) -> np.ndarray:
        """P(inside) for features [N, D] (or one [D] vector → [1])."""
        z = (np.atleast_2d(np.asarray(features, np.float64)) - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-(z @ self.weight + self.bias)))

    def inside(self, feature: np.ndarray) -> bool:
        return bool(self.probability(feature)[0] >= self.threshold)

    def to_tensors(self) -> dict[str, np.ndarray]:
        return {PREFIX + "mean": self.mean.astype(np.float32), PREFIX + "scale": self.scale.astype(np.float32),
                PREFIX + "weight": self.weight.astype(np.float32),
                PREFIX + "bias_threshold": np.array([self.bias, self.threshold], np.float32)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Any]) -> "Router | None":
        """The router stored in an adapter's tensors, or None when it has none."""
        if PREFIX + "weight" not in tensors:
            return None
        bt = np.asarray(tensors[PREFIX + "bias_threshold"], np.float64)
        return cls(np.asarray(tensors[PREFIX + "mean"], np.float64), np.asarray(tensors[PREFIX + "scale"], np.float64),
                   np.asarray(tensors[PREFIX + "weight"], np.float64), float(bt[0]), float(bt[1]))


def fit_router(inside: np.ndarray, outside: np.ndarray, l2: float = 1e-2, steps: int = 500, lr: float = 0.1
               ) -> Router:
    """L2-regularized logistic regression, classes weighted equally, full-batch gradient descent on standardized
    features (deterministic: no random initialisation)."""
    x = np.concatenate([inside, outside]).astype(np.float64)
    y = np.r_[np.ones(len(inside)), np.zeros(len(outside))]
    sw = np.where(y == 1, 0.5 / len(inside), 0.5 / len(outside))
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / scale
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
        g = (p - y) * sw
        w -= lr * (z.T @ g + l2 * w)
        b -= lr * float(g.sum())
    return Router(mean, scale, w, b)


def split_adapter(tensors: dict[str, Any]) -> tuple[dict[str, Any], "Router | None"]:
    """(the LoRA tensors, the router or None) of an adapter file's tensors."""
    return {k: v for k, v in tensors.items() if not k.startswith(PREFIX)}, Router.from_tensors(tensors)
