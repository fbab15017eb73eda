"""Synthesize a keyword-spotting dataset (SYNTHETIC SPEECH) with the espeak-ng formant synthesizer.

    .venv/bin/python examples/demo/make_kws_dataset.py OUT_DIR \
        --voices en-us,en-gb,en-gb-x-rp,en-us-nyc,en-029,en-gb-x-gbclan --per-word 20 --seed 0
    .venv/bin/python examples/demo/make_kws_dataset.py OUT_HELD_OUT --voices en-gb-scotland,es --per-word 20 --seed 0

Needs `apt-get install espeak-ng` and `pip install 'soxr>=0.3'` (numpy too). Every clip is SYNTHETIC
speech from espeak-ng, not a recording of a person; use it to exercise the pipeline and to compare runs,
not as evidence of accuracy on real voices.

Accents: the six source (training) voices are en-us, en-gb, en-gb-x-rp, en-us-nyc, en-029 and
en-gb-x-gbclan; en-gb-scotland and es are held-out voices (a new "user" the device adapts to).

For each voice, word (default: yes no up down left right on off stop go) and index < --per-word, one clip
draws a voice variant (VOICE+m1..m8 / +f1..f5), pitch (-p 30-70), speed (-s 130-190 wpm) and amplitude
(-a 40-90) from numpy.random.default_rng([seed, crc32(voice), crc32(word), index]) — so a clip depends
only on (seed, voice, word, index): adding a voice or raising --per-word leaves existing clips unchanged.
espeak-ng's 22.05 kHz output is resampled to 16 kHz (soxr HQ) and written as DIR/<word>/<voice>_<index>.wav
(16-bit PCM mono), at its natural length (espeak-ng appends a ~0.25-0.45 s end-of-sentence pause; nothing
is padded or trimmed here). DIR/dataset.json lists every clip with its parameters.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import re
import shutil
import statistics
import struct
import subprocess
import sys
import time
import wave
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

ESPEAK = "espeak-ng"
SAMPLE_RATE = 16000
WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
SOURCE_VOICES = ["en-us", "en-gb", "en-gb-x-rp", "en-us-nyc", "en-029", "en-gb-x-gbclan"]
HELD_OUT_VOICES = ["en-gb-scotland", "es"]
# espeak-ng's numbered variants (espeak-ng --voices=variant: !v/m1..m8, !v/f1..f5). An unknown variant
# silently falls back to the plain voice, so their presence is checked before synthesis.
VARIANTS = [f"m{i}" for i in range(1, 9)] + [f"f{i}" for i in range(1, 6)]
PITCH = (30, 70)  # -p, inclusive; espeak-ng default 50
SPEED = (130, 190)  # -s words per minute, inclusive; default 175
AMPLITUDE = (40, 90)  # -a, inclusive; default 100. Peak is ~linear in -a and reaches full scale near 95-120
# for some es / en-gb-scotland clips (e.g. +m6, +f1), so the range stays below that.
MAX_SECONDS = 1.0  # the device loader keeps a 1 s window centred on energy
_SAFE_VOICE = re.compile(r"^[A-Za-z0-9_-]+$")
_SAFE_WORD = re.compile(r"^[A-Za-z0-9'-]+( [A-Za-z0-9'-]+)*$")


class DatasetError(RuntimeError):
    """Bad arguments or a missing / failing espeak-ng."""


class Clip(NamedTuple):  # not a dataclass: importlib-by-path loading (no sys.modules entry) must work
    word: str
    voice: str
    index: int
    variant: str
    pitch: int
    speed: int
    amplitude: int

    @property
    def file(self) -> str:
        return f"{self.word}/{self.voice}_{self.index:03d}.wav"


def clip_params(seed: int, voice: str, word: str, index: int) -> Clip:
    """Synthesis parameters of one clip; a pure function of (seed, voice, word, index)."""
    rng = np.random.default_rng([seed, zlib.crc32(voice.encode()), zlib.crc32(word.encode()), index])
    return Clip(
        word=word,
        voice=voice,
        index=index,
        variant=VARIANTS[int(rng.integers(len(VARIANTS)))],
        pitch=int(rng.integers(PITCH[0], PITCH[1] + 1)),
        speed=int(rng.integers(SPEED[0], SPEED[1] + 1)),
        amplitude=int(rng.integers(AMPLITUDE[0], AMPLITUDE[1] + 1)),
    )


def _run(args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess:
    try:
        return subprocess.run([ESPEAK, *args], input=stdin, capture_output=True, timeout=60)
    except FileNotFoundError:
        raise DatasetError(f"{ESPEAK} not found on PATH; install it with `apt-get install espeak-ng`") from None


def espeak_version() -> str:
    out = _run(["--version"]).stdout.decode(errors="replace")
    m = re.search(r"text-to-speech:\s*(\S+)", out)
    return m.group(1) if m else out.strip()


def check_espeak(voices: list[str]) -> str:
    """Return espeak-ng's version; raise DatasetError if it, soxr or a variant is missing, or a voice is unknown."""
    try:
        import soxr  # noqa: F401
    except ImportError:
        raise DatasetError("the soxr resampler is missing; `pip install 'soxr>=0.3'`") from None
    version = espeak_version()
    listing = _run(["--voices=variant"]).stdout.decode(errors="replace")
    present = set(re.findall(r"!v/(\S+)", listing))
    missing = [v for v in VARIANTS if v not in present]
    if missing:
        raise DatasetError(f"espeak-ng {version} lacks the voice variant(s) {', '.join(missing)}; "
                           f"the dataset needs {', '.join(VARIANTS)}")
    for voice in voices:
        if not _SAFE_VOICE.match(voice):
            raise DatasetError(f"bad voice name {voice!r}: use an espeak-ng voice name such as en-us "
                               "(letters, digits, '-', '_'; the +variant is chosen per clip)")
        res = _run(["-q", "-v", voice], b"test")
        if res.returncode != 0:
            msg = res.stderr.decode(errors="replace").strip()
            raise DatasetError(f"espeak-ng does not know the voice {voice!r} ({msg or f'exit {res.returncode}'}); "
                               "see `espeak-ng --voices`")
    return version


def parse_espeak_wav(data: bytes) -> tuple[np.ndarray, int]:
    """int16 samples and rate of `espeak-ng --stdout` output.

    Its streaming header carries placeholder RIFF/data sizes (0x7ffff...), so the samples are everything
    after the 'data' chunk header rather than what the header claims.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise DatasetError("espeak-ng did not write a WAV stream")
    pos, rate = 12, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if cid == b"fmt ":
            fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[pos + 8:pos + 24])
            if (fmt, channels, bits) != (1, 1, 16):
                raise DatasetError(f"unexpected espeak-ng format (format {fmt}, {channels} ch, {bits} bit)")
        elif cid == b"data":
            if rate is None:
                raise DatasetError("espeak-ng WAV stream has no fmt chunk before its data")
            body = data[pos + 8:]
            return np.frombuffer(body[:len(body) // 2 * 2], dtype="<i2"), rate
        pos += 8 + size + (size & 1)
    raise DatasetError("espeak-ng WAV stream has no data chunk")


def to_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """int16 at `rate` -> int16 at 16 kHz (soxr HQ)."""
    import soxr

    x = samples.astype(np.float32) / 32768.0
    if rate != SAMPLE_RATE:
        x = soxr.resample(x, rate, SAMPLE_RATE, quality="HQ")
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")


def write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(samples.astype("<i2").tobytes())


def synthesize(clip: Clip, out_dir: Path) -> dict:
    """Render one clip to out_dir/clip.file; return its dataset.json entry."""
    res = _run(["-v", f"{clip.voice}+{clip.variant}", "-p", str(clip.pitch), "-s", str(clip.speed),
                "-a", str(clip.amplitude), "--stdout"], clip.word.encode())
    if res.returncode != 0:
        raise DatasetError(f"espeak-ng failed on {clip.file}: {res.stderr.decode(errors='replace').strip()}")
    raw, rate = parse_espeak_wav(res.stdout)
    if raw.size == 0:
        raise DatasetError(f"espeak-ng produced no audio for {clip.file}")
    audio = to_16k(raw, rate)
    write_wav(out_dir / clip.file, audio)
    peak = int(np.abs(audio.astype(np.int32)).max())
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > peak / 100)  # within 40 dB of the peak
    return {
        "file": clip.file, "word": clip.word, "voice": clip.voice, "index": clip.index,
        "variant": clip.variant, "pitch": clip.pitch, "speed": clip.speed, "amplitude": clip.amplitude,
        "duration_s": round(audio.size / SAMPLE_RATE, 4),
        "speech_s": round(int(loud[-1] - loud[0] + 1) / SAMPLE_RATE, 4),
        "peak": round(peak / 32768, 4),
    }


def _prepare(out_dir: Path, words: list[str], overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise DatasetError(f"{out_dir} is not empty; pass --force to replace an earlier dataset there")
        if not (out_dir / "dataset.json").is_file():
            raise DatasetError(f"{out_dir} is not empty and has no dataset.json; refusing to delete it")
        shutil.rmtree(out_dir)
    for word in words:
        (out_dir / word).mkdir(parents=True, exist_ok=True)


def _check_args(voices: list[str], words: list[str], per_word: int, seed: int, jobs: int) -> None:
    if not voices:
        raise DatasetError("no voices given")
    if not words:
        raise DatasetError("no words given")
    for name, items in (("voice", voices), ("word", words)):
        dup = sorted({x for x in items if items.count(x) > 1})
        if dup:
            raise DatasetError(f"duplicate {name}(s): {', '.join(dup)}")
    for word in words:
        if not _SAFE_WORD.match(word):
            raise DatasetError(f"bad word {word!r}: letters, digits, ' and - (single spaces between parts)")
    if per_word < 1:
        raise DatasetError("--per-word must be >= 1")
    if per_word > 1000:
        raise DatasetError("--per-word must be <= 1000 (file names carry a 3-digit index)")
    if seed < 0:
        raise DatasetError("--seed must be >= 0")
    if jobs < 1:
        raise DatasetError("--jobs must be >= 1")


def make_dataset(out_dir: Path, voices: list[str], words: list[str] = WORDS, per_word: int = 20,
                 seed: int = 0, jobs: int = 2, *, overwrite: bool = False) -> dict:
    """Write the synthetic clips and out_dir/dataset.json; return the dataset.json content.

    `overwrite` replaces a non-empty out_dir only if it holds an earlier dataset (has dataset.json).
    """
    out_dir, voices, words = Path(out_dir), list(voices), list(words)
    _check_args(voices, words, per_word, seed, jobs)
    version = check_espeak(voices)
    _prepare(out_dir, words, overwrite)
    clips = [clip_params(seed, v, w, i) for v in voices for w in words for i in range(per_word)]
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        entries = list(pool.map(lambda c: synthesize(c, out_dir), clips))
    seconds = time.perf_counter() - t0
    meta = {
        "synthetic": True,
        "generator": f"espeak-ng {version}",
        "seed": seed,
        "voices": voices,
        "words": words,
        "per_word": per_word,
        "sample_rate": SAMPLE_RATE,
        "variants": VARIANTS,
        "pitch_range": list(PITCH),
        "speed_range": list(SPEED),
        "amplitude_range": list(AMPLITUDE),
        "clips": entries,
    }
    (out_dir / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n")
    _report(meta, out_dir, seconds)
    return meta


def _report(meta: dict, out_dir: Path, seconds: float) -> None:
    clips = meta["clips"]
    durs = [c["duration_s"] for c in clips]
    long = [c for c in clips if c["duration_s"] > MAX_SECONDS]
    if long:
        worst = max(long, key=lambda c: c["duration_s"])
        print(f"warning: {len(long)} of {len(clips)} clips are longer than {MAX_SECONDS:g} s (longest "
              f"{worst['duration_s']:.2f} s, {worst['file']}); the longest speech span is "
              f"{max(c['speech_s'] for c in clips):.2f} s, the rest is espeak-ng's end-of-sentence pause",
              file=sys.stderr)
    print(f"wrote {len(clips)} SYNTHETIC SPEECH clips ({meta['generator']}; {len(meta['voices'])} voice(s) x "
          f"{len(meta['words'])} words x {meta['per_word']}; {min(durs):.2f}-{statistics.median(durs):.2f}-"
          f"{max(durs):.2f} s min-median-max) to {out_dir} in {seconds:.1f} s", file=sys.stderr)


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    ap.add_argument("--voices", type=_csv, default=SOURCE_VOICES,
                    help=f"comma-separated espeak-ng voices (default: the source accents {','.join(SOURCE_VOICES)})")
    ap.add_argument("--words", type=_csv, default=WORDS, help=f"comma-separated (default: {','.join(WORDS)})")
    ap.add_argument("--per-word", type=int, default=20, help="clips per word per voice (default: 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="parallel espeak-ng processes (default: 2)")
    ap.add_argument("--force", action="store_true", help="replace an earlier dataset in OUT_DIR")
    args = ap.parse_args(argv)
    try:
        make_dataset(args.out_dir, args.voices, args.words, args.per_word, args.seed, args.jobs,
                     overwrite=args.force)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
