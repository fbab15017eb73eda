"""Shared fixtures: export bundles through the real CLI, random feeds, a smoke trainer."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ftedge.cli import main
from ftedge.export.graph_split import random_feeds  # noqa: F401  (used by tests)

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "tests" / "zoo.py"

from zoo import FAMILIES  # noqa: E402  (re-exported for the tests)

def export(model: str, out: Path, *args: str) -> dict:
    """Run `ftedge export` in-process; returns the manifest (asserts success)."""
    rc = main(["export", model, "-o", str(out), "--quiet", *args])
    assert rc == 0, f"export of {model} failed with exit code {rc}"
    return json.loads((out / "manifest.json").read_text())


def random_targets(bundle, batch: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if bundle.loss == "cross-entropy":
        return rng.integers(0, len(bundle.labels), batch)
    if bundle.loss == "bce":
        return rng.integers(0, 2, bundle.output.concrete_shape(batch)).astype(np.float32)
    return rng.standard_normal(bundle.output.concrete_shape(batch)).astype(np.float32)


def smoke_train(bundle_path: Path, steps: int = 5, batch: int = 16) -> tuple[float, float]:
    """Eval loss on one fixed batch before and after ``steps`` ORT training steps on it."""
    from ftedge.runtime import load_bundle
    from ftedge.runtime.session import BundleSession

    bundle = load_bundle(bundle_path)
    session = BundleSession(bundle)
    head = session.embed(random_feeds(bundle.inputs, batch))
    y = random_targets(bundle, batch)
    before = session.eval_step(head, y)[0]
    for _ in range(steps):
        session.train_step(head, y)
    return before, session.eval_step(head, y)[0]


@pytest.fixture(scope="session")
def family_bundle(tmp_path_factory: pytest.TempPathFactory):
    """``family_bundle(name)`` -> the bundle of a zoo family (FAMILIES or PORTABLE_ONLY), exported once per session.
    Shared: tests must not modify it (copy it first)."""
    from zoo import PORTABLE_ONLY

    root = tmp_path_factory.mktemp("families")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            model, args = {**FAMILIES, **PORTABLE_ONLY}[name]
            export(f"{ZOO}:{model}", root / name, *args)
            made[name] = root / name
        return made[name]

    return get


@pytest.fixture(scope="session")
def cnn_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "kws"
    model, args = FAMILIES["cnn-batchnorm-depthwise"]
    export(f"{ZOO}:{model}", out, *args)
    return out


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture()
def in_ci() -> bool:
    return _in_ci()


NO_TORCH = "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"


@pytest.fixture(scope="session")
def device_python() -> str:
    """The torch-free `.[device]` venv CI builds (FTEDGE_DEVICE_PYTHON); required under CI, skipped elsewhere."""
    python = os.environ.get("FTEDGE_DEVICE_PYTHON")
    if not python:
        if _in_ci():
            pytest.fail("FTEDGE_DEVICE_PYTHON is not set: .ci/run must build the [device]-only venv")
        pytest.skip("set FTEDGE_DEVICE_PYTHON to a venv with only ftedge[device] (scripts/dev.sh test does)")
    assert Path(python).exists(), python
    assert subprocess.run([python, "-c", NO_TORCH]).returncode == 0, "torch is installed in the device venv"
    return python


@pytest.fixture(scope="session")
def legacy_python() -> str:
    """The venv with onnxruntime-training 1.19.2 + torch (FTEDGE_LEGACY_PYTHON): the second engine; required under
    CI on x86_64 with CPython <= 3.12 (scripts/dev.sh builds it), skipped elsewhere."""
    python = os.environ.get("FTEDGE_LEGACY_PYTHON")
    import platform
    import sys

    possible = platform.machine().lower() in ("x86_64", "amd64") and sys.version_info[:2] <= (3, 12)
    if not python:
        if _in_ci() and possible:
            pytest.fail("FTEDGE_LEGACY_PYTHON is not set: .ci/run must build the onnxruntime-training venv")
        pytest.skip("set FTEDGE_LEGACY_PYTHON to a venv with onnxruntime-training (scripts/dev.sh test does)")
    assert Path(python).exists(), python
    probe = "import importlib.util as u, sys; sys.exit(u.find_spec('onnxruntime.training') is None)"
    assert subprocess.run([python, "-c", probe]).returncode == 0, "onnxruntime-training is missing in the legacy venv"
    return python
