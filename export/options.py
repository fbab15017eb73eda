"""What `ftedge export` was asked to do, as one dataclass (no torch import)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftedge.bundle.manifest import TensorSpec


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
    quantize_backbone: str | None = None
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
    task: str | None = None                  # None: classification/regression from --loss; "causal-lm": LoRA LLM
    lora_rank: int = 8                       # causal-lm: LoRA rank of every adapted projection
    lora_alpha: float | None = None          # causal-lm: LoRA alpha (scale alpha / rank; default 2 * rank)
    lora_targets: str | None = None          # causal-lm: regex over layers.{i}.{q,k,v,o,gate,up,down}_proj
    trainable_blocks: int = 4                # causal-lm: top blocks that get adapters (the rest is the backbone)
    quantize_decoder: str | None = None      # causal-lm: "int4"/"int8" decoder weights (default fp32)
