"""Calibration feeds for the static (QDQ) int8 backbone: real samples from an .npz (one array per model input, the
format of ``ftedge train --data``), or the export's own random sample inputs when none is given."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from ftedge.bundle.manifest import TensorSpec
from ftedge.errors import UsageError
from ftedge.export.onnx_export import sample_inputs

CALIBRATION_SAMPLES = 64  # samples calibration runs at most: the first N of the file (ranges settle well before)
CALIBRATION_BATCH = 8     # samples per calibration run (the backbone takes any batch)
# MinMax, not Percentile: closer to fp32 on MiniLM (logit diff 0.060 vs 0.082), about equal on the zoo CNN
CALIBRATION_METHOD = "minmax"


Feeds = list[dict[str, np.ndarray]]


def calibration_feeds(specs: list[TensorSpec], path: Path | None, seed: int = 0) -> tuple[Feeds, int]:
    """(feeds in batches of CALIBRATION_BATCH, the number of samples) for ``specs``: from ``path`` or synthetic."""
    if path is None:
        tensors = sample_inputs(specs, CALIBRATION_SAMPLES, seed=seed)
        arrays = {s.name: t.numpy() for s, t in zip(specs, tensors)}
    else:
        arrays = _load(path, specs)
    n = len(next(iter(arrays.values())))
    return [{k: v[i:i + CALIBRATION_BATCH] for k, v in arrays.items()} for i in range(0, n, CALIBRATION_BATCH)], n


def _load(path: Path, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """The first CALIBRATION_SAMPLES rows of each input's array, checked against its spec (UsageError if not). Only
    those rows are read and decompressed (memory: CALIBRATION_SAMPLES samples of the model's inputs, whatever the file
    holds)."""
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
            missing = [s.name for s in specs if s.name not in names]
            if missing:
                raise UsageError(f"--calibration-data {path} lacks array(s) {', '.join(missing)} (it has "
                                 f"{', '.join(names) or 'none'}): give one array per model input, named as --input")
            for spec in specs:
                with zf.open(f"{spec.name}.npy") as f:
                    out[spec.name] = _first_rows(f, path, spec)
    except UsageError:
        raise
    except Exception as exc:  # zipfile, zlib, numpy's header parser: a damaged or foreign file
        raise UsageError(f"cannot read --calibration-data {path}: {exc}; expected a .npz written by numpy.savez "
                         "with one array per model input") from exc
    counts = {len(a) for a in out.values()}
    if len(counts) != 1 or 0 in counts:
        raise UsageError(f"--calibration-data {path}: the arrays need the same number of rows, at least one "
                         f"(got {', '.join(f'{k}: {len(v)}' for k, v in out.items())})")
    return out


def _first_rows(f: IO[bytes], path: Path, spec: TensorSpec) -> np.ndarray:
    """Up to CALIBRATION_SAMPLES rows of one .npy member, its header checked against ``spec`` before any data."""
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise UsageError(f"--calibration-data {path}: array {spec.name!r} is .npy format {version}; save it with "
                         "numpy.savez")
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    if not shape or list(shape[1:]) != spec.sample_shape or shape[0] < 0:
        raise UsageError(f"--calibration-data {path}: array {spec.name!r} has shape {list(shape)}; the input takes "
                         f"[N, {', '.join(map(str, spec.sample_shape))}]")
    if dtype.hasobject or not np.can_cast(dtype, spec.dtype, casting="same_kind"):
        raise UsageError(f"--calibration-data {path}: array {spec.name!r} is {dtype}; the input is {spec.dtype}")
    if fortran and len(shape) > 1:
        raise UsageError(f"--calibration-data {path}: array {spec.name!r} is Fortran-ordered: save "
                         "numpy.ascontiguousarray(a)")
    rows = min(shape[0], CALIBRATION_SAMPLES)
    count = rows * math.prod(spec.sample_shape)
    data = f.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise UsageError(f"--calibration-data {path}: array {spec.name!r} is truncated")
    arr = np.frombuffer(data, dtype, count).reshape([rows, *spec.sample_shape]).astype(spec.dtype)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise UsageError(f"--calibration-data {path}: array {spec.name!r} holds NaN or infinite values")
    return arr
