"""Text samples for text bundles: ``*.txt`` files in folder-per-label data and ``.csv`` files (text,label).

The bundle manifest's ``preprocessing`` (written by ``ftedge export --tokenizer``) says how::

    {"type": "text", "tokenizer": "tokenizer.json", "max_length": 64,
     "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask"}}

Texts are tokenized with the ``tokenizers`` library (no transformers, no torch) using the bundle's own
``tokenizer.json``, truncated and padded to ``max_length`` (the length the graph was exported with), and
fed as ``input_ids`` plus ``attention_mask`` / ``token_type_ids`` when the model takes them. Surrounding
whitespace is removed first. A text longer than ``max_length`` tokens is truncated, not skipped, and
listed under ``notes["truncated"]`` of the dataset (``result.json`` of the run). Empty texts, unknown
labels and non-UTF-8 text are skipped and reported, like every unusable sample.

A ``.csv`` needs a header row with ``text`` and ``label`` columns (any order, other columns ignored);
quoted fields may hold commas and newlines (stdlib ``csv``). Rows are tokenized in one batch.
Importing :mod:`ftedge.runtime.data.samples` registers :func:`decode_txt` for ``.txt`` and :func:`load_csv`
for ``.csv``.
"""

from __future__ import annotations

import csv
import functools
import io as _io
from pathlib import Path
from typing import Any

import numpy as np

from ftedge.errors import DataError, TextError
from ftedge.runtime.data.samples import (
    NOTE_KEY,
    Dataset,
    ModelIO,
    _target,
    register_decoder,
    register_file_loader,
)

TEXT_COLUMN, LABEL_COLUMN = "text", "label"
TRUNCATED = "truncated"
_INSTALL = "pip install 'ftedge[device]' (it includes tokenizers)"
_PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>", "<|endoftext|>")


def _tokenizers():  # noqa: ANN202 - the tokenizers module, imported only when text is loaded
    try:
        import tokenizers
    except ImportError as exc:
        raise TextError(f"text bundles need the `tokenizers` package, which is not installed ({exc}); {_INSTALL}") \
            from exc
    return tokenizers


def text_params(io: ModelIO, what: str = "text") -> tuple[Path, int, dict[str, str]]:
    """(tokenizer file, padded length, {role: input name}) of a text model; raises TextError otherwise."""
    pre = io.preprocessing or {}
    if pre.get("type") != "text":
        kind = pre.get("type") or "no"
        raise TextError(f"no decoder for {what} in this model: it has {kind} preprocessing, not text; .txt/.csv "
                        "data needs a bundle exported with `ftedge export … --tokenizer tokenizer.json`")
    name = str(pre.get("tokenizer") or "")
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise TextError(f"the manifest's preprocessing.tokenizer {name!r} is not a file name inside the bundle; "
                        "re-export the bundle")
    if io.root is None:
        raise TextError("cannot find the tokenizer: the model's directory is unknown (ModelIO.root); "
                        "load the model with ModelIO.from_manifest(manifest, bundle_dir)")
    path = io.root / name
    if not path.is_file():
        raise TextError(f"{path} is missing: a text model needs its tokenizer next to it; copy {name} from the "
                        "bundle (or train again: runs copy it)")
    length = int(pre.get("max_length") or 0)
    roles = dict(pre.get("inputs") or {})
    names = {s.name for s in io.inputs}
    if length < 1 or "input_ids" not in roles or not set(roles.values()) <= names:
        raise TextError(f"the manifest's text preprocessing {pre} does not match the inputs {sorted(names)}; "
                        "re-export the bundle")
    return path, length, roles


@functools.lru_cache(maxsize=8)
def _load_tokenizer(path: str, length: int, _stamp: tuple[int, int]) -> Any:
    tokenizers = _tokenizers()
    try:
        tok = tokenizers.Tokenizer.from_file(path)
    except Exception as exc:  # noqa: BLE001 - the library raises a bare Exception on bad JSON
        raise TextError(f"{path} is not a tokenizers JSON file ({exc}); re-export the bundle") from exc
    trunc = tok.truncation or {}
    tok.enable_truncation(max_length=length, stride=0, strategy=trunc.get("strategy", "longest_first"),
                          direction=trunc.get("direction", "right"))
    pad = tok.padding
    if pad:
        tok.enable_padding(length=length, direction=pad["direction"], pad_id=pad["pad_id"],
                           pad_type_id=pad["pad_type_id"], pad_token=pad["pad_token"])
    else:  # a tokenizer saved without padding: use its pad token if it has one, else id 0
        token = next((t for t in _PAD_TOKENS if tok.token_to_id(t) is not None), None)
        tok.enable_padding(length=length, pad_id=tok.token_to_id(token) if token else 0, pad_token=token or "[PAD]")
    return tok


def tokenizer_for(io: ModelIO, what: str = "text") -> Any:
    """The model's ``tokenizers.Tokenizer``, truncating and padding to its length; cached per file."""
    path, length, _ = text_params(io, what)
    st = path.stat()
    return _load_tokenizer(str(path.resolve()), length, (st.st_mtime_ns, st.st_size))


def encode(texts: list[str], io: ModelIO, what: str = "text") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Tokenize ``texts`` (one batch): ({input name: [N, L] in the input's dtype}, truncated flags [N])."""
    _, length, roles = text_params(io, what)
    encodings = tokenizer_for(io, what).encode_batch(list(texts))
    fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
    dtypes = {s.name: s.dtype for s in io.inputs}
    out = {}
    for role, name in roles.items():
        rows = [getattr(e, fields[role]) for e in encodings]
        out[name] = np.asarray(rows, dtype=dtypes[name]).reshape(len(rows), length)
    truncated = np.asarray([bool(e.overflowing) for e in encodings], dtype=bool)
    return out, truncated


def _clean(raw: str) -> str:
    text = raw.strip()
    if not text:
        raise ValueError("empty text")
    return text


def decode_txt(path: Path, io: ModelIO) -> dict[str, Any]:
    """One ``.txt`` file (UTF-8, one sample) → the model's token inputs; marks truncated texts."""
    text_params(io, ".txt")
    data = path.read_bytes()
    try:
        raw = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                         "re-save it as UTF-8") from None
    arrays, truncated = encode([_clean(raw)], io, ".txt")
    sample: dict[str, Any] = {k: v[0] for k, v in arrays.items()}
    if truncated[0]:
        sample[NOTE_KEY] = TRUNCATED
    return sample


def _is_utf8(s: str) -> bool:
    """False if ``s`` holds bytes that were not UTF-8 (decoded with surrogateescape)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _columns(header: list[str], path: Path) -> tuple[int, int]:
    names = [h.strip().lower() for h in header]
    missing = [c for c in (TEXT_COLUMN, LABEL_COLUMN) if c not in names]
    if missing:
        found = ", ".join(repr(h) for h in header) or "none"
        hint = ""
        if LABEL_COLUMN in missing:
            alias = next((h for h in header if h.strip().lower() in ("labels", "class", "sentiment", "target",
                                                                     "category", "y")), None)
            hint = f" (rename {alias!r} to 'label'?)" if alias else ""
        raise TextError(f"{path}: no {' and no '.join(repr(m) for m in missing)} column{hint}; the header row has "
                        f"{found}. A text CSV needs a header row naming a 'text' and a 'label' column, e.g. "
                        "`text,label` then `great service,positive`")
    return names.index(TEXT_COLUMN), names.index(LABEL_COLUMN)


def _csv_target(label: str, io: ModelIO) -> Any:
    label = label.strip()
    if not label:
        raise ValueError("empty label")
    if io.classification and label not in io.labels and label.lstrip("-").isdigit():
        return _target(int(label), io)  # a class index
    return _target(label, io)


def load_csv(path: Path, io: ModelIO) -> Dataset:
    """A ``text,label`` CSV → a Dataset; bad rows are skipped and listed as ``NAME[row]`` (0-based data row)."""
    text_params(io, ".csv")  # a clear error before reading a CSV for a non-text model
    try:
        content = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    old_limit = csv.field_size_limit()
    csv.field_size_limit(max(old_limit, 1 << 26))  # long documents are truncated to the model's length anyway
    try:
        reader = csv.reader(_io.StringIO(content, newline=""))
        try:
            header = next(reader, None)
            if header is None:
                raise TextError(f"{path} is empty: a text CSV needs a header row `text,label` and one row per sample")
            ti, li = _columns(header, path)
            texts, targets, sources, skipped = [], [], [], []
            for i, row in enumerate(reader):
                src = f"{path.name}[{i}]"
                if not row:  # a blank line is no row
                    continue
                try:
                    if len(row) <= max(ti, li):
                        raise ValueError(f"row has {len(row)} field(s), the header has {len(header)} "
                                         f"(line {reader.line_num})")
                    for column, value in ((TEXT_COLUMN, row[ti]), (LABEL_COLUMN, row[li])):
                        if not _is_utf8(value):
                            raise ValueError(f"{column} is not UTF-8 (line {reader.line_num}); re-save the file as "
                                             "UTF-8")
                    text = _clean(row[ti])
                    target = _csv_target(row[li], io)
                except ValueError as exc:
                    skipped.append({"file": src, "reason": str(exc)})
                    continue
                texts.append(text)
                targets.append(target)
                sources.append(src)
        except csv.Error as exc:
            raise TextError(f"{path}: malformed CSV at line {reader.line_num} ({exc}); fix the quoting") from exc
    finally:
        csv.field_size_limit(old_limit)
    if not texts:
        reasons = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:5])
        raise DataError(f"no usable rows in {path}" + (f" ({len(skipped)} skipped: {reasons})" if skipped else "")
                        + f"; expected rows of text and one of the labels {io.labels}")
    inputs, truncated = encode(texts, io)
    y = np.asarray(targets, dtype=np.int64 if io.classification else np.float32)
    notes = {TRUNCATED: [s for s, t in zip(sources, truncated) if t]} if truncated.any() else {}
    return Dataset(inputs, y, sources, skipped, list(io.labels), notes=notes)


register_decoder(".txt", decode_txt)
register_file_loader(".csv", load_csv)
