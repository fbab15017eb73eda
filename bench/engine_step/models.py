"""The transformer cases' model (``tf-base``, ``tf-wide``): loaded by its path by
``ftedge export bench/engine_step/models.py:token_classifier`` (size via FTEDGE_STEP_TF), so it imports nothing
from the bench; torch is imported lazily."""

from __future__ import annotations

import json
import os
from pathlib import Path

CLASSES = 8
SPEC = f"{Path(__file__).resolve()}:token_classifier"   # the export's MODEL argument


def token_classifier():  # noqa: ANN201
    """Zero-argument factory for `ftedge export bench/engine_step/models.py:token_classifier` (size via env)."""
    import torch
    import torch.nn as nn

    d, heads, ff, seq, vocab, act = json.loads(os.environ["FTEDGE_STEP_TF"])

    class TokenClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, d)
            layer = nn.TransformerEncoderLayer(d, nhead=heads, dim_feedforward=ff, dropout=0.1, activation=act,
                                               batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
            self.head = nn.Linear(d, CLASSES)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(self.embed(tokens)).mean(dim=1))

    torch.manual_seed(0)
    return TokenClassifier()
