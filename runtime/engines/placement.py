"""Which execution providers each stage of a run uses: ``--providers`` for every session (backbone, training
step, head, decoder), ``--step-providers`` for the training step and head alone — the NPU pattern: an
inference-only accelerator runs the frozen backbone, the CPU (or GPU) trains. A name this box's onnxruntime
lacks is left out with a warning (the agent refuses it before a job starts: ``Option.check``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

from ftedge.runtime.engines.ort_backend import resolve_providers

log = logging.getLogger(__name__)

STAGES = ("backbone", "step", "head", "decoder")


@dataclass(frozen=True)
class Placement:
    """The providers of a run's sessions: ``providers`` (backbone, decoder, evaluation) and ``step`` (training
    step and head graphs), each an ordered list of full EP names ending with the CPU EP."""

    providers: list[str]
    step: list[str]

    @classmethod
    def resolve(cls, providers: Sequence[str] | None, step_providers: Sequence[str] | None = None) -> "Placement":
        """From the run's options (short or full names; None: CPU), keeping what this box has."""
        chosen, missing = resolve_providers(providers)
        step, step_missing = resolve_providers(step_providers) if step_providers else (chosen, [])
        gone = list(dict.fromkeys([*missing, *step_missing]))
        if gone:
            log.warning("execution provider(s) unavailable here: %s; left out (this onnxruntime has: %s)",
                        ", ".join(gone), ", ".join(_available()))
        return cls(chosen, step)


def _available() -> list[str]:
    from ftedge.runtime.engines.ort_backend import available_providers

    return available_providers()


def report(*sources: Any) -> dict[str, dict[str, Any]]:
    """``result.json``'s ``providers``: per stage, what its session ran on (see ``ort_backend._Session.placement``).
    ``sources`` are sessions (with ``.placement()``), engines or bundle sessions (with ``.placements()``), or
    ``(stage, session)`` pairs; a None source is skipped."""
    out: dict[str, dict[str, Any]] = {}
    for src in sources:
        if src is None:
            continue
        if isinstance(src, tuple):
            stage, session = src
            if session is not None:
                out[stage] = session.placement()
        else:
            out.update(src.placements())
    return out
