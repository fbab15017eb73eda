"""Device code never imports torch: proven in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

CHECK = """
import sys
import ftedge.runtime, ftedge.device_agent
import ftedge.runtime.session, ftedge.runtime.ort_backend, ftedge.runtime.cli, ftedge.cli
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))[:5]
print("ok")
"""


def test_runtime_and_agent_import_without_torch():
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_no_bare_top_level_runtime_package(tmp_path):
    """The asked-for folders install as ftedge.* subpackages only."""
    code = "import importlib.util as u; print([n for n in ('runtime','export','device_agent','fleet') if u.find_spec(n)])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


TRAIN = """
import importlib.util, sys
import numpy as np
assert importlib.util.find_spec("torch") is None, "torch is installed in the device environment"
from ftedge.runtime import load_bundle
from ftedge.runtime.session import BundleSession
from ftedge.cli import main
assert main(["inspect", sys.argv[1]]) == 0
bundle = load_bundle(sys.argv[1])
session = BundleSession(bundle)
rng = np.random.default_rng(0)
head = session.embed({"x": rng.standard_normal((16, 101, 40)).astype(np.float32)})
y = rng.integers(0, 4, 16)
before = session.eval_step(head, y)[0]
for _ in range(5):
    session.train_step(head, y)
after = session.eval_step(head, y)[0]
assert after < before, (before, after)
assert "torch" not in sys.modules
print("trained", before, after)
"""


def test_device_environment_trains_a_bundle_without_torch_installed(cnn_bundle, in_ci):
    """CI builds a second venv with only `.[device]`; FTEDGE_DEVICE_PYTHON points at it."""
    python = os.environ.get("FTEDGE_DEVICE_PYTHON")
    if not python:
        if in_ci:
            pytest.fail("FTEDGE_DEVICE_PYTHON is not set: .ci/run must build the [device]-only venv")
        pytest.skip("set FTEDGE_DEVICE_PYTHON to a venv with only ftedge[device] (scripts/dev.sh test does)")
    assert Path(python).exists(), python
    proc = subprocess.run([python, "-c", TRAIN, str(cnn_bundle)], capture_output=True, text=True, cwd=ROOT / "tests")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "trained" in proc.stdout
