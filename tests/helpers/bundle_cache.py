"""Zoo bundles kept between test runs, keyed by everything that decides what `ftedge export` writes.

The suite's wall time is dominated by exporting its zoo (tens of tiny models, 5-25 s each, make_fx and the ONNX
exporter). A bundle only changes when the code or libraries that write it change, so the bundle farm
(:mod:`tests.helpers.bundle_farm`) keeps each successful export here and restores it while its key still matches:

    key = sha256(the host-side sources: src/, bundle/, export/, runtime/ and pyproject.toml;
                 tests/helpers/*.py (the zoos); the export spec (zoo file, factory, args);
                 the versions of python, torch, onnx, onnxruntime, onnxscript, transformers, numpy)

A change to any of them is a miss and a real export. Device-agent, fleet and MQTT code do not write bundles and are
not in the key. Where: ``$FTEDGE_TEST_BUNDLE_CACHE`` (``off`` disables it), default ``~/.cache/ftedge/
test-bundles`` -- outside the clone, like the rig root filesystems. Entries unused for 14 days are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from tests.helpers.common import HELPERS, ROOT

SOURCES = ("src", "bundle", "export", "runtime")
LIBRARIES = ("torch", "onnx", "onnxruntime", "onnxscript", "transformers", "numpy")
MAX_AGE_S = 14 * 24 * 3600


def cache_dir() -> Path | None:
    """The cache folder, or None when ``FTEDGE_TEST_BUNDLE_CACHE=off``."""
    where = os.environ.get("FTEDGE_TEST_BUNDLE_CACHE", "")
    if where.lower() == "off":
        return None
    return Path(where) if where else Path.home() / ".cache" / "ftedge" / "test-bundles"


@lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over the sources and library versions that decide an export's bytes."""
    h = hashlib.sha256()
    files = [ROOT / "pyproject.toml", *sorted(HELPERS.glob("*.py"))]
    for folder in SOURCES:
        files += sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)
    for path in files:
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    for lib in LIBRARIES:
        try:
            version = metadata.version(lib)
        except metadata.PackageNotFoundError:
            version = "-"
        h.update(f"{lib}={version}\0".encode())
    h.update(sys.version.encode())
    return h.hexdigest()


def key(zoo: Path, model: str, args: list[str]) -> str:
    spec = json.dumps([str(Path(zoo).relative_to(ROOT)), model, list(args)])
    return hashlib.sha256((code_digest() + spec).encode()).hexdigest()[:32]


def restore(k: str, dest: Path, cmd: list[str]) -> subprocess.CompletedProcess | None:
    """Copy the cached bundle ``k`` to ``dest``; its export's CompletedProcess, or None on a miss."""
    root = cache_dir()
    entry = root / k if root else None
    if entry is None or not (entry / "export.json").is_file():
        return None
    try:
        meta = json.loads((entry / "export.json").read_text())
        shutil.copytree(entry / "bundle", dest)
        os.utime(entry)  # used: keep it past the age limit
    except (OSError, ValueError):
        shutil.rmtree(dest, ignore_errors=True)
        return None
    return subprocess.CompletedProcess(cmd, 0, meta.get("stdout", ""), meta.get("stderr", ""))


def store(k: str, bundle: Path, proc: subprocess.CompletedProcess) -> None:
    """Keep a successful export (atomically: a reader never sees half an entry)."""
    root = cache_dir()
    if root is None or proc.returncode != 0:
        return
    tmp = root / f".{k}.{os.getpid()}.tmp"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(bundle, tmp / "bundle")
        (tmp / "export.json").write_text(json.dumps({"stdout": proc.stdout, "stderr": proc.stderr,
                                                     "stored": time.time()}))
        os.replace(tmp, root / k)
    except OSError:  # a full or read-only cache disk costs the saving, never the test
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prune(now: float | None = None) -> int:
    """Remove entries unused for MAX_AGE_S; returns how many."""
    root = cache_dir()
    if root is None or not root.is_dir():
        return 0
    now = time.time() if now is None else now
    removed = 0
    for entry in root.iterdir():
        try:
            if now - entry.stat().st_mtime > MAX_AGE_S:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        except OSError:
            pass
    return removed
