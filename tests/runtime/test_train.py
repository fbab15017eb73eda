"""`ftedge train` / `ftedge evaluate` on the torch-free runtime, with SYNTHETIC data built in the tests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ftedge.runtime import load_bundle
from ftedge.runtime.engines.ort_backend import InferenceModel
from ftedge.runtime.engines.session import BundleSession
from ftedge.runtime.tasks.classify.trainer import TrainCallbacks, TrainConfig, train

from ftedge.cli import main
from tests.helpers.common import ROOT, ZOO, export, random_feeds, random_targets
from tests.helpers.zoo import FAMILIES, gaussian_classes


@pytest.fixture(scope="module")
def mlp_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b") / "mlp"
    export(f"{ZOO}:mlp", out, "--input", "x:float32:1,20", "--labels", "a,b,c,d", "--lr", "0.01")
    return out


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    x, y = gaussian_classes(seed=5)
    path = tmp_path_factory.mktemp("d") / "blobs.npz"
    np.savez(path, x=x, labels=y)
    return path


def cnn_folder(root: Path, n: int = 24, seed: int = 0) -> Path:
    """SYNTHETIC log-mel-shaped clips, a folder per label; classes differ by level, which the random CNN keeps."""
    rng = np.random.default_rng(seed)
    for i, label in enumerate(["yes", "no", "up", "down"]):
        (root / label).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            np.save(root / label / f"{j:03d}.npy", (0.7 * i + rng.standard_normal((101, 40))).astype(np.float32))
    return root


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_tuned_model_is_promoted(mlp_bundle, blobs, tmp_path):
    result = train(mlp_bundle, blobs, tmp_path / "run", TrainConfig(epochs=8, batch_size=16, cache_dir=tmp_path / "c"))
    records = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in records] == list(range(1, 9))
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    for key in ("epoch", "train_loss", "val_loss", "val_accuracy", "lr", "samples_per_s", "elapsed_s"):
        assert key in records[0]
    assert result["status"] == "succeeded" and result["mode"] == "cached"
    assert result["metrics"]["accuracy"] > result["baseline"]["accuracy"] + 0.3
    assert result["promoted"] is True
    assert result["samples"] == {"total": 240, "train": 192, "val": 48}
    on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
    assert on_disk["metrics"] == result["metrics"] and on_disk["best_epoch"] == result["best_epoch"]


def test_cached_and_full_modes_reach_matching_accuracy(tmp_path):
    data = cnn_folder(tmp_path / "data")
    model, args = FAMILIES["cnn-batchnorm-depthwise"]
    export(f"{ZOO}:{model}", tmp_path / "b", *args, "--lr", "0.05")
    cfg = dict(epochs=6, batch_size=16, seed=1)
    cached = train(tmp_path / "b", data, tmp_path / "cached", TrainConfig(mode="cached", **cfg))
    full = train(tmp_path / "b", data, tmp_path / "full", TrainConfig(mode="full", **cfg))
    assert cached["mode"] == "cached" and full["mode"] == "full"
    assert cached["metrics"]["accuracy"] == pytest.approx(full["metrics"]["accuracy"])
    assert cached["metrics"]["loss"] == pytest.approx(full["metrics"]["loss"], abs=1e-4)
    assert cached["metrics"]["accuracy"] > 0.5  # chance is 0.25


def test_embedding_batch_size_changes_memory_not_results(tmp_path, capsys):
    """A small backbone batch (for big images on small boxes) gives the same embeddings and the same model."""
    data = cnn_folder(tmp_path / "data", n=20)
    model, args = FAMILIES["cnn-batchnorm-depthwise"]
    export(f"{ZOO}:{model}", tmp_path / "b", *args, "--lr", "0.05")
    cfg = dict(epochs=4, batch_size=8, seed=3)
    wide = train(tmp_path / "b", data, tmp_path / "wide", TrainConfig(**cfg))
    narrow = train(tmp_path / "b", data, tmp_path / "narrow", TrainConfig(embed_batch_size=3, **cfg))
    assert narrow["metrics"]["accuracy"] == wide["metrics"]["accuracy"]
    assert narrow["metrics"]["loss"] == pytest.approx(wide["metrics"]["loss"], abs=1e-5)
    assert main(["train", str(tmp_path / "b"), "--data", str(data), "-o", str(tmp_path / "bad"),
                 "--embed-batch-size", "0"]) == 2
    assert "--embed-batch-size must be at least 1" in capsys.readouterr().err


def test_embedding_cache_only_computes_new_samples(mlp_bundle, blobs, tmp_path):
    cache = tmp_path / "cache"
    first = train(mlp_bundle, blobs, tmp_path / "r1", TrainConfig(epochs=1, cache_dir=cache))
    again = train(mlp_bundle, blobs, tmp_path / "r2", TrainConfig(epochs=1, cache_dir=cache))
    assert first["cache"] == {"computed": 240, "reused": 0}
    assert again["cache"] == {"computed": 0, "reused": 240}
    x, y = gaussian_classes(seed=5)
    x2, y2 = gaussian_classes(n_per_class=5, seed=77)
    np.savez(tmp_path / "more.npz", x=np.concatenate([x, x2]), labels=np.concatenate([y, y2]))
    more = train(mlp_bundle, tmp_path / "more.npz", tmp_path / "r3", TrainConfig(epochs=1, cache_dir=cache))
    assert more["cache"] == {"computed": 20, "reused": 240}
    assert again["metrics"] == first["metrics"], "cached embeddings must give the same result"


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    data = cnn_folder(tmp_path / "data", n=32)
    model, args = FAMILIES["cnn-batchnorm-depthwise"]
    export(f"{ZOO}:{model}", tmp_path / "b", *args, "--lr", "0.02")
    argv = ["train", str(tmp_path / "b"), "--data", str(data), "--epochs", "60", "--batch-size", "8",
            "--mode", "full", "--seed", "4", "--quiet", "--no-cache"]
    assert main([*argv, "-o", str(tmp_path / "straight")]) == 0
    straight = json.loads((tmp_path / "straight" / "result.json").read_text())

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ftedge", *argv, "-o", str(run)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = run / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text() or "{}").get("epochs_done", 0) >= 3:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "training finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads(state.read_text())["epochs_done"]
    assert 3 <= done < 60 and not (run / "result.json").exists()

    assert main([*argv, "-o", str(run), "--resume"]) == 0
    resumed = json.loads((run / "result.json").read_text())
    assert resumed["epochs_run"] == 60
    assert resumed["best_epoch"] == straight["best_epoch"]
    assert resumed["metrics"]["loss"] == pytest.approx(straight["metrics"]["loss"], abs=1e-6)
    assert resumed["metrics"]["accuracy"] == straight["metrics"]["accuracy"]
    assert [r["epoch"] for r in read_metrics(run)] == list(range(1, 61))
    assert [r["train_loss"] for r in read_metrics(run)] == pytest.approx(
        [r["train_loss"] for r in read_metrics(tmp_path / "straight")], abs=1e-6)


def test_rerun_into_used_run_dir_needs_resume(mlp_bundle, blobs, tmp_path, capsys):
    assert main(["train", str(mlp_bundle), "--data", str(blobs), "-o", str(tmp_path / "r"), "--epochs", "1",
                 "--quiet", "--no-cache"]) == 0
    assert main(["train", str(mlp_bundle), "--data", str(blobs), "-o", str(tmp_path / "r"), "--epochs", "1",
                 "--quiet", "--no-cache"]) == 1
    assert "pass --resume" in capsys.readouterr().err


def test_early_stopping_restores_the_best_epoch(mlp_bundle, tmp_path):
    rng = np.random.default_rng(0)  # random labels: validation gets worse as the head memorises
    np.savez(tmp_path / "noise.npz", x=rng.standard_normal((120, 20)).astype(np.float32), labels=rng.integers(0, 4, 120))
    result = train(mlp_bundle, tmp_path / "noise.npz", tmp_path / "r",
                   TrainConfig(epochs=200, batch_size=8, lr=0.05, patience=3, schedule="constant"))
    records = read_metrics(tmp_path / "r")
    assert result["stop_reason"].startswith("early stopping")
    assert result["epochs_run"] == result["best_epoch"] + 3 < 200
    best = records[result["best_epoch"] - 1]
    assert best["val_accuracy"] == max(r["val_accuracy"] for r in records)
    assert result["metrics"]["accuracy"] == pytest.approx(best["val_accuracy"])
    assert result["metrics"]["loss"] == pytest.approx(best["val_loss"], abs=1e-6)


def test_divergence_stops_keeps_last_good_checkpoint(tmp_path):
    export(f"{ZOO}:mlp", tmp_path / "b", "--input", "x:float32:1,20", "--loss", "mse", "--optimizer", "sgd")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "reg.npz", x=rng.standard_normal((64, 20)).astype(np.float32),
             labels=rng.standard_normal((64, 4)).astype(np.float32))
    rc = main(["train", str(tmp_path / "b"), "--data", str(tmp_path / "reg.npz"), "-o", str(tmp_path / "r"),
               "--epochs", "20", "--lr", "1e6", "--schedule", "constant", "--quiet", "--no-cache"])
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert rc == 1
    assert result["status"] == "diverged" and "non-finite" in result["stop_reason"]
    assert result["promoted"] is False and not (tmp_path / "r" / "model.onnx").exists()
    state = json.loads((tmp_path / "r" / "checkpoint" / "state.json").read_text())
    for r in read_metrics(tmp_path / "r"):
        assert np.isfinite(r["train_loss"]) and r["epoch"] <= state["epochs_done"]


def test_regression_reports_mae(tmp_path):
    export(f"{ZOO}:mlp", tmp_path / "b", "--input", "x:float32:1,20", "--loss", "l1", "--lr", "0.01")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((160, 20)).astype(np.float32)
    w = rng.standard_normal((20, 4)).astype(np.float32) * 0.3
    np.savez(tmp_path / "reg.npz", x=x, labels=np.tanh(x @ w))
    result = train(tmp_path / "b", tmp_path / "reg.npz", tmp_path / "r", TrainConfig(epochs=15))
    assert "mae" in result["metrics"] and "accuracy" not in result["metrics"]
    assert result["metrics"]["mae"] < result["baseline"]["mae"] and result["promoted"]


def test_gate_refuses_a_model_that_got_worse(tmp_path):
    export(f"{ZOO}:pretrained_mlp", tmp_path / "b", "--input", "x:float32:1,20")
    x, y = gaussian_classes(seed=5, scale=0.6)
    np.savez(tmp_path / "d.npz", x=x, labels=y)
    worse = train(tmp_path / "b", tmp_path / "d.npz", tmp_path / "worse",
                  TrainConfig(epochs=1, lr=1.0, schedule="constant", warmup_fraction=0))
    assert worse["metrics"]["accuracy"] < worse["baseline"]["accuracy"]
    assert worse["promoted"] is False and worse["gain"] < 0
    same = train(tmp_path / "b", tmp_path / "d.npz", tmp_path / "same",
                 TrainConfig(epochs=1, lr=0.0, schedule="constant", warmup_fraction=0))
    assert same["gain"] == 0 and same["promoted"] is False


def test_min_gain_is_required_for_promotion(mlp_bundle, blobs, tmp_path):
    result = train(mlp_bundle, blobs, tmp_path / "r", TrainConfig(epochs=4, min_gain=0.99))
    assert result["gain"] > 0 and result["promoted"] is False


def test_bad_samples_are_skipped_and_reported(tmp_path, capsys):
    data = cnn_folder(tmp_path / "data", n=6)
    (data / "yes" / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(data / "no" / "short.npy", np.zeros((99, 40), np.float32))
    np.save(data / "up" / "nan.npy", np.full((101, 40), np.nan, np.float32))
    (data / "down" / "notes.txt").write_text("hello")
    (data / "maybe").mkdir()
    np.save(data / "maybe" / "0.npy", np.zeros((101, 40), np.float32))
    model, args = FAMILIES["cnn-batchnorm-depthwise"]
    export(f"{ZOO}:{model}", tmp_path / "b", *args)
    assert main(["train", str(tmp_path / "b"), "--data", str(data), "-o", str(tmp_path / "r"), "--epochs", "1",
                 "--quiet", "--no-cache"]) == 0
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    reasons = {s["file"]: s["reason"] for s in result["skipped"]}
    assert set(reasons) == {"yes/corrupt.npy", "no/short.npy", "up/nan.npy", "down/notes.txt", "maybe/0.npy"}
    assert "does not match input 'x'" in reasons["no/short.npy"]
    assert "NaN" in reasons["up/nan.npy"]
    assert "no decoder for .txt" in reasons["down/notes.txt"]
    assert "not one of the bundle's labels" in reasons["maybe/0.npy"]
    assert result["samples"]["total"] == 24
    assert "skipped maybe/0.npy" in capsys.readouterr().err


def test_nothing_usable_is_a_clear_error(mlp_bundle, tmp_path, capsys):
    np.savez(tmp_path / "wrong.npz", x=np.zeros((5, 7), np.float32), labels=np.zeros(5, np.int64))
    assert main(["train", str(mlp_bundle), "--data", str(tmp_path / "wrong.npz"), "-o", str(tmp_path / "r"),
                 "--quiet", "--no-cache"]) == 1
    err = capsys.readouterr().err
    assert "no usable samples" in err and "does not match input 'x'" in err
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((5, 20), np.float32))
    assert main(["train", str(mlp_bundle), "--data", str(tmp_path / "nolabels.npz"), "-o", str(tmp_path / "r2"),
                 "--quiet"]) == 1
    assert "lacks array(s) labels" in capsys.readouterr().err


def test_time_budget_stops_at_epoch_boundary(mlp_bundle, blobs, tmp_path):
    result = train(mlp_bundle, blobs, tmp_path / "r", TrainConfig(epochs=50, max_seconds=0.001))
    assert result["epochs_run"] == 1 and result["stop_reason"].startswith("time budget")
    assert result["status"] == "succeeded" and (tmp_path / "r" / "model.onnx").exists()


def test_callbacks_report_epochs_and_cancel_at_next_batch(mlp_bundle, blobs, tmp_path):
    class Recorder(TrainCallbacks):
        def __init__(self) -> None:
            self.epochs, self.batches, self.started = [], 0, None

        def on_start(self, info):
            self.started = info

        def on_epoch(self, record):
            self.epochs.append(record["epoch"])

        def on_batch(self, epoch, step, loss):
            self.batches += 1

        def should_stop(self):
            return self.batches >= 15  # mid-way through epoch 2 (12 batches per epoch)

    cb = Recorder()
    result = train(mlp_bundle, blobs, tmp_path / "r", TrainConfig(epochs=10, batch_size=16), callbacks=cb)
    assert cb.started["train"] == 192 and cb.epochs == [1]
    assert result["status"] == "cancelled" and cb.batches == 15
    assert not (tmp_path / "r" / "model.onnx").exists()


def test_unavailable_provider_falls_back_to_cpu_with_warning(mlp_bundle, blobs, tmp_path, capsys):
    assert main(["train", str(mlp_bundle), "--data", str(blobs), "-o", str(tmp_path / "r"), "--epochs", "1",
                 "--providers", "CUDA,OpenVINO", "--quiet", "--no-cache"]) == 0
    assert "CUDAExecutionProvider, OpenVINOExecutionProvider" in capsys.readouterr().err
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    cpu = {"requested": ["CPUExecutionProvider"], "providers": ["CPUExecutionProvider"], "cpu_fallback_nodes": 0,
           "fallback": None}
    assert result["providers"] == {"backbone": cpu, "step": cpu, "head": cpu}


def test_step_providers_place_the_training_step_apart_from_the_backbone(mlp_bundle, blobs, tmp_path):
    """--step-providers reaches the step and head sessions only; an unavailable one is left out, not fatal."""
    assert main(["train", str(mlp_bundle), "--data", str(blobs), "-o", str(tmp_path / "r"), "--epochs", "1",
                 "--providers", "CPU", "--step-providers", "NoSuchEP,CPU", "--quiet", "--no-cache"]) == 0
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert set(result["providers"]) == {"backbone", "step", "head"}
    assert result["providers"]["step"]["requested"] == ["CPUExecutionProvider"]
    assert result["config"]["step_providers"] == ["NoSuchEP", "CPU"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains_and_model_onnx_matches_eval_graph(family, tmp_path, family_bundle):
    bundle = load_bundle(family_bundle(family))
    feeds = random_feeds(bundle.inputs, 40, seed=3)
    np.savez(tmp_path / "d.npz", labels=random_targets(bundle, 40), **feeds)
    result = train(bundle.path, tmp_path / "d.npz", tmp_path / "r", TrainConfig(epochs=2, batch_size=8))
    assert result["status"] == "succeeded"
    state = json.loads((tmp_path / "r" / "checkpoint" / "state.json").read_text())
    tuned = BundleSession(bundle, checkpoint=tmp_path / "r" / "checkpoint" / state["best_checkpoint"])
    probe = random_feeds(bundle.inputs, 5, seed=11)
    plain = InferenceModel(tmp_path / "r" / "model.onnx")  # plain onnxruntime.InferenceSession
    assert plain.input_names == [s.name for s in bundle.inputs]
    np.testing.assert_allclose(plain.run(probe)[bundle.output.name], tuned.predict(probe), atol=1e-5)


def test_evaluate_run_dir_and_bundle(mlp_bundle, blobs, tmp_path, capsys):
    train(mlp_bundle, blobs, tmp_path / "r", TrainConfig(epochs=6, batch_size=16))
    assert main(["evaluate", str(tmp_path / "r"), "--data", str(blobs), "--json"]) == 0
    tuned = json.loads(capsys.readouterr().out)
    assert tuned["kind"] == "personalized model" and tuned["samples"] == 240
    assert len(tuned["confusion_matrix"]) == 4 and sum(map(sum, tuned["confusion_matrix"])) == 240
    assert tuned["per_class"]["a"]["support"] == 60 and 0 <= tuned["macro_f1"] <= 1
    assert main(["evaluate", str(mlp_bundle), "--data", str(blobs), "--json"]) == 0
    untuned = json.loads(capsys.readouterr().out)
    assert untuned["kind"] == "bundle (untuned)" and tuned["accuracy"] > untuned["accuracy"]
    assert main(["evaluate", str(tmp_path / "r"), "--data", str(blobs)]) == 0
    assert "confusion matrix" in capsys.readouterr().out


def test_int8_backbone_trains(tmp_path):
    export(f"{ZOO}:transformer", tmp_path / "b", "--input", "tokens:int64:1,10:0-50", "--quantize-backbone", "int8")
    bundle = load_bundle(tmp_path / "b")
    np.savez(tmp_path / "d.npz", labels=random_targets(bundle, 30), **random_feeds(bundle.inputs, 30))
    result = train(tmp_path / "b", tmp_path / "d.npz", tmp_path / "r", TrainConfig(epochs=2, backbone="int8"))
    assert result["status"] == "succeeded" and result["backbone"] == "int8"
    plain = InferenceModel(tmp_path / "r" / "model.onnx")
    names = {i.op_type for i in __import__("onnx").load(str(tmp_path / "r" / "model.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in names or "MatMulInteger" in names
    assert plain.run(random_feeds(bundle.inputs, 2))["logits"].shape == (2, 3)
