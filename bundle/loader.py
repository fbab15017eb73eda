"""Load a training bundle and verify it before anything runs it.

A bundle is a directory with ``manifest.json`` at its root; every file it uses
is listed in the manifest's ``files`` table with its sha256 and size. A bundle
whose hashes do not match, whose schema is unknown, or that holds unlisted
role files, or ONNX files whose external data escape the ``files`` table, is refused. With ``trusted_keys``, the manifest must also carry a valid
Ed25519 signature by one of them (see :mod:`ftedge.bundle.signing`).
"""

from __future__ import annotations

import json
import mmap
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ftedge.errors import BundleError
from ftedge.bundle.hashing import sha256_file
from ftedge.bundle.manifest import MANIFEST_NAME, TensorSpec, check_schema
from ftedge.bundle.tasks import task_of


@dataclass
class Bundle:
    """A verified bundle on disk and its manifest."""

    path: Path
    manifest: dict[str, Any]
    signed_by: str | None = None  # key_id of the verified signature, when trusted keys were given

    def _field(self, key: str, kind: type) -> Any:
        value = self.manifest.get(key)
        if not isinstance(value, kind):
            raise BundleError(f"bundle {self.path}: manifest has no valid {key!r} ({type(value).__name__}); "
                              "re-export the bundle")
        return value

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.path.name))

    @property
    def layout(self) -> str:
        return str(self._field("layout", str))

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(t) for t in self._field("inputs", list)]

    @property
    def head_inputs(self) -> list[TensorSpec]:
        """Inputs of the trainable graph: backbone outputs (split) or model inputs (full)."""
        return [TensorSpec.from_json(t) for t in self._field("head_inputs", list)]

    @property
    def output(self) -> TensorSpec:
        return TensorSpec.from_json(self._field("output", dict))

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.get("labels") or [])

    @property
    def loss(self) -> str:
        return str(self._field("loss", str))

    def file(self, role: str) -> Path:
        """Path of the file playing ``role`` (backbone, training, eval, optimizer, checkpoint)."""
        rel = self.manifest["roles"].get(role)
        if rel is None:
            raise BundleError(f"bundle {self.path} has no {role!r} file (layout {self.layout})")
        return self.path / rel


def _read_manifest(path: Path) -> dict[str, Any]:
    mpath = path / MANIFEST_NAME
    if not path.is_dir():
        raise BundleError(f"bundle {path} is not a directory; pass the folder `ftedge export -o` wrote")
    if not mpath.is_file():
        raise BundleError(
            f"{path} has no {MANIFEST_NAME}: it is not a bundle, or its export did not finish; re-run `ftedge export`"
        )
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{mpath} is not valid JSON ({exc}); re-export or re-download the bundle") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath} is not a JSON object; re-export or re-download the bundle")
    return manifest


def check_shape(manifest: dict[str, Any], where: str) -> None:
    """Refuse a manifest whose tables have the wrong JSON types (before any caller indexes them)."""
    def bad(what: str) -> BundleError:
        return BundleError(f"{where}: manifest {what}; re-export or re-download the bundle")

    files = manifest.get("files", {})
    if not isinstance(files, dict):
        raise bad("`files` is not an object")
    for rel, entry in files.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) \
                or not isinstance(entry.get("size"), int) or isinstance(entry.get("size"), bool):
            raise bad(f"`files` entry {str(rel)[:200]!r} is not {{sha256: string, size: integer}}")
    roles = manifest.get("roles", {})
    if not isinstance(roles, dict) or not all(isinstance(v, str) for v in roles.values()):
        raise bad("`roles` is not an object of file names")
    for key, kind in (("inputs", list), ("head_inputs", list), ("output", dict), ("loss", str), ("name", str)):
        if key in manifest and not isinstance(manifest[key], kind):
            raise bad(f"`{key}` is not a JSON {'array' if kind is list else 'object' if kind is dict else 'string'}")
    if manifest.get("labels") is not None and not isinstance(manifest["labels"], list):
        raise bad("`labels` is not an array")
    if manifest.get("preprocessing") is not None and not isinstance(manifest["preprocessing"], dict):
        raise bad("`preprocessing` is not an object")


def verify_files(path: Path, manifest: dict[str, Any]) -> list[str]:
    """Return one problem per file whose presence, size or sha256 differs from the manifest."""
    problems: list[str] = []
    files: dict[str, dict[str, Any]] = manifest.get("files") or {}
    for rel, entry in sorted(files.items()):
        fpath = (path / rel).resolve()
        if path.resolve() not in fpath.parents:
            problems.append(f"{rel}: path escapes the bundle directory")
            continue
        if not fpath.is_file():
            problems.append(f"{rel}: missing")
            continue
        size = fpath.stat().st_size
        if size != entry.get("size"):
            problems.append(f"{rel}: size {size} bytes, manifest says {entry.get('size')}")
            continue
        digest = sha256_file(fpath)
        if digest != entry.get("sha256"):
            problems.append(f"{rel}: sha256 {digest[:12]}…, manifest says {str(entry.get('sha256'))[:12]}…")
    for role, rel in (manifest.get("roles") or {}).items():
        if rel not in files:
            problems.append(f"{rel} (role {role}): not listed in the manifest's files table")
    return problems


# ONNX protobuf fields that lead to tensors: {message: {field number: message}} (onnx.proto3).
_ONNX_FIELDS: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
    "entry": {},
}
_MAX_DEPTH = 64


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _walk(buf: memoryview, kind: str, out: list[str], depth: int = 0) -> None:
    """Collect every external-data ``location`` under a ``kind`` message (protobuf wire format)."""
    if depth > _MAX_DEPTH:
        raise ValueError("graphs nested too deeply")
    fields, pos, entry = _ONNX_FIELDS[kind], 0, {}
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1 or wire == 5:
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("truncated field")
            body = buf[pos:pos + size]
            pos += size
            if kind == "entry" and number in (1, 2):
                entry[number] = bytes(body).decode("utf-8", "replace")
            elif number in fields:
                _walk(body, fields[number], out, depth + 1)
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if pos != len(buf):
        raise ValueError("truncated field")
    if kind == "entry" and entry.get(1) == "location":
        out.append(entry.get(2, ""))


def external_data_locations(onnx_file: Path) -> list[str]:
    """Every external-data ``location`` an ONNX file's tensors name (initializers, attributes, subgraphs)."""
    with open(onnx_file, "rb") as f:
        if f.seek(0, 2) == 0:
            raise ValueError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            out: list[str] = []
            view = memoryview(mm)
            try:
                _walk(view, "model", out)
            finally:
                view.release()
            return out


def check_external_data(path: Path, manifest: dict[str, Any]) -> list[str]:
    """One problem per ONNX external-data reference that is absolute, has ``..`` or names an unlisted file."""
    files = manifest.get("files") or {}
    problems: list[str] = []
    for rel in sorted(r for r in files if isinstance(r, str) and r.lower().endswith(".onnx")):
        try:
            locations = external_data_locations(path / rel)
        except (OSError, ValueError) as exc:
            problems.append(f"{rel}: cannot be read as ONNX ({exc})")
            continue
        for loc in locations:
            parts = loc.replace("\\", "/").split("/")
            target = posixpath.normpath(posixpath.join(posixpath.dirname(rel), loc))
            if loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":") or ".." in parts:
                problems.append(f"{rel}: external data location {loc[:200]!r} is absolute or contains '..'")
            elif target not in files:
                problems.append(f"{rel}: external data file {loc[:200]!r} is not listed in the manifest's files table")
    return problems


def load_bundle(path: str | Path, verify: bool = True, trusted_keys: Iterable[Any] | None = None) -> Bundle:
    """Read ``manifest.json``, check the schema and (by default) every file's hash.

    ``trusted_keys`` (public key PEM paths or PEM texts): when given, the manifest must be signed by one
    of them; an empty list accepts no bundle. ``None`` skips the signature check. With ``verify``, ONNX
    files may only reference external data that the hashed ``files`` table lists.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    check_schema(manifest, str(path))
    task_of(manifest, f"bundle {path}")  # a task this ftedge does not know: refused before anything else
    check_shape(manifest, str(path))
    signed_by = None
    if trusted_keys is not None:
        from ftedge.bundle.signing import verify_manifest

        try:
            signed_by = verify_manifest(manifest, trusted_keys)
        except BundleError as exc:
            raise BundleError(f"bundle {path}: {exc}") from exc
    if verify:
        problems = verify_files(path, manifest)
        problems = problems or check_external_data(path, manifest)
        if problems:
            raise BundleError(
                f"bundle {path} failed verification ({len(problems)} problem(s)): "
                + "; ".join(problems)
                + ". The bundle was modified or damaged in transit: re-download or re-export it"
            )
    return Bundle(path=path, manifest=manifest, signed_by=signed_by)
