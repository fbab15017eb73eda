"""`ftedge agent add-sample`: a sample is checked with the [personalize] bundle's own preprocessing before it is filed
(content-addressed, atomically) into the data set; a bad one is refused with the reason and nothing is filed.

Real exported bundles (a waveform model and a 16x16 image model from the test zoo); the CLI runs as a subprocess of
this worktree's venv. The WAVs, PNGs and corrupt files are SYNTHETIC, written here.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from ftedge.errors import DataError
from tests.helpers.common import ROOT, ZOO, export

VENV_FTEDGE = ROOT / ".venv" / "bin" / "ftedge"


@pytest.fixture(scope="module")
def bundle_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bundles")
    export(f"{ZOO}:wav2vec2_encoder", root / "voice", "--input", "waveform:float32:1,400", "--head", "head",
           "--labels", "yes,no,up")
    export(f"{ZOO}:mobilenet_v3_block", root / "pics", "--input", "image:float32:1,3,16,16", "--image-size", "16,16",
           "--head", "head", "--labels", "cat,dog,bird,fish")
    export(f"{ZOO}:mlp", root / "scalar", "--input", "x:float32:1,20", "--loss", "mse")
    return root


def config(tmp_path: Path, bundle_root: Path, bundle: str | None, data: str = "mine") -> Path:
    cfg = tmp_path / "agent.toml"
    (tmp_path / "data").mkdir(exist_ok=True)
    lines = ['device_id = "box-1"', 'fleet = "test"', f'state_dir = "{tmp_path / "state"}"',
             "[mqtt]", 'url = "mqtt://127.0.0.1:1"', "[deploy]", "require_signed = false",
             "[paths]", f'data_root = "{tmp_path / "data"}"', f'bundle_root = "{bundle_root}"']
    if bundle is not None:
        lines += ["[personalize]", f'bundle = "{bundle}"', f'data = "{data}"']
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def add(cfg: Path, label: str, *files: Path, json_out: bool = True) -> tuple[int, object, str]:
    r = subprocess.run([str(VENV_FTEDGE), "agent", "add-sample", "--config", str(cfg), "--label", label,
                        *map(str, files), *(["--json"] if json_out else [])],
                       check=False, capture_output=True, text=True, timeout=120)
    return r.returncode, json.loads(r.stdout) if json_out and r.stdout.strip() else r.stdout, r.stderr


def wav(path: Path, seconds: float = 0.05, freq: float = 440.0, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    pcm = np.round(0.5 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def png(path: Path, width: int, height: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(width * 1000 + height)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width x height (its pixel data is an empty, valid IDAT)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))
    return path


def filed(data: Path) -> list[str]:
    return sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file())


def test_wav_samples_filed_content_addressed_and_bad_ones_refused(tmp_path, bundle_root):
    cfg = config(tmp_path, bundle_root, "voice")
    data = tmp_path / "data" / "mine"
    good = wav(tmp_path / "take1.wav")
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    rc, out, err = add(cfg, "yes", good)
    assert rc == 0, err
    assert out == [{"file": str(good), "status": "filed", "label": "yes", "reason": None,
                    "path": str(data / "yes" / f"{digest[:16]}.wav"), "sha256": digest}]
    assert (data / "yes" / f"{digest[:16]}.wav").read_bytes() == good.read_bytes()
    copy = tmp_path / "again.wav"
    copy.write_bytes(good.read_bytes())
    rc, out, err = add(cfg, "yes", copy, json_out=False)  # the same sample twice is filed once
    assert rc == 0 and f"{copy}: duplicate -> {data / 'yes' / f'{digest[:16]}.wav'}" in out
    corrupt = tmp_path / "broken.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunkjunkjunk")
    other = wav(tmp_path / "take2.wav", freq=660.0)
    rc, out, err = add(cfg, "no", corrupt, other)
    assert rc == DataError.exit_code == 1
    assert "1 of 2 file(s) refused and not filed" in err
    assert out[0]["status"] == "refused" and "no fmt chunk" in out[0]["reason"] and out[0]["path"] is None
    assert out[1]["status"] == "filed"
    assert filed(data) == sorted([f"yes/{digest[:16]}.wav", f"no/{Path(out[1]['path']).name}"])
    rc, out, err = add(cfg, "yes", other)  # one sample under two labels: refused, the first label kept
    assert rc == 1 and "already filed under label 'no'" in out[0]["reason"]
    rc, out, err = add(cfg, "maybe", wav(tmp_path / "t3.wav", freq=330.0))
    assert rc == 1 and "label 'maybe' is not one of the bundle's labels ['yes', 'no', 'up']" in out[0]["reason"]
    silent = tmp_path / "silent.wav"
    wav(silent, freq=0.0)
    (tmp_path / "song.mp3").write_bytes(b"ID3" + bytes(100))
    rc, out, err = add(cfg, "up", silent, tmp_path / "song.mp3", tmp_path / "missing.wav", tmp_path / "../x")
    assert rc == 1 and [o["status"] for o in out] == ["refused"] * 4
    assert "silent recording" in out[0]["reason"]
    assert "unsupported file type .mp3" in out[1]["reason"] and ".wav" in out[1]["reason"]
    assert out[2]["reason"] == "no such file"
    assert "unsupported file type (no extension)" in out[3]["reason"]
    assert len(filed(data)) == 2 and not [p for p in data.rglob(".*")]  # nothing half-written left behind


def test_images_wrong_size_or_corrupt_are_refused(tmp_path, bundle_root):
    cfg = config(tmp_path, bundle_root, "pics", data="photos")
    data = tmp_path / "data" / "photos"
    huge = png_header_only(tmp_path / "huge.png", 20000, 20000)  # 400 M pixels: the decompression-bomb guard
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(png(tmp_path / "whole.png", 40, 30).read_bytes()[:60])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image at all")
    good = png(tmp_path / "cat.png", 24, 18)   # resized to 16x16 by the bundle's preprocessing, as in training
    rc, out, err = add(cfg, "cat", huge, truncated, text, good)
    assert rc == 1, err
    assert [o["status"] for o in out] == ["refused", "refused", "refused", "filed"]
    assert "image too large: 400,000,000 pixels" in out[0]["reason"]
    assert "truncated or corrupt" in out[1]["reason"] or "cannot decode" in out[1]["reason"]
    assert "not a PNG or JPEG image" in out[2]["reason"]
    assert filed(data) == [f"cat/{Path(out[3]['path']).name}"] and out[3]["path"].endswith(".png")
    rc, out, err = add(cfg, "../cat", good)
    assert rc == 1 and "cannot name a data folder" in out[0]["reason"]


def test_regression_labels_are_numbers(tmp_path, bundle_root):
    cfg = config(tmp_path, bundle_root, "scalar")
    sample = tmp_path / "s.npy"
    np.save(sample, np.ones(20, np.float32))
    rc, out, _ = add(cfg, "2.5", sample)
    assert rc == 0 and out[0]["path"].endswith(f"/2.5/{out[0]['sha256'][:16]}.npy")
    rc, out, _ = add(cfg, "tall", sample)
    assert rc == 1 and out[0]["status"] == "refused"
    wrong = tmp_path / "w.npy"
    np.save(wrong, np.ones((2, 20), np.float32))
    rc, out, _ = add(cfg, "1.0", wrong)
    assert rc == 1 and "shape [2, 20] does not match input 'x' [20]" in out[0]["reason"]


def test_add_sample_needs_a_personalize_table(tmp_path, bundle_root):
    rc, out, err = add(config(tmp_path, bundle_root, None), "yes", tmp_path / "x.wav", json_out=False)
    assert rc == 2 and "has no [personalize] table" in err and out == ""
    rc, out, err = add(config(tmp_path, bundle_root, "voice", data="../../elsewhere"), "yes", tmp_path / "x.wav",
                       json_out=False)
    assert rc == 2 and "personalize.data" in err and "outside" in err


def test_predict_uses_the_same_decoding(tmp_path, bundle_root):
    """The sample add-sample filed is what ActiveModel answers on: one decoder path (runtime/data/intake.py)."""
    from ftedge.runtime import ActiveModel

    model = ActiveModel(tmp_path / "state", bundle=bundle_root / "pics")
    out = model.predict([png(tmp_path / "a.png", 16, 16), png(tmp_path / "b.png", 64, 48)])
    assert model.version is None and [set(o["scores"]) for o in out] == [{"cat", "dog", "bird", "fish"}] * 2
    with pytest.raises(DataError, match="image too large"):
        model.predict([png_header_only(tmp_path / "huge.png", 20000, 20000)])
