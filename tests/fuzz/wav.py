"""(a) The WAV parser: ``ftedge.runtime.data.audio.decode_wav`` (read_wav + prepare_clip) on arbitrary file bytes.

Contract: a ``DataError`` (``WavError``) or a 16000-sample finite float32 clip; nothing else, no hang, no
memory bomb (a header's sample rate or sizes must not decide how much is allocated).
"""

from __future__ import annotations

import struct

import numpy as np
from ftedge.bundle.manifest import TensorSpec
from ftedge.runtime.data.audio import decode_wav
from ftedge.runtime.data.samples import ModelIO
from hypothesis import strategies as st

from ftedge.errors import FtedgeError
from tests.fuzz.common import corpus, guarded, workdir
from tests.fuzz.mutate import mutated

CLIP = 16000
IO = ModelIO(inputs=[TensorSpec("waveform", "float32", ["batch", CLIP])], labels=["yes", "no"],
             loss="cross-entropy",
             preprocessing={"type": "audio", "sample_rate": 16000, "clip_samples": CLIP, "input": "waveform"})
_DIR = workdir("wav")

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
tags = st.sampled_from([1, 3, 0xFFFE]) | u16
rates = st.sampled_from([0, 1, 7, 100, 8000, 16000, 22050, 44100, 48000, 192000, 2**31, 2**32 - 1]) | u32
bits = st.sampled_from([0, 1, 8, 16, 24, 32, 64, 7]) | u16


def chunk(cid: bytes, payload: bytes, size: int | None = None) -> bytes:
    return cid + struct.pack("<I", len(payload) if size is None else size) + payload + b"\x00" * (len(payload) & 1)


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    """A RIFF/WAVE file whose every header field, chunk and size may lie."""
    tag, ch, rate, bps = draw(tags), draw(st.sampled_from([0, 1, 2, 6]) | u16), draw(rates), draw(bits)
    fmt = struct.pack("<HHIIHH", tag, ch, rate, draw(u32), draw(u16), bps)
    if tag == 0xFFFE or draw(st.booleans()):
        sub = draw(st.sampled_from([1, 3]) | u16)
        fmt += struct.pack("<HHIH", 22, bps, 0, sub) + draw(st.binary(min_size=0, max_size=14))
    fmt = fmt[:draw(st.integers(0, len(fmt)))] if draw(st.integers(0, 9)) == 0 else fmt
    samples = draw(st.one_of(
        st.binary(max_size=4096),
        st.builds(lambda n, v: np.full(n, v, "<f4").tobytes(), st.integers(1, 2000),
                  st.floats(width=32, allow_nan=True, allow_infinity=True)),
        st.builds(lambda n, seed: (np.random.default_rng(seed).standard_normal(n) * 8000).astype("<i2").tobytes(),
                  st.integers(1, 4000), st.integers(0, 99)),
    ))
    parts = [chunk(b"fmt ", fmt, draw(st.none() | u32))]
    for _ in range(draw(st.integers(0, 3))):
        parts.insert(draw(st.integers(0, len(parts))),
                     chunk(draw(st.sampled_from([b"LIST", b"fact", b"fmt ", b"data", b"\x00\x00\x00\x00"])),
                           draw(st.binary(max_size=64)), draw(st.none() | u32)))
    parts.append(chunk(b"data", samples, draw(st.none() | st.sampled_from([0, 0xFFFFFFFF, 0x7FFFFFFF]) | u32)))
    body = b"".join(parts)
    head = b"RIFF" + struct.pack("<I", draw(st.sampled_from([4 + len(body)]) | u32)) + b"WAVE"
    return head + body + draw(st.binary(max_size=16))


def inputs() -> st.SearchStrategy[bytes]:
    seeds = [p.read_bytes() for p in corpus("wav")]
    return st.one_of(structured(), mutated(seeds), st.binary(max_size=256))


def check(data: bytes) -> None:
    """One input through the contract; raises ContractViolation."""
    path = _DIR / "clip.wav"
    path.write_bytes(data)
    with guarded("decode_wav", (FtedgeError,)):
        out = decode_wav(path, IO)["waveform"]
        assert out.shape == (CLIP,) and out.dtype == np.float32, f"clip shaped {out.shape} {out.dtype}"
        assert np.isfinite(out).all(), "the decoded clip holds NaN or infinity"
