"""Classification and regression metrics (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def classification_metrics(logits: np.ndarray, y: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 (over classes present in truth or prediction), confusion matrix, per-class counts."""
    n = max(len(labels), int(logits.shape[1]))
    pred = logits.argmax(axis=1)
    cm = confusion(y, pred, n)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    denom = support + predicted
    present = denom > 0
    f1 = np.where(present, 2 * tp / np.maximum(denom, 1), 0.0)
    return {
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "per_class": {labels[i] if i < len(labels) else str(i): {"support": int(support[i]), "correct": int(tp[i]),
                                                               "predicted": int(predicted[i])} for i in range(n)},
        "confusion_matrix": cm.tolist(),
    }


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


def task_metrics(loss: str, outputs: np.ndarray, y: np.ndarray, labels: list[str]) -> dict[str, Any]:
    if loss == "cross-entropy":
        return classification_metrics(outputs, y, labels)
    if loss == "bce":
        return multilabel_metrics(outputs, y)
    return regression_metrics(outputs, y)


def primary(loss: str, metrics: dict[str, Any]) -> float:
    """The number the gate and early stopping maximise: accuracy, or -MAE for regression."""
    return float(metrics["accuracy"]) if loss in ("cross-entropy", "bce") else -float(metrics["mae"])
