"""Personalize a detection bundle on the device: the anchor-free head on cached backbone feature maps.

1. Load labelled images (YOLO layout or COCO JSON, :mod:`ftedge.runtime.tasks.detect.data`; bad boxes and unreadable
   images are skipped and reported); hold out ``val_fraction`` of them (or use ``--eval-data``).
2. ``cached`` mode (default): letterbox each training image and run the frozen backbone on it and on its mirror
   image, once (feature maps kept in the on-disk embedding cache, keyed by image bytes + backbone hash). Each
   epoch a random half of the images is taken mirrored, boxes mirrored with them (horizontal flip: box-aware
   augmentation that fits the cache; exact, where mirroring the maps themselves would only approximate the
   backbone's output on a mirrored image). ``full`` mode runs the backbone every step on input-domain augmented
   images (flip, brightness/contrast jitter).
3. Train with the bundle's ``step.onnx`` (portable engine): targets assigned per batch
   (:mod:`ftedge.runtime.tasks.detect.targets`), AdamW, warm-up + cosine; the per-epoch order and flips come from
   ``default_rng(seed + epoch)``, so a resumed run continues exactly. After each epoch: validation mAP
   (``head.onnx``: decoding + NonMaxSuppression) and a checkpoint.
4. The best-mAP@0.5 epoch becomes ``RUN_DIR/model.onnx`` (backbone + tuned head + NMS; plain onnxruntime);
   ``promoted`` when its validation mAP@0.5 beats the untuned head's by more than ``min_gain``.
"""

from __future__ import annotations

import hashlib
import json
import math
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftedge.runtime.tasks.detect import OPTIONS, TASK
from ftedge.bundle.loader import Bundle, load_bundle
from ftedge.durable import atomic_write_json
from ftedge.errors import DataError, StopRequested, UsageError
from ftedge.runtime.data.cache import EmbeddingCache, pack, unpack
from ftedge.runtime.tasks.detect.data import DetDataset, load_detection
from ftedge.runtime.tasks.detect.letterbox import letterbox_geometry, letterbox_spec, load_letterboxed, to_input_boxes
from ftedge.runtime.tasks.detect.metrics import coco_map
from ftedge.runtime.tasks.detect.targets import batch_targets, flip_boxes, grid_of
from ftedge.runtime.engines.placement import Placement, report as placement_report
from ftedge.runtime.engines.portable import PortableEngine
from ftedge.runtime.engines.ort_backend import InferenceModel, set_seed
from ftedge.runtime.training.personalized import write_personalized
from ftedge.runtime.training.result import complete
from ftedge.runtime.training.run_dir import RunDir, RunState
from ftedge.runtime.training import warm_start
from ftedge.runtime.training.schedule import learning_rate
from ftedge.runtime.training.warm_start import stable_split

OUTPUTS = ["det_boxes", "det_scores", "det_labels", "det_batch"]
MAX_DETS = 100


@dataclass
class DetTrainConfig:
    epochs: int = OPTIONS.default("epochs")
    batch_size: int = OPTIONS.default("batch_size")
    lr: float | None = OPTIONS.default("lr")  # default: the bundle's
    weight_decay: float = OPTIONS.default("weight_decay")
    val_fraction: float = OPTIONS.default("val_fraction")  # of the labelled images, when no eval_data is given
    patience: int = OPTIONS.default("patience")  # stop after this many epochs without a better validation mAP@0.5 (0: off)
    seed: int = OPTIONS.default("seed")
    max_seconds: float | None = OPTIONS.default("max_seconds")
    resume: bool = False
    min_gain: float = OPTIONS.default("min_gain")
    mode: str = OPTIONS.default("mode")  # auto (= cached) | cached | full
    flip: bool = OPTIONS.default("flip")  # horizontal flips (backbone maps of the mirrored images, cached too)
    eval_data: str | None = OPTIONS.default("eval_data")  # held-out labelled images for validation and the gate
    providers: list[str] | None = OPTIONS.default("providers")            # every session (None: CPU)
    step_providers: list[str] | None = OPTIONS.default("step_providers")  # the training step and head
    threads: int | None = None
    cache_dir: str | Path | None = None
    bundle_source: str | None = None
    data_root: str | Path | None = None  # no data file outside it is read (the agent's data_root; None: anywhere)
    warm_start: str | None = OPTIONS.default("warm_start")  # a model version / run dir to continue from


def is_detector(bundle: Bundle) -> bool:
    return TASK.serves(bundle.manifest)


def split_detections(out: dict[str, np.ndarray], n_images: int, max_dets: int = MAX_DETS) -> list[dict[str, np.ndarray]]:
    """The graph's flat NMS outputs → per image boxes/scores/labels, best ``max_dets`` by score."""
    per = []
    for i in range(n_images):
        sel = np.nonzero(out["det_batch"] == i)[0]
        sel = sel[np.argsort(-out["det_scores"][sel], kind="stable")][:max_dets]
        per.append({"boxes": out["det_boxes"][sel].astype(np.float32), "scores": out["det_scores"][sel].astype(np.float32),
                    "labels": out["det_labels"][sel].astype(np.int64)})
    return per


class DetTrainer:
    def __init__(self, bundle: str | Path | Bundle, data: str | Path, run_dir: str | Path, config: DetTrainConfig,
                 callbacks: Any = None, trusted_keys: Any = None) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, trusted_keys=trusted_keys)
        if not is_detector(self.bundle):
            raise UsageError(f"{self.bundle.path} is not a detection bundle (export it with --task detect)")
        if config.mode not in ("auto", "cached", "full"):
            raise UsageError(f"--mode {config.mode!r}: use auto, cached or full")
        self.cfg = config
        self.placement = Placement.resolve(config.providers, config.step_providers)
        self._bb: InferenceModel | None = None
        self.engine_used: PortableEngine | None = None   # the training engine, for result.json's providers
        self.mode = "cached" if config.mode == "auto" else config.mode
        self.run_dir = Path(run_dir)
        self.callbacks = callbacks
        self.rundir = RunDir(self.run_dir)
        self.ckpt = self.rundir.ckpt
        self.det = self.bundle.manifest["detection"]
        self.labels = list(self.bundle.labels)
        self.spec = letterbox_spec(self.bundle.manifest["preprocessing"])
        self.grid = grid_of(self.det, self.spec.size)
        self.data = load_detection(data, self.labels, split="train", root=config.data_root)
        if config.eval_data:
            self.val_data: DetDataset | None = load_detection(config.eval_data, self.labels, split="val",
                                                              root=config.data_root)
            self.train_idx = np.arange(len(self.data.samples))
            self.val_items = list(self.val_data.samples)
        else:
            self.val_data = None
            # the stable split (by image content): the run that made a previous model held out the same images
            n = len(self.data.samples)
            fraction = 0.0 if n < 5 else config.val_fraction
            self.train_idx, val_idx = stable_split([self._hash(s.image) for s in self.data.samples], None,
                                                   fraction, config.seed)
            self.val_items = [self.data.samples[i] for i in val_idx]
        self.train_items = [self.data.samples[i] for i in self.train_idx]
        if self.train_items and not any(len(s.boxes) for s in self.train_items):
            reasons = sorted({d["reason"] for d in self.data.dropped_boxes})[:3]
            raise DataError(f"{data}: no box to train on in {len(self.train_items)} training image(s)"
                            + (f" ({self.data.dropped_count} dropped: {'; '.join(reasons)})" if reasons else "")
                            + f"; the bundle's classes are {', '.join(self.labels)}: check the labels' class names")
        self.timings: dict[str, float] = {}
        self.cache_stats = {"computed": 0, "reused": 0}
        self.warm = warm_start.resolve(config.warm_start, self.bundle, warm_start.WEIGHTS_FILE, self.run_dir,
                                       config.resume) if config.warm_start else None

    # -- features -----------------------------------------------------------------------------------------
    def _hash(self, path: Path) -> str:
        h = hashlib.sha256(path.read_bytes())
        h.update(json.dumps([self.spec.size, self.spec.pad_value, self.spec.mean, self.spec.std]).encode())
        return h.hexdigest()

    def _prepare(self, items: list[Any], mirrored: bool = False
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Feature maps of ``items`` (cached mode: the backbone once per image, through the embedding cache), with
        ``mirrored`` also those of the mirrored images (the flip augmentation, exact and still cached), and their
        boxes in input pixels and classes."""
        boxes, classes, hashes = [], [], []
        for s in items:
            lb = letterbox_geometry(s.size[0], s.size[1], self.spec.size)
            boxes.append(to_input_boxes(s.boxes, lb).astype(np.float32))
            classes.append(np.asarray(s.classes, np.int64))
            hashes.append(self._hash(s.image))
        if self.mode == "full":
            return {}, {}, boxes, classes
        feats = self._features(items, hashes, False)
        return feats, (self._features(items, hashes, True) if mirrored else {}), boxes, classes

    def _features(self, items: list[Any], hashes: list[str], mirror: bool) -> dict[str, np.ndarray]:
        specs = self.bundle.head_inputs
        if mirror:
            hashes = [h + ":mirrored" for h in hashes]
        entry = self.bundle.manifest["files"][self.bundle.manifest["roles"]["backbone"]]
        key = f"{entry['sha256']}:detect"
        cache = EmbeddingCache(self.cfg.cache_dir) if self.cfg.cache_dir else None
        try:
            found = cache.lookup(key, hashes) if cache else {}
            missing = [i for i, hsh in enumerate(hashes) if hsh not in found]
            blobs = dict(found)
            bb = self._backbone() if missing else None
            for start in range(0, len(missing), 8):
                if self.callbacks is not None and self.callbacks.should_stop():
                    raise StopRequested("feature caching stopped on request")
                idx = missing[start:start + 8]
                images = np.stack([self._image(items[i])[0] for i in idx])
                if mirror:
                    images = np.ascontiguousarray(images[..., ::-1])
                values = bb.run({"image": images}, [s.name for s in specs])  # type: ignore[union-attr]
                rows = [(hashes[j], pack(specs, values, k)) for k, j in enumerate(idx)]
                if cache:
                    cache.store(key, rows)
                blobs.update(rows)
            self.cache_stats["computed"] += len(missing)
            self.cache_stats["reused"] += len(hashes) - len(missing)
        finally:
            if cache:
                cache.close()
        return unpack(specs, [blobs[h] for h in hashes]) if hashes else {
            s.name: np.zeros((0, *s.sample_shape), np.float32) for s in specs}

    def _backbone(self) -> InferenceModel:
        if self._bb is None:
            self._bb = InferenceModel(self.bundle.file("backbone"), self.placement.providers, self.cfg.threads)
        return self._bb

    def _image(self, sample: Any) -> tuple[np.ndarray, Any]:
        return load_letterboxed(sample.image, self.spec)

    def _full_batch(self, idx: np.ndarray, flips: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Full mode: the backbone on augmented images (flip, brightness and contrast jitter)."""
        images = []
        mean = np.asarray(self.spec.mean, np.float32)[:, None, None]
        std = np.asarray(self.spec.std, np.float32)[:, None, None]
        for i, f in zip(idx, flips):
            x, _ = self._image(self.train_items[i])
            pixels = x * std + mean
            pixels = np.clip((pixels - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.1, 0.1), 0, 1)
            x = (pixels - mean) / std
            images.append(x[:, :, ::-1] if f else x)
        out = self._backbone().run({"image": np.ascontiguousarray(np.stack(images), np.float32)},
                                   [s.name for s in self.bundle.head_inputs])
        return out

    # -- evaluation ---------------------------------------------------------------------------------------
    def detect(self, engine: PortableEngine, feats: dict[str, np.ndarray], batch: int = 16) -> list[dict[str, np.ndarray]]:
        params = {k[2:]: v for k, v in engine.state.items() if k.startswith("p:")}
        names = [s.name for s in self.bundle.head_inputs]
        n = len(next(iter(feats.values()))) if feats else 0
        out: list[dict[str, np.ndarray]] = []
        for start in range(0, n, batch):
            part = {k: feats[k][start:start + batch] for k in names}
            res = engine.head.run(params, part, OUTPUTS)
            out.extend(split_detections(res, len(part[names[0]])))
        return out

    def _val_map(self, engine: PortableEngine, feats: dict[str, np.ndarray], boxes: list[np.ndarray],
                 classes: list[np.ndarray]) -> dict[str, Any] | None:
        if not boxes:
            return None
        if self.mode == "full":
            feats = self._val_feats_full()
        dets = self.detect(engine, feats)
        return coco_map(dets, [{"boxes": b, "labels": c} for b, c in zip(boxes, classes)], self.labels, MAX_DETS)

    def _val_feats_full(self) -> dict[str, np.ndarray]:
        if getattr(self, "_val_full", None) is None:
            names = [s.name for s in self.bundle.head_inputs]
            parts = [self._backbone().run({"image": self._image(s)[0][None]}, names) for s in self.val_items]
            self._val_full = {k: np.concatenate([p[k] for p in parts]) for k in names}
        return self._val_full

    # -- the run ------------------------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        h = hashlib.sha256(self.bundle.manifest["files"][self.bundle.manifest["roles"]["step"]]["sha256"].encode())
        for s in self.train_items + self.val_items:
            h.update(str(s.image).encode())
            h.update(np.ascontiguousarray(s.boxes, np.float32).tobytes())
        h.update(json.dumps({k: v for k, v in asdict(self.cfg).items() if k in (
            "epochs", "batch_size", "lr", "weight_decay", "seed", "mode", "flip", "val_fraction")}).encode())
        if self.cfg.warm_start:
            h.update(f"warm_start:{self.cfg.warm_start}".encode())
        return h.hexdigest()[:16]

    def _open_state(self) -> RunState:
        return self.rundir.open(self._fingerprint(), self.cfg.resume, engine="portable")

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        if not self.train_items:
            raise DataError("no training images left after the validation split; label more images")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        set_seed(cfg.seed)
        state = self._open_state()
        try:
            train_f, train_m, train_b, train_c = self._prepare(self.train_items, mirrored=cfg.flip)
            val_f, _, val_b, val_c = self._prepare(self.val_items)
        except StopRequested:
            return self._cancelled(state)  # what was computed stays in the cache for the next start
        self.timings["features_s"] = time.perf_counter() - t0
        engine = PortableEngine(self.bundle, self.ckpt.path(state.last_checkpoint), self.placement.step)
        self.engine_used = engine
        engine.set_weight_decay(cfg.weight_decay)
        base_lr = cfg.lr or float(self.bundle.manifest["optimizer"]["lr"])
        n = len(self.train_items)
        steps_per_epoch = math.ceil(n / cfg.batch_size)
        total = steps_per_epoch * cfg.epochs
        warmup = max(1, round(0.05 * total))
        if not state.baseline:
            state.baseline = _summary(self._val_map(engine, val_f, val_b, val_c))
        if self.warm is not None:   # the previous model's head, fresh moments; scored once on the same split
            values = warm_start.load_values(self.warm.stage(self.run_dir), engine.params, engine.buffers)
            if state.last_checkpoint is None:
                engine.start_from(values)
                if not state.previous:
                    state.previous = _summary(self._val_map(engine, val_f, val_b, val_c))
        width = float(self.spec.size[1])
        names = [s.name for s in self.bundle.head_inputs]
        stop_reason = "epochs"
        for epoch in range(state.epochs_done + 1, cfg.epochs + 1):
            if cfg.max_seconds is not None and state.elapsed_s > cfg.max_seconds:
                stop_reason = "max_seconds"
                break
            if cfg.patience and state.since_best >= cfg.patience:
                stop_reason = "patience"
                break
            if self.callbacks is not None and self.callbacks.should_stop():
                return self._cancelled(state)
            te = time.perf_counter()
            rng = np.random.default_rng(cfg.seed + epoch)
            order = rng.permutation(n)
            flips = (rng.random(n) < 0.5) if cfg.flip else np.zeros(n, bool)
            losses, sizes = [], []
            for s in range(steps_per_epoch):
                idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
                fl = flips[idx]
                if self.mode == "full":
                    feats = self._full_batch(idx, fl, rng)
                else:
                    feats = {k: np.where(fl.reshape(-1, *[1] * (train_f[k].ndim - 1)), train_m[k][idx], train_f[k][idx])
                             if fl.any() else train_f[k][idx] for k in names}
                items = [(flip_boxes(train_b[i], width) if f else train_b[i], train_c[i]) for i, f in zip(idx, fl)]
                labels = batch_targets(items, self.grid, len(self.labels))
                engine.set_learning_rate(learning_rate(state.global_step, total, base_lr, warmup, "cosine"))
                loss, _ = engine.train_step([np.ascontiguousarray(feats[k]) for k in names], labels)
                state.global_step += 1
                losses.append(loss)
                sizes.append(len(idx))
            val = _summary(self._val_map(engine, val_f, val_b, val_c))
            train_loss = float(np.average(losses, weights=sizes))
            record = {"epoch": epoch, "train_loss": train_loss, "val_loss": None, "val_accuracy": None,
                      "val_map50": val.get("map50"), "val_map50_95": val.get("map50_95"), "lr": engine.learning_rate(),
                      "samples_per_s": n / (time.perf_counter() - te),
                      "elapsed_s": round(state.elapsed_s + time.perf_counter() - te, 3)}
            self.rundir.log_epoch(record)
            name = self.ckpt.save_model(engine, f"epoch{epoch:04d}.safetensors", with_optimizer=True)
            state.last_checkpoint = name
            score = val.get("map50")
            score = -train_loss if score is None else score
            if state.best_score is None or score > state.best_score:
                state.best_epoch, state.best_score, state.best_checkpoint = epoch, score, name
                state.best_metrics = {**val, "train_loss": train_loss}
                state.since_best = 0
            else:
                state.since_best += 1
            state.epochs_done = epoch
            state.elapsed_s += time.perf_counter() - te
            self.ckpt.commit(state)
            if self.callbacks is not None:
                self.callbacks.on_epoch({**record, "metrics": {"map50": record["val_map50"],
                                                               "map50_95": record["val_map50_95"]}})
        return self._finish(state, stop_reason, t0)

    def _cancelled(self, state: RunState) -> dict[str, Any]:
        result = {"status": "cancelled", "task": "detection", "stop_reason": "cancelled",
                  "epochs_done": state.epochs_done, "epochs_run": state.epochs_done, "best_epoch": state.best_epoch,
                  "metrics": state.best_metrics, "baseline": state.baseline, "promoted": False}
        return self.rundir.write_result(complete(result, self.bundle.manifest))

    def _finish(self, state: RunState, stop_reason: str, t0: float) -> dict[str, Any]:
        if state.best_checkpoint is None:
            raise DataError("no epoch finished; give more --epochs or --max-seconds")
        te = time.perf_counter()
        best = PortableEngine(self.bundle, self.ckpt.path(state.best_checkpoint), self.placement.step)
        should_stop = self.callbacks.should_stop if self.callbacks is not None else (lambda: False)
        try:
            write_personalized(self.bundle, best, self.run_dir / "model.onnx", should_stop=should_stop, outputs=OUTPUTS)
        except StopRequested:
            return self._cancelled(state)
        warm_start.save_weights(best, self.run_dir / warm_start.WEIGHTS_FILE)   # what a later warm start reads
        m = self.bundle.manifest
        atomic_write_json(self.run_dir / "model.json", {
            **{k: m.get(k) for k in ("name", "inputs", "output", "labels", "loss", "task", "preprocessing", "detection")},
            "outputs": OUTPUTS, "kind": "detector", "bundle_sha256": warm_start.bundle_digest(self.bundle)})
        self.timings["export_s"] = time.perf_counter() - te
        final, baseline = state.best_metrics, state.baseline
        gain = None
        if final.get("map50") is not None and baseline.get("map50") is not None:
            gain = final["map50"] - baseline["map50"]
        promoted = gain is not None and gain > self.cfg.min_gain
        if not self.val_items:
            stop_reason += "; no validation images: not promoted"
        previous_gain = None
        if self.warm is not None:
            previous_gain, why = warm_start.previous_gate(final.get("map50"), state.previous.get("map50"))
            if why is not None:
                promoted = False
                stop_reason += f"; {why}"
        result = {
            "status": "succeeded", "task": "detection", "stop_reason": stop_reason, "best_epoch": state.best_epoch,
            "epochs_run": state.epochs_done, "metrics": final, "baseline": baseline, "gain": gain,
            "min_gain": self.cfg.min_gain, "promoted": bool(promoted),
            "duration_s": round(time.perf_counter() - t0, 3), "train_s": round(state.elapsed_s, 3),
            "samples": {"total": len(self.train_items) + len(self.val_items), "train": len(self.train_items),
                        "val": len(self.val_items),
                        "boxes": int(sum(len(s.boxes) for s in self.train_items + self.val_items))},
            "skipped": self.data.skipped + (self.val_data.skipped if self.val_data else []),
            "dropped_boxes": self.data.dropped_boxes + (self.val_data.dropped_boxes if self.val_data else []),
            "skipped_count": self.data.skipped_count + (self.val_data.skipped_count if self.val_data else 0),
            "dropped_count": self.data.dropped_count + (self.val_data.dropped_count if self.val_data else 0),
            "format": self.data.format, "mode": self.mode, "engine": "portable", "flip": self.cfg.flip,
            "providers": placement_report(("backbone", self._bb), self.engine_used),
            "cache": self.cache_stats,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "bundle": {"name": self.bundle.name, "path": self.cfg.bundle_source or str(self.bundle.path)},
            "model": {"kind": "detector", "file": "model.onnx", "outputs": OUTPUTS},
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.cfg).items()},
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        if self.warm is not None:
            result.update({"warm_start": self.warm.record(), "previous": state.previous or None,
                           "previous_gain": previous_gain})
        return self.rundir.write_result(complete(result, self.bundle.manifest))


def _summary(m: dict[str, Any] | None) -> dict[str, Any]:
    if m is None:
        return {}
    return {"map50": m["map50"], "map50_95": m["map50_95"], "map75": m["map75"],
            "per_class": {k: {"ap50": v["ap50"], "ap50_95": v["ap50_95"], "gt": v["gt"]} for k, v in m["per_class"].items()}}


def train_detector(bundle: str | Path, data: str | Path, run_dir: str | Path, config: DetTrainConfig | None = None,
                   **kw: Any) -> dict[str, Any]:
    return DetTrainer(bundle, data, run_dir, config or DetTrainConfig(), **kw).run()
