"""Object-detection mAP, the COCO way (numpy only: runs on the device, never imports torch or pycocotools).

This reimplements pycocotools' ``COCOeval`` for ``iouType="bbox"``, area range ``"all"`` and one ``maxDets``,
because pycocotools is not a device dependency; ``tests/runtime/detect/test_detect_metrics.py`` checks it against pycocotools on
the same boxes. What it reproduces, as ``cocoeval.py`` does it:

* Evaluation is per (image, class). Its detections are sorted by descending score with a *stable* sort (ties keep
  input order) and only the top ``max_dets`` are kept: the cap is per image **and per class**, not per image.
* IoU is pycocotools' ``bbIou`` on ``xywh`` boxes without a ``+1``: ``w = x2 - x1`` and the right edge ``x1 + w``.
* Greedy matching, for each IoU threshold ``t`` and each detection in score order: the unmatched ground truth with
  the highest IoU ``>= t`` (on ties the *last* such box) is taken. Every box is non-crowd and none is ignored.
* Per class, the kept detections of all images are merged (image order, then score order) and re-sorted stably by
  score; precision is made monotone (the envelope) and read at the 101 recall points ``np.linspace(0, 1, 101)``
  (``searchsorted`` side left; points beyond the reached recall count as precision 0). AP is their mean. Precision
  is ``tp / (fp + tp + eps)`` as there, so a class whose only box is found scores ``1 - 2.2e-16``, not ``1.0``.
* A class with ground truth but no detections has AP 0. A class without ground truth has no AP (pycocotools' ``-1``)
  and is left out of the means; when no class has ground truth, every ``map*`` value is ``None``.

Area plays no part: pycocotools' range ``"all"`` is 0..1e10 px², so only a box over 100,000 px square would differ
(ignored there, counted here). Inverted boxes (``x2 < x1``), which pycocotools would score oddly, are refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ftedge.errors import DataError

# As in pycocotools' Params.setDetParams (linspace, not arange: 0.9 is 0.8999999999999999 there too).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
_T50, _T75 = 0, 5  # indices of IoU 0.50 and 0.75 in IOU_THRESHOLDS


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every ``x1y1x2y2`` box of ``a`` [n,4] with every box of ``b`` [m,4] → [n,m] (pycocotools' formula:
    no ``+1`` on widths; boxes that do not overlap, or only touch, give 0)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    iw = np.minimum((aw + a[:, 0])[:, None], (bw + b[:, 0])[None, :]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum((ah + a[:, 1])[:, None], (bh + b[:, 1])[None, :]) - np.maximum(a[:, None, 1], b[None, :, 1])
    overlap = (iw > 0) & (ih > 0)
    inter = iw * ih
    union = (aw * ah)[:, None] + (bw * bh)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


def _match(ious: np.ndarray) -> np.ndarray:
    """[T, D] bool: whether each detection (rows of ``ious``, in score order) matches a ground truth at each IoU
    threshold, by COCOeval's greedy rule (best unmatched ground truth with IoU >= t, the last one on ties)."""
    n_det, n_gt = ious.shape
    matched = np.zeros((len(IOU_THRESHOLDS), n_det), dtype=bool)
    if n_det == 0 or n_gt == 0:
        return matched
    best_any = ious.max(axis=1)
    for ti, t in enumerate(IOU_THRESHOLDS):
        floor = min(float(t), 1 - 1e-10)
        taken = np.zeros(n_gt, dtype=bool)
        for d in range(n_det):
            if best_any[d] < floor:
                continue
            row = np.where(taken, -np.inf, ious[d])
            top = row.max()
            if top < floor:
                continue
            g = n_gt - 1 - int(np.argmax(row[::-1] == top))  # the last index holding the maximum
            taken[g] = True
            matched[ti, d] = True
    return matched


def _ap_curve(scores: list[np.ndarray], matches: list[np.ndarray], n_gt: int) -> np.ndarray:
    """[T, R] interpolated precision of one class from its per-image kept scores and [T, D] matches."""
    precision = np.zeros((len(IOU_THRESHOLDS), len(RECALL_POINTS)))
    if not scores:
        return precision
    s = np.concatenate(scores)
    order = np.argsort(-s, kind="mergesort")
    tps = np.concatenate(matches, axis=1)[:, order]
    n_det = tps.shape[1]
    if n_det == 0:
        return precision
    tp = np.cumsum(tps, axis=1).astype(float)
    fp = np.cumsum(~tps, axis=1).astype(float)
    recall = tp / n_gt
    prec = tp / (fp + tp + np.spacing(1))
    prec = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]  # the envelope: best precision at any higher recall
    for ti in range(len(IOU_THRESHOLDS)):
        idx = np.searchsorted(recall[ti], RECALL_POINTS, side="left")
        ok = idx < n_det
        precision[ti, ok] = prec[ti, idx[ok]]
    return precision


def _array(value: Any, shape_tail: tuple[int, ...], dtype: Any, what: str) -> np.ndarray:
    arr = np.asarray(value if value is not None else [], dtype=dtype)
    if arr.size == 0:
        arr = arr.reshape((0, *shape_tail))
    if arr.shape[1:] != shape_tail or arr.ndim != 1 + len(shape_tail):
        raise DataError(f"{what} has shape {arr.shape}; expected [k{''.join(f', {n}' for n in shape_tail)}]")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DataError(f"{what} holds NaN or infinite values; drop or fix those boxes")
    if shape_tail == (4,) and ((arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])).any():
        raise DataError(f"{what} has a box with x2 < x1 or y2 < y1; boxes must be x1y1x2y2 pixels")
    return arr


def _image(entry: Mapping[str, Any], i: int, kind: str, n_labels: int, scored: bool) -> tuple[np.ndarray, ...]:
    boxes = _array(entry.get("boxes"), (4,), np.float64, f"{kind}[{i}]['boxes']")
    labels = _array(entry.get("labels"), (), np.int64, f"{kind}[{i}]['labels']")
    scores = _array(entry.get("scores"), (), np.float64, f"{kind}[{i}]['scores']") if scored else None
    if len(labels) != len(boxes) or (scores is not None and len(scores) != len(boxes)):
        raise DataError(f"{kind}[{i}]: boxes, labels{' and scores' if scored else ''} differ in length")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_labels):
        raise DataError(f"{kind}[{i}] has a label outside 0..{n_labels - 1} (the {n_labels} classes of `labels`)")
    return (boxes, labels, scores) if scored else (boxes, labels)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def coco_map(detections: Sequence[Mapping[str, Any]], truths: Sequence[Mapping[str, Any]], labels: Sequence[str],
             max_dets: int = 100) -> dict[str, Any]:
    """COCO bbox mAP of ``detections`` against ``truths`` (entry ``i`` of each describes image ``i``).

    A detection entry is ``{"boxes": [k,4] x1y1x2y2 pixels, "scores": [k], "labels": [k] int}``, a truth entry
    ``{"boxes": [n,4], "labels": [n]}``; label ``j`` is class ``labels[j]``. ``max_dets`` caps the detections kept
    per image and class. Returns ``map50``, ``map50_95``, ``map75`` (means over the classes with ground truth,
    ``None`` when none has any) and ``per_class[label] = {"ap50", "ap50_95", "gt", "detections"}`` (APs ``None``
    without ground truth; ``detections`` counts all given, before the ``max_dets`` cap). Raises ``DataError`` on
    mismatched lengths, bad shapes, non-finite values, inverted boxes, out-of-range labels or repeated names.
    """
    if len(detections) != len(truths):
        raise DataError(f"{len(detections)} detection entries for {len(truths)} images; give one entry per image")
    if isinstance(max_dets, bool) or not isinstance(max_dets, (int, np.integer)) or max_dets < 1:
        raise DataError(f"max_dets must be a positive integer, not {max_dets!r}")
    n_cls = len(labels)
    if len({str(name) for name in labels}) != n_cls:
        raise DataError("`labels` repeats a class name; give each class a distinct name")
    scores: list[list[np.ndarray]] = [[] for _ in range(n_cls)]
    matches: list[list[np.ndarray]] = [[] for _ in range(n_cls)]
    n_gt = np.zeros(n_cls, dtype=np.int64)
    n_det = np.zeros(n_cls, dtype=np.int64)
    for i, (det, truth) in enumerate(zip(detections, truths)):
        d_boxes, d_labels, d_scores = _image(det, i, "detections", n_cls, scored=True)
        g_boxes, g_labels = _image(truth, i, "truths", n_cls, scored=False)
        n_gt += np.bincount(g_labels, minlength=n_cls)
        n_det += np.bincount(d_labels, minlength=n_cls)
        for c in np.union1d(d_labels, g_labels).astype(int):
            keep = np.flatnonzero(d_labels == c)
            keep = keep[np.argsort(-d_scores[keep], kind="mergesort")][:max_dets]
            ious = iou_matrix(d_boxes[keep], g_boxes[g_labels == c])
            scores[c].append(d_scores[keep])
            matches[c].append(_match(ious))
    per_class: dict[str, dict[str, Any]] = {}
    ap50, ap50_95, ap75 = [], [], []
    for c, name in enumerate(labels):
        entry: dict[str, Any] = {"ap50": None, "ap50_95": None, "gt": int(n_gt[c]), "detections": int(n_det[c])}
        if n_gt[c] > 0:
            curve = _ap_curve(scores[c], matches[c], int(n_gt[c]))
            entry["ap50"] = float(curve[_T50].mean())
            entry["ap50_95"] = float(curve.mean())
            ap50.append(entry["ap50"])
            ap50_95.append(entry["ap50_95"])
            ap75.append(float(curve[_T75].mean()))
        per_class[str(name)] = entry
    return {
        "map50": _mean(ap50),
        "map50_95": _mean(ap50_95),
        "map75": _mean(ap75),
        "per_class": per_class,
        "images": len(truths),
        "gt": int(n_gt.sum()),
        "iou_thresholds": [round(float(t), 2) for t in IOU_THRESHOLDS],
        "max_dets": int(max_dets),
        "method": f"COCO (101-point interpolated precision, IoU 0.50:0.05:0.95, area all, maxDets {int(max_dets)})",
    }
