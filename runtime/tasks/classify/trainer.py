"""`ftedge train`: fine-tune a bundle on local data, torch-free.

Cached mode runs the frozen backbone once per sample (through the on-disk embedding cache) and trains
the head on the cache; full mode runs the backbone (split bundle) or the merged graph (full bundle) on
every batch. Every epoch is checkpointed atomically; ``resume`` continues from the last complete epoch
and, with the same seed, reaches the same result. The untuned model is evaluated on the same validation
split and the tuned one is promoted only if it beats it by ``min_gain``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ftedge.runtime.tasks.classify import OPTIONS
from ftedge.errors import FtedgeError, UsageError
from ftedge.runtime.tasks.classify import metrics as M
from ftedge.bundle.loader import Bundle, load_bundle
from ftedge.runtime.data.cache import EmbeddingCache, StopRequested, embed_with_cache
from ftedge.runtime.data.samples import Dataset, ModelIO, load_dataset
from ftedge.durable import atomic_write_json
from ftedge.runtime.engines.engine import open_engine, resolve_engine
from ftedge.runtime.tasks.classify.folds import (SMALL_CLASS, balanced_weights_for, imbalance, small_classes,
                                                 stratified_split)
from ftedge.runtime.engines.placement import Placement, report as placement_report
from ftedge.runtime.training.personalized import write_personalized
from ftedge.runtime.training.result import complete
from ftedge.runtime.training.run_dir import RunDir, RunState
from ftedge.runtime.training import warm_start
from ftedge.runtime.training.schedule import learning_rate
from ftedge.runtime.training.warm_start import stable_split
from ftedge.runtime.engines.session import BundleSession

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = OPTIONS.default("epochs")
    batch_size: int = OPTIONS.default("batch_size")
    lr: float | None = OPTIONS.default("lr")  # default: the bundle's
    val_fraction: float | None = OPTIONS.default("val_fraction")  # default 0.2; with `auto` 0 (the search cross-validates on every sample)
    patience: int = OPTIONS.default("patience")  # 0: no early stopping
    seed: int = OPTIONS.default("seed")
    max_seconds: float | None = OPTIONS.default("max_seconds")
    mode: str = OPTIONS.default("mode")  # auto | cached | full
    providers: list[str] | None = OPTIONS.default("providers")            # every session (None: CPU)
    step_providers: list[str] | None = OPTIONS.default("step_providers")  # the training step and head
    resume: bool = False
    min_gain: float = OPTIONS.default("min_gain")
    schedule: str = OPTIONS.default("schedule")  # cosine | linear | constant, after warm-up
    warmup_fraction: float = 0.1
    cache_dir: Path | None = None
    backbone: str = OPTIONS.default("backbone")  # fp32 | int8 (needs --quantize-backbone at export)
    embed_batch_size: int | None = OPTIONS.default("embed_batch_size")  # samples per backbone pass; default max(batch_size, 64). Peak memory
                                         # grows with it (activations of big images): lower it on small boxes
    engine: str = OPTIONS.default("engine")  # auto | portable | ort-training
    weight_decay: float | None = OPTIONS.default("weight_decay")  # decoupled weight decay; default: the bundle's (portable engine)
    class_weight: str = OPTIONS.default("class_weight")  # none | balanced (per-sample loss weights; portable engine)
    auto: bool = OPTIONS.default("auto")  # choose lr, weight decay, epochs (and class weighting) by cross-validation
    folds: int = OPTIONS.default("folds")  # folds of the --auto search
    max_trials: int = OPTIONS.default("max_trials")  # trials of the --auto search at most (the time budget may stop it sooner)
    warm_start: str | None = OPTIONS.default("warm_start")  # a model version / run dir to continue from

    @property
    def embed_batch(self) -> int:
        return self.embed_batch_size or max(self.batch_size, 64)

    @property
    def holdout_fraction(self) -> float:
        # a warm start is judged against the previous model on held-out samples, --auto or not
        default = 0.0 if self.auto and not self.warm_start else 0.2
        return default if self.val_fraction is None else float(self.val_fraction)


SHOWN_SMALL = 20        # small classes named in the warning and in result.json
AUTO_BUDGET_S = 120.0   # the --auto search's time budget when --max-seconds is not given


class TrainCallbacks:
    """Hooks the device agent uses for progress and cancellation."""

    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_trial(self, trial: dict[str, Any]) -> None: ...
    def on_epoch(self, record: dict[str, Any]) -> None: ...
    def on_batch(self, epoch: int, step: int, loss: float) -> None: ...
    def should_stop(self) -> bool:
        return False


def _resolve_mode(mode: str, bundle: Bundle) -> str:
    if mode not in ("auto", "cached", "full"):
        raise UsageError(f"--mode {mode!r}: use auto, cached or full")
    if bundle.layout == "full":
        if mode == "cached":
            raise UsageError("--mode cached needs a split bundle (this one was exported with --no-split); use --mode full")
        return "full"
    return "cached" if mode == "auto" else mode


# options added after runs were first fingerprinted: at their defaults they leave a run's fingerprint as it was
_LATER_OPTIONS = {f.name: f.default for f in fields(TrainConfig)
                  if f.name in ("weight_decay", "class_weight", "auto", "folds", "max_trials", "warm_start")}


def _fingerprint(bundle: Bundle, data: Dataset, cfg: TrainConfig, stable: bool = False) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(bundle.manifest["files"], sort_keys=True).encode())
    h.update("".join(data.sample_hashes()).encode())
    keep = {k: v for k, v in asdict(cfg).items()
            if k not in ("resume", "max_seconds", "providers", "step_providers", "cache_dir", "engine")}
    keep["val_fraction"] = cfg.holdout_fraction
    for k, default in _LATER_OPTIONS.items():
        if keep.get(k) == default:
            del keep[k]
    if stable:   # a run begun with the older (random) split of the same samples does not resume with this one
        keep["split"] = "stable"
    h.update(json.dumps(keep, sort_keys=True, default=str).encode())
    return h.hexdigest()


class Trainer:
    def __init__(self, bundle: str | Path | Bundle, data: str | Path, run_dir: str | Path, config: TrainConfig,
                 callbacks: TrainCallbacks | None = None, progress: bool = False) -> None:
        self.t0 = time.perf_counter()
        self.cfg = config
        self.cb = callbacks or TrainCallbacks()
        self.show_progress = progress
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.run_dir = Path(run_dir)
        self.rundir = RunDir(self.run_dir)
        self.ckpt = self.rundir.ckpt
        if config.epochs < 1 or config.batch_size < 1:
            raise UsageError("--epochs and --batch-size must be at least 1")
        if config.embed_batch_size is not None and config.embed_batch_size < 1:
            raise UsageError("--embed-batch-size must be at least 1")
        if not 0 <= config.holdout_fraction < 1:
            raise UsageError("--val-fraction must be in [0, 1)")
        if config.class_weight not in ("none", "balanced"):
            raise UsageError("--class-weight must be none or balanced")
        if config.weight_decay is not None and not 0 <= config.weight_decay <= 10:
            raise UsageError("--weight-decay must be in [0, 10]")
        if config.auto and (config.folds < 2 or config.max_trials < 1):
            raise UsageError("--folds must be at least 2 and --max-trials at least 1")
        if config.backbone not in ("fp32", "int8"):
            raise UsageError("--backbone must be fp32 or int8")
        self.backbone_role = "backbone" if config.backbone == "fp32" else "backbone_int8"
        if config.backbone == "int8" and "backbone_int8" not in self.bundle.manifest["roles"]:
            raise UsageError("this bundle has no int8 backbone; export it with --quantize-backbone int8")
        self.mode = _resolve_mode(config.mode, self.bundle)
        self.io = ModelIO.from_manifest(self.bundle.manifest, self.bundle.path)
        self.data = load_dataset(data, self.io)
        for s in self.data.skipped:
            log.warning("skipped %s: %s", s["file"], s["reason"])
        for note, files in self.data.notes.items():
            log.warning("%d sample(s) %s: %s (listed in result.json notes)", len(files), note,
                        ", ".join(files[:5]) + (", …" if len(files) > 5 else ""))
        self.classification = self.io.classification
        # Sample files (a folder per label) and warm starts: the stable split, so the run that made the previous
        # model held out the same samples; a .npz/.csv keeps the seeded stratified split it always had.
        self.stable_split = bool(config.warm_start) or Path(data).is_dir()
        if self.stable_split:
            self.train_idx, self.val_idx = stable_split(self.data.sample_hashes(), self.data.targets
                                                        if self.classification else None, config.holdout_fraction,
                                                        config.seed)
        else:
            self.train_idx, self.val_idx = stratified_split(self.data.targets, config.holdout_fraction, config.seed,
                                                            self.classification)
        if len(self.train_idx) == 0:
            raise FtedgeError("no training samples left after the validation split; add data or lower --val-fraction")
        self.placement = Placement.resolve(config.providers, config.step_providers)
        self.providers = self.placement.providers
        self.search_engine: Any = None   # the --auto search's own engine (its step session is reported)
        self.engine = resolve_engine(config.engine, self.bundle)
        needs_portable = [f for f, on in (("--auto", config.auto), ("--class-weight balanced",
                          config.class_weight == "balanced"), ("--weight-decay", config.weight_decay is not None)) if on]
        if needs_portable and self.engine != "portable":
            raise UsageError(f"{', '.join(needs_portable)} need(s) the portable engine (weight decay and per-sample "
                             f"weights are inputs of its step graph); this run uses {self.engine}: pass --engine "
                             "portable or re-export the bundle with this ftedge")
        self.warm = warm_start.resolve(config.warm_start, self.bundle, warm_start.WEIGHTS_FILE, self.run_dir,
                                       config.resume, self.engine) if config.warm_start else None
        self.warm_values: dict[str, np.ndarray] | None = None
        if config.auto and self.mode != "cached":
            raise UsageError("--auto searches on the embedding cache: it needs a split bundle and --mode auto or "
                             "cached")
        self.lr = float(config.lr if config.lr is not None else self.bundle.manifest["optimizer"]["lr"])
        self.weight_decay = config.weight_decay
        self.class_weight = config.class_weight
        self.horizon = self.epochs_to_run = config.epochs   # --auto replaces both with the chosen settings
        few = small_classes(self.data.targets[self.train_idx], self.data.label_names) \
            if self.classification and self.bundle.loss == "cross-entropy" else {}
        self.small_classes = sorted(few.items(), key=lambda kv: (kv[1], kv[0]))   # the fewest first
        if self.small_classes:
            n = len(self.small_classes)
            more = f" and {n - SHOWN_SMALL} more" if n > SHOWN_SMALL else ""
            log.warning("%d class(es) with fewer than %d training samples: %s%s; their estimates are rough, add "
                        "samples if you can", n, SMALL_CLASS,
                        ", ".join(f"{k} ({v})" for k, v in self.small_classes[:SHOWN_SMALL]), more)
        self.timings: dict[str, float] = {"load_s": time.perf_counter() - self.t0}

    def _session(self, checkpoint: Path | None) -> BundleSession:
        return BundleSession(self.bundle, self.providers, checkpoint=checkpoint, backbone_variant=self.backbone_role,
                             engine=self.engine, step_providers=self.placement.step)

    # ---- features -------------------------------------------------------------------------------
    def _prepare_features(self, session: BundleSession) -> None:
        t = time.perf_counter()
        self.cache_stats = {"computed": 0, "reused": 0}
        if self.mode != "cached":
            self.features = None
            return
        cache = EmbeddingCache(self.cfg.cache_dir) if self.cfg.cache_dir else None
        entry = self.bundle.manifest["files"][self.bundle.manifest["roles"][self.backbone_role]]
        key = f"{entry['sha256']}:{self.backbone_role}"
        hashes = self.data.sample_hashes()
        try:
            self.features, computed = embed_with_cache(
                cache, key, self.bundle.head_inputs, hashes, self.data.inputs, session.embed,
                self.cfg.embed_batch, should_stop=self.cb.should_stop)
        finally:
            if cache:
                cache.close()
        self.cache_stats = {"computed": computed, "reused": len(hashes) - computed}
        self.timings["embed_s"] = time.perf_counter() - t

    def _batch(self, session: BundleSession, idx: np.ndarray) -> dict[str, np.ndarray]:
        if self.features is not None:
            return {s.name: np.take(self.features[s.name], idx, axis=s.batch_axis or 0) for s in self.bundle.head_inputs}
        return session.embed({k: v[idx] for k, v in self.data.inputs.items()})

    def evaluate(self, session: BundleSession, idx: np.ndarray) -> dict[str, Any]:
        """Loss and task metrics of the session's current parameters on samples ``idx`` (eval mode)."""
        if len(idx) == 0:
            return {}
        losses, outs = [], []
        for start in range(0, len(idx), self.cfg.embed_batch):
            if self.cb.should_stop():
                raise StopRequested("evaluation stopped on request (cancel or shutdown)")
            b = idx[start:start + self.cfg.embed_batch]
            loss, out = session.eval_step(self._batch(session, b), self.data.targets[b])
            losses.append(loss * len(b))
            outs.append(out)
        outputs = np.concatenate(outs)
        result = {"loss": float(sum(losses) / len(idx))}
        # Compact (no per-class counts or confusions): it lands in state.json every epoch and in result.json.
        result.update(M.task_metrics(self.bundle.loss, outputs, self.data.targets[idx], self.data.label_names,
                                     detail=False))
        return result

    # ---- --auto -----------------------------------------------------------------------------------
    def _search(self, session: BundleSession) -> dict[str, Any]:
        """Cross-validate settings on the cached features of the training samples (never the held-out ones)."""
        from ftedge.runtime.tasks.classify import autotune

        t = time.perf_counter()
        idx = self.train_idx
        specs = self.bundle.head_inputs
        feats = [np.take(self.features[s.name], idx, axis=s.batch_axis or 0) for s in specs]
        y = self.data.targets[idx]
        wd = self.weight_decay if self.weight_decay is not None else float(
            (self.bundle.manifest.get("optimizer") or {}).get("weight_decay", 0.0))
        base = autotune.Settings(self.lr, wd, self.cfg.epochs, self.class_weight)
        spent = time.perf_counter() - self.t0
        budget = (self.cfg.max_seconds if self.cfg.max_seconds else AUTO_BUDGET_S + spent) - spent
        imbalanced = self.bundle.loss == "cross-entropy" and imbalance(y) >= 1.5 and self.class_weight == "none"
        engine = open_engine("portable", self.bundle, None, self.placement.step)
        self.search_engine = engine
        bar = None
        if self.show_progress:
            from tqdm import tqdm

            bar = tqdm(unit="trial", desc="search", leave=False)

        hook = getattr(self.cb, "on_trial", None)   # callbacks written before --auto may not have it

        def on_trial(trial: Any) -> None:
            if hook is not None:
                hook(trial.to_json())
            if bar is not None:
                bar.set_postfix(best=f"{trial.score:.3f}")
                bar.update(1)

        try:
            out = autotune.tune(engine, feats, [s.batch_axis or 0 for s in specs], y, session.labels_array(y),
                                self.bundle.loss, self.data.label_names, base=base, batch_size=self.cfg.batch_size,
                                schedule=self.cfg.schedule, warmup_fraction=self.cfg.warmup_fraction,
                                seed=self.cfg.seed, folds=self.cfg.folds, budget_s=max(0.0, 0.9 * budget),
                                max_trials=self.cfg.max_trials, tune_class_weight=imbalanced,
                                log_path=self.ckpt.dir / "search.jsonl", should_stop=self.cb.should_stop,
                                on_trial=on_trial, start=self.warm_values)
        finally:
            if bar is not None:
                bar.close()
        out["budget_s"] = round(budget, 3)
        out["class_weight_searched"] = imbalanced
        self.timings["search_s"] = time.perf_counter() - t
        c, e = out["chosen"], out["estimate"]
        log.info("--auto: lr %.3g, weight decay %.3g, %d of %d epochs, class weight %s (%d trials, %s); CV gain "
                 "%+.4f [%+.4f, %+.4f]", c["lr"], c["weight_decay"], c["epochs"], c["horizon"], c["class_weight"],
                 len(out["trials"]), out["stopped"], e["gain"], e["lo"], e["hi"])
        return out

    def _warm_start(self, session: BundleSession, state: RunState, monitor: np.ndarray) -> None:
        """Stage the warm-start weights in the run dir; a run not yet past its first epoch starts from them, and
        the previous model is scored on the same split as the baseline (once: a resumed run keeps the score)."""
        assert self.warm is not None
        engine = session.model
        path = self.warm.stage(self.run_dir)
        self.warm_values = warm_start.load_values(path, engine.params, engine.buffers)
        if state.last_checkpoint is None:
            engine.start_from(self.warm_values)
            if not state.previous:
                state.previous = self.evaluate(session, monitor)

    def _apply_search(self, search: dict[str, Any]) -> None:
        c = search["chosen"]
        self.lr, self.weight_decay, self.class_weight = float(c["lr"]), float(c["weight_decay"]), c["class_weight"]
        self.horizon, self.epochs_to_run = int(c["horizon"]), int(c["epochs"])

    # ---- the loop -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to the end (or a stop), checkpointing every epoch; returns ``result.json``'s content."""
        state = self._open_state()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        session = self._session(self.ckpt.path(state.last_checkpoint))
        self.cache_stats = {"computed": 0, "reused": 0}
        monitor = self.val_idx if len(self.val_idx) else self.train_idx
        try:
            self._prepare_features(session)
            if not state.baseline:
                state.baseline = self.evaluate(session, monitor)  # the untuned model, same split
            if self.warm is not None:
                self._warm_start(session, state, monitor)
            if self.cfg.auto:
                if not state.search.get("chosen"):
                    self.ckpt.commit(state)   # resumable from here: search.jsonl holds the finished trials
                    state.search = self._search(session)
                    self.ckpt.commit(state)
                self._apply_search(state.search)
        except StopRequested as exc:  # cancel/SIGTERM while embedding, measuring the baseline or searching
            self.timings["train_s"] = 0.0
            return self._finish(state, "cancelled", f"cancelled: {exc}", session)
        self.sample_weights = balanced_weights_for(self.data.targets, self.train_idx) \
            if self.class_weight == "balanced" else None
        if self.weight_decay is not None:
            session.model.set_weight_decay(self.weight_decay)
        self.cb.on_start({"mode": self.mode, "samples": len(self.data), "train": len(self.train_idx),
                          "val": len(self.val_idx), "epochs": self.epochs_to_run, "resumed_from_epoch": state.epochs_done})
        bar = None
        if self.show_progress:
            from tqdm import tqdm

            bar = tqdm(total=self.epochs_to_run, initial=state.epochs_done, unit="epoch", desc="train", leave=False)
        t_train = time.perf_counter()
        try:
            status, stop_reason = self._epochs(session, state, monitor, bar, t_train)
        finally:
            if bar is not None:
                bar.close()
        self.timings["train_s"] = time.perf_counter() - t_train
        return self._finish(state, status, stop_reason, session)

    def _open_state(self) -> RunState:
        """The run's state: resumed (same fingerprint, compatible engine) or new (refusing a used run dir)."""
        state = self.rundir.open(_fingerprint(self.bundle, self.data, self.cfg, self.stable_split), self.cfg.resume,
                                 self.engine)
        if state.engine and state.engine != self.engine:
            if self.cfg.engine != "auto":
                raise FtedgeError(f"{self.run_dir} was trained with the {state.engine} engine; resume it with "
                                 f"--engine {state.engine} (or --engine auto)")
            self.engine = resolve_engine(state.engine, self.bundle)
        state.engine = self.engine
        return state

    def _epochs(self, session: BundleSession, state: RunState, monitor: np.ndarray, bar: Any,
                t_train: float) -> tuple[str, str]:
        """Run the remaining epochs; returns (status, stop_reason)."""
        cfg = self.cfg
        total_steps = math.ceil(len(self.train_idx) / cfg.batch_size) * self.horizon
        warmup = int(total_steps * cfg.warmup_fraction)
        elapsed_before = state.elapsed_s
        for epoch in range(state.epochs_done + 1, self.epochs_to_run + 1):
            t_epoch = time.perf_counter()
            status, stop_reason, train_loss, seen, lr = self._train_epoch(session, state, epoch, total_steps, warmup)
            if status != "succeeded":
                return status, stop_reason
            try:
                val = self.evaluate(session, monitor)
            except StopRequested:
                return "cancelled", "cancelled"
            if not math.isfinite(val["loss"]):
                return "diverged", f"non-finite validation loss at epoch {epoch}"
            dt = time.perf_counter() - t_epoch
            record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"],
                      "val_accuracy": val.get("accuracy"), "val_macro_f1": val.get("macro_f1"), "val_mae": val.get("mae"),
                      "lr": lr, "samples_per_s": seen / dt if dt > 0 else None,
                      "elapsed_s": elapsed_before + time.perf_counter() - t_train,
                      "split": "val" if len(self.val_idx) else "train"}
            score = self._checkpoint_epoch(session, state, epoch, val, record)
            if bar is not None:
                bar.set_postfix(loss=f"{record['train_loss']:.4f}", val=f"{score:.3f}")
                bar.update(1)
            if cfg.auto:
                continue   # the search chose the epoch count; the budget bounded the search, not this fit
            if cfg.patience and state.since_best >= cfg.patience:
                return "succeeded", f"early stopping: no improvement for {cfg.patience} epoch(s)"
            if cfg.max_seconds and time.perf_counter() - self.t0 + dt > cfg.max_seconds:
                return "succeeded", f"time budget of {cfg.max_seconds:g} s"
        return "succeeded", "completed"

    def _train_epoch(self, session: BundleSession, state: RunState, epoch: int, total_steps: int,
                     warmup: int) -> tuple[str, str, float, int, float]:
        """One pass over the shuffled training split: (status, stop_reason, mean loss, samples seen, last lr)."""
        cfg = self.cfg
        session.model.set_seed(cfg.seed * 1000 + epoch)
        order = self.train_idx[np.random.default_rng([cfg.seed, epoch]).permutation(len(self.train_idx))]
        total, seen, lr = 0.0, 0, self.lr
        for start in range(0, len(order), cfg.batch_size):
            if self.cb.should_stop():
                return "cancelled", "cancelled", 0.0, seen, lr
            b = order[start:start + cfg.batch_size]
            lr = learning_rate(state.global_step, total_steps, self.lr, warmup, cfg.schedule)
            session.set_learning_rate(lr)
            loss, _ = session.train_step(self._batch(session, b), self.data.targets[b],
                                         None if self.sample_weights is None else self.sample_weights[b])
            state.global_step += 1
            if not math.isfinite(loss):
                return "diverged", f"non-finite training loss ({loss}) at epoch {epoch}", 0.0, seen, lr
            total += loss * len(b)
            seen += len(b)
            self.cb.on_batch(epoch, state.global_step, loss)
        return "succeeded", "completed", total / max(seen, 1), seen, lr

    def _checkpoint_epoch(self, session: BundleSession, state: RunState, epoch: int, val: dict[str, Any],
                          record: dict[str, Any]) -> float:
        """Track the best epoch, save the checkpoints, log and report the epoch, then commit the run state."""
        score = M.primary(self.bundle.loss, val)
        state.epochs_done = epoch
        state.elapsed_s = record["elapsed_s"]
        if self.cfg.auto or state.best_score is None or score > state.best_score or (
                score == state.best_score and val["loss"] < (state.best_loss or math.inf)):
            state.best_score, state.best_loss, state.best_epoch, state.since_best = score, val["loss"], epoch, 0
            state.best_metrics = val
            state.best_checkpoint = self.ckpt.save_model(session.model, f"best-{epoch:04d}.ckpt", with_optimizer=False)
        else:
            state.since_best += 1
        state.last_checkpoint = self.ckpt.save_model(session.model, f"epoch-{epoch:04d}.ckpt", with_optimizer=True)
        self.rundir.log_epoch(record)
        # Report before committing: a crash in between re-runs this epoch (a duplicate report) rather
        # than skipping its report.
        self.cb.on_epoch(record)
        self.ckpt.commit(state)
        return score

    def _finish(self, state: RunState, status: str, stop_reason: str, session: BundleSession) -> dict[str, Any]:
        baseline = state.baseline
        final: dict[str, Any] = {}
        promoted, gain = False, None
        if state.best_checkpoint and status == "succeeded":
            t = time.perf_counter()
            # The live session holds the best parameters when the best epoch is the last one trained here;
            # otherwise (early stopping, or a resumed run) reload the best checkpoint.
            trained_here = state.best_epoch == state.epochs_done and session._model is not None
            # Only the head is needed: a second BundleSession would load a second backbone (+170 MB for MiniLM).
            best = session.model if trained_here else open_engine(
                self.engine, self.bundle, self.ckpt.path(state.best_checkpoint), self.placement.step)
            final = state.best_metrics  # measured on the same split when that epoch ended; eval is deterministic
            try:
                write_personalized(self.bundle, best, self.run_dir / "model.onnx", self.backbone_role,
                                   should_stop=self.cb.should_stop)
            except StopRequested as exc:
                return self._finish(state, "cancelled", f"cancelled: {exc}", session)
            if self.engine == "portable":   # what a later --warm-start continues from
                warm_start.save_weights(best, self.run_dir / warm_start.WEIGHTS_FILE)
            atomic_write_json(self.run_dir / "model.json", {
                **{k: self.bundle.manifest.get(k) for k in ("name", "inputs", "output", "labels", "loss", "task",
                                                            "preprocessing")},
                "bundle_sha256": warm_start.bundle_digest(self.bundle)})
            self.timings["export_s"] = time.perf_counter() - t
            if self.cfg.auto:
                est = state.search["estimate"]
                gain = est["gain"]
                promoted = bool(est["lo"] > self.cfg.min_gain)
                stop_reason += (f"; cross-validated gain {est['gain']:+.4f} "
                                f"[{est['lo']:+.4f}, {est['hi']:+.4f}] ({est['level']:.0%} interval) "
                                + ("clears" if promoted else "does not clear") + f" --min-gain {self.cfg.min_gain:g}")
            else:
                gain = M.primary(self.bundle.loss, final) - M.primary(self.bundle.loss, baseline)
                promoted = gain > self.cfg.min_gain or (
                    self.cfg.min_gain == 0 and gain == 0 and final["loss"] < baseline["loss"])
                if not len(self.val_idx):
                    promoted = False
                    stop_reason += "; no validation split (--val-fraction 0): not promoted"
        previous_gain = None
        if self.warm is not None and final:
            # the fit's own held-out metrics (with --auto too), against the previous model's on the same samples
            candidate = M.primary(self.bundle.loss, state.best_metrics) if len(self.val_idx) else None
            prior = M.primary(self.bundle.loss, state.previous) if len(self.val_idx) and state.previous else None
            previous_gain, why = warm_start.previous_gate(candidate, prior)
            if why is not None:
                promoted = False
                stop_reason += f"; {why}"
        fit = {"metrics": final, "baseline": baseline}
        if self.cfg.auto and state.search.get("estimate"):
            # the gate's numbers: out-of-fold (cross-validated) metrics of the tuned settings and of the untuned
            # model on the same samples; what the final fit scored on its own data is under "fit"
            est = state.search["estimate"]
            final, baseline = {**est["metrics"], "split": "cv"}, {**est["baseline_metrics"], "split": "cv"}
        result = {
            "status": status,
            "stop_reason": stop_reason,
            "best_epoch": state.best_epoch,
            "epochs_run": state.epochs_done,
            "metrics": final,
            "baseline": baseline,
            "gain": gain,
            "min_gain": self.cfg.min_gain,
            "promoted": bool(promoted),
            "duration_s": round(time.perf_counter() - self.t0, 3),
            "samples": {"total": len(self.data), "train": int(len(self.train_idx)), "val": int(len(self.val_idx))},
            "skipped": self.data.skipped,
            "notes": self.data.notes,
            "providers": placement_report(self.search_engine, session),
            "mode": self.mode,
            "engine": self.engine,
            "backbone": self.cfg.backbone,
            "cache": self.cache_stats,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "bundle": {"name": self.bundle.name, "path": str(self.bundle.path)},
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.cfg).items()},
        }
        if self.small_classes:   # at most SHOWN_SMALL (a 6,000-class head would list thousands)
            result["small_classes"] = {"below": SMALL_CLASS, "count": len(self.small_classes),
                                       "classes": dict(self.small_classes[:SHOWN_SMALL])}
        if self.cfg.auto:
            result["search"] = state.search
            result["fit"] = fit
        if self.warm is not None:
            result.update({"warm_start": self.warm.record(), "previous": state.previous or None,
                           "previous_gain": previous_gain})
        return self.rundir.write_result(complete(result, self.bundle.manifest))


def train(bundle: str | Path, data: str | Path, run_dir: str | Path, config: TrainConfig | None = None,
          callbacks: TrainCallbacks | None = None, progress: bool = False) -> dict[str, Any]:
    """Fine-tune ``bundle`` on ``data`` into ``run_dir``; returns the result (also in result.json)."""
    return Trainer(bundle, data, run_dir, config or TrainConfig(), callbacks, progress).run()
