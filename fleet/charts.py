"""The dashboard's charts: a small line chart as inline SVG, drawn on the server (no JavaScript library, no
CDN: the page works on an offline fleet host)."""

from __future__ import annotations

import html
import math
from typing import Any

from .validate import finite

LOSS_COLOR, ACC_COLOR = "#c0392b", "#2471a3"   # the loss chart; the headline metric's chart
GAIN_COLOR = "#1e8449"                          # the histogram of a rollout's gains
MAX_BINS = 12                                   # bars of a histogram at most (√n of them for n values)


def svg_chart(values: list[Any], title: str, color: str, width: int = 200, height: int = 96,
              baseline: float | None = None, unit: str = "epochs") -> str:
    """A small line chart as inline SVG (no external library): one ``<polyline class="series">`` with one
    point per finite value (``data-points`` says how many), min/max labels, the number of points and their
    ``unit`` (e.g. "epochs", "versions"), and an optional dashed ``baseline`` (e.g. the accuracy before
    personalization)."""
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
             f'<text x="{width - right}" y="{height - 4}" font-size="9" text-anchor="end">{len(pts)} {html.escape(unit)}</text>']
    if baseline is not None:
        parts.append(f'<line class="baseline" x1="{left}" x2="{width - right}" y1="{y(baseline):.1f}" '
                     f'y2="{y(baseline):.1f}" stroke="#777" stroke-dasharray="4 3"><title>before: {baseline:.4g}'
                     "</title></line>")
    parts.append(f'<polyline class="series" fill="none" stroke="{color}" stroke-width="2" points="{coords}"/></svg>')
    return "".join(parts)


def histogram_bins(values: list[Any], max_bins: int = MAX_BINS) -> list[tuple[float, float, int]]:
    """``(lo, hi, count)`` of equal-width bins over the finite ``values``: ⌈√n⌉ bins, at most ``max_bins``, one
    when every value is the same; a value belongs to ``[lo, hi)``, the last bin also holds its ``hi``."""
    pts = [f for f in (finite(v) for v in values) if f is not None]
    if not pts:
        return []
    lo, hi = min(pts), max(pts)
    n = 1 if lo == hi else max(1, min(max_bins, math.ceil(math.sqrt(len(pts)))))
    width = (hi - lo) / n
    counts = [0] * n
    for v in pts:
        counts[min(n - 1, int((v - lo) / width)) if width else 0] += 1
    return [(lo + i * width, hi if i == n - 1 else lo + (i + 1) * width, c) for i, c in enumerate(counts)]


def svg_histogram(values: list[Any], title: str, color: str = GAIN_COLOR, width: int = 240, height: int = 110,
                  mark: float | None = None, mark_label: str = "") -> str:
    """A small histogram as inline SVG, in :func:`svg_chart`'s style: one ``<rect class="bar">`` per bin of
    :func:`histogram_bins` (``data-lo``, ``data-hi``, ``data-count``; empty bins too, at height 0), the range and
    the tallest count as labels, and an optional dashed vertical ``mark`` (e.g. a threshold) when in range."""
    bins = histogram_bins(values)
    total = sum(c for _, _, c in bins)
    esc = html.escape(title)
    head = (f'<svg class="chart histogram" data-title="{esc}" data-bins="{len(bins)}" data-values="{total}" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{esc}">')
    if not bins:
        return head + f'<text x="8" y="16" font-size="11">{esc}: no data</text></svg>'
    left, right, top, bottom = 26, 8, 22, 16
    lo, hi = bins[0][0], bins[-1][1]
    tallest = max(c for _, _, c in bins)
    slot = (width - left - right) / len(bins)
    parts = [head, f'<text x="8" y="14" font-size="11">{esc} <tspan font-weight="bold">{total}</tspan></text>',
             f'<path class="axes" d="M{left},{top}V{height - bottom}H{width - right}" stroke="#999" fill="none"/>',
             f'<text x="{left - 3}" y="{top + 4}" font-size="9" text-anchor="end">{tallest}</text>',
             f'<text x="{left}" y="{height - 4}" font-size="9">{lo:+.3g}</text>',
             f'<text x="{width - right}" y="{height - 4}" font-size="9" text-anchor="end">{hi:+.3g}</text>']
    for i, (b_lo, b_hi, count) in enumerate(bins):
        h = count / tallest * (height - top - bottom)
        parts.append(f'<rect class="bar" data-lo="{b_lo!r}" data-hi="{b_hi!r}" data-count="{count}" '
                     f'x="{left + i * slot + 1:.1f}" y="{height - bottom - h:.1f}" width="{max(slot - 2, 1):.1f}" '
                     f'height="{h:.1f}" fill="{color}"><title>{b_lo:+.4g} to {b_hi:+.4g}: {count}</title></rect>')
    if mark is not None and lo < hi and lo <= mark <= hi:
        x = left + (mark - lo) / (hi - lo) * (width - left - right)
        parts.append(f'<line class="mark" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{height - bottom}" stroke="#777" '
                     f'stroke-dasharray="4 3"><title>{html.escape(mark_label)} {mark:+.4g}</title></line>')
    return "".join(parts) + "</svg>"
