"""Audio frontends that live *inside* the exported graph, so the device feeds raw samples.

``LogMel`` turns a waveform [batch, samples] into log-mel features [batch, frames, n_mels] with
ops the TorchScript exporter and ONNX Runtime handle everywhere (Pad, Conv, Mul, MatMul, Log): the
STFT is a strided Conv1d over a windowed DFT basis, the power spectrum goes through a Slaney-style
mel filterbank (the same as librosa's default), then ``log(mel + eps)``. It matches
``librosa.feature.melspectrogram(center=True, pad_mode="constant", power=2)`` (tests/export/test_frontend.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale (linear below 1 kHz, logarithmic above), as librosa with htk=False."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular filters with Slaney area normalisation."""
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


class LogMel(nn.Module):
    """Waveform [batch, samples] → log-mel [batch, frames, n_mels]; frames = 1 + samples // hop."""

    def __init__(self, sample_rate: int = 16000, n_fft: int = 512, win_length: int = 400, hop_length: int = 160,
                 n_mels: int = 40, fmin: float = 20.0, fmax: float = 7600.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.sample_rate, self.n_fft, self.win_length, self.hop_length = sample_rate, n_fft, win_length, hop_length
        self.n_mels, self.fmin, self.fmax, self.eps = n_mels, fmin, fmax, eps
        window = np.zeros(n_fft)
        left = (n_fft - win_length) // 2
        n = np.arange(win_length)
        window[left:left + win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * n / win_length)  # periodic Hann
        bins = n_fft // 2 + 1
        t = np.arange(n_fft)
        angle = 2 * np.pi * np.outer(np.arange(bins), t) / n_fft
        basis = np.concatenate([np.cos(angle), -np.sin(angle)]) * window  # [2*bins, n_fft]
        self.register_buffer("basis", torch.from_numpy(basis.astype(np.float32)).unsqueeze(1), persistent=False)
        fb = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
        self.register_buffer("mel", torch.from_numpy(fb.T.copy()), persistent=False)  # [bins, n_mels]
        self.bins = bins

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        pad = self.n_fft // 2
        x = nn.functional.pad(waveform.unsqueeze(1), (pad, pad))                     # [B, 1, N + n_fft]
        spec = nn.functional.conv1d(x, self.basis, stride=self.hop_length)           # [B, 2*bins, frames]
        power = spec[:, : self.bins] ** 2 + spec[:, self.bins:] ** 2                 # [B, bins, frames]
        mel = torch.matmul(power.transpose(1, 2), self.mel)                          # [B, frames, n_mels]
        return torch.log(mel + self.eps)

    def frames(self, samples: int) -> int:
        return 1 + samples // self.hop_length

    def config(self) -> dict[str, Any]:
        """Recorded in the bundle manifest's ``preprocessing.frontend``."""
        return {"type": "log-mel", "sample_rate": self.sample_rate, "n_fft": self.n_fft, "win_length": self.win_length,
                "hop_length": self.hop_length, "n_mels": self.n_mels, "fmin": self.fmin, "fmax": self.fmax,
                "eps": self.eps, "window": "hann (periodic)", "mel_scale": "slaney", "center": "zero-pad n_fft/2",
                "power": 2.0, "log": "natural"}
