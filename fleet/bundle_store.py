"""The collector's bundle folder: published ``ftedge pack`` archives, content-addressed and immutable.

Each archive lives as ``ROOT/<sha256>.tar.gz``; the name *is* the content's hash, so a file is written once
(atomically and durably, :mod:`ftedge.durable`) and never changed. The HTTP server (:mod:`.http`) serves only
what is here; a device checks the sha256 it was given (and the bundle's signature) whatever the server sends,
so a file damaged or replaced on this disk is refused by every box.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

from ftedge.durable import atomic_writer
from ftedge.errors import BundleStoreError

SUFFIX = ".tar.gz"
CHUNK = 1 << 20          # bytes read at a time while hashing and copying (archives can be GBs)
_SHA_RE = re.compile(r"[0-9a-f]{64}")


def valid_sha(sha256: object) -> bool:
    """Whether ``sha256`` is 64 lowercase hex digits (the only names this folder holds)."""
    return isinstance(sha256, str) and _SHA_RE.fullmatch(sha256) is not None


def _open_regular(archive: Path) -> tuple[int, os.stat_result]:
    try:
        fd = os.open(archive, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise BundleStoreError(f"cannot read {archive}: {exc.strerror or exc}; give the path of an "
                               "`ftedge pack` archive") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BundleStoreError(f"{archive} is not a regular file (a folder, device or FIFO); give the path of the "
                               "`ftedge pack` archive (.tar.gz), not of the bundle folder")
    return fd, st


def sha256_of(archive: Path) -> str:
    """The sha256 of a regular file, read in chunks."""
    fd, _ = _open_regular(archive)
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class BundleStore:
    """A folder of published archives, ``ROOT/<sha256>.tar.gz``. Several collectors may share it (a network
    folder): a publish is a rename of a whole file, and a name never changes content."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"BundleStore({str(self.root)!r})"

    def publish(self, archive: Path) -> str:
        """Copy ``archive`` into the folder as ``<sha256>.tar.gz`` (atomic, durable) and return the sha256.

        Idempotent: an archive already published is not written again. Raises :class:`BundleStoreError` for
        a path that is not a regular file, or one that changed while it was copied."""
        archive = Path(archive)
        sha = sha256_of(archive)
        if self.path(sha) is not None:
            return sha
        fd, _ = _open_regular(archive)
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "rb") as src, atomic_writer(self.root / f"{sha}{SUFFIX}") as dst:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    dst.write(chunk)
                if h.hexdigest() != sha:   # raising here drops the temporary file: nothing is published
                    raise BundleStoreError(f"{archive} changed while it was published; publish it again once "
                                           "it is written whole")
        except OSError as exc:
            raise BundleStoreError(f"cannot publish {archive} into {self.root}: {exc}; check the folder's "
                                   "space and permissions") from exc
        return sha

    def path(self, sha256: str) -> Path | None:
        """The published archive of ``sha256``, or None (also for anything that is not 64 lowercase hex)."""
        if not valid_sha(sha256):
            return None
        p = self.root / f"{sha256}{SUFFIX}"
        return p if p.is_file() else None

    def published(self) -> list[str]:
        """The sha256 of every published archive, sorted."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n[: -len(SUFFIX)] for n in names
                      if n.endswith(SUFFIX) and valid_sha(n[: -len(SUFFIX)]) and (self.root / n).is_file())
