"""`ftedge train --warm-start DIR` for classification: continue from a previous run's (or model version's)
weights, judged against it on the same stable validation split. SYNTHETIC Gaussian-blob data, a folder per label."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from ftedge.cli import main
from ftedge.errors import FtedgeError, UsageError
from ftedge.runtime import load_bundle
from ftedge.runtime.tasks.classify.trainer import TrainCallbacks, TrainConfig, train
from ftedge.runtime.training import warm_start
from tests.helpers.common import ZOO, export
from tests.helpers.zoo import gaussian_classes

LABELS = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def mlp_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b") / "mlp"
    export(f"{ZOO}:mlp", out, "--input", "x:float32:1,20", "--labels", ",".join(LABELS), "--lr", "0.01")
    return out


def folder(root: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """SYNTHETIC samples as .npy files, a folder per label (sample files: the stable split applies)."""
    for i, (xi, yi) in enumerate(zip(x, y)):
        d = root / LABELS[yi]
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / f"{i:04d}.npy", xi)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """``half``: the first 30 samples of each class; ``all``: all 60 of each (the same first 30 included)."""
    x, y = gaussian_classes(seed=5)
    first = np.concatenate([np.flatnonzero(y == c)[:30] for c in range(4)])
    root = tmp_path_factory.mktemp("data")
    return {"half": folder(root / "half", x[first], y[first]), "all": folder(root / "all", x, y)}


@pytest.fixture(scope="module")
def previous(mlp_bundle, data, tmp_path_factory) -> Path:
    """A finished cold run on half of the data: the model a warm start continues from."""
    run = tmp_path_factory.mktemp("prev") / "run"
    result = train(mlp_bundle, data["half"], run, TrainConfig(epochs=12, batch_size=16))
    assert result["status"] == "succeeded" and "warm_start" not in result and "previous" not in result
    return run


def losses(run: Path) -> list[float]:
    return [json.loads(ln)["train_loss"] for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_run_writes_its_weights_for_a_later_warm_start(previous, mlp_bundle):
    with safe_open(str(previous / "weights.safetensors"), framework="numpy") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert meta["engine"] == "portable" and meta["steps"] == "0"
    assert keys and all(k[:2] in ("p:", "b:") for k in keys)      # no optimizer moments
    model = json.loads((previous / "model.json").read_text())
    assert model["bundle_sha256"] == warm_start.bundle_digest(load_bundle(mlp_bundle))


def test_warm_start_continues_from_the_previous_weights(previous, mlp_bundle, data, tmp_path):
    cfg = dict(epochs=3, batch_size=16)
    warm = train(mlp_bundle, data["all"], tmp_path / "warm", TrainConfig(**cfg, warm_start=str(previous)))
    cold = train(mlp_bundle, data["all"], tmp_path / "cold", TrainConfig(**cfg))
    prev_last, warm_first, cold_first = losses(previous)[-1], losses(tmp_path / "warm")[0], losses(tmp_path / "cold")[0]
    assert warm_first < 1.5 * prev_last            # picks up where the previous run ended
    assert warm_first < 0.5 * cold_first           # far below a cold start on the same data
    assert warm_first < losses(tmp_path / "cold")[-1]   # below even its last epoch
    assert warm["warm_start"] == {"from": str(previous), "version": None}
    assert warm["baseline"] == cold["baseline"]    # the same split and the same untuned bundle
    assert warm["previous"]["accuracy"] > warm["baseline"]["accuracy"] + 0.3
    assert warm["previous_gain"] == pytest.approx(warm["metrics"]["accuracy"] - warm["previous"]["accuracy"])
    # the run's own copy: a resumed run never reads the source directory again
    assert (tmp_path / "warm" / warm_start.RUN_COPY).read_bytes() == (previous / "weights.safetensors").read_bytes()


def test_a_warm_run_worse_than_the_previous_model_is_not_promoted(mlp_bundle, data, tmp_path):
    strong = train(mlp_bundle, data["all"], tmp_path / "strong", TrainConfig(epochs=30, batch_size=16))
    assert strong["promoted"] is True
    worse = train(mlp_bundle, data["all"], tmp_path / "worse",
                  TrainConfig(epochs=1, batch_size=16, lr=3.0, schedule="constant", warmup_fraction=0,
                              warm_start=str(tmp_path / "strong")))
    assert worse["status"] == "succeeded"
    assert worse["previous"]["accuracy"] == pytest.approx(strong["metrics"]["accuracy"])  # same stable split
    assert worse["previous_gain"] < 0 and worse["promoted"] is False
    assert "not promoted: does not beat the active model" in worse["stop_reason"]


def test_warm_start_with_resume_matches_an_uninterrupted_warm_run(previous, mlp_bundle, data, tmp_path):
    source = tmp_path / "models" / "v0007"          # a model version's layout: its id is reported
    shutil.copytree(previous, source)
    cfg = dict(epochs=4, batch_size=16, warm_start=str(source))
    whole = train(mlp_bundle, data["all"], tmp_path / "whole", TrainConfig(**cfg))

    class StopAfter(TrainCallbacks):
        def __init__(self) -> None:
            self.epochs = 0

        def on_epoch(self, record):
            self.epochs += 1

        def should_stop(self):
            return self.epochs >= 2

    cut = train(mlp_bundle, data["all"], tmp_path / "cut", TrainConfig(**cfg), callbacks=StopAfter())
    assert cut["status"] == "cancelled"
    shutil.rmtree(source)                           # the version was pruned meanwhile: the run's copy is used
    resumed = train(mlp_bundle, data["all"], tmp_path / "cut", TrainConfig(**cfg, resume=True))
    assert resumed["warm_start"] == whole["warm_start"] == {"from": str(source), "version": "v0007"}
    for key in ("metrics", "previous", "previous_gain", "baseline", "best_epoch", "promoted"):
        assert resumed[key] == whole[key], key
    a, b = (load_file(str(tmp_path / r / "weights.safetensors")) for r in ("cut", "whole"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_warm_start_from_another_bundle_or_without_weights_is_refused(previous, mlp_bundle, data, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(previous, other)
    model = json.loads((other / "model.json").read_text())
    (other / "model.json").write_text(json.dumps({**model, "name": "someone-else"}))
    with pytest.raises(FtedgeError, match="trained from bundle 'someone-else'"):
        train(mlp_bundle, data["all"], tmp_path / "r1", TrainConfig(epochs=1, warm_start=str(other)))
    (other / "model.json").write_text(json.dumps({**model, "bundle_sha256": "0" * 64}))
    with pytest.raises(FtedgeError, match="another build of bundle"):
        train(mlp_bundle, data["all"], tmp_path / "r2", TrainConfig(epochs=1, warm_start=str(other)))
    old = tmp_path / "models" / "v0003"
    shutil.copytree(previous, old)
    (old / "weights.safetensors").unlink()
    with pytest.raises(FtedgeError, match="version v0003 has no weights.safetensors .*train without warm_start"):
        train(mlp_bundle, data["all"], tmp_path / "r3", TrainConfig(epochs=1, warm_start=str(old)))
    big = tmp_path / "big"
    shutil.copytree(previous, big)
    with open(big / "weights.safetensors", "ab") as f:   # far more than the bundle's head can fill
        f.truncate(warm_start.MAX_SIZE_SLACK * 4)
    with pytest.raises(FtedgeError, match="not a model of this bundle"):
        train(mlp_bundle, data["all"], tmp_path / "r5", TrainConfig(epochs=1, warm_start=str(big)))
    with pytest.raises(UsageError, match="portable engine"):
        warm_start.resolve(previous, load_bundle(mlp_bundle), warm_start.WEIGHTS_FILE, tmp_path / "r4", False,
                           engine="ort-training")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r3").exists()


def test_cli_warm_start_flag(previous, mlp_bundle, data, tmp_path, capsys):
    rc = main(["train", str(mlp_bundle), "--data", str(data["all"]), "-o", str(tmp_path / "r"), "--epochs", "2",
               "--warm-start", str(tmp_path / "nowhere")])
    assert rc == 2 and "no such directory" in capsys.readouterr().err
    rc = main(["train", str(mlp_bundle), "--data", str(data["all"]), "-o", str(tmp_path / "ok"), "--epochs", "2",
               "--warm-start", str(previous)])
    assert rc == 0 and "over the previous model on the same validation split" in capsys.readouterr().out
    assert json.loads((tmp_path / "ok" / "result.json").read_text())["warm_start"]["from"] == str(previous)


def test_auto_search_trials_start_from_the_warm_weights(previous, mlp_bundle, data, tmp_path):
    result = train(mlp_bundle, data["all"], tmp_path / "auto",
                   TrainConfig(auto=True, max_trials=3, folds=3, epochs=4, batch_size=16, cache_dir=tmp_path / "c",
                               warm_start=str(previous)))
    assert result["status"] == "succeeded" and result["samples"]["val"] > 0   # held out to compare with
    assert result["previous"]["accuracy"] > result["baseline"]["accuracy"]
    # the untuned bundle stays the search's baseline; its trials, warm-started, are already good after one epoch
    trials = result["search"]["trials"]
    assert min(t["score"] for t in trials) > result["search"]["estimate"]["baseline_metrics"]["accuracy"]


def test_the_stable_split_is_superset_stable():
    rng = np.random.default_rng(3)
    hashes = [f"{rng.integers(1 << 62):x}" for _ in range(400)]
    groups = rng.integers(0, 4, 400)
    for n_old in (60, 150, 300):
        old = warm_start.stable_holdout(hashes[:n_old], groups[:n_old], 0.2, seed=1)
        new = warm_start.stable_holdout(hashes, groups, 0.2, seed=1)
        assert not np.any(~old & new[:n_old])       # no old training sample moves to validation
        assert (old != new[:n_old]).sum() <= 4       # only a class's forced minimum may go back to training
    held = warm_start.stable_holdout(hashes, groups, 0.2, seed=1)
    assert 0.15 < held.mean() < 0.25
    other = warm_start.stable_holdout(hashes, groups, 0.2, seed=2)
    assert not np.array_equal(held, other)          # the seed picks another split
    tiny = warm_start.stable_holdout(["x", "y", "z"], [0, 0, 1], 0.01, seed=0)
    assert tiny.tolist().count(True) == 1 and not tiny[2]   # ≥1 held out of a 2-sample class, none of a 1-sample
