"""Zoo bundles exported in the background while other tests run.

Exporting a bundle is mostly single-threaded Python (torch.onnx, the training-step graph), and the suite's broker,
agent and fleet tests mostly wait; so the session starts one export process per spare core as soon as collection
shows which zoo bundles it needs, and a test asking for a bundle waits only for that one (moved to the front of the
queue if it has not started). Every export is the real `ftedge export` CLI in its own process -- or, when the same
code and libraries exported the same spec before, that export's bundle restored from the cache outside the clone
(:mod:`tests.helpers.bundle_cache`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from tests.helpers import bundle_cache
from tests.helpers.common import HELPERS


class BundleFarm:
    def __init__(self, root: Path, specs: dict[str, tuple[Path, str, list[str]]], workers: int) -> None:
        """``specs``: bundle name -> (zoo file, factory, export args)."""
        self.root, self.specs = root, specs
        self.pending = list(specs)
        self.results: dict[str, subprocess.CompletedProcess] = {}
        self.running: dict[str, subprocess.Popen] = {}
        self.cond = threading.Condition()
        self.closed = False
        self.cached = 0  # bundles restored from tests/helpers/bundle_cache.py instead of exported
        self.threads = [threading.Thread(target=self._work, daemon=True, name=f"bundle-farm-{k}")
                        for k in range(max(1, workers))]
        for t in self.threads:
            t.start()

    def _work(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # leave the other cores to the tests
        while True:
            with self.cond:
                if self.closed or not self.pending:
                    return
                name = self.pending.pop(0)
            zoo, model, args = self.specs[name]
            deps = self.root / f".{name}.deps.json"   # what the export imported (tests/helpers/traced_export.py)
            cmd = [sys.executable, str(HELPERS / "traced_export.py"), str(deps), "export", f"{zoo}:{model}", "-o",
                   str(self.root / name), "--quiet", *args]
            key = bundle_cache.key(zoo, model, args)
            done = bundle_cache.restore(key, self.root / name, cmd)  # the same code exported it before
            cached = done is not None
            if done is None:
                with self.cond:
                    if self.closed:
                        return
                    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                    self.running[name] = proc
                out, err = proc.communicate()
                done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
                bundle_cache.store(key, self.root / name, done, bundle_cache.deps_of(deps, zoo))
            with self.cond:
                self.cached += cached
                self.running.pop(name, None)
                self.results[name] = done
                self.cond.notify_all()

    def get(self, name: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        """The finished export of ``name`` (its CompletedProcess; the bundle is at ``root / name``)."""
        if name not in self.specs:
            raise KeyError(f"{name} is not a bundle this farm exports")
        with self.cond:
            if self.closed and name not in self.results:
                raise RuntimeError("the bundle farm is closed")
            if name in self.pending:  # needed now: next in line
                self.pending.remove(name)
                self.pending.insert(0, name)
            if not self.cond.wait_for(lambda: name in self.results, timeout):
                raise TimeoutError(f"exporting {name} took over {timeout} s")
            return self.results[name]

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.pending.clear()
            for proc in self.running.values():
                proc.kill()
        for t in self.threads:
            t.join(timeout=30)


# The session's one farm: tests/conftest.py starts it after collection and stops it at the end.
_FARM: list[BundleFarm] = []


def start(root: Path, specs: dict[str, tuple[Path, str, list[str]]], workers: int) -> BundleFarm:
    bundle_cache.prune()
    _FARM.append(BundleFarm(root, specs, workers))
    return _FARM[-1]


def current() -> BundleFarm | None:
    return _FARM[-1] if _FARM else None


# The last stopped farm's counts, for the session summary: {"bundles": n, "cached": restored from the cache}.
LAST: dict[str, int] = {}


def stop() -> None:
    while _FARM:
        farm = _FARM.pop()
        LAST.update(bundles=len(farm.results), cached=farm.cached)
        farm.close()
        shutil.rmtree(farm.root, ignore_errors=True)


def zoo_bundle(name: str) -> Path:
    """The bundle ``name`` from the background exports (asserting its export succeeded). Shared: copy before
    modifying it."""
    farm = current()
    assert farm is not None and name in farm.specs, f"{name}: not among the collected tests' zoo bundles"
    proc = farm.get(name)
    assert proc.returncode == 0, f"exporting {name} failed:\n{proc.stderr[-3000:]}"
    return farm.root / name
