"""Which execution providers each stage of a run uses: ``--providers`` for every session (backbone, training
step, head, decoder), ``--step-providers`` for the training step and head alone — the NPU pattern: an
inference-only accelerator runs the frozen backbone, the CPU (or GPU) trains. A name this box's onnxruntime
lacks is left out with a warning (the agent refuses it before a job starts: ``Option.check``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

from ftedge.runtime.engines.ort_backend import available_providers, resolve_providers

log = logging.getLogger(__name__)

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
                        ", ".join(gone), ", ".join(available_providers()))
        return cls(chosen, step)


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


_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64", "tensor(int32)": "int32",
           "tensor(bool)": "bool", "tensor(float16)": "float16", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


def probe_bundle(bundle: Any, placement: Placement) -> dict[str, dict[str, Any]]:
    """Per graph of ``bundle`` (backbone, int8 backbone, the portable engine's step and head): the placement its
    session gets on ``placement`` (``ftedge inspect --providers``). Each graph runs once on zeros (symbolic
    dimensions 1) so the session's own profile counts the CPU fallbacks; a graph that cannot run on zeros reports
    why (``probe_error``) with what loading alone tells."""
    import numpy as np

    from ftedge.runtime.engines.engine import bundle_engines
    from ftedge.runtime.engines.ort_backend import InferenceModel

    roles = bundle.manifest.get("roles") or {}
    graphs = {r: (bundle.path / roles[r], placement.providers) for r in ("backbone", "backbone_int8")
              if isinstance(roles.get(r), str)}
    files = (bundle_engines(bundle).get("portable") or {}).get("files") or {}
    graphs |= {r: (bundle.path / files[r], placement.step) for r in ("step", "head") if r in files}
    out: dict[str, dict[str, Any]] = {}
    for stage, (path, providers) in graphs.items():
        model = InferenceModel(path, providers)
        feeds = {}
        for i in model.session.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
            feeds[i.name] = np.zeros(shape, _DTYPES.get(i.type, "float32"))
        try:
            model.run(feeds)
            out[stage] = model.placement()
        except Exception as exc:  # noqa: BLE001 - zeros may not be a valid input (e.g. a reshape by a value)
            out[stage] = model.placement() | {"probe_error": " ".join(str(exc).split())[:300]}
    return out
