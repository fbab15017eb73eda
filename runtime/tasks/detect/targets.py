"""Anchor-free (FCOS-style) training targets of a detection bundle, in numpy (torch-free).

A detection bundle's head predicts, for every grid cell of every feature map (``detection.strides``, e.g. 16
and 32 of a 320×320 input: 20×20 + 10×10 = 500 *points*), class logits, four distances to the box's sides
(left, top, right, bottom) and a centerness logit. A point is a **positive** of a ground-truth box when

* its centre ``((x + 0.5) * stride, (y + 0.5) * stride)`` lies inside the box and within ``center_radius``
  strides of the box's centre (centre sampling), and
* the largest of its four distances falls in its level's range (``detection.ranges``: small boxes on the fine
  map, large boxes on the coarse one);

among several such boxes the smallest wins. The targets of a batch are one float32 tensor
``labels`` [B, N, C + 6]: class one-hot (C), the box x1 y1 x2 y2 in input pixels (4), the centerness
``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` (1) and the positive flag (1). The training-step graph
computes the loss from it (sigmoid focal loss on classes over all points, GIoU on positives weighted by
centerness, BCE on centerness), so the device only assigns targets: cheap, per batch, which lets cached
feature maps be flipped (box-aware augmentation without re-running the backbone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Grid:
    """The points of all feature maps, in the head's output order (level by level, row-major)."""

    points: np.ndarray   # float32 [N, 2]: x, y centre in input pixels
    strides: np.ndarray  # float32 [N]
    lo: np.ndarray       # float32 [N]: the level's range of max(l, t, r, b)
    hi: np.ndarray
    radius: float
    shapes: tuple[tuple[int, int], ...]  # (H, W) per level

    @property
    def size(self) -> int:
        return int(self.points.shape[0])


def make_grid(input_size: tuple[int, int], strides: list[int], ranges: list[list[float]], radius: float) -> Grid:
    pts, st, lo, hi, shapes = [], [], [], [], []
    for s, (a, b) in zip(strides, ranges):
        h, w = -(-input_size[0] // s), -(-input_size[1] // s)
        ys, xs = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
        p = np.stack([(xs.ravel() + 0.5) * s, (ys.ravel() + 0.5) * s], axis=1)
        pts.append(p)
        st.append(np.full(len(p), s, np.float32))
        lo.append(np.full(len(p), a, np.float32))
        hi.append(np.full(len(p), b, np.float32))
        shapes.append((h, w))
    return Grid(np.concatenate(pts).astype(np.float32), np.concatenate(st), np.concatenate(lo), np.concatenate(hi),
                float(radius), tuple(shapes))


def grid_of(detection: dict[str, Any], input_size: tuple[int, int]) -> Grid:
    """The grid a bundle's ``detection`` manifest section describes."""
    return make_grid(input_size, [int(s) for s in detection["strides"]], detection["ranges"],
                     float(detection["center_radius"]))


def assign(boxes: np.ndarray, classes: np.ndarray, grid: Grid, num_classes: int) -> np.ndarray:
    """Targets [N, C + 6] of one image; ``boxes`` [n, 4] x1 y1 x2 y2 in input pixels, ``classes`` [n]."""
    n_pts = grid.size
    out = np.zeros((n_pts, num_classes + 6), np.float32)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if len(boxes) == 0:
        return out
    px, py = grid.points[:, 0:1], grid.points[:, 1:2]                      # [N, 1]
    x1, y1, x2, y2 = (boxes[:, k][None, :] for k in range(4))              # [1, n]
    l, t, r, b = px - x1, py - y1, x2 - px, y2 - py                        # [N, n]
    inside = np.minimum(np.minimum(l, t), np.minimum(r, b)) > 0
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    reach = grid.radius * grid.strides[:, None]
    central = (np.abs(px - cx) < reach) & (np.abs(py - cy) < reach)
    extent = np.maximum(np.maximum(l, t), np.maximum(r, b))
    in_level = (extent >= grid.lo[:, None]) & (extent <= grid.hi[:, None])
    ok = inside & central & in_level
    area = np.broadcast_to((x2 - x1) * (y2 - y1), ok.shape)
    area = np.where(ok, area, np.inf)
    best = np.argmin(area, axis=1)                                         # the smallest box wins
    pos = np.isfinite(area[np.arange(n_pts), best])
    idx = np.nonzero(pos)[0]
    if len(idx) == 0:
        return out
    k = best[idx]
    out[idx, np.asarray(classes, np.int64)[k]] = 1.0
    out[idx, num_classes:num_classes + 4] = boxes[k]
    lr = np.stack([l[idx, k], r[idx, k]], 1)
    tb = np.stack([t[idx, k], b[idx, k]], 1)
    ctr = np.sqrt((lr.min(1) / lr.max(1)) * (tb.min(1) / tb.max(1)))
    out[idx, num_classes + 4] = ctr
    out[idx, num_classes + 5] = 1.0
    return out


def flip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Boxes of the horizontally mirrored input (x → width - x)."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] = width - b[:, [2, 0]]
    return b


def batch_targets(items: list[tuple[np.ndarray, np.ndarray]], grid: Grid, num_classes: int) -> np.ndarray:
    """``labels`` [B, N, C + 6] for (boxes, classes) per image."""
    return np.stack([assign(b, c, grid, num_classes) for b, c in items]) if items else np.zeros(
        (0, grid.size, num_classes + 6), np.float32)
