"""Learning-rate schedules (ORT's built-in scheduler is linear only; we set the rate every step)."""

from __future__ import annotations

import math


def learning_rate(step: int, total: int, base: float, warmup: int, kind: str = "cosine", floor: float = 0.0) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine or linear decay to ``floor * base`` at ``total``."""
    if kind == "constant":
        return base
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    if kind == "linear":
        factor = 1.0 - progress
    elif kind == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown schedule {kind!r}")
    return base * (floor + (1.0 - floor) * factor)
