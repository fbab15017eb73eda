"""What a 10⁵-box rollout would cost the collector, from this run's figures: the per-device CPU, rows and bytes of
the simulated rollout (linear in devices) and the driver's tick cost against wave size (fitted through the measured
sizes and read at each wave's size; the measured sizes are reported beside it, so nothing is extrapolated silently)."""

from __future__ import annotations

import math
from typing import Any

N = 100_000


def wave_sizes(n: int, canary: float, waves: list[float]) -> list[int]:
    """Devices per wave as fleet/rollout/plan.py ``assign_waves`` splits ``n`` (canary a share)."""
    c = math.ceil(canary * n)
    rest, out, start = n - c, [c], 0
    for i, share in enumerate(waves):
        end = rest if i == len(waves) - 1 else max(start, math.ceil(share * rest))
        out.append(end - start)
        start = end
    return out


def _fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares a + b·n."""
    n = len(points)
    if n == 1:
        return 0.0, points[0][1] / points[0][0]
    mx, my = sum(p[0] for p in points) / n, sum(p[1] for p in points) / n
    var = sum((p[0] - mx) ** 2 for p in points)
    b = sum((p[0] - mx) * (p[1] - my) for p in points) / var if var else 0.0
    return my - b * mx, b


def _at(points: list[tuple[int, float]], n: int) -> float:
    """The measured value at ``n`` if measured, else linear between the neighbours, else the fit beyond them."""
    pts = sorted(points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= n <= x1:
            return y0 + (y1 - y0) * (n - x0) / (x1 - x0)
    if pts and n == pts[0][0]:
        return pts[0][1]
    if n > pts[-1][0]:     # beyond the largest size: the line through the two largest, never below the largest
        a, b = _fit(pts[-2:])
        return max(a + b * n, pts[-1][1])
    a, b = _fit(pts[:2])
    return max(a + b * n, 0.0)


def model(sim: dict[str, Any], ticks: list[dict[str, Any]], canary: float, waves: list[float],
          tick_s: float = 1.0, n: int = N) -> dict[str, Any]:
    """The 10⁵-box estimate (every figure names what it is made of)."""
    sizes = wave_sizes(n, canary, waves)
    kinds = {k: [(t["devices"], t[k]["wall_s"]) for t in ticks] for k in ("send", "wait", "resolve", "done")}
    steps = 2 if sim.get("train") else 1          # deploy, then train: each sent once and resolved once
    per_wave = []
    for w, size in enumerate(sizes):
        send, wait, resolve = (_at(kinds[k], size) for k in ("send", "wait", "resolve"))
        # the driver sleeps tick_s AFTER each tick: a tick of `wait` s repeats every tick_s + wait s
        per_wave.append({"wave": w, "devices": size, "send_tick_s": send, "wait_tick_s": wait,
                         "resolve_tick_s": resolve, "busy": wait / (tick_s + wait),
                         "step_cpu_s": steps * (send + resolve)})
    rows = sum(sim["rows"].values()) / sim["devices"]
    return {"devices": n, "tick_s": tick_s, "wave_sizes": sizes, "per_wave": per_wave,
            "collector_cpu_s_linear": sim["collector_cpu_us_per_device"] * n / 1e6,
            "driver_step_cpu_s": sum(p["step_cpu_s"] for p in per_wave),
            "rows": rows * n, "rows_per_device": rows,
            "bytes": sim["bytes_per_device"] * n, "bytes_per_device": sim["bytes_per_device"],
            "done_tick_s_last_wave": _at(kinds["done"], sizes[-1]),
            "measured_sizes": sorted(t["devices"] for t in ticks)}
