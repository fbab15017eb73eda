"""The shipped keyword-spotting base model and the espeak-ng dataset tool (SYNTHETIC speech)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from ftedge.runtime.tasks.classify.evaluate import evaluate

from tests.helpers.common import ROOT, export

KWS = ROOT / "examples" / "kws"
SOURCE = ["en-us", "en-gb", "en-gb-x-rp", "en-us-nyc", "en-029", "en-gb-x-gbclan"]


def _maker():
    spec = importlib.util.spec_from_file_location("make_kws_dataset", ROOT / "examples" / "demo" / "make_kws_dataset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def kws_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("kws") / "bundle"
    words = json.loads((KWS / "training_report.json").read_text())["words"]
    manifest = export(f"{KWS / 'model.py'}:build_model", out, "--input", "waveform:float32:1,16000",
                      "--head", "classifier", "--labels", ",".join(words), "--keep-head")
    return out, manifest


def test_shipped_weights_are_small_and_trained_on_source_accents_only():
    report = json.loads((KWS / "training_report.json").read_text())
    assert (KWS / "kws_base.pt").stat().st_size < 2 * 2**20
    assert report["voices"] == SOURCE and report["data"].startswith("SYNTHETIC")
    assert report["val_accuracy"] >= 0.95 and 50_000 <= report["params"] <= 150_000


def test_bundle_records_audio_preprocessing(kws_bundle):
    _, manifest = kws_bundle
    pre = manifest["preprocessing"]
    assert pre["type"] == "audio" and pre["sample_rate"] == 16000 and pre["clip_samples"] == 16000
    assert pre["frontend"]["type"] == "log-mel"
    assert max(manifest["parity"]["max_abs_diff"].values()) <= 1e-4
    assert manifest["trainable"] == ["classifier.1.weight", "classifier.1.bias"]


def test_base_model_recognizes_new_clips_of_a_source_accent(kws_bundle, tmp_path):
    out, _ = kws_bundle
    _maker().make_dataset(tmp_path / "d", ["en-us"], per_word=3, seed=4242)  # unseen seeds, seen accent
    result = evaluate(out, tmp_path / "d")
    assert result["samples"] == 30 and result["accuracy"] >= 0.9


def test_dataset_tool_is_deterministic(tmp_path):
    maker = _maker()
    a = maker.make_dataset(tmp_path / "a", ["en-gb-scotland"], words=["yes", "go"], per_word=2, seed=7)
    maker.make_dataset(tmp_path / "b", ["en-gb-scotland"], words=["yes", "go"], per_word=2, seed=7)
    assert a["synthetic"] is True and len(a["clips"]) == 4
    for clip in a["clips"]:
        assert (tmp_path / "a" / clip["file"]).read_bytes() == (tmp_path / "b" / clip["file"]).read_bytes()
