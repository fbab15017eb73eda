"""WAV decoding and clip preparation on the device, with SYNTHETIC waveforms written by an independent writer."""

from __future__ import annotations

import struct
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from ftedge.bundle.manifest import TensorSpec
from ftedge.runtime.data.audio import WavError, prepare_clip, read_wav, resample
from ftedge.runtime.data.samples import ModelIO, load_dataset

from ftedge.errors import DataError

RATE = 16000
GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"  # KSDATAFORMAT_SUBTYPE_* after the tag
# (tag, bits, tolerance) per encoding; tolerances are the format's quantisation step plus slack.
FORMATS = {"u8": (1, 8, 1e-2), "s16": (1, 16, 1e-4), "s24": (1, 24, 1e-6), "s32": (1, 32, 1e-6),
           "f32": (3, 32, 1e-7), "f64": (3, 64, 1e-7)}


def encode(x: np.ndarray, fmt: str) -> bytes:
    """Interleaved sample bytes of ``x`` [frames, channels] in [-1, 1]."""
    if fmt == "u8":
        return (np.round(x * 127) + 128).astype(np.uint8).tobytes()
    if fmt == "s16":
        return np.round(x * 32767).astype("<i2").tobytes()
    if fmt == "s24":
        v = np.round(x * (2**23 - 1)).astype("<i4").reshape(-1)
        return v.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    if fmt == "s32":
        return np.round(x.astype(np.float64) * (2**31 - 1)).astype("<i4").tobytes()
    return x.astype("<f4" if fmt == "f32" else "<f8").tobytes()


def chunk(cid: bytes, payload: bytes, size: int | None = None) -> bytes:
    pad = b"\x00" if len(payload) % 2 else b""
    return cid + struct.pack("<I", len(payload) if size is None else size) + payload + pad


def fmt_chunk(fmt: str, channels: int, rate: int, extensible: bool = False) -> bytes:
    tag, bits, _ = FORMATS[fmt]
    block = channels * bits // 8
    head = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, channels, rate, rate * block, block, bits)
    if extensible:
        mask = 0x4 if channels == 1 else 0x3
        head += struct.pack("<HHI", 22, bits, mask) + struct.pack("<H", tag) + GUID_TAIL
    return chunk(b"fmt ", head)


def wav_bytes(x: np.ndarray, rate: int = RATE, fmt: str = "s16", *, extensible: bool = False,
              extra: tuple[bytes, ...] | list[bytes] = (), data_size: int | None = None, tail: bytes = b"") -> bytes:
    """A WAV file: fmt, ``extra`` chunks, data (optionally with a bogus size and trailing bytes)."""
    x = x if x.ndim == 2 else x[:, None]
    body = fmt_chunk(fmt, x.shape[1], rate, extensible) + b"".join(extra)
    body += chunk(b"data", encode(x, fmt), data_size) + tail
    riff_size = 0x7FFFFFFF if data_size is not None else 4 + len(body)
    return b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + body


def write(path: Path, x: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wav_bytes(x, **kw))
    return path


def tone(freq: float, seconds: float, rate: int = RATE, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def stereo(n: int = 800) -> np.ndarray:
    t = np.arange(n) / RATE
    return np.stack([0.6 * np.sin(2 * np.pi * 440 * t), -0.3 * np.sin(2 * np.pi * 1300 * t + 0.5)], axis=1)


AUDIO_IO = ModelIO(inputs=[TensorSpec("waveform", "float32", ["batch", 16000])], labels=["yes", "no"],
                   loss="cross-entropy",
                   preprocessing={"type": "audio", "sample_rate": 16000, "clip_samples": 16000, "input": "waveform"})


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_encoding_decodes_to_the_same_waveform(tmp_path, fmt, channels):
    x = stereo()[:, :channels]
    samples, rate = read_wav(write(tmp_path / "a.wav", x, fmt=fmt))
    assert rate == RATE and samples.dtype == np.float32 and samples.shape == x.shape
    np.testing.assert_allclose(samples, x, atol=FORMATS[fmt][2])


@pytest.mark.parametrize("fmt", ["s16", "f32", "s24"])
def test_wave_format_extensible(tmp_path, fmt):
    x = stereo()
    samples, _ = read_wav(write(tmp_path / "a.wav", x, fmt=fmt, extensible=True))
    np.testing.assert_allclose(samples, x, atol=FORMATS[fmt][2])


def test_stdlib_wave_writer_cross_check(tmp_path):
    x = stereo()
    with wave.open(str(tmp_path / "a.wav"), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(22050)
        w.writeframes(np.round(x * 32767).astype("<i2").tobytes())
    samples, rate = read_wav(tmp_path / "a.wav")
    assert rate == 22050
    np.testing.assert_allclose(samples, x, atol=1e-4)


def test_stereo_downmix_is_the_channel_mean(tmp_path):
    x = stereo()
    samples, rate = read_wav(write(tmp_path / "a.wav", x, fmt="f32"))
    np.testing.assert_allclose(prepare_clip(samples, rate, RATE, len(x)), x.mean(axis=1), atol=1e-6)


def test_unknown_and_odd_sized_chunks_are_skipped(tmp_path):
    x = stereo()
    extra = [chunk(b"LIST", b"INFOISFT\x0e\x00\x00\x00Lavf58.76.100\x00"), chunk(b"junk", b"abc")]  # 'junk' is odd
    samples, _ = read_wav(write(tmp_path / "a.wav", x, extra=extra))
    np.testing.assert_allclose(samples, x, atol=1e-4)
    trailer = chunk(b"id3 ", b"TAG12")  # odd chunk after data too
    samples, _ = read_wav(write(tmp_path / "b.wav", x, extra=extra[:1], tail=trailer))
    np.testing.assert_allclose(samples, x, atol=1e-4)


def test_streaming_writer_bogus_data_size_is_clamped(tmp_path):
    """espeak-ng --stdout cannot seek back: it leaves huge sizes; a trailing partial frame is dropped."""
    x = stereo()
    samples, _ = read_wav(write(tmp_path / "a.wav", x, data_size=0x7FFFF000, tail=b"\x01\x02\x03"))
    assert samples.shape == x.shape
    np.testing.assert_allclose(samples, x, atol=1e-4)


@pytest.mark.parametrize("rate", [44100, 8000])
def test_resampling_keeps_frequency_and_length(rate):
    x = tone(1000, 1.0, rate)
    y = resample(x, rate, RATE)
    assert y.dtype == np.float32 and len(y) == RATE
    assert int(np.argmax(np.abs(np.fft.rfft(y)))) == 1000  # 1 s → 1 Hz bins
    clip = prepare_clip(x[:, None], rate, RATE, RATE)
    assert clip.shape == (RATE,) and int(np.argmax(np.abs(np.fft.rfft(clip)))) == 1000


def test_long_clip_is_trimmed_around_its_energy():
    x = np.zeros(2 * RATE, np.float32)
    burst = slice(int(1.45 * RATE), int(1.55 * RATE))
    x[burst] = tone(800, 0.1)
    clip = prepare_clip(x, RATE, RATE, RATE)
    loud = np.flatnonzero(np.abs(clip) > 1e-3)
    assert clip.shape == (RATE,) and clip.dtype == np.float32
    assert np.sum(clip**2) == pytest.approx(np.sum(x**2), rel=1e-6)  # the whole burst is inside
    assert abs((loud[0] + loud[-1]) / 2 - RATE / 2) < 0.05 * RATE  # and centred


def test_burst_off_centre_in_a_long_clip_stays_whole():
    x = np.zeros(3 * RATE, np.float32)
    x[200:1800] = tone(500, 0.1)
    clip = prepare_clip(x, RATE, RATE, RATE)
    assert np.sum(clip**2) == pytest.approx(np.sum(x**2), rel=1e-6)


def test_short_clip_is_padded_to_exact_length():
    x = tone(600, 0.3)
    clip = prepare_clip(x, RATE, RATE, RATE)
    loud = np.flatnonzero(clip != 0)
    assert clip.shape == (RATE,) and len(loud) > 0.29 * RATE
    assert abs((loud[0] + loud[-1]) / 2 - RATE / 2) < 0.02 * RATE


def riff(*chunks: bytes) -> bytes:
    body = b"".join(chunks)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"hello, this is a text file\n", "not a RIFF/WAVE file"),
    (wav_bytes(stereo())[:20], "truncated fmt chunk"),
    (wav_bytes(np.zeros((0, 1), np.float32)), "no audio frames"),
    (riff(chunk(b"data", b"\x00" * 100)), "no fmt chunk"),
    (riff(fmt_chunk("s16", 1, RATE)), "no data chunk"),
    (riff(chunk(b"fmt ", struct.pack("<HHIIHH", 2, 1, RATE, 0, 256, 4)), chunk(b"data", b"\x00" * 64)),
     "unsupported WAV encoding: format tag 0x0002"),
    (riff(chunk(b"fmt ", struct.pack("<HHIIHH", 1, 1, RATE, 0, 2, 12)), chunk(b"data", b"\x00" * 64)),
     "unsupported WAV encoding: PCM 12-bit"),
    (riff(chunk(b"fmt ", struct.pack("<HHIIHH", 3, 1, RATE, 0, 2, 16)), chunk(b"data", b"\x00" * 64)),
     "unsupported WAV encoding: float 16-bit"),
    (riff(chunk(b"fmt ", struct.pack("<HHIIHH", 1, 0, RATE, 0, 0, 16)), chunk(b"data", b"\x00" * 64)),
     "0 channels"),
    (riff(chunk(b"fmt ", struct.pack("<HHIIHH", 0xFFFE, 1, RATE, 0, 2, 16))), "truncated WAVE_FORMAT_EXTENSIBLE"),
])
def test_broken_files_are_rejected_with_a_reason(tmp_path, content, message):
    (tmp_path / "x.wav").write_bytes(content)
    with pytest.raises(WavError, match=message):
        read_wav(tmp_path / "x.wav")


@pytest.mark.parametrize("x, message", [
    (np.zeros(RATE, np.float32), "silent recording: peak digital silence"),
    (tone(300, 1.0, amp=5e-4), "silent recording: peak -66 dBFS"),
    (np.sign(tone(300, 1.0)).astype(np.float32), "clipped recording: 100.0% of samples"),
])
def test_unusable_clips_are_rejected(x, message):
    with pytest.raises(WavError, match=message):
        prepare_clip(x, RATE, RATE, RATE)
    assert issubclass(WavError, DataError)


def test_folder_per_label_loads_good_clips_and_skips_bad_ones(tmp_path):
    root = tmp_path / "data"
    write(root / "yes" / "a.wav", tone(700, 1.0))
    write(root / "yes" / "b.wav", np.stack([tone(900, 0.8, 44100), tone(900, 0.8, 44100)], 1), rate=44100, fmt="f32")
    write(root / "yes" / "c.wav", tone(400, 1.2, 8000), rate=8000, fmt="u8")
    write(root / "no" / "d.WAV", tone(1200, 0.5, 22050), rate=22050, fmt="s24", extensible=True)
    write(root / "no" / "e.wav", tone(300, 1.0), data_size=0x7FFFFFFF)
    (root / "yes" / "corrupt.wav").write_bytes(wav_bytes(tone(700, 1.0))[:20])
    write(root / "no" / "silent.wav", np.zeros(RATE, np.float32))
    (root / "no" / "notes.txt").write_text("recorded on tuesday")
    ds = load_dataset(root, AUDIO_IO)
    assert len(ds) == 5 and ds.inputs["waveform"].shape == (5, RATE) and ds.inputs["waveform"].dtype == np.float32
    assert sorted(ds.sources) == ["no/d.WAV", "no/e.wav", "yes/a.wav", "yes/b.wav", "yes/c.wav"]
    assert sorted(ds.targets.tolist()) == [0, 0, 0, 1, 1]
    reasons = {s["file"]: s["reason"] for s in ds.skipped}
    assert set(reasons) == {"yes/corrupt.wav", "no/silent.wav", "no/notes.txt"}
    assert "truncated fmt chunk" in reasons["yes/corrupt.wav"]
    assert "silent recording" in reasons["no/silent.wav"]
    assert "no decoder for .txt" in reasons["no/notes.txt"]


def test_folder_without_usable_files_raises(tmp_path):
    write(tmp_path / "yes" / "silent.wav", np.zeros(RATE, np.float32))
    (tmp_path / "no").mkdir()
    (tmp_path / "no" / "x.wav").write_text("not audio")
    with pytest.raises(DataError, match="no usable samples"):
        load_dataset(tmp_path, AUDIO_IO)


def test_bundle_not_exported_for_audio(tmp_path):
    write(tmp_path / "yes" / "a.wav", tone(700, 1.0))
    io = ModelIO([TensorSpec("x", "float32", ["batch", 101, 40])], ["yes"], "cross-entropy")
    with pytest.raises(DataError, match="no usable samples") as err:
        load_dataset(tmp_path, io)
    assert "not exported for audio" in str(err.value)


def test_single_rank1_float_input_falls_back_to_16k_waveform(tmp_path):
    write(tmp_path / "yes" / "a.wav", tone(700, 1.0, 44100), rate=44100)
    io = ModelIO([TensorSpec("x", "float32", ["batch", 8000])], ["yes"], "cross-entropy")
    ds = load_dataset(tmp_path, io)
    assert ds.inputs["x"].shape == (1, 8000)
    assert int(np.argmax(np.abs(np.fft.rfft(ds.inputs["x"][0])))) == 350  # 700 Hz in 0.5 s → 2 Hz bins


@pytest.mark.parametrize("first", ["ftedge.runtime.data.audio", "ftedge.runtime.data.samples"])
def test_either_import_order_registers_wav_without_loading_soxr(first):
    code = (f"import sys, {first}; from ftedge.runtime.data import samples as data; "
            "assert '.wav' in data._DECODERS; assert 'soxr' not in sys.modules and 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
