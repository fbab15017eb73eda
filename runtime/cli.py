"""Device-side commands: `ftedge train` and `ftedge evaluate` for every task, and each task's own verbs
(`generate`, `detect`). Torch-free; the flags of `train` are generated from the task packages' option
declarations, and the bundle's task picks the package that runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ftedge.errors import UsageError
from ftedge.runtime import tasks
from ftedge.runtime.engines.providers import add_providers_argument
from ftedge.runtime.training.options import add_arguments


def default_cache() -> Path:
    """The on-disk embedding cache: $FTEDGE_CACHE_DIR, else $XDG_CACHE_HOME/ftedge (~/.cache/ftedge)."""
    base = os.environ.get("FTEDGE_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "ftedge")
    return Path(base).expanduser() / "embeddings"


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="fine-tune a bundle on local data (torch-free)",
        description="Fine-tune BUNDLE on local data and write RUN_DIR: metrics.jsonl, result.json, checkpoint/ "
        "(resumable) and model.onnx (backbone + tuned head, plain onnxruntime). The untuned model is evaluated "
        "on the same validation split; result.json says whether the tuned one is promoted.",
        epilog="""examples:
  ftedge train bundles/kws --data /data/my_voice -o runs/2026-11-22 --epochs 20
  ftedge train bundles/kws --data /data/my_voice -o runs/2026-11-22 --epochs 20 --resume   # after a crash
  ftedge train bundles/kws --data samples.npz -o runs/r2 --patience 3 --max-seconds 120 --json
  ftedge train bundles/kws --data /data/my_voice -o runs/r3 --auto --max-seconds 60   # settings by cross-validation
  ftedge train bundles/kws --data /data/my_voice -o runs/r4 --providers OpenVINO --step-providers CPU
      # the (int8) backbone on an NPU-class EP, the head trains on the CPU; result.json says what ran where

data: a folder per label, PATH/<label>/<sample>: *.npy (any bundle), *.wav (audio bundles),
*.png/*.jpg/*.jpeg (image bundles), *.txt (text bundles); or a .npz with one array per input name
plus 'labels'; or a .csv with text,label columns (text bundles).
Unreadable or mismatched samples are skipped and listed in result.json.""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("bundle", metavar="BUNDLE")
    t.add_argument("--data", required=True, metavar="PATH", help="folder per label, a .npz, or a .csv (text); "
                   "detectors: a YOLO data.yaml / dataset folder or a COCO .json; causal LMs: a Q&A .jsonl")
    t.add_argument("-o", dest="run_dir", required=True, metavar="RUN_DIR", type=Path, help="run directory to write")
    t.add_argument("--cache-dir", type=Path, default=None,
                   help="embedding cache (default $FTEDGE_CACHE_DIR or ~/.cache/ftedge/embeddings)")
    t.add_argument("--no-cache", action="store_true", help="do not read or write the on-disk embedding cache")
    t.add_argument("--resume", action="store_true", help="continue RUN_DIR from its last complete epoch")
    t.add_argument("--json", action="store_true", help="print result.json to stdout")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    g = t.add_argument_group("train options (an option a bundle's task does not take is refused)")
    add_arguments(g, tasks.all_options(), tasks.option_defaults())
    t.set_defaults(handler=run_train)

    e = sub.add_parser(
        "evaluate",
        help="accuracy, macro-F1 and confusion matrix of a run's model.onnx or a bundle",
        description="Evaluate a personalized model (RUN_DIR with model.onnx) or an untuned BUNDLE on local data.",
        epilog="example:\n  ftedge evaluate runs/2026-11-22 --data /data/my_voice_test --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("target", metavar="MODEL_OR_BUNDLE", help="run directory or bundle directory")
    e.add_argument("--data", required=True, metavar="PATH")
    add_providers_argument(e)
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    for rows, dt in tasks.packages():
        dt.evaluate_arguments(e.add_argument_group(f"{' and '.join(r.name for r in rows)} bundles"))
    e.set_defaults(handler=run_evaluate)
    for _rows, dt in tasks.packages():
        dt.verbs(sub)


def train_options(args: argparse.Namespace, row: Any, dt: tasks.DeviceTask) -> dict[str, Any]:
    """The train options given on the command line; one the bundle's task does not take is a usage error. (The
    declared bounds limit what a train command from the fleet may ask; here the trainer's own checks apply.)"""
    every = tasks.all_options()
    given = {name: getattr(args, name) for name in every if hasattr(args, name)}
    wrong = [every[n].flag for n in given if n not in dt.options]
    if wrong:
        raise UsageError(f"{', '.join(wrong)} do(es) not apply to a {row.name} bundle; its options: "
                         f"{', '.join(o.flag for o in dt.options)}")
    return given


def run_train(args: argparse.Namespace) -> int:
    row, dt = tasks.for_bundle(args.bundle)
    options = train_options(args, row, dt)
    request = tasks.TrainRequest(
        bundle=args.bundle, data=args.data, run_dir=args.run_dir, options=options, resume=args.resume,
        cache_dir=None if args.no_cache else (args.cache_dir or default_cache()),
        progress=not (args.quiet or args.json))
    result = dt.train(request)
    if args.json:
        print(json.dumps(result))
    elif not args.quiet:
        for line in dt.report(result):
            print(line)
        if result.get("skipped"):
            print(f"skipped {len(result['skipped'])} sample(s); see {args.run_dir / 'result.json'}", file=sys.stderr)
    return 0 if result["status"] == "succeeded" else 1


def run_evaluate(args: argparse.Namespace) -> int:
    _row, dt = tasks.for_bundle(args.target)
    return dt.evaluate(args)
