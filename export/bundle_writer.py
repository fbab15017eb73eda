"""Stage a bundle in a temporary sibling folder, hash every file, write the manifest last, then swap it in."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from ftedge.errors import ExportError
from ftedge.durable import atomic_write_json, swap_dir
from ftedge.bundle.hashing import sha256_file
from ftedge.bundle.manifest import MANIFEST_NAME


def manifest_header(opts: Any, opset: int) -> dict[str, Any]:
    """The manifest keys every exporter writes first: schema, name, who made it when, with which versions, from what."""
    import datetime as _dt

    import onnx
    import torch

    import ftedge
    from ftedge.bundle.manifest import SCHEMA_VERSION
    from ftedge.runtime.engines import ort_backend

    return {
        "schema_version": SCHEMA_VERSION,
        "name": opts.name or Path(opts.output).name,
        "created_by": f"ftedge {ftedge.__version__}",
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "producer": {"ftedge": ftedge.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": ort_backend.version(), "opset": opset},
        "source_model": opts.model if isinstance(opts.model, str) else type(opts.model).__name__,
    }


class BundleStage:
    """A staging directory that becomes the bundle on :meth:`commit`."""

    def __init__(self, target: Path, force: bool) -> None:
        self.target = Path(target)
        if self.target.exists() and not force:
            raise ExportError(f"{self.target} already exists; choose another -o or pass --force to replace it")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))

    def path(self, rel: str) -> Path:
        p = self.dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def file_table(self) -> dict[str, dict[str, Any]]:
        table = {}
        for p in sorted(self.dir.rglob("*")):
            if p.is_file():
                rel = p.relative_to(self.dir).as_posix()
                table[rel] = {"sha256": sha256_file(p), "size": p.stat().st_size}
        return table

    def commit(self, manifest: dict[str, Any],
               signer: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        """Write ``manifest.json`` (with the files table) last, then move the bundle into place.

        ``signer`` (manifest -> signed copy) runs after the files are hashed, so the signature covers them.
        """
        manifest["files"] = self.file_table()
        if signer is not None:
            manifest.update(signer(manifest))
        atomic_write_json(self.dir / MANIFEST_NAME, manifest)
        old = swap_dir(self.dir, self.target)  # a failed second rename puts the old bundle back
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
