"""The host side of each task: one package per row of the task table (:mod:`ftedge.bundle.tasks`).

Each package (``classify/``, ``lm/``, ``detect/``) defines ``TASK``, an :class:`ExportTask`: the ``ftedge export``
flags of its own, how it turns the parsed command line into :class:`~ftedge.export.options.ExportOptions`
(refusing flags that do not apply), and its exporter. ``ftedge export --task NAME`` (a task name or alias)
picks the package; no other module compares task names.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ftedge.bundle.tasks import Task, all_tasks

# export_fn(options, progress=..., sign_key=...) -> the written manifest
Exporter = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class ExportTask:
    package: str
    options: Callable[[argparse.Namespace, Task], Any]        # ExportOptions from the command line (UsageError)
    exporter: Callable[[], Exporter]                          # imported when the export runs (torch)
    arguments: Callable[[argparse.ArgumentParser], None] = lambda _p: None  # the task's own flags


_REGISTERED: dict[str, ExportTask] = {}


def register(task: ExportTask) -> ExportTask:
    _REGISTERED[task.package] = task
    return task


def unregister(package: str) -> None:
    _REGISTERED.pop(package, None)


def export_task(row: Task) -> ExportTask:
    """The export package of a task-table row (``ftedge.export.tasks.<package>``)."""
    if row.package not in _REGISTERED:
        register(importlib.import_module(f"{__name__}.{row.package}").TASK)
    return _REGISTERED[row.package]


def packages() -> list[ExportTask]:
    out: dict[str, ExportTask] = {}
    for row in all_tasks():
        out.setdefault(row.package, export_task(row))
    return list(out.values())
