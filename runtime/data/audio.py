"""WAV files → fixed-length mono float32 clips for audio bundles (torch-free: struct + numpy + soxr).

The bundle manifest's ``preprocessing`` says what the model's waveform input expects::

    {"type": "audio", "sample_rate": 16000, "clip_samples": 16000, "input": "waveform", ...}

Every clip is downmixed to mono, resampled to ``sample_rate`` and cut or padded to ``clip_samples``
around its energy. Importing :mod:`ftedge.runtime.data.samples` registers :func:`decode_wav` for ``.wav``.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from ftedge.errors import DataError, WavError
from ftedge.runtime.data.samples import ModelIO, register_decoder

PCM, IEEE_FLOAT, EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
DEFAULT_SAMPLE_RATE = 16000
# A clip whose peak stays below 1e-3 of full scale (-60 dBFS) is silence: a dead mic or an empty take.
SILENCE_PEAK = 1e-3
# A sample at |x| >= 0.999 sits at full scale; more than 1 % of those means the recording clipped.
CLIP_LEVEL = 0.999
MAX_CLIPPED_FRACTION = 0.01
# Sample rates outside this range are a corrupt header, not audio: resampling 1 Hz to 16 kHz would allocate
# 16000 output samples per input sample (found by tests/fuzz/wav.py).
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 768000
# Float WAVs hold [-1, 1]; a sample beyond +-16 (+24 dBFS) is garbage, and near float32's limit it overflows
# the downmix to infinity (found by tests/fuzz/wav.py).
MAX_FLOAT_SAMPLE = 16.0
_CONVERT = "convert it with e.g. `ffmpeg -i IN -ac 1 -ar 16000 OUT.wav`"


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode a RIFF/WAVE file: float32 samples [frames, channels] in [-1, 1] and the sample rate.

    PCM 8/16/24/32-bit, IEEE float 32/64 and WAVE_FORMAT_EXTENSIBLE of those. Unknown chunks are skipped;
    a data chunk longer than the file (streaming writers such as ``espeak-ng --stdout``) is clamped.
    """
    data = Path(path).read_bytes()
    if not data:
        raise WavError("empty file (0 bytes); re-record or remove it")
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError(f"not a RIFF/WAVE file (starts with {data[:12]!r}); {_CONVERT}")
    fmt: bytes | None = None
    body: bytes | None = None
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        start = pos + 8
        if cid == b"fmt ":
            if size < 16 or start + 16 > len(data):
                raise WavError(f"truncated fmt chunk ({min(size, len(data) - start)} of 16 bytes); the file is cut off")
            fmt = data[start:min(start + size, len(data))]
        elif cid == b"data":
            body = data[start:min(start + size, len(data))]  # clamp bogus streaming sizes to what is there
        pos = start + size + (size & 1)  # chunks are word-aligned: odd sizes carry a pad byte
    if fmt is None:
        raise WavError(f"no fmt chunk: the header is missing or cut off; {_CONVERT}")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == EXTENSIBLE:
        if len(fmt) < 40:
            raise WavError(f"truncated WAVE_FORMAT_EXTENSIBLE fmt chunk ({len(fmt)} of 40 bytes); {_CONVERT}")
        tag = struct.unpack_from("<H", fmt, 24)[0]  # the SubFormat GUID starts with the format tag
    if channels == 0:
        raise WavError("fmt chunk declares 0 channels; the header is corrupt")
    if rate == 0:
        raise WavError("fmt chunk declares a sample rate of 0; the header is corrupt")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise WavError(f"fmt chunk declares a sample rate of {rate} Hz, outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz;"
                       f" the header is corrupt or the file is not a recording; {_CONVERT}")
    if not ((tag == PCM and bits in (8, 16, 24, 32)) or (tag == IEEE_FLOAT and bits in (32, 64))):
        kind = {PCM: "PCM", IEEE_FLOAT: "float"}.get(tag, f"format tag 0x{tag:04X}")
        raise WavError(f"unsupported WAV encoding: {kind} {bits}-bit (supported: PCM 8/16/24/32-bit, "
                       f"float 32/64-bit); {_CONVERT}")
    if body is None:
        raise WavError("no data chunk: the file holds no audio (cut off?); re-record or remove it")
    width = bits // 8
    frames = len(body) // (width * channels)  # a trailing partial frame is dropped
    if frames == 0:
        raise WavError("data chunk holds no audio frames (empty recording); re-record or remove it")
    raw = body[:frames * width * channels]
    if tag == IEEE_FLOAT:
        x = np.frombuffer(raw, "<f4" if bits == 32 else "<f8").astype(np.float32)
        if not np.isfinite(x).all():
            raise WavError("float samples contain NaN or infinity; re-export the recording")
        peak = float(np.max(np.abs(x)))
        if peak > MAX_FLOAT_SAMPLE:
            raise WavError(f"float samples reach {peak:.3g}, far outside [-1, 1]: the file is corrupt or not "
                           f"normalized; re-export the recording as PCM or normalized float")
    elif bits == 8:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif bits == 24:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)).astype(np.float32)
    else:
        x = (np.frombuffer(raw, f"<i{width}") / float(1 << (bits - 1))).astype(np.float32)
    return x.reshape(frames, channels), int(rate)


def resample(x: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Resample a mono float32 signal with soxr (imported here: data that needs no resampling works without it)."""
    if in_rate == out_rate:
        return x
    import soxr

    return np.asarray(soxr.resample(x, in_rate, out_rate, quality="HQ"), dtype=np.float32)


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    """Cut the ``n``-sample window with the most energy, centred on it, or zero-pad around the energy centroid."""
    if len(x) > n:
        c = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
        sums = c[n:] - c[:-n]
        i = int(np.argmax(sums))
        low = sums < sums[i] * 0.999  # the run of windows around i holding (almost) all of that energy
        after, before = np.flatnonzero(low[i:]), np.flatnonzero(low[:i][::-1])
        j = i + int(after[0]) - 1 if after.size else len(sums) - 1
        h = i - int(before[0]) if before.size else 0
        e = x[i:i + n].astype(np.float64) ** 2
        centroid = i + float((np.arange(n) * e).sum() / e.sum()) if e.sum() > 0 else (h + j + n) / 2
        start = int(np.clip(round(centroid - n / 2), h, j))  # of those, the one centred on the energy
        return x[start:start + n]
    if len(x) < n:
        e = x.astype(np.float64) ** 2
        centroid = float((np.arange(len(x)) * e).sum() / e.sum()) if e.sum() > 0 else len(x) / 2
        left = int(np.clip(round(n / 2 - centroid), 0, n - len(x)))
        return np.pad(x, (left, n - len(x) - left))
    return x


def prepare_clip(samples: np.ndarray, rate: int, target_rate: int, clip_samples: int) -> np.ndarray:
    """Mono, ``target_rate``, exactly ``clip_samples`` long (float32); raise WavError for clipped or silent clips."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim not in (1, 2) or x.size == 0:
        raise WavError(f"expected samples shaped [frames] or [frames, channels], got {list(x.shape)}")
    if not np.isfinite(x).all():
        raise WavError("samples contain NaN or infinity; re-export the recording")
    if not MIN_SAMPLE_RATE <= int(rate) <= MAX_SAMPLE_RATE:
        raise WavError(f"sample rate {int(rate)} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz; {_CONVERT}")
    clipped = float(np.mean(np.abs(x) >= CLIP_LEVEL))
    if clipped > MAX_CLIPPED_FRACTION:
        raise WavError(f"clipped recording: {clipped:.1%} of samples at full scale (limit "
                       f"{MAX_CLIPPED_FRACTION:.0%}); re-record at a lower gain or remove it")
    mono = x.mean(axis=1, dtype=np.float64).astype(np.float32) if x.ndim == 2 else x  # float64: no overflow
    clip = _fit(resample(np.ascontiguousarray(mono), int(rate), int(target_rate)), int(clip_samples))
    peak = float(np.max(np.abs(clip)))
    if peak < SILENCE_PEAK:
        level = f"{20 * np.log10(peak):.0f} dBFS" if peak > 0 else "digital silence"
        raise WavError(f"silent recording: peak {level} is below the -60 dBFS floor; re-record or remove it")
    return clip.astype(np.float32, copy=False)


def audio_params(io: ModelIO) -> tuple[str, int, int]:
    """(input name, sample rate, clip samples) of an audio bundle.

    Bundles without a ``preprocessing`` type whose only input is a float waveform ``[batch, N]`` are
    taken as 16 kHz audio of N samples; anything else was not exported for audio.
    """
    pp: dict[str, Any] = io.preprocessing or {}
    if pp.get("type") == "audio":
        name = pp.get("input") or io.inputs[0].name
        spec = next((s for s in io.inputs if s.name == name), None)
        if spec is None:
            raise ValueError(f"preprocessing names input {name!r}, the bundle has {[s.name for s in io.inputs]}; "
                             "re-export the bundle")
        n = pp.get("clip_samples") or (spec.sample_shape[-1] if spec.sample_shape else 0)
        return name, int(pp.get("sample_rate", DEFAULT_SAMPLE_RATE)), int(n)
    only = io.inputs[0] if len(io.inputs) == 1 else None
    if "type" not in pp and only is not None and only.dtype.startswith("float") and len(only.sample_shape) == 1:
        return only.name, DEFAULT_SAMPLE_RATE, only.sample_shape[0]
    shapes = ", ".join(f"{s.name} {s.dtype}{s.shape}" for s in io.inputs)
    raise ValueError(f"the bundle was not exported for audio (its inputs {shapes} are not a waveform); "
                     "export it with audio preprocessing or supply .npy/.npz features")


def decode_wav(path: Path, io: ModelIO) -> dict[str, np.ndarray]:
    """The ``.wav`` decoder of folder-per-label data: one prepared clip for the bundle's waveform input."""
    name, rate, n = audio_params(io)
    samples, file_rate = read_wav(path)
    return {name: prepare_clip(samples, file_rate, rate, n)}


register_decoder(".wav", decode_wav)
