"""The model: a keyword-spotting DS-CNN (``KWSNet``) with random weights and calibrated BatchNorm statistics.

Also loaded by its path by ``ftedge export bench/train_speed/model.py:export_model`` (weights via the environment),
so it imports nothing from the bench; torch is imported lazily."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

HEAD = "classifier"
SPEC = f"{Path(__file__).resolve()}:export_model"   # the export's MODEL argument


@functools.lru_cache(maxsize=None)
def _model_class():  # noqa: ANN202
    import torch.nn as nn

    class DSBlock(nn.Module):
        """Depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU."""

        def __init__(self, ch: int, stride: int) -> None:
            super().__init__()
            self.dw = nn.Conv2d(ch, ch, 3, stride=stride, padding=1, groups=ch, bias=False)
            self.bn1 = nn.BatchNorm2d(ch)
            self.pw = nn.Conv2d(ch, ch, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(ch)
            self.act = nn.ReLU()

        def forward(self, x):  # noqa: ANN001, ANN201
            return self.act(self.bn2(self.pw(self.act(self.bn1(self.dw(x))))))

    class KWSNet(nn.Module):
        """DS-CNN keyword spotter on log-mel [batch, 101, 40]: conv stem (10x4, stride 2), 5 depthwise-
        separable blocks (128 ch, the first with stride 2), global average pooling, BatchNorm1d on the
        pooled embedding, head = Dropout + Linear."""

        def __init__(self, classes: int, ch: int = 128, blocks: int = 5) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, ch, (10, 4), stride=(2, 2), padding=(5, 1), bias=False),
                                      nn.BatchNorm2d(ch), nn.ReLU())
            self.blocks = nn.Sequential(*[DSBlock(ch, 2 if i == 0 else 1) for i in range(blocks)])
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.norm = nn.BatchNorm1d(ch)
            self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(ch, classes))

        def embed(self, x):  # noqa: ANN001, ANN201
            return self.norm(self.pool(self.blocks(self.stem(x.unsqueeze(1)))).flatten(1))

        def forward(self, x):  # noqa: ANN001, ANN201
            return self.classifier(self.embed(x))

    return KWSNet


def load_model(weights: str | Path, classes: int):  # noqa: ANN201
    """KWSNet with the state dict in ``weights``, in eval mode."""
    import torch

    model = _model_class()(classes)
    model.load_state_dict(torch.load(str(weights), weights_only=True))
    return model.eval()


def export_model():  # noqa: ANN201
    """Zero-argument factory for `ftedge export bench/train_speed/model.py:export_model` (weights via env)."""
    return load_model(os.environ["FTEDGE_BENCH_WEIGHTS"], int(os.environ["FTEDGE_BENCH_CLASSES"]))


def make_weights(path: Path, classes: int, seed: int, calib: np.ndarray) -> int:
    """Random init (seed), BatchNorm statistics calibrated on ``calib``, head re-initialised exactly as
    `ftedge export --labels` does (seed 0), saved as a state dict. Returns the parameter count."""
    import torch
    import torch.nn as nn
    from ftedge.export.tasks.classify.head import replace_head

    torch.manual_seed(seed)
    model = _model_class()(classes)
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for i in range(0, len(calib), 64):
            model(torch.from_numpy(calib[i:i + 64]))
    for m in bns:
        m.momentum = 0.1
    model.eval()
    replace_head(model, HEAD, classes, 0)
    torch.save(model.state_dict(), str(path))
    return sum(p.numel() for p in model.parameters())
