"""Compatibility path: ``ftedge export ftedge.export.detect_sources:mobilenet_v2`` (the MODEL string in docs
and scripts). The backbones live in :mod:`ftedge.export.tasks.detect.sources`."""

from ftedge.export.tasks.detect.sources import *  # noqa: F401,F403
