"""Detection export: an anchor-free head on a frozen backbone's feature maps, decoding + NMS in the graph
(``model.py`` head, loss, decoding and reference NMS; ``graphs.py`` the ONNX graphs; ``exporter.py`` manifest and
parity; ``sources.py`` backbones shipped in packages)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from ftedge.bundle.tasks import Task
from ftedge.export.options import ExportOptions, from_args
from ftedge.export.tasks import ExportTask


def _options(args: argparse.Namespace, row: Task) -> ExportOptions:
    return replace(from_args(args, images_need_size=False), task=row.name)  # the exporter refuses what does not apply


def _exporter() -> Any:
    from ftedge.export.tasks.detect.exporter import export_detector

    return export_detector


TASK = ExportTask(package="detect", options=_options, exporter=_exporter)
