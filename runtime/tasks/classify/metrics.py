"""Classification and regression metrics (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np


# A dense confusion matrix is written (and printed) only up to this many classes; beyond it a report lists the
# most frequent confusions instead (a 6,000-class matrix is 36 M cells: 793 MB of JSON per epoch).
MAX_CONFUSION_CLASSES = 50
TOP_CONFUSIONS = 20


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def classification_metrics(logits: np.ndarray, y: np.ndarray, labels: list[str], detail: bool = True) -> dict[str, Any]:
    """Accuracy and macro-F1 (over classes present in truth or prediction); with ``detail`` (an evaluation report)
    also per-class counts and the confusion matrix, or for more than ``MAX_CONFUSION_CLASSES`` classes the classes
    present and the ``TOP_CONFUSIONS`` most frequent (truth, prediction, count) confusions.

    Memory and size are O(samples + classes), never classes²: the trainer calls this every epoch.
    """
    n = max(len(labels), int(logits.shape[1]))
    y = np.asarray(y, dtype=np.int64)
    pred = logits.argmax(axis=1)
    tp = np.bincount(y[pred == y], minlength=n).astype(float)
    support, predicted = np.bincount(y, minlength=n), np.bincount(pred, minlength=n)
    denom = support + predicted
    present = denom > 0
    f1 = np.where(present, 2 * tp / np.maximum(denom, 1), 0.0)
    out: dict[str, Any] = {
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
    }
    if not detail:
        return out

    def name(i: int) -> str:
        return labels[i] if i < len(labels) else str(i)

    shown = range(n) if n <= MAX_CONFUSION_CLASSES else np.flatnonzero(present)
    out["per_class"] = {name(int(i)): {"support": int(support[i]), "correct": int(tp[i]),
                                       "predicted": int(predicted[i])} for i in shown}
    if n <= MAX_CONFUSION_CLASSES:
        out["confusion_matrix"] = confusion(y, pred, n).tolist()
    else:
        wrong = pred != y
        pairs, counts = np.unique(np.stack([y[wrong], pred[wrong]], axis=1), axis=0, return_counts=True) \
            if wrong.any() else (np.zeros((0, 2), np.int64), np.zeros(0, np.int64))
        top = np.argsort(-counts, kind="stable")[:TOP_CONFUSIONS]
        out["top_confusions"] = [{"truth": name(int(pairs[k, 0])), "predicted": name(int(pairs[k, 1])),
                                  "count": int(counts[k])} for k in top]
    return out


def multilabel_metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    pred = (logits > 0).astype(np.float32)
    tp = (pred * y).sum(axis=0)
    denom = pred.sum(axis=0) + y.sum(axis=0)
    present = denom > 0
    f1 = np.where(present, 2 * tp / np.maximum(denom, 1), 0.0)
    return {"accuracy": float((pred == y).mean()), "macro_f1": float(f1[present].mean()) if present.any() else float("nan")}


def regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    err = pred.astype(np.float64) - y
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean()))}


def task_metrics(loss: str, outputs: np.ndarray, y: np.ndarray, labels: list[str],
                 detail: bool = True) -> dict[str, Any]:
    """The task's metrics; ``detail=False`` (per epoch) leaves out per-class counts and confusions."""
    if loss == "cross-entropy":
        return classification_metrics(outputs, y, labels, detail)
    if loss == "bce":
        return multilabel_metrics(outputs, y)
    return regression_metrics(outputs, y)


def primary(loss: str, metrics: dict[str, Any]) -> float:
    """The number the gate and early stopping maximise: accuracy, or -MAE for regression."""
    return float(metrics["accuracy"]) if loss in ("cross-entropy", "bce") else -float(metrics["mae"])
