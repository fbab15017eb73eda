"""The result schema every task's run writes (``RUN_DIR/result.json``) and the agent reports.

Common keys, whatever the task: ``status`` (succeeded | cancelled | failed …), ``task`` (the bundle's row in
:mod:`ftedge.bundle.tasks`), ``stop_reason``, ``epochs_run``, ``best_epoch``, ``metrics`` and ``baseline``
(tuned and untuned, on the same validation data), ``promoted``, ``duration_s``, ``samples``, ``skipped``,
``engine`` and ``headline`` — the task's headline metric, tuned and untuned
(``{"metric", "label", "higher_is_better", "tuned", "untuned"}``), which the fleet shows without knowing the
task. Each task adds its own keys (``search`` for ``--auto``, ``router`` for causal LMs, ``dropped_boxes`` for
detectors …). A warm-started run (every task) adds ``warm_start`` (``{"from": DIR, "version": "vNNNN" | None}``),
``previous`` (the starting model's metrics on the same split) and ``previous_gain`` (candidate − previous on the
task's primary metric; promoted only when it is positive): :mod:`ftedge.runtime.training.warm_start`.
"""

from __future__ import annotations

from typing import Any, TypedDict

from ftedge.bundle.tasks import task_of


class Headline(TypedDict):
    metric: str
    label: str
    higher_is_better: bool
    tuned: float | None
    untuned: float | None


class TrainResult(TypedDict, total=False):
    status: str
    task: str
    stop_reason: str
    epochs_run: int
    best_epoch: int | None
    metrics: dict[str, Any]
    baseline: dict[str, Any]
    promoted: bool
    duration_s: float
    samples: dict[str, int]
    skipped: list[dict[str, str]]
    engine: str
    headline: Headline
    providers: dict[str, dict[str, Any]]   # per stage: ort_backend._Session.placement()
    warm_start: dict[str, Any]             # warm-started runs: {"from": DIR, "version": "vNNNN" | None}
    previous: dict[str, Any] | None        # the starting model's metrics on the same split
    previous_gain: float | None            # candidate − previous, the task's primary metric


COMMON_KEYS = ("status", "task", "stop_reason", "epochs_run", "best_epoch", "metrics", "baseline", "promoted",
               "duration_s", "samples", "skipped", "engine", "headline", "providers")


def complete(result: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """``result`` with the common keys its trainer does not write itself: ``task`` and ``headline`` from the
    bundle's task row, ``epochs_run``, ``providers`` (empty when no session was measured; ``status`` stays the
    first key)."""
    row = task_of(manifest)
    result = {"status": result.get("status"), **result, "task": row.name}
    result.setdefault("epochs_run", result.get("epochs_done"))
    result.setdefault("providers", {})
    result["headline"] = row.headline.of(result.get("metrics"), result.get("baseline"))
    return result
