"""Personalize a causal-LM bundle on the device: LoRA on cached hidden states, then evaluate by generating.

1. Tokenize the Q&A rows (:mod:`ftedge.runtime.tasks.lm.chat`); run the frozen backbone once per sequence and keep its
   hidden states (the split cache); free the backbone.
2. Train the adapters with the bundle's ``step.onnx`` (portable engine): answer tokens only, AdamW, warm-up +
   cosine; the per-epoch order is ``default_rng(seed + epoch)``, so a resumed run continues exactly. After each
   epoch: validation loss / perplexity on held-out answers (``head.onnx``) and a checkpoint.
3. The adapter of the best-validation epoch is ``RUN_DIR/adapter.safetensors`` (the personalized model is the
   bundle's decoder with this adapter side-loaded: see :mod:`ftedge.runtime.tasks.lm.generator`).
4. Generate answers with the untuned and the tuned adapter: accuracy on held-out prompts (``--eval-data``, rows
   with a reference ``answer`` and optional ``keywords``) and retention on general prompts (``--general``).
   ``promoted`` when accuracy gains more than ``min_gain`` (perplexity when there is no eval set) and retention is at
   least ``min_retention``.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftedge.runtime.tasks.lm import OPTIONS, TASK
from ftedge.bundle.loader import Bundle, load_bundle
from ftedge.durable import atomic_write_json, replace_file
from ftedge.errors import DataError, UsageError
from ftedge.runtime.tasks.lm.answer_metrics import normalize
from ftedge.runtime.tasks.lm.chat import ChatTokenizer, Example, bundle_tokenizer, load_qa, prompt_of, read_rows
from ftedge.runtime.engines.placement import Placement, report as placement_report
from ftedge.runtime.engines.portable import PortableEngine
from ftedge.runtime.tasks.lm.evaluate import evaluate_answers, gate, keywords_of, rows_of
from ftedge.runtime.tasks.lm.model import ADAPTER_FILE, bundle_digest, load_adapter
from ftedge.runtime.engines.ort_backend import InferenceModel, set_seed
from ftedge.runtime.tasks.lm.router import Router, fit_router
from ftedge.runtime.training.result import complete
from ftedge.runtime.training.run_dir import RunDir, RunState
from ftedge.runtime.training import warm_start
from ftedge.runtime.training.schedule import learning_rate
from ftedge.runtime.training.warm_start import stable_split


@dataclass
class LMTrainConfig:
    epochs: int = OPTIONS.default("epochs")
    batch_size: int = OPTIONS.default("batch_size")
    lr: float | None = OPTIONS.default("lr")  # default: the bundle's
    weight_decay: float = OPTIONS.default("weight_decay")
    val_fraction: float = OPTIONS.default("val_fraction")  # of the training rows, when no --eval-data is given
    seed: int = OPTIONS.default("seed")
    max_seconds: float | None = OPTIONS.default("max_seconds")
    resume: bool = False
    min_gain: float = OPTIONS.default("min_gain")
    min_retention: float = OPTIONS.default("min_retention")
    max_new_tokens: int = OPTIONS.default("max_new_tokens")
    eval_data: str | None = OPTIONS.default("eval_data")  # held-out prompts with reference answers (paraphrases)
    general: str | None = OPTIONS.default("general")  # general prompts for retention
    off_topic: str | None = OPTIONS.default("off_topic")  # prompts that are not the site's: the router's negatives (never trained on)
    providers: list[str] | None = OPTIONS.default("providers")            # every session (None: CPU)
    step_providers: list[str] | None = OPTIONS.default("step_providers")  # the LoRA training step
    threads: int | None = None
    bundle_source: str | None = None  # the bundle path to record (the agent trains a pinned copy of it)
    warm_start: str | None = OPTIONS.default("warm_start")  # a model version / run dir to continue from


def is_causal_lm(bundle: Bundle) -> bool:
    return TASK.serves(bundle.manifest)


def release_free_memory() -> None:
    """Hand freed heap back to the OS (glibc keeps it otherwise, and a device's other processes need it)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0) if name else None
    except (OSError, AttributeError):
        pass  # not glibc: nothing to do


def pad_batch(hidden: list[np.ndarray], examples: list[Example]) -> dict[str, np.ndarray]:
    """Right-padded step inputs: ``hidden``, ``attention_mask``, ``label_pos`` (the position predicting each
    answer token), ``labels``, ``weights`` (1 for answer tokens, 0 for padding)."""
    b = len(examples)
    t = max(h.shape[0] for h in hidden)
    a = max(len(e.answer_ids) for e in examples)
    d = hidden[0].shape[1]
    out = {"hidden": np.zeros((b, t, d), np.float32), "attention_mask": np.zeros((b, t), np.int64),
           "label_pos": np.zeros((b, a), np.int64), "labels": np.zeros((b, a), np.int64),
           "weights": np.zeros((b, a), np.float32)}
    for i, (h, e) in enumerate(zip(hidden, examples)):
        n, p, k = h.shape[0], len(e.prompt_ids), len(e.answer_ids)
        out["hidden"][i, :n] = h
        out["attention_mask"][i, :n] = 1
        out["label_pos"][i, :k] = np.arange(p - 1, p - 1 + k)
        out["labels"][i, :k] = e.answer_ids
        out["weights"][i, :k] = 1.0
    return out


class LMTrainer:
    def __init__(self, bundle: str | Path | Bundle, data: str | Path, run_dir: str | Path, config: LMTrainConfig,
                 callbacks: Any = None, trusted_keys: Any = None) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, trusted_keys=trusted_keys)
        if not is_causal_lm(self.bundle):
            raise UsageError(f"{self.bundle.path} is not a causal-LM bundle")
        self.cfg = config
        self.placement = Placement.resolve(config.providers, config.step_providers)
        self.placements: dict[str, dict[str, Any]] = {}   # result.json's providers, per stage
        self.run_dir = Path(run_dir)
        self.llm = self.bundle.manifest["llm"]
        self.tok: ChatTokenizer = bundle_tokenizer(self.bundle.path, self.bundle.manifest["preprocessing"])
        self.data = load_qa(data, self.tok)
        self.callbacks = callbacks
        self.rundir = RunDir(self.run_dir)
        self.ckpt = self.rundir.ckpt
        # Checked now, not after the last epoch: a bad row is skipped and listed (FILE:LINE) with the data's own.
        self.eval_rows = (rows_of(config.eval_data, "--eval-data", self.tok, need_answer=True,
                                  skipped=self.data.skipped) if config.eval_data else None)
        self.general_rows = rows_of(config.general, "--general", self.tok, skipped=self.data.skipped) if config.general else []
        for i, row in enumerate(self.eval_rows or []):  # before training, not after it
            keywords_of(row, f"--eval-data {config.eval_data} row {i + 1}")
        n = len(self.data)
        if config.warm_start:   # the stable split, by row content: see ftedge.runtime.training.warm_start
            fraction = 0.0 if config.eval_data or n < 5 else config.val_fraction
            self.train_idx, self.val_idx = stable_split(
                [json.dumps([e.prompt_ids, e.answer_ids]) for e in self.data.examples], None, fraction, config.seed)
        else:
            rng = np.random.default_rng(config.seed)
            order = rng.permutation(n)
            n_val = 0 if config.eval_data or n < 5 else max(1, round(n * config.val_fraction))
            self.val_idx, self.train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        self.val_examples = [self.data.examples[i] for i in self.val_idx]
        if self.eval_rows is not None:
            self.val_examples = load_qa(config.eval_data, self.tok).examples
        self.train_examples = [self.data.examples[i] for i in self.train_idx]
        if config.off_topic and self.llm.get("router_feature") != "cut_mean":
            raise UsageError(f"--off-topic needs a bundle whose decoder outputs the router's feature; "
                             f"{self.bundle.path} predates it: re-export it with this ftedge")
        self.off_topic, self.off_topic_notes = (self._off_topic(config.off_topic) if config.off_topic
                                                else ([], {}))
        self.warm = warm_start.resolve(config.warm_start, self.bundle, ADAPTER_FILE, self.run_dir,
                                       config.resume) if config.warm_start else None

    def _off_topic(self, path: str) -> tuple[list[Example], dict[str, Any]]:
        """The off-topic prompts as answer-less examples; rows that are bad, too long, or the same question as a
        training or ``--general`` prompt (which must stay unseen) are left out and counted."""
        rows, skipped = read_rows(path)
        seen = {normalize(_last_user(e.row)) for e in self.data.examples}
        held = {normalize(_last_user(r)) for r in self.general_rows + (self.eval_rows or [])}
        out, notes = [], {"file": str(path), "skipped": len(skipped), "overlap_dropped": 0}
        for where, row in rows:
            try:
                messages = prompt_of(row)
            except DataError:
                notes["skipped"] += 1
                continue
            ids = self.tok.prompt_ids(messages)
            key = normalize(messages[-1]["content"])
            if key in seen or key in held:
                notes["overlap_dropped"] += 1
                continue
            if len(ids) > self.tok.max_length:
                notes["skipped"] += 1
                continue
            seen.add(key)
            out.append(Example(ids, [], row, where))
        if not out:
            raise DataError(f"--off-topic {path}: no usable prompts ({notes['skipped']} bad or too long, "
                            f"{notes['overlap_dropped']} the same as a training, eval or --general prompt)")
        notes["prompts"] = len(out)
        return out, notes

    # -- the split cache -------------------------------------------------------------------------------------
    def _hidden(self, groups: list[list[Example]]) -> list[list[np.ndarray]]:
        """Backbone hidden states per sequence. No weight pre-packing: the weights stay the file's mapped pages,
        which the kernel can drop once the pass is done, instead of a second copy on the heap."""
        bb = InferenceModel(self.bundle.file("backbone"), self.placement.providers, self.cfg.threads, prepack=False)
        out = []
        for examples in groups:
            out.append([])
            for e in examples:  # one sequence per call: no padding work, lengths differ a lot
                ids = np.asarray([e.prompt_ids + e.answer_ids], np.int64)
                out[-1].append(bb.run({"input_ids": ids, "attention_mask": np.ones_like(ids)}, ["hidden"])["hidden"][0])
        self.placements.update(placement_report(("backbone", bb)))
        del bb
        release_free_memory()
        return out

    def _fingerprint(self) -> str:
        import hashlib

        h = hashlib.sha256(self.bundle.manifest["files"][self.bundle.manifest["roles"]["step"]]["sha256"].encode())
        for e in self.train_examples:
            h.update(json.dumps([e.prompt_ids, e.answer_ids]).encode())
        h.update(json.dumps({k: v for k, v in asdict(self.cfg).items() if k in ("epochs", "batch_size", "lr",
                             "weight_decay", "seed")}).encode())
        if self.cfg.warm_start:
            h.update(f"warm_start:{self.cfg.warm_start}".encode())
        return h.hexdigest()[:16]

    def _val_loss(self, engine: PortableEngine, hidden: list[np.ndarray]) -> float | None:
        if not self.val_examples:
            return None
        total, count = 0.0, 0.0
        for i in range(0, len(self.val_examples), self.cfg.batch_size):
            ex = self.val_examples[i:i + self.cfg.batch_size]
            b = pad_batch(hidden[i:i + self.cfg.batch_size], ex)
            _, nll = engine.step_loss([b["hidden"], b["attention_mask"], b["label_pos"]], b["labels"], b["weights"])
            total += float((nll * b["weights"]).sum())
            count += float(b["weights"].sum())
        return total / max(count, 1.0)

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        set_seed(cfg.seed)
        state = self._open_state()
        train_h, val_h, off_h = self._hidden([self.train_examples, self.val_examples, self.off_topic])
        router = None
        if self.off_topic:  # the router's feature: the prompt's mean hidden state at the cut (decoder `cut_mean`)
            inside = np.stack([h[:len(e.prompt_ids)].mean(0) for h, e in zip(train_h, self.train_examples)])
            outside = np.stack([h.mean(0) for h in off_h])
            router = fit_router(inside, outside)
            right = ((router.probability(inside) >= router.threshold).sum()
                     + (router.probability(outside) < router.threshold).sum())
            self.off_topic_notes["train_accuracy"] = round(float(right) / (len(inside) + len(outside)), 4)
        del off_h
        cache_s = time.perf_counter() - t0
        engine = PortableEngine(self.bundle, self.ckpt.path(state.last_checkpoint), self.placement.step)
        engine.set_weight_decay(cfg.weight_decay)
        base_lr = cfg.lr or float(self.bundle.manifest["optimizer"]["lr"])
        steps_per_epoch = math.ceil(len(self.train_examples) / cfg.batch_size)
        total = steps_per_epoch * cfg.epochs
        warmup = max(1, round(0.1 * total))
        if not state.baseline:
            vl = self._val_loss(engine, val_h)
            state.baseline = {"val_loss": vl, "perplexity": None if vl is None else math.exp(vl)}
        if self.warm is not None:   # the previous adapter, fresh moments; scored once on the same held-out answers
            values = warm_start.load_values(self.warm.stage(self.run_dir), engine.params, engine.buffers)
            if state.last_checkpoint is None:
                engine.start_from(values)
                if not state.previous:
                    vl = self._val_loss(engine, val_h)
                    state.previous = {"val_loss": vl, "perplexity": None if vl is None else math.exp(vl)}
        stop_reason = "epochs"
        for epoch in range(state.epochs_done + 1, cfg.epochs + 1):
            if cfg.max_seconds is not None and state.elapsed_s > cfg.max_seconds:
                stop_reason = "max_seconds"
                break
            if self.callbacks is not None and self.callbacks.should_stop():
                return self._cancelled(state)
            te = time.perf_counter()
            order = np.random.default_rng(cfg.seed + epoch).permutation(len(self.train_examples))
            losses, weights = [], []
            for s in range(steps_per_epoch):
                idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
                batch = pad_batch([train_h[i] for i in idx], [self.train_examples[i] for i in idx])
                engine.set_learning_rate(learning_rate(state.global_step, total, base_lr, warmup, "cosine"))
                loss, _ = engine.train_step([batch["hidden"], batch["attention_mask"], batch["label_pos"]],
                                            batch["labels"], batch["weights"])
                state.global_step += 1
                losses.append(loss)
                weights.append(float(batch["weights"].sum()))
            vl = self._val_loss(engine, val_h)
            train_loss = float(np.average(losses, weights=weights))
            record = {"epoch": epoch, "train_loss": train_loss, "val_loss": vl,
                      "val_perplexity": None if vl is None else math.exp(vl), "val_accuracy": None,
                      "lr": engine.learning_rate(), "samples_per_s": len(order) / (time.perf_counter() - te),
                      "elapsed_s": round(state.elapsed_s + time.perf_counter() - te, 3)}
            self.rundir.log_epoch(record)
            name = self.ckpt.save_model(engine, f"epoch{epoch:04d}.safetensors", with_optimizer=True)
            state.last_checkpoint = name
            score = vl if vl is not None else train_loss
            if state.best_loss is None or score <= state.best_loss:
                state.best_epoch, state.best_loss, state.best_checkpoint = epoch, score, name
                state.best_metrics = {"val_loss": vl, "perplexity": record["val_perplexity"], "train_loss": train_loss}
            state.epochs_done = epoch
            state.elapsed_s += time.perf_counter() - te
            self.ckpt.commit(state)
            if self.callbacks is not None:
                self.callbacks.on_epoch(record)
        # The step session (top blocks, LM head, optimizer state, ORT's arena) must be gone before the decoder
        # loads for evaluation: otherwise both are resident at once (measured: 1.2 GB instead of ~0.8 GB peak).
        self.placements.update(placement_report(engine))
        del engine, train_h, val_h
        release_free_memory()
        return self._finish(state, stop_reason, cache_s, router)

    def _open_state(self) -> RunState:
        return self.rundir.open(self._fingerprint(), self.cfg.resume, engine="portable")

    def _cancelled(self, state: RunState) -> dict[str, Any]:
        """Stopped at an epoch boundary: the checkpoint stays, so ``resume`` continues from it."""
        result = {"status": "cancelled", "task": "causal-lm", "stop_reason": "cancelled", "epochs_done": state.epochs_done,
                  "epochs_run": state.epochs_done, "best_epoch": state.best_epoch, "metrics": state.best_metrics, "baseline": state.baseline,
                  "promoted": False, "duration_s": round(state.elapsed_s, 3),
                  "samples": {"train": len(self.train_examples), "val": len(self.val_examples)},
                  "skipped": self.data.skipped, "mode": "cached", "engine": "portable"}
        return self.rundir.write_result(complete(result, self.bundle.manifest))

    def _finish(self, state: RunState, stop_reason: str, cache_s: float, router: Router | None) -> dict[str, Any]:
        from safetensors.numpy import save_file

        if state.best_checkpoint is None:
            raise DataError("no epoch finished; give more --epochs or --max-seconds")
        best = load_adapter(self.ckpt.path(state.best_checkpoint))
        adapter = {k[2:]: v for k, v in best.items() if k.startswith("p:")}
        if router is not None:
            adapter.update(router.to_tensors())
        tmp = self.run_dir / f".{ADAPTER_FILE}.tmp"
        save_file(adapter, os.fspath(tmp), metadata={"bundle": self.bundle.name, "kind": "lora-adapter"})
        replace_file(tmp, self.run_dir / ADAPTER_FILE)
        t_eval = time.perf_counter()
        initial = load_adapter(self.bundle.file("init"))
        prior = load_adapter(self.run_dir / warm_start.RUN_COPY) if self.warm is not None else None
        quality = evaluate_answers(self.bundle, self.tok, initial, adapter, self.eval_rows, self.general_rows,
                                   self.cfg, previous=prior)
        metrics = {**state.best_metrics, **quality["tuned"], "retention": quality.get("retention", {}).get("retention")}
        baseline = {**state.baseline, **quality["base"]}
        promoted, why = gate(metrics, baseline, self.cfg)
        previous, previous_gain = None, None
        if self.warm is not None:
            previous = {**state.previous, **quality.get("previous", {})}
            previous_gain, refused = warm_start.previous_gate(*_primary(metrics, previous))
            if refused is not None:
                promoted = False
                why += f"; {refused}"
                stop_reason += f"; {refused}"
        result = {
            "status": "succeeded", "task": "causal-lm", "best_epoch": state.best_epoch, "epochs_run": state.epochs_done,
            "epochs_done": state.epochs_done,
            "stop_reason": stop_reason, "metrics": metrics, "baseline": baseline, "promoted": promoted,
            "gate": why, "retention": quality.get("retention"), "answers": quality.get("answers", [])[:20],
            "router": ({**self.off_topic_notes, **quality.get("routes", {})} if router is not None else None),
            "duration_s": round(state.elapsed_s + cache_s + (time.perf_counter() - t_eval), 3),
            "cache_s": round(cache_s, 3), "eval_s": round(time.perf_counter() - t_eval, 3),
            "samples": {"train": len(self.train_examples), "val": len(self.val_examples)},
            "skipped": self.data.skipped, "truncated": self.data.truncated,
            "providers": self.placements, "mode": "cached", "engine": "portable",
            "bundle": self.cfg.bundle_source or str(self.bundle.path.resolve()),
            "bundle_sha256": bundle_digest(self.bundle),
            "model": {"kind": "lora-adapter", "file": ADAPTER_FILE, "decoder": "decoder.onnx"},
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        if self.warm is not None:
            result.update({"warm_start": self.warm.record(), "previous": previous, "previous_gain": previous_gain})
        atomic_write_json(self.run_dir / "model.json", {
            "kind": "lora-adapter", "task": "causal-lm", "name": self.bundle.name, "adapter": ADAPTER_FILE,
            "bundle": result["bundle"], "bundle_sha256": result["bundle_sha256"], "decoder": "decoder.onnx",
            "lora": self.llm.get("lora"), "router": router is not None,
            "why_side_loaded": "the adapter is ~1 MB; a merged decoder would be another full copy of the base model "
            "per version, and a routed adapter needs the untuned weights beside it anyway"})
        return self.rundir.write_result(complete(result, self.bundle.manifest))


def _primary(candidate: dict[str, Any], previous: dict[str, Any]) -> tuple[float | None, float | None]:
    """The two models' primary metric, higher is better: answer accuracy where both were scored on held-out
    prompts, else the negated perplexity of the held-out answers."""
    if candidate.get("accuracy") is not None and previous.get("accuracy") is not None:
        return candidate["accuracy"], previous["accuracy"]
    if candidate.get("perplexity") is not None and previous.get("perplexity") is not None:
        return -candidate["perplexity"], -previous["perplexity"]
    return None, None


def _last_user(row: Any) -> str:
    """The last user message of a row (its question), or "" for a malformed row."""
    try:
        return next(m["content"] for m in reversed(prompt_of(row)) if m["role"] == "user")
    except (DataError, StopIteration):
        return ""


def train_lm(bundle: str | Path, data: str | Path, run_dir: str | Path, config: LMTrainConfig | None = None,
             **kw: Any) -> dict[str, Any]:
    return LMTrainer(bundle, data, run_dir, config or LMTrainConfig(), **kw).run()
