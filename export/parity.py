"""Check the exported graphs against PyTorch on random inputs of two batch sizes."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftedge.errors import ParityError
from ftedge.export.onnx_export import sample_inputs
from ftedge.export.wrapper import OutputSelector
from ftedge.bundle.manifest import TensorSpec
from ftedge.runtime.engines.ort_backend import InferenceModel

BATCH_SIZES = (2, 5)
CHUNK = 2  # the largest batch also runs its backbone in chunks of this many samples


def onnx_forward_inputs(feeds: dict[str, np.ndarray], head_inputs: list[TensorSpec],
                        backbone: InferenceModel | None) -> dict[str, np.ndarray]:
    values = dict(feeds)
    if backbone is not None:
        values.update(backbone.run(feeds))
    return {s.name: values[s.name] for s in head_inputs}


def onnx_forward(
    feeds: dict[str, np.ndarray],
    head_inputs: list[TensorSpec],
    head_infer: InferenceModel,
    backbone: InferenceModel | None,
    chunk: int = 0,
) -> np.ndarray:
    """Backbone (if split) then head; the device runs exactly this chain. ``chunk``: run the backbone on pieces of
    that many samples and the head on their concatenation (the embedding cache's path)."""
    if backbone is not None and chunk:  # as the device embeds: in pieces, concatenated on each batch axis
        n = len(next(iter(feeds.values())))
        parts = [onnx_forward_inputs({k: v[i:i + chunk] for k, v in feeds.items()}, head_inputs, backbone)
                 for i in range(0, n, chunk)]
        head_feeds = {s.name: np.concatenate([p[s.name] for p in parts], axis=s.batch_axis or 0) for s in head_inputs}
    else:
        head_feeds = onnx_forward_inputs(feeds, head_inputs, backbone)
    return next(iter(head_infer.run(head_feeds).values()))


def check_parity(
    wrapper: OutputSelector,
    inputs: list[TensorSpec],
    head_inputs: list[TensorSpec],
    heads: dict[str, Any],
    output_name: str,
    backbones: dict[str, Path],
    tolerance: float,
    seed: int = 7,
) -> dict:
    """Max abs diff per (engine, graph, batch size); raises ``ParityError`` listing every failure.

    ``heads`` maps an engine to its inference head: the portable engine's ``head.onnx`` path, or the
    ort-training artifacts (a dict of paths; their eval graph is exported for inference). ``backbones`` maps a
    label ("fp32", "int8") to a backbone graph; empty for the full layout. Quantized backbones are reported,
    judged against ``tolerance`` only for fp32. Keys: ``out[fp32,batch=2]`` (portable),
    ``out[ort-training/fp32,batch=2]``.
    """
    wrapper.eval()
    results: dict[str, float] = {}
    chunked: dict[str, float] = {}
    failures: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for engine, head in heads.items():
            if isinstance(head, dict):
                from ftedge.runtime.engines.ort_training_backend import TrainableModel

                path = Path(tmp) / f"{engine}_head.onnx"
                TrainableModel(head["training"], head["eval"], head["optimizer"], head["checkpoint"]).export_inference(
                    path, [output_name])
                head = path
            models[engine] = InferenceModel(head)
        chains = {k: InferenceModel(p) for k, p in backbones.items()} or {"fp32": None}
        for batch in BATCH_SIZES:
            tensors = sample_inputs(inputs, batch, seed=seed + batch)
            with torch.no_grad():
                ref = wrapper(*tensors).float().numpy()
            feeds = {s.name: t.numpy() for s, t in zip(inputs, tensors)}
            for (engine, head), (label, backbone) in ((h, c) for h in models.items() for c in chains.items()):
                got = onnx_forward(feeds, head_inputs, head, backbone).astype(np.float32)
                key = f"{output_name}[{'' if engine == 'portable' else engine + '/'}{label},batch={batch}]"
                if got.shape != ref.shape:
                    failures.append({"output": key, "error": f"shape {got.shape} vs PyTorch {ref.shape}"})
                    continue
                diff = float(np.max(np.abs(got - ref))) if ref.size else 0.0
                results[key] = diff
                if label == "fp32" and not diff <= tolerance:
                    failures.append({"output": key, "max_abs_diff": diff, "tolerance": tolerance})
                if backbone is not None and label == "fp32" and batch == max(BATCH_SIZES):
                    # Cached embeddings are computed in chunks: the head must see the same per-sample tensors.
                    ckey = f"{key[:-1]},chunks={CHUNK}]"
                    try:
                        got = onnx_forward(feeds, head_inputs, head, backbone, chunk=CHUNK).astype(np.float32)
                    except Exception as exc:  # e.g. a cached row index out of range: the case this check exists for
                        failures.append({"output": ckey, "error": f"the head fails on chunked embeddings: "
                                                                  f"{str(exc).strip().splitlines()[-1][:300]}"})
                        continue
                    diff = float(np.max(np.abs(got - ref))) if got.shape == ref.shape else float("inf")
                    chunked[ckey] = diff
                    if not diff <= tolerance:
                        failures.append({"output": ckey, "max_abs_diff": diff, "tolerance": tolerance})
    if failures:
        failed = {f["output"] for f in failures}
        lines = "; ".join(
            f"{f['output']}: " + (f["error"] if "error" in f else f"max abs diff {f['max_abs_diff']:.3g} > {f['tolerance']:.1g}")
            for f in failures
        )
        raise ParityError(
            f"exported graphs disagree with PyTorch on {len(failures)} output(s): {lines}. "
            + ("Only the chunked output fails: the backbone's output for a sample depends on the other samples of "
               "its batch, so cached embeddings would be wrong: export with --no-split. " if any(
                   ",chunks=" in f["output"] and f["output"].split(",chunks=")[0] + "]" not in failed
                   for f in failures) else "")
            + "Check for ops that behave differently in eval mode, raise --tolerance, or pass --skip-parity",
            failures,
        )
    return {"max_abs_diff": results, "chunked_max_abs_diff": chunked, "tolerance": tolerance,
            "batch_sizes": list(BATCH_SIZES), "chunk": CHUNK, "reference": "pytorch eval mode"}
