"""The in-graph LogMel frontend matches librosa, exports through ONNX, and is recorded in the manifest."""

from __future__ import annotations

import numpy as np
import torch
from ftedge.export.frontends import LogMel

from tests.helpers.common import export
from tests.helpers.services import require_module

librosa = require_module("librosa", "librosa is the test-only reference ([dev] extra)")

# Stated tolerance: float32 STFT-by-convolution vs librosa's float64 FFT agree to 1e-4 absolute in
# log-mel (measured: 4.3e-6 on these signals, which carry noise in every bin).
ATOL = 1e-4


def _reference(wave: np.ndarray, lm: LogMel) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=wave.astype(np.float64), sr=lm.sample_rate, n_fft=lm.n_fft, hop_length=lm.hop_length,
        win_length=lm.win_length, window="hann", center=True, pad_mode="constant", power=2.0,
        n_mels=lm.n_mels, fmin=lm.fmin, fmax=lm.fmax, htk=False, norm="slaney")
    return np.log(mel + lm.eps).T  # [frames, n_mels]


def _signal(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(16000) / 16000
    chirp = np.sin(2 * np.pi * (200 + 1500 * t) * t) * np.exp(-((t - 0.5) ** 2) / 0.05)
    return (0.5 * chirp + 0.05 * rng.standard_normal(16000)).astype(np.float32)


def test_logmel_matches_librosa():
    lm = LogMel()
    filterbank = librosa.filters.mel(sr=16000, n_fft=512, n_mels=40, fmin=20.0, fmax=7600.0)
    np.testing.assert_allclose(lm.mel.numpy().T, filterbank, atol=1e-6)
    for seed in range(3):
        wave = _signal(seed)
        ours = lm(torch.from_numpy(wave)[None])[0].numpy()
        ref = _reference(wave, lm)
        assert ours.shape == ref.shape == (101, 40)
        np.testing.assert_allclose(ours, ref, atol=ATOL)


class _Classifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frontend = LogMel()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(101 * 40, 16), torch.nn.ReLU())
        self.head = torch.nn.Linear(16, 3)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.frontend(waveform)))


def build() -> torch.nn.Module:
    torch.manual_seed(0)
    return _Classifier()


def test_waveform_model_exports_with_parity_and_records_frontend(tmp_path):
    manifest = export(f"{__file__}:build", tmp_path / "b", "--input", "waveform:float32:1,16000")
    # log of small energies amplifies float32 rounding: parity stays far inside the 1e-4 tolerance anyway
    assert max(manifest["parity"]["max_abs_diff"].values()) <= 1e-4
    pre = manifest["preprocessing"]
    assert pre["type"] == "audio" and pre["input"] == "waveform"
    assert pre["sample_rate"] == 16000 and pre["clip_samples"] == 16000
    assert pre["frontend"]["n_mels"] == 40 and pre["frontend"]["hop_length"] == 160
