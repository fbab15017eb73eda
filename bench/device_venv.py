"""The device interpreter a benchmark runs the agent with: the torch-free device venv, made to import THIS working
copy through a symlink tree on PYTHONPATH (its own install predates the agent), else the host venv."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench._common import DEVICE_PY, ROOT, progress

THREADS = 2
say = progress()


def make_shim(work: Path) -> Path:
    """A symlink tree that makes this working copy importable as `ftedge` (pyproject's package-dir layout)."""
    shim = work / "shim"
    pkg = shim / "ftedge"
    pkg.mkdir(parents=True, exist_ok=True)
    for f in (ROOT / "src" / "ftedge").iterdir():
        if f.suffix == ".py":
            (pkg / f.name).symlink_to(f)
    for sub in ("runtime", "export", "device_agent", "fleet"):
        if (ROOT / sub).is_dir():
            (pkg / sub).symlink_to(ROOT / sub, target_is_directory=True)
    return shim


def pick_device_python(work: Path, env: dict[str, str]) -> tuple[str, dict[str, str], str]:
    """(python, env for it, description). The device venv with the shim, else the host venv."""
    if DEVICE_PY.exists():
        shim = make_shim(work)
        denv = {**env, "PYTHONPATH": str(shim)}
        probe = ("import importlib.util as u, ftedge, ftedge.device_agent.agent, paho.mqtt; "
                 "print(ftedge.__file__, u.find_spec('torch') is None)")
        p = subprocess.run([str(DEVICE_PY), "-c", probe], env=denv, capture_output=True, text=True, cwd=work)
        if p.returncode == 0 and str(shim) in p.stdout:
            no_torch = p.stdout.split()[-1] == "True"
            return str(DEVICE_PY), denv, (f"{DEVICE_PY} + PYTHONPATH symlink tree of this working copy "
                                          f"({'no torch installed' if no_torch else 'TORCH IS INSTALLED there'})")
        say(f"NOTE: the device venv cannot import the agent ({(p.stderr or p.stdout).strip()[-300:]}); using the host venv")
    return sys.executable, dict(env), (f"{sys.executable} (HOST venv fallback: torch installed, not a device "
                                       "environment; onnxruntime is imported without torch, see ort_backend._onnxruntime)")


def child_env() -> dict[str, str]:
    """OMP_NUM_THREADS for every child; no inherited PYTHONPATH."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(THREADS)
    env.pop("PYTHONPATH", None)
    return env
