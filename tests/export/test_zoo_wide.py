"""The wide zoo (tests/helpers/zoo_wide.py): tiny random-init Hugging Face and plain PyTorch architectures people fine-tune
on edge boxes. Every family exports with parity against PyTorch, whole-batch and with the backbone run in chunks
(as the embedding cache runs it), and trains with `ftedge train` on the default (portable) engine; with
onnxruntime-training every family it can differentiate trains too, and the others are refused at export, naming
the operator and module. All data here is SYNTHETIC (random inputs and labels)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from ftedge.export.graph_split import random_feeds
from ftedge.runtime import load_bundle

from ftedge.cli import main
from tests.helpers.common import ROOT, ZOO_WIDE, random_targets, smoke_train
from tests.helpers.zoo_wide import WIDE
from tests.helpers.services import require_module

require_module("transformers", "the [dev] extra installs transformers")
WIDE_ZOO = ZOO_WIDE
TOL = 1e-4

# What onnxruntime-training 1.19.2 cannot train, and the words its refusal must contain.
ORT_CANNOT = {
    "bilstm-top-layer": "LSTM (direction=bidirectional) in module rnn",
    "bigru-top-layer": "GRU (direction=bidirectional) in module rnn",
}


def _bundle(wide_bundles, family: str) -> Path:  # noqa: ANN001
    proc, path = wide_bundles(family)
    assert proc.returncode == 0, f"{family}: export failed:\n{proc.stderr[-3000:]}"
    return path


def _dataset(path: Path, out: Path, n: int = 80) -> Path:
    bundle = load_bundle(path)
    np.savez(out, labels=random_targets(bundle, n, seed=2), **random_feeds(bundle.inputs, n, seed=3))
    return out


@pytest.mark.parametrize("family", sorted(WIDE))
def test_wide_family_exports_with_chunked_parity_and_trains(family, wide_bundles, tmp_path):
    path = _bundle(wide_bundles, family)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["layout"] == "split" and "portable" in manifest["engines"]
    parity = manifest["parity"]
    whole = {k: v for k, v in parity["max_abs_diff"].items() if "int8" not in k}
    assert len(whole) == 2 and max(whole.values()) <= TOL, whole
    assert len(parity["chunked_max_abs_diff"]) == 1 and max(parity["chunked_max_abs_diff"].values()) <= TOL
    assert manifest["parity"]["step"]["max_rel_diff"] <= 1e-4

    before, after = smoke_train(path)
    assert np.isfinite(after) and after < before, f"{family}: loss did not fall ({before} -> {after})"

    # The CLI on 80 samples embedded 32 at a time (cached per sample), evaluated in chunks every epoch.
    data = _dataset(path, tmp_path / "d.npz")
    rc = main(["train", str(path), "--data", str(data), "-o", str(tmp_path / "run"), "--epochs", "2",
               "--batch-size", "16", "--embed-batch-size", "32", "--quiet"])
    assert rc == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "succeeded" and result["engine"] == "portable"
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("family", ["bert-last", "gpt2-last", "llama-last"])
def test_default_attention_last_block_trains_on_the_torch_free_device_install(family, wide_bundles, device_python,
                                                                             tmp_path):
    """The recipe users reach for after "new head": a transformers model loaded with its defaults (SDPA
    attention), last block unfrozen, trained by the device install (no torch) and its model written."""
    path = _bundle(wide_bundles, family)
    data = _dataset(path, tmp_path / "d.npz")
    run = tmp_path / "run"
    proc = subprocess.run([device_python, "-m", "ftedge", "train", str(path), "--data", str(data), "-o", str(run),
                           "--epochs", "3", "--quiet"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "succeeded" and result["engine"] == "portable"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and all(np.isfinite(m["train_loss"]) for m in metrics)
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert (run / "model.onnx").exists()


def test_many_classes_keep_per_epoch_state_small(wide_bundles, tmp_path, capsys):
    """6,000 classes: no class-by-class matrix in checkpoint/state.json or result.json (it was 793 MB per epoch);
    an evaluation report lists the classes seen and the most frequent confusions instead."""
    path = _bundle(wide_bundles, "next-token-6000")
    data = _dataset(path, tmp_path / "d.npz", n=120)
    run = tmp_path / "run"
    assert main(["train", str(path), "--data", str(data), "-o", str(run), "--epochs", "3", "--quiet"]) == 0
    for name in ("checkpoint/state.json", "result.json"):
        size = (run / name).stat().st_size
        assert size < 20_000, f"{name} is {size} bytes"
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert set(state["best_metrics"]) >= {"loss", "accuracy", "macro_f1"} and "confusion_matrix" not in state["best_metrics"]

    assert main(["evaluate", str(run), "--data", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "confusion_matrix" not in report
    assert 0 < len(report["per_class"]) <= 240  # classes present in truth or prediction only
    assert sum(c["support"] for c in report["per_class"].values()) == 120
    top = report["top_confusions"]
    assert 0 < len(top) <= 20 and all(a["count"] >= b["count"] for a, b in zip(top, top[1:]))
    wrong = sum(c["support"] - c["correct"] for c in report["per_class"].values())
    assert sum(c["count"] for c in top) <= wrong


def test_wide_zoo_on_the_ort_training_engine(legacy_python, tmp_path):
    """onnxruntime-training trains every family it can differentiate; the others are refused at export with the
    operator and module named (never a raw "cannot load the training artifacts")."""
    from tests.helpers.zoo import PORTABLE_ONLY

    families = sorted(WIDE) + ["bilstm-top-layer", "bigru-top-layer"]
    assert set(families[-2:]) <= set(PORTABLE_ONLY)
    proc = subprocess.run([legacy_python, "-m", "tests.helpers.wide_ort_training", str(tmp_path), *families],
                          capture_output=True, text=True, cwd=ROOT, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    problems = []
    for family in families:
        entry = report[family]
        if family in ORT_CANNOT:
            if entry["exported"] or ORT_CANNOT[family] not in (entry["error"] or ""):
                problems.append(f"{family}: expected a refusal naming {ORT_CANNOT[family]!r}, got {entry}")
        elif not entry["exported"]:
            problems.append(f"{family}: {entry['error'][-600:]}")
        elif not entry["after"] < entry["before"]:
            problems.append(f"{family}: loss did not fall ({entry['before']} -> {entry['after']})")
    assert not problems, "\n".join(problems)
