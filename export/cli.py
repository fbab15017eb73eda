"""`ftedge export` argument parsing (imports torch only when the command runs)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ftedge.errors import UsageError
from ftedge.bundle.manifest import DTYPES, LOSSES, OPTIMIZERS, parse_input_spec

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
    p.add_argument("--quantize-backbone", choices=["int8", "int8-conv"],
                   help="also write a dynamically quantized backbone (train with --backbone int8): int8 quantizes "
                   "MatMul weights (transformers: faster); int8-conv also Conv weights (smaller, but ORT's CPU "
                   "ConvInteger is usually slower than fp32)")
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
    c = p.add_argument_group("causal language models (--task causal-lm) and detectors (--task detect)")
    c.add_argument("--task", choices=["classification", "causal-lm", "detect"],
                   help="causal-lm: a Llama-style Hugging Face LM (its tokenizer as `ftedge_tokenizer` or --tokenizer "
                   "DIR) becomes a LoRA bundle; detect: MODEL is a backbone returning feature maps (image → tuple), "
                   "ftedge adds an anchor-free detection head for --labels (default --image-size 320,320, letterboxed "
                   "on the device); default: classification/regression as --loss says")
    c.add_argument("--lora", dest="lora_rank", type=int, default=8, metavar="RANK", help="LoRA rank (default 8)")
    c.add_argument("--lora-alpha", type=float, metavar="A", help="LoRA alpha (default 2 x rank)")
    c.add_argument("--lora-targets", metavar="REGEX",
                   help="projections that get adapters, re.search over layers.{i}.{q,k,v,o,gate,up,down}_proj of the "
                   "trainable blocks (default: all seven)")
    c.add_argument("--trainable-blocks", type=int, default=4, metavar="N",
                   help="top blocks that get adapters; the blocks below are the frozen, cached backbone (default 4)")
    c.add_argument("--quantize-decoder", choices=["int4", "int8"],
                   help="the generation decoder's base weights (projections and LM head; not the embedding or the "
                   "LoRA adapters): int4 or int8 (4- or 8-bit MatMulNBits weights in blocks of 32, int8 activations "
                   "per block: int8 ~1.5x the fp32 tokens/s on CPU at ~1/4 the size, int4 smaller still but further "
                   "from fp32); default fp32. Parity against transformers is then informational for the "
                   "decoder (max logit diff, greedy-token agreement with the fp32 graph)")
    p.add_argument("--engine", choices=["auto", "portable", "ort-training", "all"], default="auto",
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
    from ftedge.export.exporter import export_bundle
    from ftedge.export.options import ExportOptions

    if args.task == "causal-lm":
        return _run_causal_lm(args)

    labels = None
    if args.labels:
        labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    elif args.labels_file:
        try:
            labels = [ln.strip() for ln in args.labels_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except OSError as exc:
            raise UsageError(f"cannot read --labels-file {args.labels_file}: {exc}") from exc
    if labels is not None and (not labels or len(set(labels)) != len(labels)):
        raise UsageError("labels must be non-empty and unique")
    def floats(flag: str, text: str | None, n: int | None = None) -> list[float] | None:
        if text is None:
            return None
        try:
            vals = [float(v) for v in text.split(",")]
        except ValueError as exc:
            raise UsageError(f"{flag} {text!r}: give comma-separated numbers") from exc
        if n is not None and len(vals) != n:
            raise UsageError(f"{flag} {text!r}: give {n} comma-separated numbers")
        return vals

    size = floats("--image-size", args.image_size, 2)
    if size is not None and any(v != int(v) or v < 1 for v in size):
        raise UsageError(f"--image-size {args.image_size!r}: give two positive integers H,W")
    if (args.mean or args.std) and size is None and args.task != "detect":
        raise UsageError("--mean/--std describe images: give --image-size H,W too")
    if args.max_length is not None and args.tokenizer is None:
        raise UsageError("--max-length is the tokenizer's padded length: give --tokenizer too")
    opts = ExportOptions(
        model=args.model, output=args.bundle, inputs=[parse_input_spec(s) for s in args.inputs],
        output_name=args.output_name, head=args.head, num_classes=args.num_classes, labels=labels,
        keep_head=args.keep_head,
        trainable=args.trainable, loss=args.loss, optimizer=args.optimizer, lr=args.lr, opset=args.opset,
        split=args.split, quantize_backbone=args.quantize_backbone, skip_parity=args.skip_parity,
        tolerance=args.tolerance, name=args.name, seed=args.seed, force=args.force, engine=args.engine,
        tokenizer=args.tokenizer, max_length=args.max_length,
        image_size=None if size is None else (int(size[0]), int(size[1])),
        mean=floats("--mean", args.mean, 3), std=floats("--std", args.std, 3),
    )
    if args.task == "detect":
        from ftedge.export.detection import export_detector

        opts.task = "detect"
        return _export_and_report(args, export_detector, opts)
    return _export_and_report(args, export_bundle, opts)


def _export_and_report(args: argparse.Namespace, export_fn, opts) -> int:  # noqa: ANN001
    """Run ``export_fn`` (progress on stderr unless --quiet/--json), then print the manifest or the summary."""
    say = (lambda _m: None) if (args.quiet or args.json) else (lambda m: print(f"… {m}", file=sys.stderr))
    manifest = export_fn(opts, progress=say, sign_key=args.sign_key)
    if args.json:
        print(json.dumps(manifest, indent=2))
    elif not args.quiet:
        from ftedge.runtime.inspect import summary

        print(summary(args.bundle, manifest))
    return 0


def _run_causal_lm(args: argparse.Namespace) -> int:
    from ftedge.export.causal_lm import export_causal_lm
    from ftedge.export.options import ExportOptions

    if args.inputs or args.labels or args.labels_file or args.num_classes or args.head or args.trainable:
        raise UsageError("--task causal-lm takes no --input/--labels/--num-classes/--head/--trainable: the inputs are "
                         "token ids and what trains is chosen by --lora-targets and --trainable-blocks")
    if args.engine not in ("auto", "portable"):
        raise UsageError("--task causal-lm writes the portable engine only (onnxruntime-training is deprecated)")
    if args.quantize_backbone:
        raise UsageError("--quantize-backbone is not supported with --task causal-lm yet")
    opts = ExportOptions(model=args.model, output=args.bundle, inputs=[], lr=args.lr, name=args.name, seed=args.seed,
                         force=args.force, skip_parity=args.skip_parity, tolerance=args.tolerance,
                         tokenizer=args.tokenizer, max_length=args.max_length, task="causal-lm",
                         lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, lora_targets=args.lora_targets,
                         trainable_blocks=args.trainable_blocks, quantize_decoder=args.quantize_decoder)
    return _export_and_report(args, export_causal_lm, opts)
