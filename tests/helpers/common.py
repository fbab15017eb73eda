"""Plain helpers every room's tests share: the repository root, exporting through the real CLI, random targets,
a smoke trainer, JSON-lines files and the SYNTHETIC shop facts. No fixtures here (those live in tests/conftest.py).

Heavy imports (numpy, onnx, the exporter) happen inside the functions, so importing this module costs nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HELPERS = ROOT / "tests" / "helpers"
ZOO = HELPERS / "zoo.py"
ZOO_WIDE = HELPERS / "zoo_wide.py"
TINY_LLM = HELPERS / "tiny_llm.py"
DATA = ROOT / "tests" / "data"

FACTS = [  # SYNTHETIC facts of a fictional shop
    ("When do you open?", "At nine."),
    ("What is your phone number?", "Call 5550142."),
    ("Where is the shop?", "Quay Street 4."),
    ("Do you repair e-bikes?", "Yes, every day."),
]


def in_ci() -> bool:
    """True under CI (.ci/run sets CI=true): there a missing service fails its tests instead of skipping them."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def export(model: str, out: Path, *args: str) -> dict:
    """Run `ftedge export` in-process; returns the manifest (asserts success)."""
    from ftedge.cli import main

    rc = main(["export", model, "-o", str(out), "--quiet", *args])
    assert rc == 0, f"export of {model} failed with exit code {rc}"
    return json.loads((out / "manifest.json").read_text())


def random_feeds(inputs, batch: int, seed: int = 0) -> dict:  # noqa: ANN001
    """Random inputs for a bundle's declared inputs (the exporter's own generator)."""
    from ftedge.export.graph_split import random_feeds as feeds

    return feeds(inputs, batch, seed=seed)


def random_targets(bundle, batch: int, seed: int = 1):  # noqa: ANN001, ANN201
    import numpy as np

    rng = np.random.default_rng(seed)
    if bundle.loss == "cross-entropy":
        return rng.integers(0, len(bundle.labels), batch)
    if bundle.loss == "bce":
        return rng.integers(0, 2, bundle.output.concrete_shape(batch)).astype(np.float32)
    return rng.standard_normal(bundle.output.concrete_shape(batch)).astype(np.float32)


def smoke_train(bundle_path: Path, steps: int = 5, batch: int = 16) -> tuple[float, float]:
    """Eval loss on one fixed batch before and after ``steps`` training steps on it."""
    from ftedge.runtime import load_bundle
    from ftedge.runtime.engines.session import BundleSession

    bundle = load_bundle(bundle_path)
    session = BundleSession(bundle)
    head = session.embed(random_feeds(bundle.inputs, batch))
    y = random_targets(bundle, batch)
    before = session.eval_step(head, y)[0]
    for _ in range(steps):
        session.train_step(head, y)
    return before, session.eval_step(head, y)[0]


def nan_guards(model) -> int:  # noqa: ANN001
    """How many ``Not(Equal(x, x))`` pairs (the exporter's EP-portable IsNaN, export/ep_portable.py) ``model`` has."""
    self_equal = {n.output[0] for n in model.graph.node if n.op_type == "Equal" and n.input[0] == n.input[1]}
    return sum(1 for n in model.graph.node if n.op_type == "Not" and n.input[0] in self_equal)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def example_module(relpath: str):  # noqa: ANN201
    """Import a script of examples/ (e.g. ``"detect/make_shop.py"``) by its path, under its file stem."""
    import importlib.util
    import sys

    path = ROOT / "examples" / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module
