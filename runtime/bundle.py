"""Load a training bundle and verify it before anything runs it.

A bundle is a directory with ``manifest.json`` at its root; every file it uses
is listed in the manifest's ``files`` table with its sha256 and size. A bundle
whose hashes do not match, whose schema is unknown, or that holds unlisted
role files is refused. With ``trusted_keys``, the manifest must also carry a valid
Ed25519 signature by one of them (see :mod:`ftedge.runtime.signing`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ftedge.errors import BundleError
from ftedge.runtime.hashing import sha256_file
from ftedge.runtime.manifest import MANIFEST_NAME, TensorSpec, check_schema


@dataclass
class Bundle:
    """A verified bundle on disk and its manifest."""

    path: Path
    manifest: dict[str, Any]
    signed_by: str | None = None  # key_id of the verified signature, when trusted keys were given

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.path.name))

    @property
    def layout(self) -> str:
        return str(self.manifest["layout"])

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(t) for t in self.manifest["inputs"]]

    @property
    def head_inputs(self) -> list[TensorSpec]:
        """Inputs of the trainable graph: backbone outputs (split) or model inputs (full)."""
        return [TensorSpec.from_json(t) for t in self.manifest["head_inputs"]]

    @property
    def output(self) -> TensorSpec:
        return TensorSpec.from_json(self.manifest["output"])

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.get("labels") or [])

    @property
    def loss(self) -> str:
        return str(self.manifest["loss"])

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


def load_bundle(path: str | Path, verify: bool = True, trusted_keys: Iterable[Any] | None = None) -> Bundle:
    """Read ``manifest.json``, check the schema and (by default) every file's hash.

    ``trusted_keys`` (public key PEM paths or PEM texts): when given, the manifest must be signed by one
    of them; an empty list accepts no bundle. ``None`` skips the signature check.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    check_schema(manifest, str(path))
    signed_by = None
    if trusted_keys is not None:
        from ftedge.runtime.signing import verify_manifest

        try:
            signed_by = verify_manifest(manifest, trusted_keys)
        except BundleError as exc:
            raise BundleError(f"bundle {path}: {exc}") from exc
    if verify:
        problems = verify_files(path, manifest)
        if problems:
            raise BundleError(
                f"bundle {path} failed verification ({len(problems)} problem(s)): "
                + "; ".join(problems)
                + ". The bundle was modified or damaged in transit: re-download or re-export it"
            )
    return Bundle(path=path, manifest=manifest, signed_by=signed_by)
