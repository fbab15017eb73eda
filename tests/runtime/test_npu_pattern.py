"""The NPU pattern on a real accelerator EP: an int8 backbone on the OpenVINO EP feeding an fp32 head trained on the
CPU EP (``--providers OpenVINO --step-providers CPU --backbone int8``), run by ``ftedge train`` in the OpenVINO venv
(the ``openvino_python`` fixture: onnxruntime-openvino). SYNTHETIC data: Gaussian blobs."""

from __future__ import annotations

import json
import subprocess

import numpy as np

from tests.helpers.common import ROOT, ZOO, export
from tests.helpers.zoo import gaussian_classes

CPU, OV = "CPUExecutionProvider", "OpenVINOExecutionProvider"


def test_int8_backbone_on_openvino_feeds_a_head_trained_on_the_cpu_ep(openvino_python, tmp_path):
    bundle = tmp_path / "mlp"
    manifest = export(f"{ZOO}:mlp", bundle, "--input", "x:float32:1,20", "--labels", "a,b,c,d", "--lr", "0.01",
                      "--quantize-backbone", "int8")
    assert "backbone_int8" in manifest["roles"]
    x, y = gaussian_classes(seed=5)
    data = tmp_path / "blobs.npz"
    np.savez(data, x=x, labels=y)
    run = tmp_path / "run"
    proc = subprocess.run([openvino_python, "-m", "ftedge", "train", str(bundle), "--data", str(data), "-o", str(run),
                           "--providers", "OpenVINO", "--step-providers", "CPU", "--backbone", "int8", "--epochs", "20",
                           "--seed", "0", "--no-cache", "--json"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "succeeded" and result["metrics"]["accuracy"] > 0.8, result
    placed = result["providers"]
    backbone = placed["backbone"]
    # the whole int8 backbone ran on OpenVINO: no node left to the CPU EP, no fallback of the graph
    assert backbone["providers"][0] == OV and backbone["fallback"] is None, backbone
    assert backbone["cpu_fallback_nodes"] == 0 and backbone["nodes"] >= 1, backbone
    for stage in ("step", "head"):
        assert placed[stage]["providers"] == [CPU] and placed[stage]["requested"] == [CPU], (stage, placed)
    assert json.loads((run / "result.json").read_text())["providers"] == placed
    # the personalized model (int8 backbone + trained head) runs on the accelerator EP as it trained
    ev = subprocess.run([openvino_python, "-m", "ftedge", "evaluate", str(run), "--data", str(data), "--providers",
                         "OpenVINO", "--json"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert json.loads(ev.stdout)["accuracy"] > 0.8
