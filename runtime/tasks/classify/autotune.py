"""``ftedge train --auto``: pick learning rate, weight decay, schedule length, epochs (and class weighting on
imbalanced data) by k-fold cross-validation on the cached embeddings, then estimate the chosen settings on
fresh folds for the gate.

The head trains on cached backbone outputs in milliseconds per epoch, so a box can afford dozens of trials:
each trial trains every fold from the bundle's initial head for ``horizon`` epochs (warm-up + decay schedule)
and scores the held-out fold after every epoch; its ``epochs`` is the epoch with the best pooled
out-of-fold score (ties, common when a few dozen samples are all classified right, go to the lower pooled
out-of-fold loss; trials are ranked the same way). Trials follow a fixed order (the bundle's defaults, a coarse grid, refinements around the
best, then seeded random perturbations), each decided only by the trials before it: a seed gives the same
search, and a search resumed from ``search.jsonl`` continues exactly where it stopped. Weight decay reaches
the step graph as an input (``lr_wd``) and class weights as the per-sample ``weights``: no re-export.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ftedge.errors import StopRequested
from ftedge.runtime.tasks.classify import metrics as M
from ftedge.runtime.tasks.classify.folds import (balanced_weights, paired_interval, per_sample_loss, per_sample_scores,
                                  stratified_folds)
from ftedge.runtime.training.schedule import learning_rate

MAX_HORIZON = 1000
STEP_TARGETS = (150, 600)              # coarse grid: optimizer steps per fold fit
LR_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)  # × the bundle's learning rate
WD_GRID = (1e-3, 1e-2, 1e-1)
LR_SPAN = 100.0                        # learning rates stay within [lr / 100, lr × 100] of the bundle's


@dataclass(frozen=True)
class Settings:
    lr: float
    weight_decay: float
    horizon: int                 # epochs of the schedule; the model is taken at `Trial.epochs` <= horizon
    class_weight: str = "none"   # none | balanced

    def key(self) -> tuple:
        return (round(math.log(self.lr), 6), round(self.weight_decay, 9), self.horizon, self.class_weight)


@dataclass
class Trial:
    index: int
    settings: Settings
    epochs: int
    score: float                 # pooled out-of-fold primary metric at `epochs` (accuracy, or -MAE)
    sd: float                    # across folds, at `epochs`
    seconds: float
    diverged: bool = False
    loss: float = math.inf       # pooled out-of-fold loss at `epochs` (the tie-break)

    def rank(self) -> tuple:
        """Higher is better: score, then lower loss, then the earlier trial."""
        return (round(self.score, 12), -round(self.loss, 9), -self.index)

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, **asdict(self.settings), "epochs": self.epochs, "score": self.score,
                "loss": self.loss, "sd": self.sd, "seconds": round(self.seconds, 4), "diverged": self.diverged}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Trial:
        s = Settings(float(d["lr"]), float(d["weight_decay"]), int(d["horizon"]), str(d["class_weight"]))
        return cls(int(d["index"]), s, int(d["epochs"]), float(d["score"]), float(d["sd"]), float(d["seconds"]),
                   bool(d.get("diverged")), float(d.get("loss", math.inf)))


class FoldFitter:
    """Trains the head on cached features for one fold split, from the bundle's initial parameters."""

    def __init__(self, engine: Any, features: list[np.ndarray], axes: list[int], y: np.ndarray, labels: np.ndarray,
                 loss: str, batch_size: int, schedule: str, warmup_fraction: float, seed: int,
                 should_stop: Callable[[], bool]) -> None:
        self.engine, self.features, self.axes = engine, features, axes
        self.y, self.labels, self.loss = y, labels, loss
        self.batch_size, self.schedule, self.warmup_fraction = batch_size, schedule, warmup_fraction
        self.seed, self.should_stop = seed, should_stop

    def take(self, idx: np.ndarray) -> list[np.ndarray]:
        return [np.ascontiguousarray(np.take(f, idx, axis=a)) for f, a in zip(self.features, self.axes)]

    def fit(self, s: Settings, train: np.ndarray, val: np.ndarray, epochs: int, tag: int,
            every_epoch: bool) -> tuple[list[np.ndarray], bool]:
        """Train on ``train`` for ``epochs`` epochs; returns the outputs on ``val`` after each epoch (or only the
        last, without ``every_epoch``) and whether the loss diverged."""
        eng = self.engine
        eng.reset()
        eng.set_weight_decay(s.weight_decay)
        eng.set_seed(self.seed * 1000 + tag)
        spe = math.ceil(len(train) / self.batch_size)
        total = spe * s.horizon
        warmup = int(total * self.warmup_fraction)
        weights = balanced_weights(self.y[train]) if s.class_weight == "balanced" else None
        val_feats, val_labels = self.take(val), self.labels[val]
        outs: list[np.ndarray] = []
        step = 0
        for epoch in range(1, epochs + 1):
            if self.should_stop():
                raise StopRequested("the search stopped on request (cancel or shutdown)")
            perm = np.random.default_rng([self.seed, tag, epoch]).permutation(len(train))
            for start in range(0, len(train), self.batch_size):
                b = perm[start:start + self.batch_size]
                eng.set_learning_rate(learning_rate(step, total, s.lr, warmup, self.schedule))
                loss, _ = eng.train_step(self.take(train[b]), self.labels[train[b]],
                                         None if weights is None else weights[b])
                step += 1
                if not math.isfinite(loss):
                    return outs, True
            if every_epoch or epoch == epochs:
                outs.append(eng.eval_step(val_feats, val_labels)[1])
        return outs, False


def run_trial(fitter: FoldFitter, folds: list[np.ndarray], n: int, s: Settings, index: int) -> Trial:
    """Every fold for ``s.horizon`` epochs; the epoch count with the best pooled out-of-fold score wins."""
    t = time.perf_counter()
    everything = np.arange(n)
    per_fold: list[np.ndarray] = []   # [folds, epochs] mean score of each fold after each epoch
    pooled = np.zeros(s.horizon)
    pooled_loss = np.zeros(s.horizon)
    counted = 0
    for f, val in enumerate(folds):
        train = np.setdiff1d(everything, val, assume_unique=True)
        outs, diverged = fitter.fit(s, train, val, s.horizon, tag=index * 100 + f, every_epoch=True)
        if diverged:
            return Trial(index, s, 0, -math.inf, math.nan, time.perf_counter() - t, diverged=True)
        scores = np.stack([per_sample_scores(fitter.loss, o, fitter.y[val]) for o in outs])   # [epochs, val]
        per_fold.append(scores.mean(axis=1))
        pooled += scores.sum(axis=1)
        pooled_loss += np.stack([per_sample_loss(fitter.loss, o, fitter.y[val]) for o in outs]).sum(axis=1)
        counted += len(val)
    pooled /= max(counted, 1)
    pooled_loss /= max(counted, 1)
    pooled_loss = np.where(np.isfinite(pooled_loss), pooled_loss, np.inf)
    # best score; on a tie the lower loss; then fewer epochs
    best = min(range(s.horizon), key=lambda e: (-round(float(pooled[e]), 12), round(float(pooled_loss[e]), 9), e))
    sd = float(np.std([pf[best] for pf in per_fold], ddof=1)) if len(per_fold) > 1 else 0.0
    return Trial(index, s, best + 1, float(pooled[best]), sd, time.perf_counter() - t, loss=float(pooled_loss[best]))


def _horizon(steps: float, spe: int) -> int:
    return int(min(MAX_HORIZON, max(3, round(steps / max(spe, 1)))))


def next_settings(trials: list[Trial], base: Settings, spe: int, tune_class_weight: bool, seed: int,
                  attempts: int = 50) -> Settings | None:
    """The settings of trial ``len(trials)``: decided only by the trials before it (deterministic)."""
    seen = {t.settings.key() for t in trials}
    cw = base.class_weight
    fixed = [base] + [Settings(base.lr * m, base.weight_decay, _horizon(st, spe), cw)
                      for st in STEP_TARGETS for m in LR_GRID]
    for s in fixed:
        if s.key() not in seen:
            return s
    ok = [t for t in trials if not t.diverged]
    if not ok:
        return None
    b = max(ok, key=Trial.rank).settings
    refine = []
    if tune_class_weight:   # first: imbalance is why it is searched at all
        refine.append(Settings(b.lr, b.weight_decay, b.horizon, "none" if b.class_weight == "balanced" else "balanced"))
    refine += [Settings(b.lr * 0.5, b.weight_decay, b.horizon, b.class_weight),
               Settings(b.lr * 2.0, b.weight_decay, b.horizon, b.class_weight)]
    refine += [Settings(b.lr, wd, b.horizon, b.class_weight) for wd in (0.0, *WD_GRID)]
    refine += [Settings(b.lr, b.weight_decay, _horizon(b.horizon * spe * m, spe), b.class_weight) for m in (0.5, 2.0)]
    for s in refine:
        if s.key() not in seen and base.lr / LR_SPAN <= s.lr <= base.lr * LR_SPAN:
            return s
    rng = np.random.default_rng([seed, len(trials)])
    lo, hi = base.lr / LR_SPAN, base.lr * LR_SPAN
    for _ in range(attempts):
        wd = 0.0 if rng.random() < 0.25 else float(10 ** rng.uniform(-4, -0.5))
        s = Settings(float(min(hi, max(lo, b.lr * math.exp(rng.normal(0, 0.6))))), wd,
                     _horizon(b.horizon * spe * math.exp(rng.normal(0, 0.5)), spe),
                     ("balanced" if rng.random() < 0.5 else "none") if tune_class_weight else b.class_weight)
        if s.key() not in seen:
            return s
    return None


class SearchLog:
    """``search.jsonl``: one completed trial per line, fsynced, so a resumed search skips what it did."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[Trial]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(Trial.from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                break   # a line cut by a crash: the trials after it run again
        return out

    def append(self, trial: Trial) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(trial.to_json()) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rewrite(self, trials: list[Trial]) -> None:
        from ftedge.durable import atomic_write_bytes

        atomic_write_bytes(self.path, "".join(json.dumps(t.to_json()) + "\n" for t in trials).encode())


def search(fitter: FoldFitter, n: int, base: Settings, folds: int, budget_s: float | None, max_trials: int,
           tune_class_weight: bool, log: SearchLog, on_trial: Callable[[Trial], None] | None = None) -> dict[str, Any]:
    """Run trials until ``max_trials``, the time budget or the end of the search space; returns the summary
    (``trials``, ``chosen``, ``why``, ``stopped``) and the chosen settings under ``_chosen``."""
    t0 = time.perf_counter()
    split = stratified_folds(fitter.y, folds, fitter.seed, fitter.loss in ("cross-entropy",))
    spe = math.ceil((n - n // max(len(split), 1)) / fitter.batch_size)
    saved = log.load()
    trials: list[Trial] = []
    reused_s = 0.0          # time the resumed trials took in the earlier run (it counts against the budget)
    stopped = "max trials"
    while len(trials) < max_trials:
        s = next_settings(trials, base, spe, tune_class_weight, fitter.seed)
        if s is None:
            stopped = "search space exhausted"
            break
        i = len(trials)
        if i < len(saved) and saved[i].settings.key() == s.key():
            trials.append(saved[i])
            reused_s += saved[i].seconds
            continue
        if len(saved) > i:      # the rest of an old log no longer matches (other code): it runs again
            saved = saved[:i]
            log.rewrite(trials)
        elapsed = time.perf_counter() - t0 + reused_s
        done = [t for t in trials if not t.diverged and t.seconds > 0]
        if budget_s is not None and done:   # the defaults always run; later trials only if they fit
            per_epoch = sum(t.seconds for t in done) / sum(t.settings.horizon for t in done)
            if elapsed + per_epoch * s.horizon > budget_s:
                stopped = "time budget"
                break
        trial = run_trial(fitter, split, n, s, i)
        log.append(trial)
        trials.append(trial)
        if on_trial is not None:
            on_trial(trial)
    ok = [t for t in trials if not t.diverged]
    best = max(ok, key=Trial.rank) if ok else trials[0]
    default = trials[0]
    tied = sum(1 for t in ok if round(t.score, 12) == round(best.score, 12))
    why = (f"highest pooled {len(split)}-fold out-of-fold score ({best.score:.4f} ± {best.sd:.4f} across folds, at "
           f"{best.epochs} of {best.settings.horizon} epochs) of {len(trials)} trial(s)"
           + (f", the lowest out-of-fold loss ({best.loss:.4f}) of the {tied} that tie on it" if tied > 1 else "")
           + f"; the bundle's defaults scored {default.score:.4f} at {default.epochs} epochs")
    return {"folds": len(split), "samples": n, "trials": [t.to_json() for t in trials], "stopped": stopped,
            "chosen": {**asdict(best.settings), "epochs": best.epochs, "trial": best.index, "score": best.score,
                       "sd": best.sd, "loss": best.loss},
            "defaults": {**asdict(default.settings), "epochs": default.epochs, "score": default.score,
                         "sd": default.sd},
            "why": why, "seconds": round(time.perf_counter() - t0 + reused_s, 3)}


def estimate(fitter: FoldFitter, n: int, chosen: dict[str, Any], folds: int, baseline_outputs: np.ndarray,
             label_names: list[str]) -> dict[str, Any]:
    """The chosen settings re-fitted on fresh folds (another shuffle than the search's, so the estimate is
    not the maximum the search selected); paired with the untuned model on the same samples."""
    s = Settings(chosen["lr"], chosen["weight_decay"], chosen["horizon"], chosen["class_weight"])
    split = stratified_folds(fitter.y, folds, fitter.seed + 1, fitter.loss == "cross-entropy")
    everything = np.arange(n)
    idx, outs = [], []
    for f, val in enumerate(split):
        train = np.setdiff1d(everything, val, assume_unique=True)
        o, _ = fitter.fit(s, train, val, int(chosen["epochs"]), tag=900_000 + f, every_epoch=False)
        if o:
            idx.append(val)
            outs.append(o[-1])
    idx_all = np.concatenate(idx) if idx else np.zeros(0, np.int64)
    out = np.concatenate(outs) if outs else np.zeros((0,))
    tuned = per_sample_scores(fitter.loss, out, fitter.y[idx_all]) if len(idx_all) else np.zeros(0)
    base = per_sample_scores(fitter.loss, baseline_outputs[idx_all], fitter.y[idx_all])
    interval = paired_interval(tuned, base, fitter.seed)
    metrics = M.task_metrics(fitter.loss, out, fitter.y[idx_all], label_names, detail=False) if len(idx_all) else {}
    return {**interval, "folds": len(split), "metrics": metrics,
            "baseline_metrics": M.task_metrics(fitter.loss, baseline_outputs[idx_all], fitter.y[idx_all], label_names,
                                               detail=False) if len(idx_all) else {}}


def tune(engine: Any, features: list[np.ndarray], axes: list[int], y: np.ndarray, labels: np.ndarray, loss: str,
         label_names: list[str], *, base: Settings, batch_size: int, schedule: str, warmup_fraction: float,
         seed: int, folds: int, budget_s: float | None, max_trials: int, tune_class_weight: bool, log_path: Path,
         should_stop: Callable[[], bool], on_trial: Callable[[Trial], None] | None = None,
         start: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The whole ``--auto`` step on ``features`` (the samples the search may see, nothing else): the untuned
    model's outputs, the search, and the estimate of the chosen settings. ``engine`` is a portable engine of
    the bundle, used (and reset) for every fit; with ``start`` (a warm start's values) every fit starts from
    them, while the baseline stays the untuned bundle's."""
    n = len(y)
    fitter = FoldFitter(engine, features, axes, y, labels, loss, batch_size, schedule, warmup_fraction, seed,
                        should_stop)
    engine.reset()
    baseline = engine.eval_step(fitter.take(np.arange(n)), labels)[1]
    if start is not None:
        engine.start_from(start)
    result = search(fitter, n, base, folds, budget_s, max_trials, tune_class_weight, SearchLog(log_path), on_trial)
    t = time.perf_counter()
    result["estimate"] = estimate(fitter, n, result["chosen"], folds, baseline, label_names)
    result["estimate_s"] = round(time.perf_counter() - t, 3)
    return result
