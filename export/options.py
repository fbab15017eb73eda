"""What `ftedge export` was asked to do, as one dataclass, and the command-line flags every task shares turned
into it (no torch import)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftedge.bundle.manifest import TensorSpec, parse_input_spec
from ftedge.errors import UsageError


@dataclass
class ExportOptions:
    model: Any  # "pkg.module:attr", "path/file.py:attr", or an nn.Module
    output: Path
    inputs: list[TensorSpec]
    output_name: str | None = None
    head: str | None = None
    num_classes: int | None = None
    labels: list[str] | None = None
    keep_head: bool = False  # with labels: name the existing head's classes instead of replacing it
    trainable: list[str] = field(default_factory=list)
    loss: str = "cross-entropy"
    optimizer: str = "adamw"
    lr: float = 1e-3
    opset: int = 17
    split: bool = True
    quantize_backbone: str | None = None     # int8 | int8-conv (dynamic) | int8-qdq (static, calibrated)
    calibration_data: Path | None = None     # int8-qdq: an .npz of real samples (default: random sample inputs)
    skip_parity: bool = False
    tolerance: float = 1e-4
    name: str | None = None
    seed: int = 0
    force: bool = False
    engine: str = "auto"  # auto | portable | ort-training | all
    preprocessing: dict[str, Any] = field(default_factory=dict)
    tokenizer: Path | None = None            # text: a tokenizers JSON copied into the bundle
    max_length: int | None = None            # text: must equal the token inputs' length
    image_size: tuple[int, int] | None = None  # images: H, W the device resizes to
    mean: list[float] | None = None          # images: per-channel mean (RGB, on 0..1 pixels)
    std: list[float] | None = None
    task: str | None = None                  # the task-table row (None: classification/regression from --loss)
    lora_rank: int = 8                       # causal-lm: LoRA rank of every adapted projection
    lora_alpha: float | None = None          # causal-lm: LoRA alpha (scale alpha / rank; default 2 * rank)
    lora_targets: str | None = None          # causal-lm: regex over layers.{i}.{q,k,v,o,gate,up,down}_proj
    trainable_blocks: int = 4                # causal-lm: top blocks that get adapters (the rest is the backbone)
    quantize_decoder: str | None = None      # causal-lm: "int4"/"int8" decoder weights (default fp32)


def from_args(args: argparse.Namespace, images_need_size: bool = True) -> ExportOptions:
    """The shared flags (model, inputs, head, labels, loss, preprocessing …) as options; UsageError when malformed.
    ``images_need_size``: --mean/--std need --image-size (a detector has a default size)."""
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
    if (args.mean or args.std) and size is None and images_need_size:
        raise UsageError("--mean/--std describe images: give --image-size H,W too")
    if args.calibration_data is not None and args.quantize_backbone != "int8-qdq":
        raise UsageError("--calibration-data calibrates the static int8 backbone: give --quantize-backbone int8-qdq too")
    if args.max_length is not None and args.tokenizer is None:
        raise UsageError("--max-length is the tokenizer's padded length: give --tokenizer too")
    return ExportOptions(
        model=args.model, output=args.bundle, inputs=[parse_input_spec(s) for s in args.inputs],
        output_name=args.output_name, head=args.head, num_classes=args.num_classes, labels=labels,
        keep_head=args.keep_head,
        trainable=args.trainable, loss=args.loss, optimizer=args.optimizer, lr=args.lr, opset=args.opset,
        split=args.split, quantize_backbone=args.quantize_backbone,
        calibration_data=args.calibration_data, skip_parity=args.skip_parity,
        tolerance=args.tolerance, name=args.name, seed=args.seed, force=args.force, engine=args.engine,
        tokenizer=args.tokenizer, max_length=args.max_length,
        image_size=None if size is None else (int(size[0]), int(size[1])),
        mean=floats("--mean", args.mean, 3), std=floats("--std", args.std, 3),
    )
