"""``ftedge export --quantize-backbone int8-qdq [--calibration-data FILE.npz]``: a static QDQ int8 backbone (the
form NPU-class execution providers run whole), its parity, its calibration input, and its placement on the
OpenVINO EP with CPU fallback disabled (``openvino_python``: onnxruntime-openvino). SYNTHETIC data."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import onnx
import pytest
from ftedge.runtime import load_bundle
from ftedge.runtime.tasks.classify.trainer import TrainConfig, train
from ftedge.runtime.engines.session import BundleSession

from ftedge.cli import main
from tests.helpers.common import ROOT, ZOO, export, random_feeds
from tests.helpers.zoo import FAMILIES

CNN, CNN_ARGS = FAMILIES["cnn-batchnorm-depthwise"]
DYNAMIC_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}


def _calibration(path, n: int = 40) -> None:
    rng = np.random.default_rng(3)
    np.savez(path, x=rng.normal(size=(n, 101, 40)).astype(np.float32), labels=rng.integers(0, 4, n))


@pytest.fixture(scope="module")
def qdq_cnn(tmp_path_factory):
    """The zoo CNN (batchnorm + depthwise convolutions) with a static QDQ int8 backbone calibrated on a file."""
    tmp = tmp_path_factory.mktemp("qdq")
    _calibration(tmp / "calib.npz")
    out = tmp / "cnn"
    manifest = export(f"{ZOO}:{CNN}", out, *CNN_ARGS, "--quantize-backbone", "int8-qdq",
                      "--calibration-data", str(tmp / "calib.npz"))
    return out, manifest


def test_qdq_backbone_is_static_int8_calibrated_on_the_file_and_stays_close(qdq_cnn, tmp_path):
    out, manifest = qdq_cnn
    assert manifest["roles"]["backbone_int8"] == "backbone.int8.onnx"
    q = manifest["quantization"]["backbone_int8"]
    assert q["method"] == "static-qdq" and q["weights"] == "int8 per-channel" and q["activations"] == "uint8"
    assert q["calibration"] == {"method": "minmax", "samples": 40, "source": "file"}
    assert q["quantized_nodes"].get("Conv", 0) >= 3, q  # every convolution reads an int8 weight
    ops = {n.op_type for n in onnx.load(str(out / "backbone.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and not ops & DYNAMIC_OPS, ops
    # parity against PyTorch is recorded for the int8 chain like the dynamic one; the logits span about +-0.2
    int8 = {k: v for k, v in manifest["parity"]["max_abs_diff"].items() if "int8" in k}
    assert len(int8) == 2 and all(0 < v < 2e-3 for v in int8.values()), int8
    fp32 = {k: v for k, v in manifest["parity"]["max_abs_diff"].items() if "int8" not in k}
    assert all(v <= 1e-4 for v in fp32.values()), fp32
    # `ftedge train --backbone int8` takes it unchanged

    x, y = np.random.default_rng(0).normal(size=(24, 101, 40)).astype(np.float32), np.arange(24) % 4
    np.savez(tmp_path / "d.npz", x=x, labels=y)
    result = train(out, tmp_path / "d.npz", tmp_path / "r", TrainConfig(epochs=1, backbone="int8"))
    assert result["status"] == "succeeded" and result["backbone"] == "int8"
    session = BundleSession(load_bundle(out), backbone_variant="backbone_int8")
    assert np.isfinite(session.predict(random_feeds(load_bundle(out).inputs, 3))).all()


def test_qdq_without_calibration_data_uses_the_export_sample_inputs(tmp_path):
    manifest = export(f"{ZOO}:mlp", tmp_path / "b", "--input", "x:float32:1,20", "--quantize-backbone", "int8-qdq")
    q = manifest["quantization"]["backbone_int8"]
    assert q["calibration"]["source"] == "random sample inputs" and q["calibration"]["samples"] == 64
    assert q["quantized_nodes"], q


def test_calibration_reads_at_most_its_sample_cap_from_a_bigger_file(tmp_path):
    from ftedge.export.calibration import CALIBRATION_SAMPLES

    np.savez_compressed(tmp_path / "c.npz", x=np.random.default_rng(1).normal(size=(5000, 20)).astype(np.float64))
    manifest = export(f"{ZOO}:mlp", tmp_path / "b", "--input", "x:float32:1,20", "--quantize-backbone", "int8-qdq",
                      "--calibration-data", str(tmp_path / "c.npz"))
    assert manifest["quantization"]["backbone_int8"]["calibration"] == {
        "method": "minmax", "samples": CALIBRATION_SAMPLES, "source": "file"}


@pytest.mark.parametrize("arrays,extra,message", [
    ({"y": np.zeros((4, 20), np.float32)}, [], "lacks array(s) x"),
    ({"x": np.zeros((4, 21), np.float32)}, [], "has shape [4, 21]; the input takes [N, 20]"),
    ({"x": np.full((4, 20), np.nan, np.float32)}, [], "NaN or infinite"),
    ({"x": np.zeros((0, 20), np.float32)}, [], "at least one"),
    ({"x": np.zeros((4, 20), np.float32)}, ["--quantize-backbone", "int8"], "give --quantize-backbone int8-qdq too"),
])
def test_bad_calibration_data_is_a_clear_usage_error(tmp_path, capsys, arrays, extra, message):
    np.savez(tmp_path / "c.npz", **arrays)
    quantize = extra or ["--quantize-backbone", "int8-qdq"]
    rc = main(["export", f"{ZOO}:mlp", "-o", str(tmp_path / "b"), "--quiet", "--input", "x:float32:1,20",
               *quantize, "--calibration-data", str(tmp_path / "c.npz")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert not (tmp_path / "b").exists()


def test_not_an_npz_is_a_clear_usage_error(tmp_path, capsys):
    (tmp_path / "c.npz").write_bytes(b"not a zip")
    rc = main(["export", f"{ZOO}:mlp", "-o", str(tmp_path / "b"), "--quiet", "--input", "x:float32:1,20",
               "--quantize-backbone", "int8-qdq", "--calibration-data", str(tmp_path / "c.npz")])
    assert rc == 2 and "cannot read --calibration-data" in capsys.readouterr().err


_OPEN = """
import sys, numpy as np, onnxruntime as ort
for path in sys.argv[1:]:
    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    try:
        s = ort.InferenceSession(path, so, providers=["OpenVINOExecutionProvider"])
        s.run(None, {"x": np.zeros((2, 101, 40), np.float32)})
        print("whole")
    except Exception as exc:
        print("refused", str(exc).replace(chr(10), " ")[:300])
"""


def test_qdq_backbone_runs_whole_on_openvino_where_dynamic_int8_conv_does_not(qdq_cnn, openvino_python, tmp_path):
    """The OpenVINO EP takes the QDQ backbone with CPU fallback disabled (no node left to the CPU EP); the dynamic
    int8-conv one (ConvInteger) it refuses in that mode."""
    from ftedge.export.backbone import quantize_int8

    out, _ = qdq_cnn
    dynamic = tmp_path / "backbone.int8-conv.onnx"
    assert quantize_int8(out / "backbone.onnx", dynamic, conv=True).get("ConvInteger")
    proc = subprocess.run([openvino_python, "-c", _OPEN, str(out / "backbone.int8.onnx"), str(dynamic)],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    qdq, dyn = proc.stdout.strip().splitlines()
    assert qdq == "whole", qdq
    assert dyn.startswith("refused") and "CPU EP" in dyn, dyn
    # the NPU pattern with it, unchanged flags: the QDQ backbone on OpenVINO (no node on the CPU EP), step + head on CPU
    x, y = np.random.default_rng(0).normal(size=(24, 101, 40)).astype(np.float32), np.arange(24) % 4
    np.savez(tmp_path / "d.npz", x=x, labels=y)
    proc = subprocess.run([openvino_python, "-m", "ftedge", "train", str(out), "--data", str(tmp_path / "d.npz"), "-o",
                           str(tmp_path / "run"), "--providers", "OpenVINO", "--step-providers", "CPU", "--backbone",
                           "int8", "--epochs", "2", "--no-cache", "--json"],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    backbone = result["providers"]["backbone"]
    assert result["status"] == "succeeded" and result["backbone"] == "int8", result
    assert backbone["providers"][0] == "OpenVINOExecutionProvider" and backbone["fallback"] is None, backbone
    assert backbone["cpu_fallback_nodes"] == 0, backbone
