"""Limits on what detection data may make the device read: file sizes, folder walks, listed problems, and the
folder every read must stay in (torch-free).

A dataset is untrusted input: its ``data.yaml``, label files, image lists and COCO JSON are read with a size cap,
an image folder is walked with an entry cap, and with a confinement root (the agent's ``[paths] data_root``)
nothing outside that folder is read, whatever a ``path:``, an absolute entry, a ``..``, a symlink or a COCO
``file_name`` says.
"""

from __future__ import annotations

import os
from pathlib import Path

from ftedge.errors import DataError, DataTooLarge
from ftedge.runtime.data.image import EXTENSIONS

MAX_YAML_BYTES = 1 << 20          # a data.yaml (and classes.txt): names and a few paths
MAX_LABEL_BYTES = 1 << 20         # one YOLO label file (~25,000 box lines)
MAX_LIST_BYTES = 16 << 20         # a .txt list of image paths (~300,000 lines)
MAX_COCO_BYTES = 64 << 20         # a COCO JSON (instances_val2017.json is 25 MB; parsed, ~10x that in memory)
MAX_WALK_ENTRIES = 500_000        # directory entries visited while looking for the images of one folder
MAX_LISTED = 1000                 # skipped images / dropped boxes listed by name (all are counted)
_CHUNK = 1 << 20


def read_capped(path: Path, cap: int, what: str) -> bytes:
    """The bytes of ``path``; DataTooLarge (naming the file and the cap) if it holds more than ``cap`` bytes.

    Reads in chunks and stops past ``cap``, so a huge or endless file (a FIFO, /dev/zero) costs no more than that
    and a small one no more than its size.
    """
    chunks, total = [], 0
    with open(path, "rb") as f:
        while total <= cap:
            chunk = f.read(min(_CHUNK, cap + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
    raise DataTooLarge(f"{what} {path} is larger than {cap:,} bytes, the limit for it; split it or trim it")


class Confine:
    """Whether a path stays inside a root folder once ``..`` and symlinks are resolved (``root=None``: anywhere)."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = None if root is None else Path(root).resolve()

    def outside(self, path: Path) -> str:
        """Why ``path`` may not be read (it resolves outside the root), or "" when it may."""
        if self.root is None:
            return ""
        try:
            real = Path(path).resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            return f"{path} cannot be resolved ({exc})"
        if real == self.root or self.root in real.parents:
            return ""
        return f"{path} resolves outside the data root {self.root} (to {real}); keep the dataset inside it"


def images_under(folder: Path) -> list[Path]:
    """The .jpg/.jpeg/.png files below ``folder`` (dot-files and dot-folders ignored, symlinked folders not
    followed); DataError once the walk passes MAX_WALK_ENTRIES entries (e.g. ``path: /``, ``train: .``)."""
    found: list[Path] = []
    seen = 0
    for top, dirs, files in os.walk(folder, followlinks=False):
        seen += len(dirs) + len(files)
        if seen > MAX_WALK_ENTRIES:
            raise DataError(f"{folder} holds more than {MAX_WALK_ENTRIES:,} files and folders; point the split at "
                            "the image folder itself (e.g. images/train), not a folder above the dataset")
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(top) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in EXTENSIONS]
    return [p for p in found if p.is_file()]
