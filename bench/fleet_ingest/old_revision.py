"""The "before" phase's collector: ``fleet/{__init__,ingest,store}.py`` of an older revision (``git show``), loaded
as ``ftedge.fleet`` in the bench's collector child."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench._common import ROOT


def export_revision(ref: str, tmp: Path) -> Path:
    """``git show REF:fleet/{__init__,ingest,store}.py`` into a directory loadable as ``ftedge.fleet``."""
    d = tmp / f"fleet-{ref.replace('/', '_')}"
    d.mkdir(parents=True, exist_ok=True)
    for name in ("__init__.py", "ingest.py", "store.py"):
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:fleet/{name}"], capture_output=True,
                              text=True, check=True).stdout
        (d / name).write_text(text)
    return d


def use_revision(src: str | Path) -> None:
    """Make ``ftedge.fleet``'s not yet imported modules (ingest, store) load from ``src``."""
    import ftedge.fleet

    ftedge.fleet.__path__[:] = [str(src)]
