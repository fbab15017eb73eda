"""Export time, bundle size and training-step time: split (cached head) vs merged graph vs PyTorch.

    .venv/bin/python -m bench.export_bench [--json] [--steps 20] [--quick]

For each model: export the split and the --no-split bundle (wall time, bytes on disk); then time one
training step at a fixed batch (median of --steps after warm-up) three ways, in the same run:
  torch   PyTorch eager, frozen backbone (requires_grad only on the trainable parameters), AdamW
  full    ORT merged training graph on raw inputs (what a device would run without the split)
  head    ORT head training graph on cached backbone outputs (the split bundle's hot loop)
plus `backbone`, one ORT inference pass of the frozen backbone over the batch (paid once per sample
when embeddings are cached). All inputs are random (synthetic); no accuracy is measured here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench._common import ROOT, md_table, median_ms
from ftedge.bundle.manifest import parse_input_spec
from ftedge.export import ExportOptions, export_bundle
from ftedge.export.graph_split import random_feeds
from ftedge.export.model_loader import load_model
from ftedge.export.onnx_export import TORCH_DTYPES
from ftedge.export.tasks.classify.head import set_modes
from ftedge.runtime import load_bundle
from ftedge.runtime.engines.session import BundleSession
from tests.helpers.common import ZOO

MINILM = ROOT / "examples" / "minilm_classifier.py"
CASES = [
    # name, model spec, inputs, options, batch
    ("cnn-kws (BN, depthwise)", f"{ZOO}:cnn", ["x:float32:1,101,40"], {"head": "classifier", "labels": list("abcd")}, 32),
    ("gru", f"{ZOO}:gru", ["x:float32:1,12,8"], {}, 32),
    ("transformer, last block", f"{ZOO}:transformer", ["tokens:int64:1,10:0-50"],
     {"trainable": [r"encoder\.layers\.1\.", "^head"]}, 32),
    ("mlp", f"{ZOO}:mlp", ["x:float32:1,20"], {}, 32),
    ("MiniLM-L6 (22.7M), head", f"{MINILM}:build_model",
     ["input_ids:int64:1,64:0-30522", "attention_mask:int64:1,64:1-2"], {"labels": ["neg", "pos"]}, 16),
    ("MiniLM-L6 (22.7M), last block", f"{MINILM}:build_model",
     ["input_ids:int64:1,64:0-30522", "attention_mask:int64:1,64:1-2"],
     {"labels": ["neg", "pos"], "trainable": [r"encoder\.layer\.5\.", "^classifier"]}, 16),
]


COLUMNS = ("model", "params (trainable)", "export s split / full", "bundle MiB split / full", "step ms torch",
           "step ms ORT full", "step ms ORT head (cached)", "backbone ms/batch", "torch ÷ head", "full ÷ head")


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_case(name, spec, inputs, extra, batch, steps, tmp: Path) -> dict:
    specs = [parse_input_spec(s) for s in inputs]
    row: dict = {"model": name, "batch": batch}
    for layout in ("split", "full"):
        out = tmp / f"{abs(hash(name))}-{layout}"
        t = time.perf_counter()
        export_bundle(ExportOptions(model=spec, output=out, inputs=specs, split=layout == "split", force=True, **extra))
        row[f"export_s_{layout}"] = round(time.perf_counter() - t, 2)
        row[f"bundle_bytes_{layout}"] = _dir_bytes(out)
        row[f"bundle_{layout}"] = out

    rng = np.random.default_rng(0)
    split = BundleSession(load_bundle(row["bundle_split"]))
    full = BundleSession(load_bundle(row["bundle_full"]))
    feeds = random_feeds(split.bundle.inputs, batch)
    y = rng.integers(0, len(split.bundle.labels), batch)
    cache = split.embed(feeds)
    row["ms_backbone"] = round(median_ms(lambda: split.embed(feeds), steps), 3)
    row["ms_head"] = round(median_ms(lambda: split.train_step(cache, y), steps), 3)
    row["ms_full"] = round(median_ms(lambda: full.train_step(feeds, y), steps), 3)

    model = load_model(spec)
    manifest = split.bundle.manifest
    if extra.get("labels"):
        from ftedge.export.tasks.classify.head import find_head, replace_head

        head_name, _ = find_head(model, extra.get("head"))
        replace_head(model, head_name, len(extra["labels"]), 0)
    set_modes(model, manifest["trainable"], manifest.get("head"))
    params = [p for n, p in model.named_parameters() if n in set(manifest["trainable"])]
    opt = torch.optim.AdamW(params, lr=1e-3)
    tx = [torch.from_numpy(feeds[s.name]).to(TORCH_DTYPES[s.dtype]) for s in specs]
    ty = torch.from_numpy(y)

    def torch_step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(*tx), ty).backward()
        opt.step()

    row["ms_torch"] = round(median_ms(torch_step, steps), 3)
    row["trainable_params"] = manifest["trainable_parameter_count"]
    row["params"] = manifest["parameter_count"]
    for k in ("bundle_split", "bundle_full"):
        del row[k]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.export_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="skip the MiniLM cases")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            if args.quick and "MiniLM" in case[0]:
                continue
            rows.append(run_case(*case, args.steps, Path(tmp)))
            print(f"done: {case[0]}", file=sys.stderr)
    print("\n".join(md_table(COLUMNS, [
        (r["model"], f"{r['params']:,} ({r['trainable_params']:,})", f"{r['export_s_split']} / {r['export_s_full']}",
         f"{r['bundle_bytes_split'] / 2**20:.2f} / {r['bundle_bytes_full'] / 2**20:.2f}", f"{r['ms_torch']:.2f}",
         f"{r['ms_full']:.2f}", f"{r['ms_head']:.3f}", f"{r['ms_backbone']:.2f}", f"{r['ms_torch'] / r['ms_head']:.0f}×",
         f"{r['ms_full'] / r['ms_head']:.0f}×") for r in rows])))
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
