"""The shipped keyword-spotting base model: raw 16 kHz waveform in, 10 command words out.

LogMel frontend (in the graph) → four strided 3x3 conv blocks with BatchNorm → global pooling → head
(~123k parameters).
Weights: ``kws_base.pt`` beside this file, made by ``pretrain.py`` on SYNTHETIC speech (espeak-ng) of
six source accents only (en-us, en-gb, en-gb-x-rp, en-us-nyc, en-029, en-gb-x-gbclan).

    ftedge export examples/kws/model.py:build_model -o bundles/kws \\
        --input waveform:float32:1,16000 --head classifier
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ftedge.export.frontends import LogMel

WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
SAMPLE_RATE = 16000
CLIP_SAMPLES = 16000
WEIGHTS = Path(__file__).with_name("kws_base.pt")


def _block(cin: int, cout: int) -> nn.Sequential:
    # Plain 3x3 convolutions: PyTorch's CPU depthwise-conv backward is ~10x slower per MAC, which
    # made pretraining impractically slow on 2 cores; ORT inference would not care.
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class KeywordSpotter(nn.Module):
    def __init__(self, n_words: int = len(WORDS)) -> None:
        super().__init__()
        self.frontend = LogMel(sample_rate=SAMPLE_RATE, n_mels=40)
        self.features = nn.Sequential(
            nn.BatchNorm2d(1),
            _block(1, 32), _block(32, 64), _block(64, 80), _block(80, 80),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(80, n_words))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.frontend(waveform).unsqueeze(1)))


def build_model(weights: str | Path = WEIGHTS) -> nn.Module:
    """The pretrained base model (eval mode); raises if the weights were not shipped or made."""
    model = KeywordSpotter()
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `python examples/kws/pretrain.py` to make it")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def build_untrained() -> nn.Module:
    torch.manual_seed(0)
    return KeywordSpotter().eval()
