"""Durable files: the one place ftedge writes a file or swaps a folder so a crash leaves old or new, never half.

Every write here is *atomic* (readers see the old content or the whole new one) and *durable* (the data and
the rename are fsynced: the file, then its folder), so power loss on an edge box cannot leave a torn
checkpoint, manifest or model. See ARCHITECTURE.md (the core room).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


def fsync_file(path: str | Path) -> None:
    """Flush ``path`` to disk: a file's data, or a folder's entries (so a rename or create inside it lasts)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


fsync_dir = fsync_file  # the same call on a folder; the name says which is meant at the call site


def fsync_tree(root: str | Path) -> None:
    """fsync every file and folder below ``root`` (before a folder is renamed into place)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fsync_file(os.path.join(dirpath, name))
        fsync_dir(dirpath)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: int | None = None) -> Iterator[IO[bytes]]:
    """Yield a binary file that replaces ``path`` when the block ends without error (and vanishes if not).

    The file's ``name`` is its temporary path (to check the staged content before it replaces ``path``).
    ``mode`` defaults to ordinary permissions (0666 less the umask; mkstemp alone would give 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.close(fd)
        os.chmod(tmp, mode if mode is not None else 0o666 & ~_umask())
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably."""
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically and durably."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def replace_file(staged: str | Path, path: str | Path) -> None:
    """Move an already written ``staged`` file over ``path`` durably (fsync data, rename, fsync folder)."""
    fsync_file(staged)
    os.replace(staged, path)
    fsync_dir(Path(path).parent)


def swap_dir(staged: str | Path, target: str | Path, backup: str | Path | None = None) -> Path | None:
    """Put the folder ``staged`` at ``target`` durably; return where the old ``target`` went (or None).

    An existing ``target`` is first renamed to ``backup`` (default ``.NAME.old`` beside it, replacing an
    older leftover); if the second rename fails, the backup is renamed back, so ``target`` always holds a
    whole folder — the old one or the new one. The caller decides whether to keep or delete the backup.
    """
    staged, target = Path(staged), Path(target)
    fsync_tree(staged)
    moved: Path | None = None
    if target.exists() or target.is_symlink():
        moved = Path(backup) if backup is not None else target.with_name(f".{target.name}.old")
        if backup is None and moved.exists():
            shutil.rmtree(moved, ignore_errors=True)
        os.rename(target, moved)
        try:
            os.rename(staged, target)
        except BaseException:
            os.rename(moved, target)
            raise
    else:
        os.rename(staged, target)
    fsync_dir(target.parent)
    return moved
