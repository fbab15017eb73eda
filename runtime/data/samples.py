"""Local training data → arrays matching a bundle's inputs.

Formats (docs/training.md):
- a folder per label, ``PATH/<label>/<sample>``, each file decoded by the decoder registered for its
  extension (``.npy`` here; audio, images and text register theirs through :func:`register_decoder`);
- a ``.npz`` with one array per bundle input name plus ``labels``.
Unreadable or mismatched samples are skipped and reported, never fatal unless nothing usable remains.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ftedge.errors import DataError
from ftedge.bundle.manifest import TensorSpec


@dataclass
class ModelIO:
    """What data loading needs to know about a model: its inputs, labels, loss, preprocessing."""

    inputs: list[TensorSpec]
    labels: list[str]
    loss: str
    preprocessing: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None   # the bundle or run directory (where e.g. tokenizer.json lives)

    @property
    def classification(self) -> bool:
        return self.loss == "cross-entropy"

    @classmethod
    def from_manifest(cls, m: dict[str, Any], root: str | Path | None = None) -> "ModelIO":
        return cls([TensorSpec.from_json(t) for t in m["inputs"]], list(m.get("labels") or []), m["loss"],
                   dict(m.get("preprocessing") or {}), None if root is None else Path(root))


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]          # name -> [N, ...]
    targets: np.ndarray                    # int64 [N] class indices, or float32 [N, ...] regression targets
    sources: list[str]                     # where each sample came from
    skipped: list[dict[str, str]]          # {"file": …, "reason": …}
    label_names: list[str]
    notes: dict[str, list[str]] = field(default_factory=dict)  # kept samples a loader changed: {"truncated": [...]}
    _hashes: list[str] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.sources)

    def subset(self, idx: np.ndarray) -> "Dataset":
        return Dataset({k: v[idx] for k, v in self.inputs.items()}, self.targets[idx],
                       [self.sources[i] for i in idx], [], self.label_names)

    def sample_hashes(self) -> list[str]:
        """Content hash of each sample (all inputs, dtype and shape included): the embedding-cache key part."""
        if self._hashes is not None:
            return self._hashes
        out = []
        for i in range(len(self)):
            h = hashlib.sha256()
            for name in sorted(self.inputs):
                a = np.ascontiguousarray(self.inputs[name][i])
                h.update(f"{name}|{a.dtype}|{a.shape}|".encode())
                h.update(a.tobytes())
            out.append(h.hexdigest())
        self._hashes = out
        return out


# A decoder turns one file into {input name: array of one sample}; it raises on unreadable input. It may add
# {NOTE_KEY: remark} for a sample it kept but changed (text: "truncated"); Dataset.notes lists those.
NOTE_KEY = "__note__"
Decoder = Callable[[Path, ModelIO], dict[str, np.ndarray]]
_DECODERS: dict[str, Decoder] = {}


def register_decoder(extension: str, decoder: Decoder) -> None:
    """Let a modality (audio, images, text) decode its files in folder-per-label data."""
    _DECODERS[extension.lower()] = decoder


def _decode_npy(path: Path, io: ModelIO) -> dict[str, np.ndarray]:
    if len(io.inputs) != 1:
        raise ValueError(f"a .npy sample fills one input, the bundle has {len(io.inputs)}: use a .npz file")
    return {io.inputs[0].name: np.load(path, allow_pickle=False)}


register_decoder(".npy", _decode_npy)


def _conform(spec: TensorSpec, arr: np.ndarray) -> np.ndarray:
    """Check one sample against its spec; cast safely (e.g. float64 → float32, int32 → int64)."""
    arr = np.asarray(arr)
    if list(arr.shape) != spec.sample_shape:
        raise ValueError(f"shape {list(arr.shape)} does not match input {spec.name!r} {spec.sample_shape}")
    want = np.dtype(spec.dtype)
    if arr.dtype != want:
        if arr.dtype.kind == "f" and want.kind in "iub":
            raise ValueError(f"dtype {arr.dtype} cannot feed integer input {spec.name!r}")
        if arr.dtype.kind not in "fiub":
            raise ValueError(f"dtype {arr.dtype} cannot feed input {spec.name!r} ({spec.dtype})")
        arr = arr.astype(want)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError("contains NaN or infinite values")
    return arr


def _assemble(samples: list[dict[str, np.ndarray]], targets: list, sources: list[str], skipped: list[dict[str, str]],
              io: ModelIO, where: str, notes: dict[str, list[str]] | None = None) -> Dataset:
    if not samples:
        reasons = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:5])
        raise DataError(
            f"no usable samples in {where}" + (f" ({len(skipped)} skipped: {reasons})" if skipped else "")
            + ". Expected a folder per label (PATH/<label>/*) or a .npz with arrays named "
            + ", ".join(s.name for s in io.inputs) + " plus 'labels'"
        )
    inputs = {s.name: np.stack([x[s.name] for x in samples]) for s in io.inputs}
    if io.classification:
        y = np.asarray(targets, dtype=np.int64)
    else:
        y = np.asarray(targets, dtype=np.float32)
    return Dataset(inputs, y, sources, skipped, list(io.labels), notes=notes or {})


def _target(label: Any, io: ModelIO) -> Any:
    """Map a raw label to a class index (classification) or a float target (regression)."""
    if io.classification:
        name = label.decode() if isinstance(label, bytes) else label
        if isinstance(name, (str, np.str_)):
            if str(name) in io.labels:
                return io.labels.index(str(name))
            raise ValueError(f"label {str(name)!r} is not one of the bundle's labels {io.labels}")
        idx = int(name)
        if not 0 <= idx < len(io.labels) or idx != name:
            raise ValueError(f"label {name!r} is outside 0..{len(io.labels) - 1}")
        return idx
    t = np.asarray(label, dtype=np.float32)
    if not np.isfinite(t).all():
        raise ValueError("target contains NaN or infinite values")
    return t


def _load_folders(root: Path, io: ModelIO) -> Dataset:
    samples, targets, sources, skipped = [], [], [], []
    notes: dict[str, list[str]] = {}
    label_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for d in label_dirs:
        for f in sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith(".")):
            rel = f.relative_to(root).as_posix()
            decoder = _DECODERS.get(f.suffix.lower())
            if decoder is None:
                skipped.append({"file": rel, "reason": f"no decoder for {f.suffix or 'files without extension'} "
                                f"(known: {', '.join(sorted(_DECODERS))})"})
                continue
            try:
                target = _target(d.name, io)
                arrays = decoder(f, io)
                sample = {s.name: _conform(s, arrays[s.name]) for s in io.inputs}
            except Exception as exc:  # any decode problem skips just this file
                skipped.append({"file": rel, "reason": str(exc) or type(exc).__name__})
                continue
            samples.append(sample)
            targets.append(target)
            sources.append(rel)
            if arrays.get(NOTE_KEY):
                notes.setdefault(str(arrays[NOTE_KEY]), []).append(rel)
    return _assemble(samples, targets, sources, skipped, io, str(root), notes)


def _load_npz(path: Path, io: ModelIO) -> Dataset:
    try:
        z = np.load(path, allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise DataError(f"cannot read {path}: {exc}; expected a .npz written by numpy.savez") from exc
    missing = [n for n in [s.name for s in io.inputs] + ["labels"] if n not in arrays]
    if missing:
        raise DataError(f"{path} lacks array(s) {', '.join(missing)}; it has {', '.join(arrays) or 'none'}")
    n = len(arrays["labels"])
    bad_len = [k for k in [s.name for s in io.inputs] if len(arrays[k]) != n]
    if bad_len:
        raise DataError(f"{path}: array(s) {', '.join(bad_len)} do not have {n} rows like 'labels'")
    # Vectorised: one conversion per array, one reason per bad row (a per-row Python loop cost ~50 ms/1k rows).
    reasons: dict[int, str] = {}
    inputs: dict[str, np.ndarray] = {}
    for spec in io.inputs:
        arr = arrays[spec.name]
        try:
            _conform(spec, np.zeros(arr.shape[1:], arr.dtype))  # shape and dtype rules, once
        except ValueError as exc:
            reasons.update({i: str(exc) for i in range(n) if i not in reasons})
            continue
        arr = arr.astype(spec.dtype, copy=False)
        if arr.dtype.kind == "f":
            bad = ~np.isfinite(arr.reshape(n, -1)).all(axis=1)
            reasons.update({int(i): "contains NaN or infinite values" for i in np.flatnonzero(bad) if i not in reasons})
        inputs[spec.name] = arr
    targets: list = [None] * n
    memo: dict = {}
    for i, raw in enumerate(arrays["labels"]):
        key = raw.item() if hasattr(raw, "item") and np.ndim(raw) == 0 else None
        try:
            if key is not None and key in memo:
                targets[i] = memo[key]
            else:
                targets[i] = _target(raw, io)
                if key is not None:
                    memo[key] = targets[i]
        except Exception as exc:
            reasons.setdefault(i, str(exc))
    keep = np.asarray([i for i in range(n) if i not in reasons], dtype=np.int64)
    skipped = [{"file": f"{path.name}[{i}]", "reason": reasons[i]} for i in sorted(reasons)]
    if len(keep) == 0:
        return _assemble([], [], [], skipped, io, str(path))
    y = np.asarray([targets[i] for i in keep], dtype=np.int64 if io.classification else np.float32)
    return Dataset({k: np.ascontiguousarray(v[keep]) for k, v in inputs.items()}, y,
                   [f"{path.name}[{i}]" for i in keep], skipped, list(io.labels))


_FILE_LOADERS: dict[str, Callable[[Path, ModelIO], Dataset]] = {".npz": _load_npz}


def register_file_loader(extension: str, loader: Callable[[Path, ModelIO], Dataset]) -> None:
    """Whole-file datasets (``.npz`` here; e.g. ``.csv`` for text bundles)."""
    _FILE_LOADERS[extension.lower()] = loader


def load_dataset(path: str | Path, io: ModelIO) -> Dataset:
    """Load ``path`` for a model with inputs/labels ``io``; see the module docstring for formats."""
    path = Path(path)
    if path.is_dir():
        return _load_folders(path, io)
    if path.is_file():
        loader = _FILE_LOADERS.get(path.suffix.lower())
        if loader is None:
            raise DataError(f"{path}: unknown data file type; use a folder per label or one of {', '.join(_FILE_LOADERS)}")
        return loader(path, io)
    raise DataError(f"--data {path} does not exist")


from ftedge.runtime.data import audio as _audio  # noqa: E402,F401  (registers .wav; audio imports this module)
from ftedge.runtime.data import image as _image  # noqa: E402,F401  (registers .png/.jpg/.jpeg)
from ftedge.runtime.data import text as _text  # noqa: E402,F401  (registers .txt and .csv)
