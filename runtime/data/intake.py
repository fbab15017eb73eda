"""One new sample → checked with a model's own preprocessing, then filed into a folder-per-label data set.

``ftedge agent add-sample`` (docs/app.md) and :class:`ftedge.runtime.ActiveModel` decode a file exactly as
training does (the decoder registered for its extension, then the input spec's shape/dtype/finiteness check),
so a sample that is filed is one training will use, and a refused one says why. Filing is content-addressed:
``DATA/<label>/<sha256[:16]><ext>``; the bytes checked are the bytes filed (staged in the label folder under a
hidden name, decoded from there, then renamed into place durably), and the same content twice is filed once.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ftedge.runtime.data.samples import _DECODERS, ModelIO, _conform, _target

from ftedge.durable import atomic_writer
from ftedge.errors import DataError

MAX_SAMPLE_BYTES = 64 << 20   # one sample file; a bigger one is refused before it is read (docs/app.md)
DIGEST_CHARS = 16             # hex characters of the sha256 that name a filed sample


@dataclass
class Outcome:
    """What happened to one file: ``filed`` (new), ``duplicate`` (already there) or ``refused`` (``reason``)."""

    file: str
    status: str
    label: str
    reason: str | None = None
    path: str | None = None      # where the sample lies in the data set (filed or duplicate)
    sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def decoder_for(ext: str) -> Any:
    """The decoder of the file extension ``ext`` (".wav"); DataError naming the known ones."""
    ext = ext.lower()
    decoder = _DECODERS.get(ext)
    if decoder is None:
        raise DataError(f"unsupported file type {ext or '(no extension)'}: this model's samples are decoded from "
                        f"{', '.join(sorted(_DECODERS))}; convert the file or pass already-decoded arrays")
    return decoder


def decode_sample(path: str | Path, io: ModelIO, as_ext: str | None = None) -> dict[str, np.ndarray]:
    """One file → ``{input name: array of one sample}``, as training decodes it; DataError with the reason.

    ``as_ext``: decode with the decoder of this extension (a staged copy's own name ends in ``.tmp``).
    """
    path = Path(path)
    decoder = decoder_for(as_ext or path.suffix)
    try:
        arrays = decoder(path, io)
        return {s.name: _conform(s, arrays[s.name]) for s in io.inputs}
    except DataError:
        raise
    except KeyError as exc:
        raise DataError(f"the decoder gave no array for input {exc}; the model expects "
                        f"{[s.name for s in io.inputs]}") from None
    except Exception as exc:
        raise DataError(str(exc) or type(exc).__name__) from exc


def conform_arrays(sample: dict[str, Any], io: ModelIO) -> dict[str, np.ndarray]:
    """Already-decoded arrays of one sample checked against the input spec (cast safely); DataError if not."""
    missing = [s.name for s in io.inputs if s.name not in sample]
    if missing:
        raise DataError(f"sample lacks input(s) {', '.join(missing)}; the model expects "
                        f"{[s.name for s in io.inputs]}")
    try:
        return {s.name: _conform(s, sample[s.name]) for s in io.inputs}
    except ValueError as exc:
        raise DataError(str(exc)) from None


def check_label(label: str, io: ModelIO) -> None:
    """A label that can name a folder of the data set and that training maps to a target; DataError if not."""
    if not isinstance(label, str) or not label or label != label.strip() or label.startswith(".") \
            or "/" in label or "\\" in label or "\0" in label or len(label.encode()) > 255:
        raise DataError(f"label {label!r} cannot name a data folder (empty, hidden, a path or too long)")
    try:
        _target(label, io)
    except ValueError as exc:
        raise DataError(str(exc)) from None


def file_sample(path: str | Path, label: str, data_dir: str | Path, io: ModelIO) -> Outcome:
    """Check ``path`` with the model's preprocessing and file it under ``data_dir/label/``; never raises for a
    bad sample (the outcome says ``refused`` and why)."""
    path, data_dir = Path(path), Path(data_dir)
    out = Outcome(str(path), "refused", label)
    try:
        check_label(label, io)
        ext = path.suffix.lower()
        decoder_for(ext)
        size = path.stat().st_size
        if size > MAX_SAMPLE_BYTES:
            raise DataError(f"file is {size:,} bytes, above the {MAX_SAMPLE_BYTES:,}-byte limit of one sample")
        data = path.read_bytes()[:MAX_SAMPLE_BYTES + 1]
        if len(data) > MAX_SAMPLE_BYTES:
            raise DataError(f"file grew above the {MAX_SAMPLE_BYTES:,}-byte limit of one sample while read")
        digest = hashlib.sha256(data).hexdigest()
        out.sha256 = digest
        name = digest[:DIGEST_CHARS] + ext
        dest = data_dir / label / name
        elsewhere = _filed_under(data_dir, name, label)
        if elsewhere is not None:
            raise DataError(f"the same sample is already filed under label {elsewhere!r} "
                            f"({data_dir / elsewhere / name}); remove it there first to relabel it")
        if dest.is_file():
            out.status, out.path = "duplicate", str(dest)
            return out
        with atomic_writer(dest) as f:  # staged beside dest under a hidden name: training never reads it
            f.write(data)
            f.flush()
            decode_sample(f.name, io, as_ext=ext)  # the staged bytes are the ones filed
        out.status, out.path = "filed", str(dest)
    except FileNotFoundError:
        out.reason = "no such file"
    except IsADirectoryError:
        out.reason = "a folder, not a sample file"
    except PermissionError as exc:
        out.reason = f"cannot read it ({exc.strerror})"
    except DataError as exc:
        out.reason = str(exc)
    return out


def _filed_under(data_dir: Path, name: str, label: str) -> str | None:
    """Another label folder already holding the sample called ``name`` (same content), or None."""
    if not data_dir.is_dir():
        return None
    for d in os.scandir(data_dir):
        if d.is_dir() and d.name != label and not d.name.startswith(".") and os.path.isfile(
                os.path.join(d.path, name)):
            return d.name
    return None
