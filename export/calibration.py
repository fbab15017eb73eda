"""Calibration feeds for the static (QDQ) int8 backbone: real samples from an .npz (one array per model input, the
format of ``ftedge train --data``), or the export's own random sample inputs when none is given."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ftedge.bundle.manifest import TensorSpec
from ftedge.errors import UsageError
from ftedge.export.onnx_export import sample_inputs

CALIBRATION_SAMPLES = 64  # samples calibration runs at most: the first N of the file (ranges settle well before)
CALIBRATION_BATCH = 8     # samples per calibration run (the backbone takes any batch)
# MinMax, not Percentile: closer to fp32 on MiniLM (logit diff 0.060 vs 0.082), about equal on the zoo CNN
CALIBRATION_METHOD = "minmax"


def calibration_feeds(specs: list[TensorSpec], path: Path | None, seed: int = 0) -> tuple[list[dict[str, np.ndarray]], int]:
    """(feeds in batches of CALIBRATION_BATCH, the number of samples) for ``specs``: from ``path`` or synthetic."""
    if path is None:
        tensors = sample_inputs(specs, CALIBRATION_SAMPLES, seed=seed)
        arrays = {s.name: t.numpy() for s, t in zip(specs, tensors)}
    else:
        arrays = _load(path, specs)
    n = len(next(iter(arrays.values())))
    return [{k: v[i:i + CALIBRATION_BATCH] for k, v in arrays.items()} for i in range(0, n, CALIBRATION_BATCH)], n


def _load(path: Path, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """The first CALIBRATION_SAMPLES rows of each input's array, checked against its spec (UsageError if not)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            missing = [s.name for s in specs if s.name not in names]
            if missing:
                raise UsageError(f"--calibration-data {path} lacks array(s) {', '.join(missing)} (it has "
                                 f"{', '.join(names) or 'none'}): give one array per model input, named as --input")
            arrays = {s.name: z[s.name][:CALIBRATION_SAMPLES] for s in specs}
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"cannot read --calibration-data {path}: {exc}; expected a .npz written by numpy.savez "
                         "with one array per model input") from exc
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        arr = arrays[spec.name]
        if arr.ndim == 0 or list(arr.shape[1:]) != spec.sample_shape:
            raise UsageError(f"--calibration-data {path}: array {spec.name!r} has shape {list(arr.shape)}; the input "
                             f"takes [N, {', '.join(map(str, spec.sample_shape))}]")
        if not np.can_cast(arr.dtype, spec.dtype, casting="same_kind"):
            raise UsageError(f"--calibration-data {path}: array {spec.name!r} is {arr.dtype}; the input is {spec.dtype}")
        arr = arr.astype(spec.dtype, copy=False)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise UsageError(f"--calibration-data {path}: array {spec.name!r} holds NaN or infinite values")
        out[spec.name] = arr
    counts = {len(a) for a in out.values()}
    if len(counts) != 1 or 0 in counts:
        raise UsageError(f"--calibration-data {path}: the arrays need the same number of rows, at least one "
                         f"(got {', '.join(f'{k}: {len(v)}' for k, v in out.items())})")
    return out
