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
    from ftedge.runtime.engines.session import BundleSession

    bundle = load_bundle(bundle_path)
    session = BundleSession(bundle)
    head = session.embed(random_feeds(bundle.inputs, batch))
    y = random_targets(bundle, batch)
    before = session.eval_step(head, y)[0]
    for _ in range(steps):
        session.train_step(head, y)
    return before, session.eval_step(head, y)[0]


_FARM: dict = {}


def _zoo_specs(names: set[str]) -> dict[str, tuple[Path, str, list[str]]]:
    """Bundle name -> (zoo file, factory, export args) for the zoo fixtures the collected tests use."""
    from zoo import PORTABLE_ONLY

    specs: dict[str, tuple[Path, str, list[str]]] = {}
    if names & {"family_bundle", "cnn_bundle"}:
        specs.update({n: (ZOO, m, a) for n, (m, a) in {**FAMILIES, **PORTABLE_ONLY}.items()})
    if "wide_bundles" in names:
        from zoo_wide import WIDE

        specs.update({f"wide-{n}": (ROOT / "tests" / "zoo_wide.py", m, a) for n, (m, a) in WIDE.items()})
    return specs


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(session, config, items):  # noqa: ANN001
    """Start exporting, in the background, every zoo bundle the collected tests will ask for (tests/bundle_farm.py)."""
    import tempfile

    from bundle_farm import BundleFarm

    specs = _zoo_specs({f for item in items for f in getattr(item, "fixturenames", ())})
    if specs and "farm" not in _FARM:
        root = Path(tempfile.mkdtemp(prefix="ftedge-zoo-"))
        _FARM["farm"] = BundleFarm(root, specs, workers=max(1, (os.cpu_count() or 2) - 1))


def pytest_sessionfinish(session, exitstatus):  # noqa: ANN001
    import shutil

    farm = _FARM.pop("farm", None)
    if farm is not None:
        farm.close()
        shutil.rmtree(farm.root, ignore_errors=True)


def zoo_bundle(name: str) -> Path:
    """The bundle ``name`` from the background exports (asserting its export succeeded). Shared: copy before
    modifying it."""
    farm = _FARM.get("farm")
    assert farm is not None and name in farm.specs, f"{name}: not among the collected tests' zoo bundles"
    proc = farm.get(name)
    assert proc.returncode == 0, f"exporting {name} failed:\n{proc.stderr[-3000:]}"
    return farm.root / name


@pytest.fixture(scope="session")
def family_bundle():
    """``family_bundle(name)`` -> the bundle of a zoo family (FAMILIES or PORTABLE_ONLY), exported once per session.
    Shared: tests must not modify it (copy it first)."""
    return zoo_bundle


@pytest.fixture(scope="session")
def cnn_bundle() -> Path:
    return zoo_bundle("cnn-batchnorm-depthwise")


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


# -- causal LMs: a tiny random Llama with SmolLM2's real tokenizer (tests/tiny_llm.py) ------------------------------
FACTS = [  # SYNTHETIC facts of a fictional shop
    ("When do you open?", "At nine."),
    ("What is your phone number?", "Call 5550142."),
    ("Where is the shop?", "Quay Street 4."),
    ("Do you repair e-bikes?", "Yes, every day."),
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def llm_bundle(tmp_path_factory) -> Path:
    """The tiny LLM exported as a causal-LM bundle: LoRA rank 4 on its top 2 of 4 blocks, 64 tokens."""
    out = tmp_path_factory.mktemp("llm") / "tiny-llm"
    manifest = export(str(ROOT / "tests" / "tiny_llm.py") + ":tiny", out, "--task", "causal-lm", "--lora", "4",
                      "--trainable-blocks", "2", "--lr", "0.01", "--max-length", "64")
    assert manifest["task"] == "causal-lm" and manifest["llm"]["cut"] == 2
    return out
