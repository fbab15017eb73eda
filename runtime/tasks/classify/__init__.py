"""Classification and regression bundles on the device: the trainer (``trainer.py``), the ``--auto`` search
(``autotune.py``, ``folds.py``), evaluation (``evaluate.py``, ``metrics.py``) and what the CLI prints (``cli.py``)."""

from __future__ import annotations

from typing import Any

from ftedge.runtime.tasks import DeviceTask, TrainRequest
from ftedge.runtime.training.options import pick

OPTIONS = pick("epochs", "batch_size", "embed_batch_size", "lr", "schedule", "val_fraction", "weight_decay",
               "class_weight", "auto", "folds", "max_trials", "patience", "seed", "max_seconds", "mode", "engine",
               "backbone", "min_gain", "warm_start", "providers", "step_providers", epochs=20, batch_size=32)


def _train(req: TrainRequest) -> dict[str, Any]:
    from ftedge.runtime.tasks.classify.trainer import TrainConfig, Trainer

    cfg = TrainConfig(**OPTIONS.resolved(req.options), resume=req.resume,
                      cache_dir=req.cache_dir)
    return Trainer(req.bundle, req.data, req.run_dir, cfg, req.callbacks, req.progress).run()


TASK = DeviceTask(package="classify", options=OPTIONS, train=_train, cli="ftedge.runtime.tasks.classify.cli")
