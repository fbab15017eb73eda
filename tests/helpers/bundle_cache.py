"""Zoo bundles kept between test runs, keyed by everything that decides what `ftedge export` writes.

The suite's wall time is dominated by exporting its zoo (tens of tiny models, 5-25 s each, make_fx and the ONNX
exporter). A bundle only changes when the code or libraries that write it change, so the bundle farm
(:mod:`tests.helpers.bundle_farm`) keeps each successful export here and restores it while its key still matches:

    key  = sha256(pyproject.toml; the export spec (zoo file, factory, args);
                  the versions of python, torch, onnx, onnxruntime, onnxscript, transformers, numpy)
    deps = sha256 of every file of the checkout the export process imported (src/, bundle/, export/, the runtime
           modules it uses, the zoo and what the zoo imports), recorded by tests/helpers/traced_export.py

An entry is reused only while its key matches and every one of its deps still has its recorded sha256; a change to
any of them is a miss and a real export. Code the export never imports (a trainer, the agent, the fleet) does not
invalidate the cache: a change to `runtime/tasks/classify/trainer.py` no longer re-exports the whole zoo. Where: ``$FTEDGE_TEST_BUNDLE_CACHE`` (``off`` disables it), default ``~/.cache/ftedge/
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

DEPS_FILE = "deps.json"
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
    """sha256 over what decides an export's bytes besides the sources it imports (those are its deps)."""
    h = hashlib.sha256()
    for path in (ROOT / "pyproject.toml", HELPERS / "traced_export.py"):
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


def _sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def deps_of(imported: Path, zoo: Path) -> dict[str, str]:
    """{path relative to the checkout: sha256} of the checkout's files an export imported (the zoo file always)."""
    try:
        files = [Path(f) for f in json.loads(imported.read_text())]
    except (OSError, ValueError):
        return {}
    root = ROOT.resolve()
    mine = {p for p in files if root in p.parents and not any(part.startswith(".venv") for part in p.parts)}
    mine.add(Path(zoo).resolve())
    out = {}
    for p in sorted(mine):
        digest = _sha(p)
        if digest is not None:
            out[str(p.relative_to(root))] = digest
    return out


def _deps_unchanged(entry: Path) -> bool:
    try:
        deps = json.loads((entry / DEPS_FILE).read_text())
    except (OSError, ValueError):
        return False
    return bool(deps) and all(_sha(ROOT / rel) == digest for rel, digest in deps.items())


def restore(k: str, dest: Path, cmd: list[str]) -> subprocess.CompletedProcess | None:
    """Copy the cached bundle ``k`` to ``dest`` if none of its deps changed; its export's CompletedProcess, or None
    on a miss."""
    root = cache_dir()
    entry = root / k if root else None
    if entry is None or not (entry / "export.json").is_file() or not _deps_unchanged(entry):
        return None
    try:
        meta = json.loads((entry / "export.json").read_text())
        shutil.copytree(entry / "bundle", dest)
        os.utime(entry)  # used: keep it past the age limit
    except (OSError, ValueError):
        shutil.rmtree(dest, ignore_errors=True)
        return None
    return subprocess.CompletedProcess(cmd, 0, meta.get("stdout", ""), meta.get("stderr", ""))


def store(k: str, bundle: Path, proc: subprocess.CompletedProcess, deps: dict[str, str]) -> None:
    """Keep a successful export with the sha256 of the files it imported (atomically: a reader never sees half an
    entry)."""
    root = cache_dir()
    if root is None or proc.returncode != 0 or not deps:
        return
    tmp = root / f".{k}.{os.getpid()}.tmp"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(bundle, tmp / "bundle")
        (tmp / "export.json").write_text(json.dumps({"stdout": proc.stdout, "stderr": proc.stderr,
                                                     "stored": time.time()}))
        (tmp / DEPS_FILE).write_text(json.dumps(deps, indent=0, sort_keys=True))
        shutil.rmtree(root / k, ignore_errors=True)   # a stale entry of the same key (its deps changed)
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
