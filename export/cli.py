"""`ftedge export` argument parsing (imports torch only when the command runs)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ftedge.bundle.manifest import DTYPES, ENGINE_ROLES, LOSSES, OPTIMIZERS
from ftedge.bundle.tasks import DEFAULT_TASK, Task, all_tasks, choices, lookup
from ftedge.export.tasks import export_task, packages

EXAMPLE = """examples:
  ftedge export my_models/kws.py:build_model -o bundles/kws \\
      --input x:float32:1,101,40 --head classifier --labels yes,no,up,down
  ftedge export mypkg.models:Encoder -o bundles/enc \\
      --input input_ids:int64:1,64:0-30522 --input attention_mask:int64:1,64:1-2 \\
      --output last_hidden_state --trainable 'layers\\.5\\.' --loss mse

MODEL is package.module:attr or path/to/file.py:attr, where attr is an nn.Module
or a zero-argument callable returning one. Input dtypes: """ + ", ".join(DTYPES) + """.
The bundle is checked against PyTorch (two batch sizes) before it is written.

causal LMs (LoRA on the top blocks, trained on cached hidden states):
  ftedge export ftedge.export.llm_sources:smollm2 -o bundles/faq-llm --task causal-lm \\
      --lora 8 --trainable-blocks 4 --lr 1e-3

object detection (a new anchor-free head on a frozen backbone's feature maps, decoding + NMS in the graph):
  ftedge export ftedge.export.detect_sources:mobilenet_v2 -o bundles/shop --task detect \\
      --labels sneaker,bag,ankle_boot --image-size 320,320 --lr 2e-3"""


def _task_help(t: Task) -> str:
    also = f" (also {', '.join(t.aliases)})" if t.aliases else ""
    return f"{t.name}{also}: {t.summary}"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="turn a PyTorch model into a training bundle (host side, needs torch)",
        description="Freeze a pretrained PyTorch model's backbone, optionally replace its head, and write a "
        "versioned, hashed training bundle of ONNX Runtime training artifacts, verified against PyTorch.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="package.module:attr or path/to/file.py:attr")
    p.add_argument("-o", dest="bundle", metavar="BUNDLE", required=True, type=Path, help="bundle directory to write")
    p.add_argument("--input", dest="inputs", metavar="NAME:DTYPE:D1,D2,...[:LOW-HIGH]", action="append", default=[],
                   help="a model input, batch dimension first (exported as dynamic); repeat for several inputs, in "
                   "forward() order. LOW-HIGH bounds random integer test values, e.g. token ids 0-30522")
    p.add_argument("--output", dest="output_name", metavar="NAME",
                   help="which output to train on when the model returns a dict/ModelOutput (key) or tuple (index); "
                   "default: 'logits' or the first")
    p.add_argument("--head", metavar="MODULE", help="the head module (dotted name); default: the last nn.Linear")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--num-classes", type=int, metavar="N", help="replace the head's last Linear with a fresh N-way one")
    g.add_argument("--labels", metavar="a,b,c", help="class names; replaces the head with a fresh len(labels)-way one")
    g.add_argument("--labels-file", type=Path, metavar="F", help="class names, one per line (like --labels)")
    p.add_argument("--keep-head", action="store_true",
                   help="with --labels/--labels-file: keep the pretrained head and just name its classes "
                   "(its output size must equal the number of labels)")
    p.add_argument("--trainable", metavar="REGEX", action="append", default=[],
                   help="train the parameters whose names match (re.search); repeatable. Default: the head's")
    p.add_argument("--loss", choices=LOSSES, default="cross-entropy", help="training loss (default: cross-entropy)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="optimizer (default: adamw)")
    p.add_argument("--lr", type=float, default=1e-3, help="default learning rate recorded in the bundle (1e-3)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17; use 16 if a trainable block fails)")
    p.add_argument("--no-split", dest="split", action="store_false",
                   help="write one merged full-graph training bundle instead of backbone + head")
    p.add_argument("--quantize-backbone", choices=["int8", "int8-conv", "int8-qdq"],
                   help="also write an int8 backbone (train with --backbone int8): int8 dynamically quantizes "
                   "MatMul weights (transformers: faster on CPU); int8-conv also Conv weights (smaller, but ORT's CPU "
                   "ConvInteger is usually slower than fp32); int8-qdq is static QDQ int8 (per-channel int8 weights, "
                   "calibrated uint8 activations), the form NPU-class EPs (OpenVINO, QNN, VSI) run whole")
    p.add_argument("--calibration-data", type=Path, metavar="FILE.npz",
                   help="with --quantize-backbone int8-qdq: real samples to calibrate activation ranges on, one array "
                   "per --input name (as `ftedge train --data`; labels ignored; the first 64 rows). Without it the "
                   "export's random sample inputs are used: real samples give better ranges")
    p.add_argument("--sign-key", metavar="KEY", type=Path,
                   help="sign the manifest (which holds every file's sha256) with this Ed25519 private key PEM "
                   "(`ftedge keygen`); devices accept it with the matching public key")
    t = p.add_argument_group("preprocessing recorded for the device (text and images)")
    t.add_argument("--tokenizer", type=Path, metavar="tokenizer.json",
                   help="text: a Hugging Face tokenizers file; copied into the bundle, used on the device")
    t.add_argument("--max-length", type=int, metavar="N", help="text: token length (must match --input input_ids)")
    t.add_argument("--image-size", metavar="H,W", help="images: the size the device resizes to (input 1,3,H,W)")
    t.add_argument("--mean", metavar="R,G,B", help="images: per-channel mean on 0..1 pixels (default ImageNet)")
    t.add_argument("--std", metavar="R,G,B", help="images: per-channel std (default ImageNet)")
    p.add_argument("--task", choices=choices(), metavar="TASK",
                   help="what the bundle is for: " + "; ".join(_task_help(t) for t in all_tasks())
                   + ". causal-lm: MODEL is a Llama-style Hugging Face LM (its tokenizer as `ftedge_tokenizer` or "
                   "--tokenizer DIR); detection: MODEL is a backbone returning feature maps (image → tuple), "
                   "letterboxed to --image-size (default 320,320) on the device. Default: classification, or "
                   "regression as --loss says")
    for et in packages():
        et.arguments(p)
    p.add_argument("--engine", choices=["auto", *ENGINE_ROLES, "all"], default="auto",
                   help="training engines the bundle carries: portable (standard-op step graphs for plain "
                   "onnxruntime, any platform), ort-training (onnxruntime-training 1.19.2 artifacts; needs that "
                   "package on this host), all; auto (default): portable, plus ort-training where this host has "
                   "onnxruntime-training and the trainable part is differentiable by it")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs diff vs PyTorch (fp32; default 1e-4)")
    p.add_argument("--skip-parity", action="store_true", help="do not check against PyTorch (a warning is logged)")
    p.add_argument("--name", help="bundle name recorded in the manifest (default: the folder name)")
    p.add_argument("--seed", type=int, default=0, help="seed for the new head's initialisation (default 0)")
    p.add_argument("--force", action="store_true", help="replace BUNDLE if it exists")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    row = lookup(args.task or DEFAULT_TASK)
    et = export_task(row)
    return _export_and_report(args, et.exporter(), et.options(args, row))


def _export_and_report(args: argparse.Namespace, export_fn, opts) -> int:  # noqa: ANN001
    """Run ``export_fn`` (progress on stderr unless --quiet/--json), then print the manifest or the summary."""
    say = (lambda _m: None) if (args.quiet or args.json) else (lambda m: print(f"… {m}", file=sys.stderr))
    manifest = export_fn(opts, progress=say, sign_key=args.sign_key)
    if args.json:
        print(json.dumps(manifest, indent=2))
    elif not args.quiet:
        from ftedge.bundle.summary import summary

        print(summary(args.bundle, manifest))
    return 0
