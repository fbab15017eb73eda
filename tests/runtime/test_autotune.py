"""`ftedge train --auto`: cross-validated choice of learning rate, weight decay, epochs and class weighting on the
embedding cache, the gate on the cross-validated gain, and resume mid-search. SYNTHETIC data (Gaussian blobs)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from ftedge.runtime.tasks.classify.folds import (
    balanced_weights,
    paired_interval,
    small_classes,
    stratified_folds,
)
from ftedge.runtime.tasks.classify.trainer import (
    TrainCallbacks,
    TrainConfig,
    Trainer,
    train,
)

from ftedge.cli import main
from ftedge.errors import UsageError
from tests.helpers.common import ZOO, export
from tests.helpers.zoo import gaussian_classes


@pytest.fixture(scope="module")
def mlp_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b") / "mlp"
    export(f"{ZOO}:mlp", out, "--input", "x:float32:1,20", "--labels", "a,b,c,d", "--lr", "0.001")
    return out


def blobs(path: Path, n_per_class: int = 12, seed: int = 5, scale: float = 1.0, counts=None,
          shuffle_labels: bool = False) -> Path:
    x, y = gaussian_classes(n_per_class=n_per_class, seed=seed, scale=scale)
    if counts is not None:   # imbalanced: keep counts[c] samples of class c
        keep = np.concatenate([np.flatnonzero(y == c)[:k] for c, k in enumerate(counts)])
        x, y = x[keep], y[keep]
    if shuffle_labels:
        y = np.random.default_rng(0).permutation(y)
    np.savez(path, x=x, labels=y)
    return path


def auto(**kw) -> TrainConfig:
    return TrainConfig(**{"auto": True, "batch_size": 16, "epochs": 5, "max_trials": 6, "folds": 4, **kw})


# -- folds and intervals (numpy only) ------------------------------------------------------------------------

def test_folds_keep_every_class_in_training_and_spread_each_class_over_the_folds():
    y = np.array([0] * 10 + [1] * 3 + [2] * 2 + [3])
    folds = stratified_folds(y, 5, seed=1, classification=True)
    assert len(folds) == 5
    everything = np.concatenate(folds)
    assert len(everything) == len(set(everything.tolist())) == len(y) - 1   # disjoint; the single sample trains
    assert 15 not in everything
    for val in folds:
        train = np.setdiff1d(np.arange(len(y)), val)
        assert set(y[train]) == {0, 1, 2, 3}              # no fold loses a class from its training part
        assert (y[val] == 0).sum() == 2                   # the big class is validated in every fold
    assert sum((y[v] == 1).sum() > 0 for v in folds) == 3 # a small class: one sample in each of 3 folds
    assert sum((y[v] == 2).sum() > 0 for v in folds) == 2
    assert [f.tolist() for f in stratified_folds(y, 5, 1, True)] == [f.tolist() for f in folds]
    assert [f.tolist() for f in stratified_folds(y, 5, 2, True)] != [f.tolist() for f in folds]


def test_balanced_weights_give_every_class_the_same_total():
    y = np.array([0] * 8 + [1] * 2)
    w = balanced_weights(y)
    assert w[y == 0].sum() == pytest.approx(w[y == 1].sum()) and w.mean() == pytest.approx(1.0)
    assert small_classes(y, ["a", "b", "c"]) == {"b": 2, "c": 0}


def test_paired_interval_is_seeded_and_brackets_the_mean_gain():
    rng = np.random.default_rng(0)
    base = (rng.random(200) < 0.5).astype(float)
    tuned = np.maximum(base, (rng.random(200) < 0.3).astype(float))
    a, b = paired_interval(tuned, base, seed=3), paired_interval(tuned, base, seed=3)
    assert a == b and a["lo"] <= a["gain"] <= a["hi"] and a["lo"] > 0
    same = paired_interval(base, base, seed=3)
    assert same["gain"] == same["lo"] == same["hi"] == 0.0


# -- the search, through the trainer ---------------------------------------------------------------------------

def test_auto_search_is_reproducible_for_a_seed_and_fits_the_chosen_settings(mlp_bundle, tmp_path):
    data = blobs(tmp_path / "d.npz")
    a = train(mlp_bundle, data, tmp_path / "a", auto())
    b = train(mlp_bundle, data, tmp_path / "b", auto())
    assert a["status"] == b["status"] == "succeeded"
    strip = lambda r: [{k: v for k, v in t.items() if k != "seconds"} for t in r["search"]["trials"]]  # noqa: E731
    assert strip(a) == strip(b) and len(strip(a)) == 6 and a["search"]["stopped"] == "max trials"
    assert a["search"]["chosen"] == b["search"]["chosen"] and a["search"]["estimate"] == b["search"]["estimate"]
    c = a["search"]["chosen"]
    assert a["epochs_run"] == c["epochs"] and a["best_epoch"] == c["epochs"]     # the final fit runs e* epochs
    assert a["search"]["trials"][0]["lr"] == pytest.approx(0.001) and a["search"]["trials"][0]["horizon"] == 5
    best = max(t["score"] for t in a["search"]["trials"])
    assert c["score"] == best and a["search"]["why"].startswith("highest pooled 4-fold")
    assert a["samples"] == {"total": 48, "train": 48, "val": 0}                  # --auto holds nothing out by default
    assert a["metrics"]["split"] == "cv" and a["metrics"]["accuracy"] == a["search"]["estimate"]["tuned"]
    other = train(mlp_bundle, data, tmp_path / "c", auto(seed=1))
    assert strip(other) != strip(a)                                                # another seed, other folds


def test_auto_never_looks_at_the_held_out_samples(mlp_bundle, tmp_path, monkeypatch):
    data = blobs(tmp_path / "d.npz", n_per_class=16)
    clean = train(mlp_bundle, data, tmp_path / "clean", auto(val_fraction=0.25))
    assert clean["samples"]["val"] == 16 and clean["search"]["samples"] == 48

    original = Trainer._prepare_features

    def poisoned(self, session):  # noqa: ANN001
        original(self, session)
        for name in self.features:   # the held-out samples' features become NaN: touching them poisons a score
            self.features[name][self.val_idx] = np.nan

    monkeypatch.setattr(Trainer, "_prepare_features", poisoned)
    dirty = train(mlp_bundle, data, tmp_path / "dirty", auto(val_fraction=0.25))
    trials = lambda r: [(t["lr"], t["horizon"], t["epochs"], t["score"]) for t in r["search"]["trials"]]  # noqa: E731
    assert trials(dirty) == trials(clean) and all(np.isfinite(t[3]) for t in trials(dirty))
    assert dirty["search"]["estimate"] == clean["search"]["estimate"]


def test_auto_respects_the_time_budget(mlp_bundle, tmp_path):
    data = blobs(tmp_path / "d.npz")
    r = train(mlp_bundle, data, tmp_path / "r", auto(max_trials=10_000, max_seconds=4.0))
    s = r["search"]
    assert s["stopped"] == "time budget" and 1 < len(s["trials"]) < 10_000
    slowest = max(t["seconds"] for t in s["trials"])
    assert s["seconds"] <= s["budget_s"] + 2 * slowest


def test_gate_refuses_a_model_whose_cross_validated_lower_bound_is_not_better(mlp_bundle, tmp_path):
    good = train(mlp_bundle, blobs(tmp_path / "d.npz"), tmp_path / "good", auto())
    est = good["search"]["estimate"]
    assert good["promoted"] and est["lo"] > 0 and good["gain"] == est["gain"]
    demanding = train(mlp_bundle, blobs(tmp_path / "d.npz"), tmp_path / "demanding", auto(min_gain=0.99))
    assert not demanding["promoted"] and "does not clear --min-gain 0.99" in demanding["stop_reason"]
    noise = train(mlp_bundle, blobs(tmp_path / "n.npz", shuffle_labels=True), tmp_path / "noise", auto())
    e = noise["search"]["estimate"]
    assert e["lo"] <= 0 and not noise["promoted"]             # labels without signal: nothing to gain


class StopAfterTrials(TrainCallbacks):
    def __init__(self, n: int) -> None:
        self.n, self.trials = n, 0

    def on_trial(self, trial: dict) -> None:
        self.trials += 1

    def should_stop(self) -> bool:
        return self.trials >= self.n


def test_a_search_stopped_midway_resumes_to_the_uninterrupted_result(mlp_bundle, tmp_path):
    data = blobs(tmp_path / "d.npz")
    whole = train(mlp_bundle, data, tmp_path / "whole", auto())
    cut = train(mlp_bundle, data, tmp_path / "cut", auto(), callbacks=StopAfterTrials(3))
    assert cut["status"] == "cancelled"
    logged = (tmp_path / "cut" / "checkpoint" / "search.jsonl").read_text().splitlines()
    assert len(logged) == 3
    with open(tmp_path / "cut" / "checkpoint" / "search.jsonl", "a") as f:
        f.write('{"index": 3, "lr": 0.0')                      # a line cut by a crash
    counter = StopAfterTrials(10_000)
    resumed = train(mlp_bundle, data, tmp_path / "cut", auto(resume=True), callbacks=counter)
    assert counter.trials == 3                                 # the 3 logged trials were not run again
    strip = lambda r: [{k: v for k, v in t.items() if k != "seconds"} for t in r["search"]["trials"]]  # noqa: E731
    assert strip(resumed) == strip(whole)
    assert resumed["search"]["chosen"] == whole["search"]["chosen"]
    assert resumed["metrics"] == whole["metrics"] and resumed["promoted"] == whole["promoted"]


def test_imbalanced_data_searches_class_weighting_and_names_tiny_classes(mlp_bundle, tmp_path, caplog):
    data = blobs(tmp_path / "d.npz", n_per_class=20, counts=[20, 20, 6, 3])
    with caplog.at_level(logging.WARNING, logger="ftedge"):
        r = train(mlp_bundle, data, tmp_path / "r", auto(max_trials=20))
    assert "1 class(es) with fewer than 5 training samples: d (3)" in caplog.text
    assert r["small_classes"] == {"below": 5, "count": 1, "classes": {"d": 3}}
    assert r["search"]["class_weight_searched"]
    assert {t["class_weight"] for t in r["search"]["trials"]} == {"none", "balanced"}
    fixed = train(mlp_bundle, data, tmp_path / "fixed", TrainConfig(epochs=3, batch_size=16, class_weight="balanced"))
    assert fixed["status"] == "succeeded" and fixed["config"]["class_weight"] == "balanced"


def test_auto_needs_the_cache_and_says_so(tmp_path):
    full = tmp_path / "full"
    export(f"{ZOO}:mlp", full, "--input", "x:float32:1,20", "--labels", "a,b,c,d", "--no-split")
    with pytest.raises(UsageError, match="--auto searches on the embedding cache"):
        Trainer(full, blobs(tmp_path / "d.npz"), tmp_path / "r", auto())


def test_cli_auto_json_and_evaluate_show_the_chosen_settings(mlp_bundle, tmp_path, capsys):
    data = blobs(tmp_path / "d.npz")
    rc = main(["train", str(mlp_bundle), "--data", str(data), "-o", str(tmp_path / "run"), "--auto", "--folds", "4",
               "--max-trials", "4", "--epochs", "5", "--batch-size", "16", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["search"]["trials"]) == 4 and result["config"]["auto"] is True
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    c = result["search"]["chosen"]
    assert f"tuned by --auto: lr {c['lr']:.3g}" in out and "cross-validated score" in out
    assert main(["train", str(mlp_bundle), "--data", str(data), "-o", str(tmp_path / "run2"), "--auto", "--folds",
                 "4", "--max-trials", "2", "--epochs", "5", "--quiet"]) == 0
