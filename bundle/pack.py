"""Pack a verified bundle into a deterministic ``.tar.gz`` (the deploy archive; see ARCHITECTURE.md).

The device side reads such an archive back with :mod:`ftedge.bundle.archive`, whose safety rules (bounded
headers, manifest first and verified, only listed members) are the other half of this format.
"""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

from ftedge.bundle.hashing import sha256_file
from ftedge.bundle.loader import load_bundle
from ftedge.bundle.manifest import MANIFEST_NAME
from ftedge.durable import atomic_writer


def pack_bundle(bundle: str | Path, archive: str | Path) -> str:
    """Write a verified bundle as a deterministic .tar.gz (one top-level folder); return its sha256.

    Only ``manifest.json`` and the files its table lists are packed, sorted, with zeroed owners and
    timestamps and fixed modes, so the same bundle always gives the same bytes.
    """
    b = load_bundle(bundle, verify=True)
    top = b.path.resolve().name
    archive = Path(archive)
    with atomic_writer(archive, mode=0o644) as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for rel in [MANIFEST_NAME, *sorted(b.manifest.get("files") or {})]:
                src = b.path / rel
                info = tarfile.TarInfo(f"{top}/{rel}")
                info.size, info.mode, info.mtime = src.stat().st_size, 0o644, 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(src, "rb") as f:
                    tf.addfile(info, f)
    return sha256_file(archive)
