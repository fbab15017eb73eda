"""The device interpreter a benchmark runs the agent with: the torch-free device venv, made to import THIS working
copy through a symlink tree on PYTHONPATH (its own non-editable install is a snapshot of whatever tree it was
installed from), else the host venv.

The tree follows pyproject.toml's ``[tool.setuptools] package-dir`` (``ftedge`` = src/ftedge, ``ftedge.runtime`` =
runtime/, ...), read at run time, so a package folder added there is in the tree without touching this file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench._common import DEVICE_PY, ROOT, progress

THREADS = 2
say = progress()


def package_dirs(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, Path]:
    """pyproject's ``[tool.setuptools] package-dir``: package name -> its folder (absolute)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    with open(pyproject, "rb") as f:
        table = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {name: (pyproject.parent / folder).resolve() for name, folder in table.items()}


def _source(name: str, dirs: dict[str, Path]) -> Path:
    """The folder of package ``name`` under the package-dir rule: its longest mapped prefix + the rest."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in dirs:
            return dirs[".".join(parts[:i])].joinpath(*parts[i:])
    return dirs.get("", ROOT).joinpath(*parts)


def make_shim(work: Path) -> Path:
    """A symlink tree that makes this working copy importable as pyproject's package-dir lays it out.

    A package with a separately mapped subpackage (``ftedge``, whose ``ftedge.runtime`` lives in runtime/) is a real
    folder of links to its own entries; every other mapped package is one link to its folder."""
    dirs = {k: v for k, v in package_dirs().items() if k}
    shim = work / "shim"
    if shim.exists():
        shutil.rmtree(shim)  # links only: rmtree does not follow them
    split = {".".join(k.split(".")[:i]) for k in dirs for i in range(1, k.count(".") + 1)}  # proper ancestors
    for name in sorted(split | set(dirs), key=lambda n: n.count(".")):
        dest, src = shim.joinpath(*name.split(".")), _source(name, dirs)
        if not src.is_dir():
            raise FileNotFoundError(f"pyproject.toml package-dir: {name} -> {src} is not a folder")
        if name not in split:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(src, target_is_directory=True)
            continue
        dest.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.name != "__pycache__" and f"{name}.{f.name}" not in split | set(dirs):
                (dest / f.name).symlink_to(f, target_is_directory=f.is_dir())
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
