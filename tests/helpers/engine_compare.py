"""Run in the legacy venv (onnxruntime-training + torch): export a zoo model with --engine all, then train the same
batches with both engines; prints JSON with each engine's loss per step and predictions.

    python -m tests.helpers.engine_compare OUT_DIR MODEL [export args...]   # from the repository root
"""

from __future__ import annotations

import json
import sys

import numpy as np

STEPS, N, BATCH = 50, 48, 16


def main() -> None:
    from ftedge.runtime import load_bundle
    from ftedge.runtime.engines.session import BundleSession

    from ftedge.cli import main as cli
    from tests.helpers.common import ZOO, random_feeds, random_targets

    out, model, *args = sys.argv[1:]
    rc = cli(["export", f"{ZOO}:{model}", "-o", out, "--quiet", "--engine", "all", *args])
    assert rc == 0, rc
    bundle = load_bundle(out)
    raw = random_feeds(bundle.inputs, N, seed=5)
    y = random_targets(bundle, N, seed=1)
    lr = float(bundle.manifest["optimizer"]["lr"]) * (10 if bundle.manifest["optimizer"]["name"] == "adamw" else 1)
    report = {"engines": list(bundle.manifest["engines"])}
    for engine in ("portable", "ort-training"):
        session = BundleSession(bundle, engine=engine)
        feeds = session.embed(raw)
        axes = {s.name: s.batch_axis or 0 for s in bundle.head_inputs}
        losses = []
        for step in range(STEPS):
            idx = np.arange((step * BATCH) % N, (step * BATCH) % N + BATCH)
            session.set_learning_rate(lr)
            batch = {k: np.take(v, idx, axis=axes[k]) for k, v in feeds.items()}
            losses.append(session.train_step(batch, y[idx])[0])
        report[engine] = {"losses": losses, "predictions": session.predict(raw).tolist(),
                          "params": {k: v.tolist() for k, v in session.model.parameters().items()}}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
