"""Causal-LM export: a Llama-style decoder with LoRA on its top blocks, cached hidden states below
(``llama.py`` the decoder as plain functions, ``graphs.py`` the ONNX graphs, ``exporter.py`` manifest and parity
against transformers, ``sources.py`` models shipped in packages)."""

from __future__ import annotations

import argparse
from typing import Any

from ftedge.bundle.tasks import Task
from ftedge.errors import UsageError
from ftedge.export.options import ExportOptions
from ftedge.export.tasks import ExportTask


def _arguments(p: argparse.ArgumentParser) -> None:
    c = p.add_argument_group("causal language models (--task causal-lm)")
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


def _options(args: argparse.Namespace, row: Task) -> ExportOptions:
    if args.inputs or args.labels or args.labels_file or args.num_classes or args.head or args.trainable:
        raise UsageError("--task causal-lm takes no --input/--labels/--num-classes/--head/--trainable: the inputs are "
                         "token ids and what trains is chosen by --lora-targets and --trainable-blocks")
    if args.engine not in ("auto", "portable"):
        raise UsageError("--task causal-lm writes the portable engine only (onnxruntime-training is deprecated)")
    if args.quantize_backbone or args.calibration_data:
        raise UsageError("--quantize-backbone/--calibration-data are not supported with --task causal-lm yet")
    return ExportOptions(model=args.model, output=args.bundle, inputs=[], lr=args.lr, name=args.name, seed=args.seed,
                         force=args.force, skip_parity=args.skip_parity, tolerance=args.tolerance,
                         tokenizer=args.tokenizer, max_length=args.max_length, task=row.name,
                         lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, lora_targets=args.lora_targets,
                         trainable_blocks=args.trainable_blocks, quantize_decoder=args.quantize_decoder)


def _exporter() -> Any:
    from ftedge.export.tasks.lm.exporter import export_causal_lm

    return export_causal_lm


TASK = ExportTask(package="lm", options=_options, exporter=_exporter, arguments=_arguments)
