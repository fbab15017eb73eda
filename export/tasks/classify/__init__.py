"""Classification / regression export: a new or kept head (or last blocks) on a frozen backbone
(``head.py`` finds and replaces the head and picks what trains; ``exporter.py`` split, graphs, parity, bundle)."""

from __future__ import annotations

import argparse
from typing import Any

from ftedge.bundle.tasks import Task, lookup
from ftedge.errors import UsageError
from ftedge.export.options import ExportOptions, from_args
from ftedge.export.tasks import ExportTask


def _options(args: argparse.Namespace, row: Task) -> ExportOptions:
    """The shared flags; the manifest's task (classification or regression) follows --loss, so an explicit --task
    that --loss contradicts is refused rather than written as the other task."""
    opts = from_args(args)
    follows = lookup("classification" if opts.loss in ("cross-entropy", "bce") else "regression")
    if args.task and row is not follows:
        raise UsageError(f"--task {args.task} with --loss {opts.loss} would write a {follows.name} bundle: drop --task "
                         "or change --loss (classification: cross-entropy or bce; regression: mse or l1)")
    return opts


def _exporter() -> Any:
    from ftedge.export.tasks.classify.exporter import export_bundle

    return export_bundle


TASK = ExportTask(package="classify", options=_options, exporter=_exporter)
