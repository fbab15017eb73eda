"""Classification / regression export: a new or kept head (or last blocks) on a frozen backbone
(``head.py`` finds and replaces the head and picks what trains; ``exporter.py`` split, graphs, parity, bundle)."""

from __future__ import annotations

import argparse
from typing import Any

from ftedge.bundle.tasks import Task
from ftedge.export.options import ExportOptions, from_args
from ftedge.export.tasks import ExportTask


def _options(args: argparse.Namespace, row: Task) -> ExportOptions:
    return from_args(args)  # classification or regression: the manifest's task follows --loss


def _exporter() -> Any:
    from ftedge.export.tasks.classify.exporter import export_bundle

    return export_bundle


TASK = ExportTask(package="classify", options=_options, exporter=_exporter)
