"""The device side of each task: one package per row of the task table (:mod:`ftedge.bundle.tasks`).

Each package (``classify/``, ``lm/``, ``detect/``) defines ``TASK``, a :class:`DeviceTask`: the train options it
takes (declared once, :mod:`ftedge.runtime.training.options`), how it trains (for ``ftedge train`` and the device
agent alike), how ``ftedge train`` / ``ftedge evaluate`` report, and the verbs of its own (``generate``,
``detect``). Importing a package is cheap (declarations only); trainers and numpy load when a run starts.

Everything that depends on the task — the CLI, the agent's job runner and its command validation — asks this
registry; no other module compares task names (``tests/core/test_architecture.py`` checks).
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ftedge.bundle.tasks import Task, all_tasks, bundle_task, task_of
from ftedge.runtime.training.options import Option, OptionSet, union


@dataclass
class TrainRequest:
    """One training run, as the CLI and the agent ask for it. ``options`` are the task's train options as given
    (validated); the task fills in its declared defaults."""

    bundle: Any                        # a bundle path or a loaded (verified) Bundle
    data: str | Path
    run_dir: str | Path
    options: dict[str, Any]
    resume: bool = False
    cache_dir: Path | None = None      # the embedding cache (None: no on-disk cache)
    callbacks: Any = None              # progress/cancellation hooks (the agent's)
    progress: bool = False             # a progress bar on stderr (the CLI)
    bundle_source: str | None = None   # the bundle path to record (the agent trains a pinned copy of it)
    data_root: Path | None = None      # the data may not lead reads outside this folder (the agent's data_root)


@dataclass(frozen=True)
class DeviceTask:
    """What a task package provides to the device runtime.

    ``cli`` names the package's command-line module, imported only when one of its functions is used:
    ``report(result) -> lines`` (what ``ftedge train`` prints), ``run_evaluate(args) -> exit code``, and
    optionally ``evaluate_arguments(group)`` (its ``ftedge evaluate`` flags) and ``register(subparsers)`` (verbs
    of its own, e.g. ``generate``, ``detect``).
    """

    package: str
    options: OptionSet
    train: Callable[[TrainRequest], dict[str, Any]]    # returns the result (also RUN_DIR/result.json)
    cli: str                                            # e.g. "ftedge.runtime.tasks.lm.cli"

    def _cli(self, name: str) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.cli), name, lambda *_a: None)

    def report(self, result: dict[str, Any]) -> list[str]:
        return self._cli("report")(result)

    def evaluate(self, args: argparse.Namespace) -> int:
        return self._cli("run_evaluate")(args)

    def evaluate_arguments(self, group: argparse._ArgumentGroup) -> None:
        self._cli("evaluate_arguments")(group)

    def verbs(self, sub: argparse._SubParsersAction) -> None:
        self._cli("register")(sub)

    def serves(self, manifest: dict[str, Any]) -> bool:
        """Whether a manifest (or a run's model.json) is for this package's task(s); an unknown task raises."""
        return task_of(manifest).package == self.package


_REGISTERED: dict[str, DeviceTask] = {}


def register(task: DeviceTask) -> DeviceTask:
    """Register a task package's ``TASK`` (the built-in packages are found by name; tests register toys)."""
    _REGISTERED[task.package] = task
    return task


def unregister(package: str) -> None:
    _REGISTERED.pop(package, None)


def device_task(task: Task) -> DeviceTask:
    """The device package of a task-table row (``ftedge.runtime.tasks.<package>``)."""
    if task.package not in _REGISTERED:
        module = importlib.import_module(f"{__name__}.{task.package}")
        register(module.TASK)
    return _REGISTERED[task.package]


def for_bundle(bundle: Any) -> tuple[Task, DeviceTask]:
    """(row, package) of a loaded bundle, or of a bundle / run / model-version directory."""
    row = task_of(bundle.manifest, f"bundle {bundle.path}") if hasattr(bundle, "manifest") else bundle_task(bundle)
    return row, device_task(row)


def packages() -> list[tuple[list[Task], DeviceTask]]:
    """Every device package with the task rows it serves, in table order."""
    out: dict[str, tuple[list[Task], DeviceTask]] = {}
    for row in all_tasks():
        out.setdefault(row.package, ([], device_task(row)))[0].append(row)
    return list(out.values())


def all_options() -> dict[str, Option]:
    """Every train option of every task (one declaration per name)."""
    return union(dt.options for _rows, dt in packages())


def option_defaults() -> dict[str, dict[str, Any]]:
    """option name -> {task name: its default} (for --help and the docs' table)."""
    out: dict[str, dict[str, Any]] = {}
    for rows, dt in packages():
        for o in dt.options:
            out.setdefault(o.name, {})[rows[0].name] = o.default
    return out


def options_markdown() -> str:
    """docs/train-options.md: every train option, generated from the declarations (a test keeps the file current)."""
    from ftedge.runtime.training.options import markdown_table

    return ("# Train options\n\n"
            "Generated from `runtime/training/options.py` and the task packages by\n"
            "`python -c 'from ftedge.runtime.tasks import options_markdown as m; print(m(), end=\"\")' > "
            "docs/train-options.md`; `tests/bundle/test_tasks.py` fails when this file is stale.\n\n"
            "The same declarations give `ftedge train`'s flags and the device agent's validation of a `train` command "
            "(its args use the names in parentheses). A flag the bundle's task does not take is refused (exit 2; "
            "the agent replies `bad_args`).\n\n"
            + markdown_table(all_options(), option_defaults()) + "\n")
