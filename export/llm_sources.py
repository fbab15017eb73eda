"""Compatibility path: ``ftedge export ftedge.export.llm_sources:smollm2`` (the MODEL string in docs and scripts).

The models live in :mod:`ftedge.export.tasks.lm.sources`."""

from ftedge.export.tasks.lm.sources import *  # noqa: F401,F403
