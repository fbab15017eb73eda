"""The task table: which tasks a bundle can be for — one row each, the one place a task's identity is written.

A bundle's manifest names its task (``"task"``); the row says which manifest section the task owns, which
metric heads its results (``headline``), how ``ftedge inspect`` describes its section, and which package on
each side implements it (``export/tasks/<package>/``, ``runtime/tasks/<package>/``). A manifest naming a task
this table does not have was written by a newer ftedge and is refused when the bundle is loaded; a manifest
without ``task`` predates the field and is a classification bundle.

Adding a task: one row here (and, for ``inspect``, a ``describe`` function), one package per side.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ftedge.errors import BundleError, UsageError

DEFAULT_TASK = "classification"  # manifests written before `task` existed


@dataclass(frozen=True)
class Headline:
    """The one number a task's results lead with: a key of the result's ``metrics`` and ``baseline``."""

    metric: str
    label: str
    higher_is_better: bool = True

    def of(self, metrics: dict[str, Any] | None, baseline: dict[str, Any] | None = None) -> dict[str, Any]:
        """``{"metric", "label", "higher_is_better", "tuned", "untuned"}`` of a result (values may be None)."""
        return {"metric": self.metric, "label": self.label, "higher_is_better": self.higher_is_better,
                "tuned": _number((metrics or {}).get(self.metric)), "untuned": _number((baseline or {}).get(self.metric))}

    def progress(self, record: dict[str, Any]) -> dict[str, Any]:
        """The headline of one epoch's record (``val_<metric>``), for progress messages."""
        return {"metric": self.metric, "label": self.label, "higher_is_better": self.higher_is_better,
                "value": _number(record.get(f"val_{self.metric}"))}


@dataclass(frozen=True)
class Task:
    """One row of the task table."""

    name: str                      # the manifest's `task` value
    package: str                   # export/tasks/<package>, runtime/tasks/<package>
    headline: Headline
    section: str | None = None     # the manifest section the task owns ("llm", "detection"), if any
    aliases: tuple[str, ...] = ()  # other spellings accepted on the command line (`--task detect`)
    summary: str = ""              # one line for --help texts
    describe: Callable[[dict[str, Any]], list[str]] = field(default=lambda _m: [], compare=False)


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v else None


def _describe_llm(m: dict[str, Any]) -> list[str]:
    llm = m.get("llm") if isinstance(m.get("llm"), dict) else {}
    lora, pre = llm.get("lora") or {}, m.get("preprocessing") or {}
    return [f"llm      {llm.get('architecture')}, {llm.get('layers')} blocks: {llm.get('cut')} frozen (cached "
            f"hidden states), {llm.get('trainable_blocks')} with LoRA rank {lora.get('rank')} alpha "
            f"{lora.get('alpha')} on {len(lora.get('adapted') or [])} projections; {pre.get('max_length')} "
            f"tokens; decoder {llm.get('decoder_weights', 'fp32')}, adapter {llm.get('adapter')}"]


def _describe_detection(m: dict[str, Any]) -> list[str]:
    det = m.get("detection") if isinstance(m.get("detection"), dict) else {}
    pre, nms = m.get("preprocessing") or {}, det.get("nms") or {}
    return [f"detect   anchor-free head on {', '.join(det.get('feature_maps') or [])} (strides "
            f"{det.get('strides')}, {det.get('points')} points, {det.get('head_channels')} channels); "
            f"letterbox {pre.get('size')}; NMS IoU {nms.get('iou_threshold')}, score >= "
            f"{nms.get('score_threshold')}, {nms.get('max_per_class')} per class in the graph"]


TASKS: tuple[Task, ...] = (
    Task("classification", "classify", Headline("accuracy", "accuracy"), aliases=("classify",),
         summary="a new or kept head (or last blocks) on a frozen backbone; cross-entropy or multi-label bce"),
    Task("regression", "classify", Headline("mae", "MAE", higher_is_better=False),
         summary="the classification machinery with an mse/l1 loss"),
    Task("causal-lm", "lm", Headline("perplexity", "perplexity", higher_is_better=False), section="llm",
         aliases=("lm", "llm"), summary="LoRA on a causal LM's top blocks, trained on cached hidden states",
         describe=_describe_llm),
    Task("detection", "detect", Headline("map50", "mAP@0.5"), section="detection", aliases=("detect",),
         summary="an anchor-free detection head on a frozen backbone's feature maps, NMS in the graph",
         describe=_describe_detection),
)
_BY_NAME: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add a row (tests register toy tasks this way); a name or alias already taken is an error."""
    for key in (task.name, *task.aliases):
        if key in _BY_NAME and _BY_NAME[key] is not task:
            raise ValueError(f"task name {key!r} is taken")
    for key in (task.name, *task.aliases):
        _BY_NAME[key] = task
    return task


def unregister(task: Task) -> None:
    for key in (task.name, *task.aliases):
        if _BY_NAME.get(key) is task:
            del _BY_NAME[key]


for _t in TASKS:
    register(_t)


def all_tasks() -> list[Task]:
    """Every registered task, each once, in table order."""
    seen: dict[int, Task] = {}
    for t in _BY_NAME.values():
        seen.setdefault(id(t), t)
    return list(seen.values())


def lookup(name: str) -> Task:
    """The task called ``name`` (or one of its aliases), for command-line input; else UsageError."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UsageError(f"unknown task {name!r}; use one of {', '.join(choices())}") from None


def choices() -> list[str]:
    """Every name and alias (``--task`` choices)."""
    return list(_BY_NAME)


def task_of(manifest: dict[str, Any], where: str = "bundle") -> Task:
    """The task a manifest (or a run's result.json / model.json) is for; an unknown one is refused."""
    name = manifest.get("task")
    if name is None:
        return _BY_NAME[DEFAULT_TASK]
    task = _BY_NAME.get(name) if isinstance(name, str) else None
    if task is None:
        shown = name if isinstance(name, str) else json.dumps(name)
        raise BundleError(f"{where}: this bundle needs a newer ftedge (task {shown[:64]!r}): upgrade ftedge on the "
                          "device")
    return task


def bundle_task(path: str | Path) -> Task:
    """The task of a bundle directory, or of the bundle a run directory or model version was trained from.

    Reads ``manifest.json``, else ``result.json``, else ``model.json`` (no hashing; the loader verifies later).
    """
    p = Path(path)
    for name in ("manifest.json", "result.json", "model.json"):
        try:
            obj = json.loads((p / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(obj, dict) and "task" in obj:
            return task_of(obj, str(p))
    return _BY_NAME[DEFAULT_TASK]
