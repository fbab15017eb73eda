"""Warm start: continue training from a model this box already has (``--warm-start DIR``), for every task.

``DIR`` is a device agent's model version (``STATE/models/vNNNN``: model.json + result.json + the trained
parameters) or a finished run directory. The trained parameters are ``weights.safetensors`` (classification and
detection runs: the promoted trainable parameters and buffers, keys ``p:NAME`` / ``b:NAME``, the portable engine's
checkpoint format without optimizer moments) or ``adapter.safetensors`` (causal LMs: the LoRA adapter).

A warm-started run starts its trainable part from those values instead of the bundle's initial ones, with zero
optimizer moments and step 0. Its model must come from the same bundle (model.json's ``name``, and the bundle's
files digest where the model recorded it). The file is copied into the run directory when the run first starts
(:data:`RUN_COPY`), so a resumed run never reads ``DIR`` again (the version may have been pruned meanwhile).

The split: :func:`stable_holdout` holds a sample out by a hash of (seed, its content hash) alone, so the run that
produced the previous model held out the same samples as the warm-started one (for data given as sample files),
and the previous model is never scored on samples it trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ftedge.durable import replace_file
from ftedge.errors import FtedgeError, UsageError

WEIGHTS_FILE = "weights.safetensors"       # classification / detection runs: the promoted parameters + buffers
ADAPTER_FILE = "adapter.safetensors"       # causal-LM runs: the LoRA adapter (and router tensors)
RUN_COPY = "warm_start.safetensors"        # RUN_DIR's own copy of the starting weights (resume reads it)
# A weights file larger than this many times the bundle's initial trainable values (+ slack for an adapter's router
# tensors and the header) is not this bundle's: refused before it is read into memory.
MAX_SIZE_FACTOR = 2
MAX_SIZE_SLACK = 1 << 20
_VERSION_RE = re.compile(r"v\d{4,}")


def bundle_digest(bundle: Any) -> str:
    """One digest of a bundle's files table (every file's sha256): which exact bundle a model belongs to."""
    return hashlib.sha256(json.dumps(bundle.manifest.get("files", {}), sort_keys=True).encode()).hexdigest()


def save_weights(engine: Any, path: str | Path) -> None:
    """``engine``'s trainable parameters and buffers as ``path`` (portable checkpoint format, no optimizer
    moments, steps 0): what a later run warm-starts from. Written to a temporary name, then renamed."""
    from safetensors.numpy import save_file

    path = Path(path)
    values = {f"p:{k}": v for k, v in engine.parameters().items()}
    values |= {f"b:{k}": v for k, v in getattr(engine, "buffer_values", dict)().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(values, os.fspath(tmp), metadata={"engine": "portable", "steps": "0", "kind": "weights"})
    replace_file(tmp, path)


@dataclass(frozen=True)
class WarmStart:
    """A checked warm start: where it came from and the file its values are read from."""

    source: str               # DIR as given
    version: str | None       # "v0003" when DIR is a model version
    origin: Path              # DIR's weights file, or the run's copy on a resumed run

    def record(self) -> dict[str, Any]:
        """result.json's ``warm_start``."""
        return {"from": self.source, "version": self.version}

    def stage(self, run_dir: Path) -> Path:
        """The run directory's copy of the weights (made now if the run has none yet)."""
        copy = Path(run_dir) / RUN_COPY
        if not copy.is_file():
            tmp = copy.with_name(f".{RUN_COPY}.tmp")
            try:
                shutil.copyfile(self.origin, tmp)
            except OSError as exc:
                raise FtedgeError(f"cannot copy the warm-start weights {self.origin} into {run_dir} ({exc}); "
                                  "check the disk, or train without warm_start") from exc
            replace_file(tmp, copy)
        return copy


def resolve(source: str | os.PathLike[str], bundle: Any, weights_file: str, run_dir: str | Path, resume: bool,
            engine: str = "portable") -> WarmStart:
    """Check ``source`` (a model version or run directory) against ``bundle``; a clear error says what to do.
    A resumed run that already copied the weights uses its copy and never looks at ``source``."""
    text = os.fspath(source)
    d = Path(text)
    version = d.name if _VERSION_RE.fullmatch(d.name) else None
    if engine != "portable":
        raise UsageError(f"--warm-start needs the portable engine (this run uses {engine}): pass --engine portable")
    copy = Path(run_dir) / RUN_COPY
    if resume and copy.is_file():
        return WarmStart(text, version, copy)
    what = f"version {version}" if version else f"model directory {text}"
    if not d.is_dir():
        raise UsageError(f"--warm-start {text}: no such directory; name a model version (STATE/models/vNNNN) or a "
                         "finished run directory")
    try:
        model = json.loads((d / "model.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--warm-start {text}: no model.json there; name a model version (STATE/models/vNNNN) "
                         "or a finished run directory") from None
    except (OSError, ValueError) as exc:
        raise FtedgeError(f"{what}: model.json is unreadable ({exc}); train without warm_start") from None
    if not isinstance(model, dict) or model.get("name") != bundle.name:
        other = model.get("name") if isinstance(model, dict) else None
        raise FtedgeError(f"{what} was trained from bundle {other!r}, not {bundle.name!r}: warm-start from a model "
                          "of this bundle, or train without warm_start")
    recorded = model.get("bundle_sha256")
    if recorded is not None and recorded != bundle_digest(bundle):
        raise FtedgeError(f"{what} was trained from another build of bundle {bundle.name!r} (its files differ): "
                          "train without warm_start")
    weights = d / weights_file
    if not weights.is_file():
        raise FtedgeError(f"{what} has no {weights_file} (made by an older ftedge, or by the ort-training engine): "
                          "train without warm_start")
    limit = MAX_SIZE_FACTOR * _init_size(bundle) + MAX_SIZE_SLACK
    if weights.stat().st_size > limit:
        raise FtedgeError(f"{what}: {weights_file} is {weights.stat().st_size} bytes, more than this bundle's "
                          f"trainable part can fill ({limit}): it is not a model of this bundle; train without "
                          "warm_start")
    return WarmStart(text, version, weights)


def _init_size(bundle: Any) -> int:
    """Bytes of the bundle's initial trainable values (the portable engine's ``init`` file)."""
    from ftedge.runtime.engines.engine import bundle_engines

    info = bundle_engines(bundle).get("portable")
    if not info:
        raise UsageError(f"--warm-start needs the portable engine, which bundle {bundle.path} does not carry: "
                         "re-export it with this ftedge")
    return (bundle.path / info["files"]["init"]).stat().st_size


def summary_line(result: dict[str, Any]) -> str | None:
    """What ``ftedge train`` prints about a warm start (None without one)."""
    ws = result.get("warm_start")
    if not ws:
        return None
    gain = result.get("previous_gain")
    return (f"warm start from {ws.get('version') or ws.get('from')}: "
            + ("no held-out score to compare with the previous model" if gain is None else
               f"{gain:+.4f} over the previous model on the same validation split"))


def load_values(path: str | Path, params: Sequence[str], buffers: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """``p:NAME`` / ``b:NAME`` values for the engine from a weights file (``p:``/``b:`` keys) or an adapter
    (bare parameter names; the router's tensors are not parameters and are left out). Every parameter must be
    there; a buffer missing keeps the bundle's."""
    from safetensors.numpy import load_file

    try:
        stored = load_file(os.fspath(path))
    except Exception as exc:
        raise FtedgeError(f"the warm-start weights {path} are unreadable ({exc}); train without warm_start") from exc
    out: dict[str, np.ndarray] = {}
    for kind, names in (("p", params), ("b", buffers)):
        for n in names:
            v = stored.get(f"{kind}:{n}", stored.get(n) if kind == "p" else None)
            if v is not None:
                out[f"{kind}:{n}"] = v
    missing = [n for n in params if f"p:{n}" not in out]
    if missing:
        raise FtedgeError(f"the warm-start weights {path} lack {len(missing)} parameter(s) of this bundle "
                          f"({', '.join(missing[:3])}): train without warm_start")
    return out


# ---- the stable split ---------------------------------------------------------------------------------------

def sample_draw(seed: int, sample_hash: str) -> float:
    """A uniform number in [0, 1) from (seed, a sample's content hash) alone."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}:{sample_hash}".encode()).digest()[:8], "big") / 2.0 ** 64


def stable_holdout(hashes: Sequence[str], groups: Sequence[Any] | None, fraction: float,
                   seed: int) -> np.ndarray:
    """Boolean mask of held-out samples: sample i is held out iff its draw falls below ``fraction``, whatever the
    other samples are; per group (class) of at least two samples, at least one is held out (the lowest draw) and
    at least one trains (the highest). Adding samples never moves a sample from training to validation, except
    where those two per-class minimums decide (a class growing from one sample to two, or from all-held-out)."""
    n = len(hashes)
    draws = np.array([sample_draw(seed, h) for h in hashes], np.float64)
    held = draws < fraction if fraction > 0 else np.zeros(n, bool)
    if fraction <= 0 or n == 0:
        return held
    keys = np.zeros(n, np.int64) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    for g in np.unique(keys):
        members = np.flatnonzero(keys == g)
        if len(members) < 2:
            held[members] = False
            continue
        if not held[members].any():
            held[members[np.argmin(draws[members])]] = True
        if held[members].all():
            held[members[np.argmax(draws[members])]] = False
    return held


def stable_split(hashes: Sequence[str], groups: Sequence[Any] | None, fraction: float,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) sorted index arrays of :func:`stable_holdout`."""
    held = stable_holdout(hashes, groups, fraction, seed)
    return np.flatnonzero(~held).astype(np.int64), np.flatnonzero(held).astype(np.int64)


# ---- the gate ------------------------------------------------------------------------------------------------

def previous_gate(candidate: float | None, previous: float | None) -> tuple[float | None, str | None]:
    """(previous_gain, why not promoted or None): the candidate must beat the previous model on the task's
    primary metric (higher is better)."""
    if candidate is None or previous is None:
        return None, "not promoted: does not beat the active model (no held-out score to compare them by)"
    gain = float(candidate) - float(previous)
    if gain > 0:
        return gain, None
    return gain, (f"not promoted: does not beat the active model ({candidate:.4f} vs {previous:.4f} on the same "
                  "validation split)")
