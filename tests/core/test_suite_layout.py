"""The suite's own layout: tests live in folders by room, and the shared conftest imports nothing heavy (a fleet or
agent test does not pay for numpy, onnx or torch)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers.common import ROOT

ROOMS = {"core", "bundle", "export", "runtime", "agent", "fleet", "e2e", "fuzz"}


def test_tests_live_in_room_folders():
    loose = [p.name for p in (ROOT / "tests").glob("test_*.py")]
    assert not loose, f"put these in a room folder ({sorted(ROOMS)}): {loose}"
    rooms = {p.parent.relative_to(ROOT / "tests").parts[0] for p in (ROOT / "tests").rglob("test_*.py")}
    assert rooms == ROOMS, rooms ^ ROOMS


def test_conftest_imports_no_numpy_onnx_or_torch():
    code = ("import sys, tests.conftest; "
            "print(sorted(m for m in ('numpy', 'onnx', 'onnxruntime', 'torch', 'ftedge.export') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"tests/conftest.py imports {out.stdout.strip()}: import it inside the fixture"
