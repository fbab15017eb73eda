"""``--providers`` for every verb: one parser of the execution-provider list (``CUDA,CPU`` or full names)."""

from __future__ import annotations

import argparse
from typing import Sequence


def full_names(names: Sequence[str]) -> list[str]:
    """``["CUDA", " CPU"]`` → ``["CUDAExecutionProvider", "CPUExecutionProvider"]`` (blanks dropped)."""
    wanted = [p.strip() for p in names if p.strip()]
    return [p if p.endswith("ExecutionProvider") else f"{p}ExecutionProvider" for p in wanted]


def parse_providers(text: str | None) -> list[str] | None:
    """A comma-separated provider list as full names; None (the default: CPU) for an empty one."""
    return full_names(text.split(",")) or None if text else None


def add_providers_argument(parser: argparse.ArgumentParser, what: str = "execution providers (default CPU)") -> None:
    parser.add_argument("--providers", metavar="P1,P2", type=parse_providers, help=what)
