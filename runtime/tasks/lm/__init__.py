"""Causal-LM bundles on the device: LoRA training on cached hidden states (``trainer.py``), KV-cache generation
(``generator.py``, ``model.py``), the router (``router.py``), the chat format and Q&A loader (``chat.py``), answer
metrics and evaluation (``answer_metrics.py``, ``evaluate.py``), and the ``generate`` verb (``cli.py``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ftedge.runtime.tasks import DeviceTask, TrainRequest
from ftedge.runtime.training.options import COMMON, pick

# The lowest sampling temperature above 0 (greedy): below it the logits divided by it overflow to inf and the
# sampler's probabilities become NaN.
MIN_TEMPERATURE = 0.01
PINNED_BUNDLE = "bundle"  # in an agent's model version: its own hard-linked copy of the base bundle

OPTIONS = pick("epochs", "batch_size", "lr", "weight_decay", "val_fraction", "seed", "max_seconds", "min_gain",
               "general", "off_topic", "min_retention", "max_new_tokens",
               "warm_start", "providers", "step_providers",
               own=[replace(COMMON["eval_data"], path="file", metavar="FILE.jsonl")],  # a file here, not a folder
               epochs=10, batch_size=4, weight_decay=0.0, val_fraction=0.1)


def _train(req: TrainRequest) -> dict[str, Any]:
    from ftedge.runtime.tasks.lm.trainer import LMTrainConfig, LMTrainer

    cfg = LMTrainConfig(**OPTIONS.resolved(req.options), resume=req.resume,
                        bundle_source=req.bundle_source)
    return LMTrainer(req.bundle, req.data, req.run_dir, cfg, req.callbacks).run()


TASK = DeviceTask(package="lm", options=OPTIONS, train=_train, cli="ftedge.runtime.tasks.lm.cli")
