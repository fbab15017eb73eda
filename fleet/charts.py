"""The dashboard's charts: a small line chart as inline SVG, drawn on the server (no JavaScript library, no
CDN: the page works on an offline fleet host)."""

from __future__ import annotations

import html
from typing import Any

from .validate import finite

LOSS_COLOR, ACC_COLOR = "#c0392b", "#2471a3"   # the loss chart; the headline metric's chart


def svg_chart(values: list[Any], title: str, color: str, width: int = 200, height: int = 96,
              baseline: float | None = None) -> str:
    """A small line chart as inline SVG (no external library): one ``<polyline class="series">`` with one
    point per finite value (``data-points`` says how many), min/max labels, and an optional dashed
    ``baseline`` (e.g. the accuracy before personalization)."""
    pts = [f for f in (finite(v) for v in values) if f is not None]
    esc = html.escape(title)
    head = (f'<svg class="chart" data-title="{esc}" data-points="{len(pts)}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc}">')
    if not pts:
        return head + f'<text x="8" y="16" font-size="11">{esc}: no data</text></svg>'
    left, right, top, bottom = 38, 8, 22, 16
    lo, hi = min(pts), max(pts)
    if baseline is not None:
        lo, hi = min(lo, baseline), max(hi, baseline)
    span = (hi - lo) or 1.0
    n = max(len(pts) - 1, 1)

    def y(v: float) -> float:
        return height - bottom - (v - lo) / span * (height - top - bottom)

    coords = " ".join(f"{left + i * (width - left - right) / n:.1f},{y(v):.1f}" for i, v in enumerate(pts))
    parts = [head,
             f'<text x="8" y="14" font-size="11">{esc} <tspan class="last" font-weight="bold">{pts[-1]:.4g}</tspan>'
             f'</text>',
             f'<path class="axes" d="M{left},{top}V{height - bottom}H{width - right}" stroke="#999" fill="none"/>',
             f'<text x="{left - 3}" y="{top + 4}" font-size="9" text-anchor="end">{hi:.3g}</text>',
             f'<text x="{left - 3}" y="{height - bottom}" font-size="9" text-anchor="end">{lo:.3g}</text>',
             f'<text x="{width - right}" y="{height - 4}" font-size="9" text-anchor="end">{len(pts)} epochs</text>']
    if baseline is not None:
        parts.append(f'<line class="baseline" x1="{left}" x2="{width - right}" y1="{y(baseline):.1f}" '
                     f'y2="{y(baseline):.1f}" stroke="#777" stroke-dasharray="4 3"><title>before: {baseline:.4g}'
                     "</title></line>")
    parts.append(f'<polyline class="series" fill="none" stroke="{color}" stroke-width="2" points="{coords}"/></svg>')
    return "".join(parts)
