"""SYNTHETIC data, the stratified split, the learning-rate schedule and the per-epoch shuffle: numpy only (the
device-venv worker imports it too). The split and schedule are copies of ftedge's; the setup checks they agree."""

from __future__ import annotations

import math

import numpy as np

T, F = 101, 40          # frames x mel bins


def make_data(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SYNTHETIC log-mel-like samples: x float32 [n, 101, 40], labels int64 [n] (balanced).

    x = N(0, 1) noise + gain * envelope(t) * (level[c] + cos(2*pi*(ft[c]*t + fm[c]*mel) + phase)):
    a class-dependent overall level plus a class-dependent spectro-temporal ripple, with random gain,
    time shift, phase and +-5 % ripple-rate jitter per sample. Class prototypes use a fixed seed (1234).
    """
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    rng.shuffle(y)
    proto = np.random.default_rng(1234)
    ft = proto.uniform(0.02, 0.25, classes)          # temporal ripple, cycles per frame
    fm = proto.uniform(-0.25, 0.25, classes)         # spectral ripple, cycles per mel bin
    level = 2.0 * (np.arange(classes) - (classes - 1) / 2) / max(classes - 1, 1)
    t = np.arange(T, dtype=np.float64)[None, :, None]
    mel = np.arange(F, dtype=np.float64)[None, None, :]
    gain = rng.uniform(0.6, 1.0, (n, 1, 1))
    shift = rng.integers(-20, 21, (n, 1, 1))
    env = np.exp(-(((t - 50 - shift) / 25.0) ** 2))
    ftn = ft[y][:, None, None] * rng.uniform(0.95, 1.05, (n, 1, 1))
    fmn = fm[y][:, None, None] * rng.uniform(0.95, 1.05, (n, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    signal = gain * env * (level[y][:, None, None] + np.cos(2 * np.pi * (ftn * t + fmn * mel) + phase))
    x = rng.standard_normal((n, T, F)) + signal
    return x.astype(np.float32), y.astype(np.int64)


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Copy of ftedge.runtime.tasks.classify.folds.stratified_split (classification); setup checks they agree."""
    rng = np.random.default_rng(seed)
    if fraction <= 0:
        return np.arange(len(y)), np.arange(0)
    train, val = [], []
    for c in np.unique(y):
        g = rng.permutation(np.flatnonzero(y == c))
        k = min(len(g) - 1, max(1 if len(g) >= 2 else 0, int(round(len(g) * fraction))))
        val.extend(g[:k])
        train.extend(g[k:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def learning_rate(step: int, total: int, base: float, warmup: int) -> float:
    """Copy of ftedge.runtime.training.schedule.learning_rate, cosine (ftedge's default); setup checks they agree."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def epoch_order(train_idx: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """ftedge's per-epoch shuffle (epoch counts from 1)."""
    return train_idx[np.random.default_rng([seed, epoch]).permutation(len(train_idx))]
