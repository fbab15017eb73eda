"""Detection bundles on the device: YOLO/COCO data and bad boxes (``data.py``), letterboxing (``letterbox.py``),
anchor-free targets (``targets.py``), training on cached feature maps (``trainer.py``), COCO mAP
(``metrics.py``), and ``ftedge detect`` (``detector.py``, ``cli.py``)."""

from __future__ import annotations

from typing import Any

from ftedge.runtime.tasks import DeviceTask, TrainRequest
from ftedge.runtime.training.options import pick

OPTIONS = pick("epochs", "batch_size", "lr", "weight_decay", "val_fraction", "patience", "seed", "max_seconds",
               "min_gain", "mode", "eval_data", "flip", "warm_start", "providers", "step_providers", epochs=60, batch_size=8,
               weight_decay=1e-4, val_fraction=0.2)


def _train(req: TrainRequest) -> dict[str, Any]:
    from ftedge.runtime.tasks.detect.trainer import DetTrainConfig, DetTrainer

    cfg = DetTrainConfig(**OPTIONS.resolved(req.options), resume=req.resume,
                         cache_dir=req.cache_dir, bundle_source=req.bundle_source, data_root=req.data_root)
    return DetTrainer(req.bundle, req.data, req.run_dir, cfg, req.callbacks).run()


TASK = DeviceTask(package="detect", options=OPTIONS, train=_train, cli="ftedge.runtime.tasks.detect.cli")
