"""Cross-validation folds, the stratified train/validation split, class weights and a paired confidence interval
(numpy only), for `train` and `train --auto`.

Folds are stratified: each class's samples are spread over the folds, so every fold validates on a share of
every class that has at least ``folds`` samples. A class with fewer samples than folds is validated in only
that many folds (one sample each, leave-one-out style), and a class with a single sample is never validated:
every fold's training part always holds at least one sample of every class.
"""

from __future__ import annotations

import math

import numpy as np

SMALL_CLASS = 5   # fewer samples than this: a warning names the class


def stratified_folds(y: np.ndarray, folds: int, seed: int, classification: bool) -> list[np.ndarray]:
    """Validation index arrays (sorted, disjoint) of ``folds`` folds over ``range(len(y))``; fewer folds when
    there are fewer samples. Training indices of fold ``i`` are the complement of its validation ones."""
    n = len(y)
    k = max(2, min(int(folds), n))
    rng = np.random.default_rng([seed, 7919])
    assign = np.full(n, -1, dtype=np.int64)
    if classification:
        offset = 0
        for c in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == c))
            if len(members) < 2:
                continue                       # a single sample always trains, never validates
            for j, i in enumerate(members):
                assign[i] = (offset + j) % k
            offset += len(members)             # rotate so fold sizes stay even across classes
    else:
        assign[rng.permutation(n)] = np.arange(n) % k
    out = [np.flatnonzero(assign == f) for f in range(k)]
    return [f for f in out if len(f)]


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """Per-sample weights ``n / (classes * n_c)``: every class weighs the same in the loss (mean weight 1)."""
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    return (len(y) / (len(classes) * counts[inverse])).astype(np.float32)


def imbalance(y: np.ndarray) -> float:
    """Largest over smallest class count (1.0 when balanced)."""
    counts = np.unique(y, return_counts=True)[1]
    return float(counts.max() / counts.min()) if len(counts) else 1.0


def small_classes(y: np.ndarray, labels: list[str], below: int = SMALL_CLASS) -> dict[str, int]:
    """Classes with fewer than ``below`` samples (name → count), including labelled classes with none."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=len(labels)) if len(labels) else np.zeros(0)
    return {labels[i] if i < len(labels) else str(i): int(c) for i, c in enumerate(counts) if c < below}


def per_sample_scores(loss: str, outputs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each sample's share of the primary metric (its mean is accuracy, or -MAE for regression)."""
    if loss == "cross-entropy":
        return (outputs.argmax(axis=1) == np.asarray(y, dtype=np.int64)).astype(np.float64)
    if loss == "bce":
        return ((outputs > 0) == (y > 0.5)).reshape(len(y), -1).mean(axis=1).astype(np.float64)
    err = np.abs(outputs.astype(np.float64) - y).reshape(len(y), -1)
    return -err.mean(axis=1)


def per_sample_loss(loss: str, outputs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each sample's bundle loss (cross-entropy, BCE, squared or absolute error), in float64: the tie-break when
    the primary metric saturates (a few dozen samples are often all classified right by many settings)."""
    out = outputs.astype(np.float64)
    if loss == "cross-entropy":
        z = out - out.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -logp[np.arange(len(y)), np.asarray(y, dtype=np.int64)]
    t = np.asarray(y, dtype=np.float64).reshape(out.shape)
    if loss == "bce":
        per = np.maximum(out, 0) - out * t + np.log1p(np.exp(-np.abs(out)))
    elif loss == "mse":
        per = (out - t) ** 2
    else:
        per = np.abs(out - t)
    return per.reshape(len(y), -1).mean(axis=1)


def paired_interval(tuned: np.ndarray, base: np.ndarray, seed: int, level: float = 0.95,
                    resamples: int = 2000) -> dict[str, float]:
    """Mean of ``tuned - base`` (per-sample scores of the same samples) with a percentile-bootstrap interval
    (seeded, so the same scores give the same interval); plus each side's mean."""
    d = np.asarray(tuned, np.float64) - np.asarray(base, np.float64)
    n = len(d)
    if n == 0:
        return {"gain": math.nan, "lo": math.nan, "hi": math.nan, "tuned": math.nan, "untuned": math.nan, "n": 0}
    rng = np.random.default_rng([seed, 104729])
    means = d[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    alpha = (1.0 - level) / 2
    return {"gain": float(d.mean()), "lo": float(np.quantile(means, alpha)), "hi": float(np.quantile(means, 1 - alpha)),
            "tuned": float(np.mean(tuned)), "untuned": float(np.mean(base)), "n": int(n), "level": level,
            "method": f"paired percentile bootstrap over samples ({resamples} resamples)"}


def stratified_split(y: np.ndarray, fraction: float, seed: int, classification: bool) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val); per class ``round(n * fraction)`` to validation, at least one when n >= 2."""
    rng = np.random.default_rng(seed)
    if fraction <= 0:
        return np.arange(len(y)), np.arange(0)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if classification else [np.arange(len(y))]
    train, val = [], []
    for g in groups:
        g = rng.permutation(g)
        k = min(len(g) - 1, max(1 if len(g) >= 2 else 0, int(round(len(g) * fraction))))
        val.extend(g[:k])
        train.extend(g[k:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def balanced_weights_for(targets: np.ndarray, train_idx: np.ndarray) -> np.ndarray:
    """Per-sample weights over all samples: balanced over the training ones (the others are never trained on)."""
    w = np.ones(len(targets), np.float32)
    w[train_idx] = balanced_weights(targets[train_idx])
    return w
