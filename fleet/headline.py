"""A job's headline: the one metric that says how good its model is, as the device reports it.

Agents put it in ``jobs/{job}/progress`` and ``jobs/{job}/result`` (next to ``task`` and, in results,
``epochs_run``): ``{"metric": "accuracy", "label": "accuracy", "higher_is_better": true, "tuned": 0.91,
"untuned": 0.80}`` in a result (``metric`` is the key in ``final``/``baseline``; ``tuned``/``untuned`` may be
null) and ``{…, "value": 0.85}`` in a progress message (that epoch's ``metrics["val_" + metric]``).
:mod:`~ftedge.fleet.validate` type-checks it. The fleet shows whatever headline a message carries — any task,
any metric, with its label — and never branches on task or metric names itself: ``fleet status``, ``fleet
train``, the dashboard and the ``ftedge_job_val_headline`` gauge all read it through this module.

**Compatibility with agents from before the headline field.** Their messages carry no ``headline``; for them
only, and here only, it is guessed from the metric keys as the fleet did before: a progress message's
``metrics`` name ``val_perplexity`` (a causal LM, lower is better), else ``val_map50`` (a detector,
"mAP@0.5"), else ``val_accuracy``; a result's ``final`` names ``map50``, else ``accuracy`` (a causal LM's
result was shown by its answer accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from .validate import finite

# Agents before the headline field: the metrics the fleet recognised, in the order it looked for them
# (metric, label, higher is better, also looked for in a result's final).
_GUESSES = (("perplexity", "perplexity", False, False), ("map50", "mAP@0.5", True, True),
            ("accuracy", "accuracy", True, True))


@dataclass(frozen=True)
class Headline:
    """The headline of one message (``reported``) or one guessed for an agent from before the field."""

    metric: str                     # the key in final/baseline; progress reports metrics["val_" + metric]
    label: str                      # how to name it on screen, e.g. "mAP@0.5"
    higher_is_better: bool | None = True
    tuned: float | None = None      # result: the personalized model's value
    untuned: float | None = None    # result: the shipped model's value
    value: float | None = None      # progress: this epoch's validation value
    reported: bool = True           # False: guessed from the metric keys (see the module docstring)

    def show(self, v: float | None) -> str:
        """``v`` as the dashboard prints it: a percentage for a higher-is-better score whose known values all lie
        in [0, 1] (accuracy, mAP, IoU, F1, …), else four significant digits; ``—`` when unknown."""
        if v is None:
            return "—"
        known = [x for x in (self.tuned, self.untuned, self.value, v) if x is not None]
        if self.higher_is_better and all(0.0 <= x <= 1.0 for x in known):
            return f"{v:.1%}"
        return f"{v:.4g}"


def _obj(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _reported(body: dict[str, Any]) -> Headline | None:
    """The headline a message carries, if it has a usable one (a stored row may predate validation)."""
    h = _obj(body.get("headline"))
    metric = h.get("metric")
    if not isinstance(metric, str) or not metric:
        return None
    label = h.get("label")
    better = h.get("higher_is_better")
    return Headline(metric, label if isinstance(label, str) and label else metric,
                    better if isinstance(better, bool) else None,
                    finite(h.get("tuned")), finite(h.get("untuned")), finite(h.get("value")))


def _guess(reports: Iterable[dict[str, Any]], prefix: str) -> tuple[str, str, bool]:
    """Compatibility: the metric an agent from before the headline field meant, from the keys it reported
    (``prefix`` ``val_``: epoch metrics; ``""``: a result's ``final``)."""
    reports = list(reports)
    for metric, label, better, in_results in _GUESSES:
        if (prefix or in_results) and any(r.get(prefix + metric) is not None for r in reports):
            return metric, label, better
    return _GUESSES[-1][:3]


def of_result(body: dict[str, Any] | None) -> Headline:
    """The headline of a ``result`` body: its ``headline``, or (older agents) the guess from ``final``."""
    body = _obj(body)
    h = _reported(body)
    if h is not None:
        return h
    final, base = _obj(body.get("final")), _obj(body.get("baseline"))
    metric, label, better = _guess([final], "")
    return Headline(metric, label, better, tuned=finite(final.get(metric)), untuned=finite(base.get(metric)),
                    reported=False)


def gain(h: Headline) -> float | None:
    """``tuned − untuned`` of a result's headline, signed so that higher is better whatever the metric (a loss
    that fell is a positive gain); None unless both are known."""
    if h.tuned is None or h.untuned is None:
        return None
    return (h.tuned - h.untuned) * (1.0 if h.higher_is_better is not False else -1.0)


def of_progress(body: dict[str, Any] | None) -> Headline:
    """The headline of a ``progress`` body: its ``headline``, or (older agents) the guess from ``metrics``."""
    body = _obj(body)
    h = _reported(body)
    if h is not None:
        return h
    metrics = _obj(body.get("metrics"))
    metric, label, better = _guess([metrics], "val_")
    return Headline(metric, label, better, value=finite(metrics.get("val_" + metric)), reported=False)


def of_job(progress: list[dict[str, Any]], result: dict[str, Any] | None) -> Headline:
    """The headline a job's charts follow: the result's, else the newest progress message's, else (older
    agents) the guess from every epoch's metrics."""
    for body in (_obj(result), *map(_obj, reversed(progress))):
        h = _reported(body)
        if h is not None:
            return h
    metric, label, better = _guess((_obj(p.get("metrics")) for p in map(_obj, progress)), "val_")
    return Headline(metric, label, better, reported=False)


def series(progress: list[dict[str, Any]], metric: str) -> list[float | None]:
    """``metric``'s validation value per epoch: each message's headline value where it reports this metric,
    else its ``metrics["val_" + metric]``."""
    out: list[float | None] = []
    for p in map(_obj, progress):
        h = _reported(p)
        out.append(h.value if h is not None and h.metric == metric and h.value is not None
                   else finite(_obj(p.get("metrics")).get("val_" + metric)))
    return out
