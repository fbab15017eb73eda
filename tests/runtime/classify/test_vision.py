"""Vision end to end: EfficientNet-Lite0 (REAL ImageNet weights) personalized to scikit-learn's REAL
handwritten digits written as PNG files, trained and evaluated through the CLI in the torch-free device
venv; image decoding on the device (modes, EXIF, unusable files, decompression bombs); export checks."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ftedge.bundle.manifest import TensorSpec
from ftedge.runtime.data.image import ImageError, ImageSpec, image_params, load_image
from ftedge.runtime.data.samples import ModelIO, load_dataset

from ftedge.cli import main
from ftedge.errors import DataError
from tests.helpers.common import ROOT, export

VISION = ROOT / "examples" / "vision"
SIZE = 64                                   # small for CI; the example and benchmark use 96 (BENCHMARKS.md)
LITE_MEAN, LITE_STD = 127 / 255, 128 / 255  # EfficientNet-Lite's (x - 127) / 128
LABELS = ",".join(str(d) for d in range(10))
MODES = ("L", "RGB", "P", "RGBA", "LA")     # the training PNGs cycle through these (opaque alpha)


def _module(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(name, VISION / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def export_args(size: int = SIZE) -> list[str]:
    m, s = f"{LITE_MEAN!r}", f"{LITE_STD!r}"
    return ["--input", f"image:float32:1,3,{size},{size}", "--image-size", f"{size},{size}",
            "--mean", f"{m},{m},{m}", "--std", f"{s},{s},{s}", "--head", "_fc", "--labels", LABELS]


@pytest.fixture(scope="module")
def vision_bundle(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("vision") / "bundle"
    manifest = export(f"{VISION / 'efficientnet_lite0.py'}:build_model", out, *export_args())
    return out, manifest


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """REAL digits: 100 train PNGs (modes cycling through MODES) and 200 disjoint test PNGs (grayscale)."""
    maker = _module("make_digits")
    root = tmp_path_factory.mktemp("digits")
    train, test = maker.split(100, 200, seed=0)
    for k, mode in enumerate(MODES):
        maker.write(root / "train", train[k::len(MODES)], mode=mode)
    maker.write(root / "test", test)
    return root


def image_io(size: int = SIZE, mean: float = LITE_MEAN, std: float = LITE_STD) -> ModelIO:
    pre = {"type": "image", "input": "image", "size": [size, size], "mean": [mean] * 3, "std": [std] * 3,
           "channels": 3, "layout": "NCHW", "scale": 1 / 255, "resize": "bilinear"}
    return ModelIO([TensorSpec("image", "float32", ["batch", 3, size, size])], list(LABELS.split(",")),
                   "cross-entropy", pre)


def reference_preprocess(path: Path, size: int) -> np.ndarray:
    """An independent PIL + numpy path: RGB, bilinear resize, /255, (x - 127/255) / (128/255), NCHW."""
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    x = np.asarray(img).astype(np.float64) / 255.0
    return ((x - LITE_MEAN) / LITE_STD).transpose(2, 0, 1)[None].astype(np.float32)


# ---- export -----------------------------------------------------------------------------------------

def test_export_records_image_preprocessing_and_parity(vision_bundle):
    _, m = vision_bundle
    pre = m["preprocessing"]
    assert pre["type"] == "image" and pre["input"] == "image" and pre["size"] == [SIZE, SIZE]
    assert pre["mean"] == pytest.approx([LITE_MEAN] * 3) and pre["std"] == pytest.approx([LITE_STD] * 3)
    assert pre["layout"] == "NCHW" and pre["resize"] == "bilinear" and pre["scale"] == pytest.approx(1 / 255)
    assert max(m["parity"]["max_abs_diff"].values()) <= 1e-4
    assert m["trainable"] == ["_fc.weight", "_fc.bias"] and m["labels"] == LABELS.split(",")
    assert m["layout"] == "split"
    assert image_params(ModelIO.from_manifest(m)) == ImageSpec("image", (SIZE, SIZE), (LITE_MEAN,) * 3, (LITE_STD,) * 3)


def test_pretrained_weights_load_completely():
    import torch

    model = _module("efficientnet_lite0").build_model()
    state = torch.load(_module("efficientnet_lite0").weights_path(), map_location="cpu", weights_only=True)
    assert set(state) == set(model.state_dict()) and len(state) > 250
    assert model._fc.out_features == 1000 and sum(p.numel() for p in model.parameters()) > 4_000_000


@pytest.mark.parametrize("args, message", [
    (["--image-size", "96,96"], "--image-size 96,96 needs --input image:float32:1,3,96,96"),
    (["--image-size", "64,64", "--mean", "0.5,0.5"], "--mean '0.5,0.5': give 3"),
    (["--image-size", "64,64", "--std", "0.5,0,0.5"], "--std values must be positive"),
    (["--image-size", "64"], "--image-size '64': give 2"),
    (["--mean", "0.5,0.5,0.5"], "give --image-size H,W too"),
])
def test_export_usage_errors_exit_2_with_a_clear_message(args, message, tmp_path, capsys):
    rc = main(["export", f"{VISION / 'efficientnet_lite0.py'}:build_model", "-o", str(tmp_path / "b"),
               "--input", "image:float32:1,3,64,64", *args, "--labels", LABELS])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err and err.startswith("error: ")
    assert not (tmp_path / "b").exists()


# ---- runtime preprocessing vs PyTorch -----------------------------------------------------------------

def test_runtime_preprocessing_and_model_match_pytorch(vision_bundle, tmp_path):
    """One RGB photo-like PNG (odd size: the resize matters) through ftedge's decoder and the bundle's
    graphs vs the same file through a PIL/numpy reference and the PyTorch model with the same new head."""
    import torch
    from ftedge.export.tasks.classify.head import replace_head
    from ftedge.runtime import load_bundle
    from ftedge.runtime.engines.session import BundleSession
    from PIL import Image

    out, _ = vision_bundle
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:37, 0:53]
    px = np.stack([xx * 4, yy * 6, (xx + yy) * 2], axis=-1) + rng.integers(0, 40, (37, 53, 3))  # SYNTHETIC
    Image.fromarray(np.clip(px, 0, 255).astype(np.uint8), "RGB").save(tmp_path / "photo.png")

    io = ModelIO.from_manifest(load_bundle(out).manifest, out)
    x = load_image(tmp_path / "photo.png", image_params(io))[None]
    ref = reference_preprocess(tmp_path / "photo.png", SIZE)
    assert x.shape == (1, 3, SIZE, SIZE) and x.dtype == np.float32
    assert np.abs(x - ref).max() < 1e-5

    logits = BundleSession(load_bundle(out)).predict({"image": x})
    model = _module("efficientnet_lite0").build_model()
    replace_head(model, "_fc", 10, seed=0)  # what `ftedge export --labels` did (default --seed 0)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(ref)).numpy()
    assert logits.shape == (1, 10)
    assert np.abs(logits - expected).max() <= 1e-4, (logits, expected)


# ---- decoding on the device -----------------------------------------------------------------------------

def test_image_modes_give_the_same_tensor(tmp_path):
    """Grayscale, RGB, palette, RGBA/LA (opaque), 16-bit grayscale and 1-bit: one digit, one tensor."""
    from PIL import Image

    px = 255 - _module("make_digits").digits()[0][42]  # REAL digit, dark ink on white
    base = Image.fromarray(px, "L")
    spec = image_params(image_io())
    paths = {}
    for mode in ("L", "RGB", "P", "RGBA", "LA"):
        paths[mode] = tmp_path / f"{mode}.png"
        base.convert(mode).save(paths[mode])
    paths["I;16"] = tmp_path / "16bit.png"
    Image.fromarray(px.astype(np.uint16) * 257).save(paths["I;16"])  # 16-bit, same levels
    assert Image.open(paths["I;16"]).mode == "I;16" and Image.open(paths["P"]).mode == "P"
    want = load_image(paths["L"], spec)
    assert want.shape == (3, SIZE, SIZE) and np.allclose(want[0], want[1]) and np.allclose(want[0], want[2])
    for mode, path in paths.items():
        got = load_image(path, spec)
        tol = 1e-6 if mode != "I;16" else 1.0 / 255 / LITE_STD  # float resize vs uint8 resize rounding
        assert np.abs(got - want).max() <= tol, mode
    bw = Image.fromarray(np.where(px > 128, 255, 0).astype(np.uint8), "L")
    bw.convert("1").save(tmp_path / "1bit.png")
    bw.save(tmp_path / "8bit.png")
    assert Image.open(tmp_path / "1bit.png").mode == "1"
    assert np.array_equal(load_image(tmp_path / "1bit.png", spec), load_image(tmp_path / "8bit.png", spec))


def test_transparency_is_composited_over_white_and_exif_orientation_applied(tmp_path):
    from PIL import Image

    spec = image_params(image_io(size=16, mean=0.0, std=1.0))  # no normalization: values are pixels / 255
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[:, :8] = (255, 0, 0, 255)          # opaque red left half, fully transparent (black) right half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    x = load_image(tmp_path / "t.png", spec)
    assert np.allclose(x[:, :, :6], np.array([1.0, 0, 0])[:, None, None]) and np.allclose(x[:, :, 10:], 1.0)
    pal = Image.fromarray(rgba[:, :, 0], "L").convert("P")
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)  # palette index 0 (black) is transparent
    assert np.allclose(load_image(tmp_path / "p.png", spec)[:, :, 10:], 1.0)

    half = np.zeros((16, 32), np.uint8)
    half[:, 16:] = 255                      # black left, white right …
    exif = Image.Exif()
    exif[0x0112] = 3                        # … stored rotated by 180°: viewers show white left, black right
    Image.fromarray(half, "L").save(tmp_path / "r.jpg", exif=exif, quality=95)
    y = load_image(tmp_path / "r.jpg", ImageSpec("image", (16, 32), (0.0,) * 3, (1.0,) * 3))
    assert y[:, :, :12].mean() > 0.9 and y[:, :, 20:].mean() < 0.1


def test_unusable_images_are_skipped_and_reported(tmp_path, monkeypatch):
    from PIL import Image

    px = 255 - _module("make_digits").digits()[0][:3]
    for i, label in enumerate(("0", "1", "2")):
        (tmp_path / label).mkdir()
        Image.fromarray(px[i], "L").save(tmp_path / label / "ok.png")
    good = (tmp_path / "0" / "ok.png").read_bytes()
    (tmp_path / "0" / "random.png").write_bytes(np.random.default_rng(0).bytes(600))  # SYNTHETIC garbage
    Image.fromarray(np.tile(px[0], (8, 8)), "L").save(tmp_path / "1" / "big.png")
    (tmp_path / "1" / "truncated.png").write_bytes(good[:45])  # header intact, pixel data cut off
    (tmp_path / "1" / "empty.jpg").write_bytes(b"")
    Image.fromarray(px[1], "L").save(tmp_path / "2" / "gif.png", format="GIF")
    (tmp_path / "2" / "text.jpeg").write_text("not an image\n")
    (tmp_path / "2" / "copy.PNG").write_bytes(good)  # extensions are case-insensitive
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 8×8 digits pass; big.png (64×64) is a "bomb"
    Image.fromarray(np.tile(px[2], (5, 5)), "L").save(tmp_path / "2" / "warn.png")  # 40×40: above 1000, below 2×

    ds = load_dataset(tmp_path, image_io())
    assert sorted(ds.sources) == ["0/ok.png", "1/ok.png", "2/copy.PNG", "2/ok.png"]
    reasons = {s["file"]: s["reason"] for s in ds.skipped}
    assert set(reasons) == {"0/random.png", "1/big.png", "1/truncated.png", "1/empty.jpg", "2/gif.png",
                            "2/text.jpeg", "2/warn.png"}
    for f in ("0/random.png", "2/gif.png", "2/text.jpeg"):
        assert "not a PNG or JPEG image" in reasons[f] and "cannot identify" in reasons[f]
    assert "truncated or corrupt" in reasons["1/truncated.png"] and "empty file" in reasons["1/empty.jpg"]
    for bomb in ("1/big.png", "2/warn.png"):
        assert "image too large" in reasons[bomb] and "above the 1,000-pixel limit" in reasons[bomb]
    assert "4,096 pixels" in reasons["1/big.png"] and "1,600 pixels" in reasons["2/warn.png"]

    for f in ("0/ok.png", "1/ok.png", "2/ok.png", "2/copy.PNG"):
        (tmp_path / f).unlink()
    with pytest.raises(DataError, match=r"no usable samples .*\(7 skipped"):
        load_dataset(tmp_path, image_io())


def test_missing_pillow_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "a.png").write_bytes(b"\x89PNG")
    monkeypatch.setitem(sys.modules, "PIL", None)  # `from PIL import …` now raises ImportError
    with pytest.raises(ImageError, match=r"needs Pillow.*pip install pillow"):
        load_image(tmp_path / "0" / "a.png", image_params(image_io()))
    with pytest.raises(DataError, match="needs Pillow"):
        load_dataset(tmp_path, image_io())


def test_bundle_without_image_preprocessing_rejects_images(cnn_bundle, tmp_path, capsys):
    from PIL import Image

    (tmp_path / "data" / "yes").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "yes" / "a.png")
    rc = main(["train", str(cnn_bundle), "--data", str(tmp_path / "data"), "-o", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "not exported for images" in err and "--image-size H,W" in err
    with pytest.raises(ImageError, match="not exported for images"):
        image_params(ModelIO([TensorSpec("x", "float32", ["batch", 3, 8, 8])], ["a"], "cross-entropy"))


# ---- end to end on the device ---------------------------------------------------------------------------

def test_device_cli_personalizes_digits_and_evaluates(vision_bundle, digits, device_python, tmp_path):
    """Train in the torch-free venv on 100 REAL digits (mixed PNG modes + two broken files), then
    `ftedge evaluate --json` of the run dir and of the untuned bundle on 200 held-out digits."""
    out, _ = vision_bundle
    data = tmp_path / "train"
    shutil.copytree(digits / "train", data)
    (data / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2)
    (data / "7" / "cut.png").write_bytes((data / "7" / sorted(os.listdir(data / "7"))[0]).read_bytes()[:60])

    def ftedge(*args: str) -> dict:
        proc = subprocess.run([device_python, "-m", "ftedge", *args, "--json"], capture_output=True, text=True,
                              cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "2"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1] if args[0] == "train" else proc.stdout)

    run = tmp_path / "run"
    result = ftedge("train", str(out), "--data", str(data), "-o", str(run), "--epochs", "30", "--lr", "0.01",
                    "--cache-dir", str(tmp_path / "cache"), "--quiet")
    assert result["status"] == "succeeded" and result["mode"] == "cached" and result["promoted"]
    assert result["samples"]["total"] == 100 and result["cache"]["computed"] == 100
    skipped = {s["file"]: s["reason"] for s in result["skipped"]}
    assert set(skipped) == {"3/broken.png", "7/cut.png"}
    assert "cannot identify" in skipped["3/broken.png"] and "truncated" in skipped["7/cut.png"], skipped
    assert json.loads((run / "model.json").read_text())["preprocessing"]["type"] == "image"

    tuned = ftedge("evaluate", str(run), "--data", str(digits / "test"))
    untuned = ftedge("evaluate", str(out), "--data", str(digits / "test"))
    assert tuned["kind"] == "personalized model" and untuned["kind"] == "bundle (untuned)"
    assert tuned["samples"] == untuned["samples"] == 200 and tuned["skipped"] == []
    # Honest bar on held-out digits: chance is 0.10; the untuned head is random.
    print(f"digits {SIZE}px, 100 train: tuned {tuned['accuracy']:.3f}, untuned {untuned['accuracy']:.3f}")
    assert untuned["accuracy"] < 0.3
    assert tuned["accuracy"] >= 0.65 and tuned["accuracy"] >= untuned["accuracy"] + 0.4, (tuned, untuned)
