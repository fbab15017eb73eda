"""Shared fixtures for every room of the suite: the ``needs`` marker (a missing service fails under CI, skips
elsewhere), the Mosquitto ``broker``, the zoo bundles exported in the background, the extra venvs, the tiny LLM.

Plain helpers live in tests/helpers/ (common.py first). Nothing heavy (numpy, onnx, torch) is imported here: a fleet
or agent test does not pay for the exporter."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers.agent_harness import agents, bundles, device  # noqa: F401  (fixtures)
from tests.helpers.common import TINY_LLM, ZOO, ZOO_WIDE, export
from tests.helpers.fleet_sim import running  # noqa: F401  (fixture)
from tests.helpers.postgres import pg_server, pg_url, store_db  # noqa: F401  (fixtures)
from tests.helpers.services import missing, require


def pytest_configure(config) -> None:  # noqa: ANN001
    config.addinivalue_line("markers", "needs(*services): the test needs a real service (mosquitto, postgres, "
                                       "chromium); missing, it fails under CI and skips elsewhere")


def pytest_runtest_setup(item) -> None:  # noqa: ANN001
    for mark in item.iter_markers("needs"):
        require(*mark.args)


@pytest.fixture()
def broker(tmp_path):
    """A real Mosquitto on a free loopback port, stopped at teardown."""
    require("mosquitto")
    from tests.helpers.broker import Broker

    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


# -- zoo bundles, exported in the background while other tests run (tests/helpers/bundle_farm.py) ------------------

def _zoo_specs(names: set[str]) -> dict[str, tuple[Path, str, list[str]]]:
    """Bundle name -> (zoo file, factory, export args) for the zoo fixtures the collected tests use."""
    specs: dict[str, tuple[Path, str, list[str]]] = {}
    if names & {"family_bundle", "cnn_bundle"}:
        from tests.helpers.zoo import FAMILIES, PORTABLE_ONLY

        specs.update({n: (ZOO, m, a) for n, (m, a) in {**FAMILIES, **PORTABLE_ONLY}.items()})
    if "wide_bundles" in names:
        from tests.helpers.zoo_wide import WIDE

        specs.update({f"wide-{n}": (ZOO_WIDE, m, a) for n, (m, a) in WIDE.items()})
    return specs


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(session, config, items):  # noqa: ANN001
    """Run the rooms interleaved in test-file-name order, and start exporting every zoo bundle the collected tests
    will ask for.

    Why the order: the background exports (one core) overlap best with the broker, agent and fleet tests, which
    mostly wait, and worst with the CPU-bound rig and LLM tests. File-name order (the order from before the suite
    had room folders) puts the rigs near the end; folder order ran them while the farm exported and made CI 18 %
    slower (pytest 1,044 s against 887 s, same machine)."""
    from tests.helpers import bundle_farm

    items.sort(key=lambda item: item.path.name)  # stable: a module's own tests keep their order

    specs = _zoo_specs({f for item in items for f in getattr(item, "fixturenames", ())})
    if specs and bundle_farm.current() is None:
        root = Path(tempfile.mkdtemp(prefix="ftedge-zoo-"))
        bundle_farm.start(root, specs, workers=max(1, (os.cpu_count() or 2) - 1))


def pytest_sessionfinish(session, exitstatus):  # noqa: ANN001
    from tests.helpers import bundle_farm

    bundle_farm.stop()


def pytest_terminal_summary(terminalreporter):  # noqa: ANN001
    from tests.helpers import bundle_farm

    if bundle_farm.LAST:
        terminalreporter.write_line(f"zoo bundles: {bundle_farm.LAST['bundles']} ready, {bundle_farm.LAST['cached']} of "
                                    "them restored from the export cache (tests/helpers/bundle_cache.py)")


@pytest.fixture(scope="session")
def family_bundle():
    """``family_bundle(name)`` -> the bundle of a zoo family (FAMILIES or PORTABLE_ONLY), exported once per session.
    Shared: tests must not modify it (copy it first)."""
    from tests.helpers.bundle_farm import zoo_bundle

    return zoo_bundle


@pytest.fixture(scope="session")
def wide_bundles():
    """``wide_bundles(family)`` -> (export process, bundle path) of a wide-zoo family (tests/helpers/zoo_wide.py),
    exported once per session in the background; the export may have failed (tests assert on the process)."""
    from tests.helpers.bundle_farm import current

    def get(family: str) -> tuple[subprocess.CompletedProcess, Path]:
        farm = current()
        return farm.get(f"wide-{family}"), farm.root / f"wide-{family}"

    return get


@pytest.fixture(scope="session")
def cnn_bundle() -> Path:
    from tests.helpers.bundle_farm import zoo_bundle

    return zoo_bundle("cnn-batchnorm-depthwise")


# -- the other venvs: torch-free device, legacy onnxruntime-training, OpenVINO ---------------------------------------

NO_TORCH = "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"


@pytest.fixture(scope="session")
def device_python() -> str:
    """The torch-free `.[device]` venv CI builds (FTEDGE_DEVICE_PYTHON); required under CI, skipped elsewhere."""
    python = os.environ.get("FTEDGE_DEVICE_PYTHON")
    if not python:
        missing("FTEDGE_DEVICE_PYTHON is not set: a venv with only ftedge[device] (scripts/dev.sh test builds it)")
    assert Path(python).exists(), python
    assert subprocess.run([python, "-c", NO_TORCH]).returncode == 0, "torch is installed in the device venv"
    return python


@pytest.fixture(scope="session")
def legacy_python() -> str:
    """The venv with onnxruntime-training 1.19.2 + torch (FTEDGE_LEGACY_PYTHON): the second engine; required under
    CI on x86_64 with CPython <= 3.12 (scripts/dev.sh builds it), skipped elsewhere."""
    import platform
    import sys

    python = os.environ.get("FTEDGE_LEGACY_PYTHON")
    possible = platform.machine().lower() in ("x86_64", "amd64") and sys.version_info[:2] <= (3, 12)
    if not python:
        why = "FTEDGE_LEGACY_PYTHON is not set: a venv with onnxruntime-training (scripts/dev.sh test builds it)"
        if possible:
            missing(why)
        pytest.skip(why + "; onnxruntime-training 1.19.2 has no wheel for this Python/arch")
    assert Path(python).exists(), python
    probe = "import importlib.util as u, sys; sys.exit(u.find_spec('onnxruntime.training') is None)"
    assert subprocess.run([python, "-c", probe]).returncode == 0, "onnxruntime-training is missing in the legacy venv"
    return python


@pytest.fixture(scope="session")
def openvino_python() -> str:
    """The torch-free device venv with onnxruntime-openvino 1.24.1 instead of onnxruntime (FTEDGE_OPENVINO_PYTHON):
    the OpenVINO execution provider; required under CI on x86_64 Linux with CPython 3.10-3.13 (scripts/dev.sh
    builds it), skipped elsewhere."""
    import platform
    import sys

    python = os.environ.get("FTEDGE_OPENVINO_PYTHON")
    possible = (sys.platform == "linux" and platform.machine().lower() in ("x86_64", "amd64")
                and (3, 10) <= sys.version_info[:2] <= (3, 13))
    if not python:
        why = "FTEDGE_OPENVINO_PYTHON is not set: a venv with onnxruntime-openvino (scripts/dev.sh test builds it)"
        if possible:
            missing(why)
        pytest.skip(why + "; onnxruntime-openvino 1.24.1 has no wheel for this Python/arch")
    assert Path(python).exists(), python
    probe = ("import onnxruntime as o, sys; sys.exit('OpenVINOExecutionProvider' not in o.get_available_providers())")
    assert subprocess.run([python, "-c", probe]).returncode == 0, "the OpenVINO EP is missing in the OpenVINO venv"
    assert subprocess.run([python, "-c", NO_TORCH]).returncode == 0, "torch is installed in the OpenVINO venv"
    return python


# -- detection: the shop detector (MobileNetV2 backbone, SYNTHETIC shop photos from examples/detect/make_shop.py) --

SHOP_LABELS = ("sneaker", "bag", "ankle_boot")


@pytest.fixture(scope="session")
def shop_detector(tmp_path_factory) -> Path:
    """The shop detector bundle, exported once per session (an export takes ~20 s). Shared: tests read it or train
    from it; one that would change it copies it first."""
    from ftedge.cli import main

    out = tmp_path_factory.mktemp("det") / "shop"
    assert main(["export", "ftedge.export.detect_sources:mobilenet_v2", "-o", str(out), "--task", "detect",
                 "--labels", ",".join(SHOP_LABELS), "--lr", "2e-3", "--quiet"]) == 0
    return out


# -- causal LMs: a tiny random Llama with SmolLM2's real tokenizer (tests/helpers/tiny_llm.py) ---------------------

@pytest.fixture(scope="session")
def llm_bundle(tmp_path_factory) -> Path:
    """The tiny LLM exported as a causal-LM bundle: LoRA rank 4 on its top 2 of 4 blocks, 64 tokens."""
    out = tmp_path_factory.mktemp("llm") / "tiny-llm"
    manifest = export(f"{TINY_LLM}:tiny", out, "--task", "causal-lm", "--lora", "4",
                      "--trainable-blocks", "2", "--lr", "0.01", "--max-length", "64")
    assert manifest["task"] == "causal-lm" and manifest["llm"]["cut"] == 2
    return out

