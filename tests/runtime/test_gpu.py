"""The CUDA execution provider end to end: backbone, portable training step and head on the GPU.

Marked ``gpu``: the default ``-m "not gpu"`` (pyproject.toml addopts) keeps them out of every run without a GPU, CI
included. ``scripts/gpu-check.sh`` builds a venv with onnxruntime-gpu instead of onnxruntime (one ``onnxruntime``
module per venv) and runs ``pytest -m gpu``; there a missing CUDA EP is a failure, not a skip. SYNTHETIC data.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.common import ROOT, ZOO, export, random_feeds, random_targets
from tests.helpers.zoo import FAMILIES, gaussian_classes

pytestmark = pytest.mark.gpu
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
# The CUDA EP runs matmuls in TF32 on Ampere and later by default: ~1e-3 relative per op, so the losses of 20
# steps agree to 1e-2, not to the CPU EP's 1e-5.
STEP_PARITY_RTOL = 1e-2
PARITY_FAMILIES = ("cnn-batchnorm-depthwise", "gru", "transformer-last-block", "mlp-mse")


@pytest.fixture(scope="module", autouse=True)
def cuda_ep() -> None:
    from ftedge.runtime.engines.ort_backend import available_providers

    have = available_providers()
    if CUDA not in have:
        pytest.fail(f"this onnxruntime has no CUDA EP (it has {', '.join(have)}): run these tests in a venv with "
                    "onnxruntime-gpu instead of onnxruntime, on a machine with an NVIDIA GPU (scripts/gpu-check.sh)")


@pytest.fixture(scope="module")
def zoo_bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gpu-zoo")
    out = {}
    for family in PARITY_FAMILIES:
        model, args = FAMILIES[family]
        export(f"{ZOO}:{model}", root / family, *args)
        out[family] = root / family
    return out


def _losses(bundle_dir: Path, providers: list[str], steps: int = 20) -> tuple[list[float], object]:
    from ftedge.runtime import load_bundle
    from ftedge.runtime.engines.session import BundleSession

    bundle = load_bundle(bundle_dir)
    head = BundleSession(bundle).embed(random_feeds(bundle.inputs, 16))  # the same head inputs for both EPs
    y = random_targets(bundle, 16)
    session = BundleSession(bundle, providers, engine="portable")
    return [session.train_step(head, y)[0] for _ in range(steps)], session.model


@pytest.mark.parametrize("family", PARITY_FAMILIES)
def test_the_portable_step_on_cuda_follows_the_cpu_ep(zoo_bundles, family):
    cpu, _ = _losses(zoo_bundles[family], [CPU])
    gpu, engine = _losses(zoo_bundles[family], [CUDA, CPU])
    assert engine.step.providers[0] == CUDA and engine.step.device == "cuda"
    # parameters and optimizer state stay on the GPU between steps (no numpy round trip)
    assert {v.device_name().lower() for v in engine.state.values()} == {"cuda"}
    rel = np.abs(np.asarray(gpu) - np.asarray(cpu)) / np.maximum(np.abs(np.asarray(cpu)), 1e-3)
    assert rel.max() < STEP_PARITY_RTOL, (family, cpu, gpu)
    assert gpu[-1] < gpu[0], f"{family}: 20 steps on CUDA did not lower the loss: {gpu}"


def _train(bundle: Path, data: Path, run: Path, *flags: str) -> dict:
    cmd = [sys.executable, "-m", "ftedge", "train", str(bundle), "--data", str(data), "-o", str(run), "--epochs", "20",
           "--lr", "0.01", "--seed", "0", "--no-cache", "--json", *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_train_on_cuda_places_every_stage_there_and_learns(tmp_path):
    bundle = tmp_path / "mlp"
    export(f"{ZOO}:mlp", bundle, "--input", "x:float32:1,20", "--labels", "a,b,c,d", "--lr", "0.01")
    x, y = gaussian_classes(seed=5)
    data = tmp_path / "blobs.npz"
    np.savez(data, x=x, labels=y)
    for mode in ("cached", "full"):
        result = _train(bundle, data, tmp_path / f"run-{mode}", "--providers", "CUDA", "--mode", mode)
        assert result["status"] == "succeeded" and result["metrics"]["accuracy"] > 0.8, result
        stages = result["providers"]
        for stage in ("backbone", "step"):
            assert stages[stage]["providers"][0] == CUDA, (mode, stage, stages)
    ev = {}
    for providers in ("CUDA", "CPU"):
        proc = subprocess.run([sys.executable, "-m", "ftedge", "evaluate", str(tmp_path / "run-cached"), "--data",
                               str(data), "--providers", providers, "--json"],
                              capture_output=True, text=True, cwd=ROOT, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        ev[providers] = json.loads(proc.stdout)["accuracy"]
    assert ev["CUDA"] == pytest.approx(ev["CPU"], abs=0.01), ev
