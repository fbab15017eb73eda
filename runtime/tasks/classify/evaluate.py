"""`ftedge evaluate`: metrics of a personalized model (run dir) or an untuned bundle on local data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ftedge.errors import FtedgeError
from ftedge.runtime.tasks.classify import metrics as M
from ftedge.bundle.loader import load_bundle
from ftedge.runtime.data.samples import ModelIO, load_dataset
from ftedge.bundle.manifest import MANIFEST_NAME
from ftedge.runtime.engines.ort_backend import InferenceModel
from ftedge.runtime.engines.session import BundleSession


def evaluate(target: str | Path, data: str | Path, batch_size: int = 64,
             providers: list[str] | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class counts and confusion matrix (or MAE) of ``target`` on ``data``."""
    target = Path(target)
    if (target / "model.onnx").is_file() and (target / "model.json").is_file():
        spec = json.loads((target / "model.json").read_text())
        io = ModelIO.from_manifest(spec, target)
        model = InferenceModel(target / "model.onnx", providers)
        out_name = spec["output"]["name"]

        def predict(feeds: dict[str, np.ndarray]) -> np.ndarray:
            return model.run(feeds, [out_name])[out_name]
        kind = "personalized model"
    elif (target / MANIFEST_NAME).is_file():
        bundle = load_bundle(target)
        io = ModelIO.from_manifest(bundle.manifest, bundle.path)
        session = BundleSession(bundle, providers)
        predict = session.predict
        kind = "bundle (untuned)"
    else:
        raise FtedgeError(f"{target} is neither a run directory (model.onnx + model.json) nor a bundle")
    ds = load_dataset(data, io)
    outs = [predict({k: v[i:i + batch_size] for k, v in ds.inputs.items()}) for i in range(0, len(ds), batch_size)]
    result: dict[str, Any] = {"model": str(target), "kind": kind, "samples": len(ds), "skipped": ds.skipped,
                              "notes": ds.notes}
    result.update(M.task_metrics(io.loss, np.concatenate(outs), ds.targets, ds.label_names))
    run_result = target / "result.json"
    if kind == "personalized model" and run_result.is_file():
        try:
            search = json.loads(run_result.read_text()).get("search")
        except (OSError, ValueError):
            search = None
        if isinstance(search, dict) and "chosen" in search and "estimate" in search:
            # how the model was tuned (train --auto) and what cross-validation expected of it
            result["tuning"] = {"chosen": search["chosen"], "estimate": {
                k: search["estimate"].get(k) for k in ("gain", "lo", "hi", "level", "tuned", "untuned", "n", "folds")},
                "trials": len(search.get("trials") or []), "stopped": search.get("stopped")}
    return result
