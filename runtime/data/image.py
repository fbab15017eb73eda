"""Image files → normalized NCHW float32 tensors for image bundles (torch-free: Pillow + numpy).

The bundle manifest's ``preprocessing`` (written by ``ftedge export --image-size H,W [--mean] [--std]``)
says what the model's image input expects::

    {"type": "image", "input": "image", "size": [H, W], "mean": [R, G, B], "std": [R, G, B],
     "channels": 3, "layout": "NCHW", "scale": 1/255, "resize": "bilinear"}

Every ``.png`` / ``.jpg`` / ``.jpeg`` file of folder-per-label data goes through :func:`load_image`:

1. decode with Pillow (PNG or JPEG content only, whatever the extension says), refusing images above
   Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) instead of just warning;
2. apply the EXIF orientation (phone photos are often stored rotated);
3. convert to RGB: grayscale is replicated, palettes are expanded, transparency is composited over
   white, 16-bit grayscale keeps its precision (scaled from 0..65535);
4. resize to H×W with bilinear interpolation (Pillow's, antialiased when shrinking; the aspect ratio is
   not kept: crop beforehand if that matters);
5. scale to [0, 1] and normalize per channel, ``(x - mean) / std``, channels first.

Undecodable, truncated or oversized files raise :class:`ImageError`; the data loader skips them and
lists them in the run's report. Importing :mod:`ftedge.runtime.data.samples` registers :func:`decode_image`.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftedge.errors import DataError, ImageError
from ftedge.runtime.data.samples import ModelIO, register_decoder

EXTENSIONS = (".png", ".jpg", ".jpeg")
FORMATS = ("PNG", "JPEG")           # what Pillow may decode: nothing else, whatever the file name says
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
BACKGROUND = (255, 255, 255)        # transparent pixels are composited over white
ORIENTATION = 0x0112                # the EXIF Orientation tag
_INSTALL = "pip install pillow (it comes with pip install 'ftedge[device]')"


@dataclass(frozen=True)
class ImageSpec:
    """What one image sample must become: ``input`` [3, H, W] = ((pixels * scale) - mean) / std."""

    input: str
    size: tuple[int, int]                  # H, W
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1 / 255


def _pil() -> tuple[Any, Any]:
    """``(PIL.Image, PIL.ImageOps)``, imported on first use so non-image bundles never need Pillow."""
    try:
        from PIL import Image, ImageOps
    except ImportError as exc:
        raise ImageError(f"reading .png/.jpg images needs Pillow, which is not installed ({exc}); {_INSTALL}") from exc
    return Image, ImageOps


def image_params(io: ModelIO) -> ImageSpec:
    """The image preprocessing of a bundle (or run directory); ImageError if it was not exported for images."""
    pp: dict[str, Any] = io.preprocessing or {}
    if pp.get("type") != "image":
        shapes = ", ".join(f"{s.name} {s.dtype}{s.shape}" for s in io.inputs)
        kind = f"its preprocessing is {pp['type']!r}" if pp.get("type") else "it records no image preprocessing"
        raise ImageError(f"the bundle was not exported for images ({kind}; inputs {shapes}); re-export it with "
                         "`ftedge export … --image-size H,W [--mean R,G,B --std R,G,B]` or supply .npy/.npz tensors")
    name = pp.get("input") or (io.inputs[0].name if len(io.inputs) == 1 else None)
    spec = next((s for s in io.inputs if s.name == name), None)
    if spec is None:
        raise ImageError(f"image preprocessing names input {name!r}, the bundle has {[s.name for s in io.inputs]}; "
                         "re-export the bundle")
    try:
        h, w = (int(v) for v in pp["size"])
        mean = tuple(float(v) for v in pp.get("mean", ()))
        std = tuple(float(v) for v in pp.get("std", ()))
        scale = float(pp.get("scale", 1 / 255))
    except (KeyError, TypeError, ValueError) as exc:
        raise ImageError(f"malformed image preprocessing in the manifest ({pp}): {exc}; re-export the bundle") from exc
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0 or h < 1 or w < 1:
        raise ImageError(f"malformed image preprocessing (size {pp.get('size')}, mean {pp.get('mean')}, std "
                         f"{pp.get('std')}): need H,W ≥ 1 and three means and positive stds; re-export the bundle")
    for key, known in (("resize", "bilinear"), ("layout", "NCHW")):
        if pp.get(key, known) != known:
            raise ImageError(f"image preprocessing {key}={pp[key]!r} is not supported by this ftedge (only "
                             f"{known!r}); upgrade ftedge on the device or re-export the bundle")
    if spec.sample_shape != [3, h, w]:
        raise ImageError(f"image input {spec.name!r} has shape {spec.sample_shape}, preprocessing says [3, {h}, {w}]; "
                         "re-export the bundle")
    return ImageSpec(spec.name, (h, w), mean, std, scale)  # type: ignore[arg-type]


def _to_rgb(img: Any, Image: Any) -> Any:
    """An 8-bit RGB image, or a 0..1 float (``F``) image for 16-bit grayscale (replicated to RGB later)."""
    if img.mode in SIXTEEN_BIT_MODES:
        return Image.fromarray(np.clip(np.asarray(img.convert("F"), np.float32) / 65535.0, 0.0, 1.0), mode="F")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def prepare_image(img: Any, spec: ImageSpec) -> np.ndarray:
    """A decoded ``PIL.Image`` → float32 [3, H, W]: EXIF orientation, RGB, bilinear resize, scale, normalize."""
    Image, ImageOps = _pil()
    if img.getexif().get(ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
    img = _to_rgb(img, Image)
    h, w = spec.size
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    if img.mode == "F":  # 16-bit grayscale, already on 0..1
        x = np.repeat(np.asarray(img, dtype=np.float32)[:, :, None], 3, axis=2)
    else:
        x = np.asarray(img, dtype=np.float32) * np.float32(spec.scale)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def load_image(path: str | Path, spec: ImageSpec) -> np.ndarray:
    """Decode one PNG/JPEG file and prepare it (:func:`prepare_image`); ImageError if it cannot be used."""
    Image, _ = _pil()
    path = Path(path)
    if path.stat().st_size == 0:
        raise ImageError("empty file (0 bytes); re-save or remove it")
    bomb = (Image.DecompressionBombWarning, Image.DecompressionBombError)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is an error, not a warning
            with Image.open(path, formats=FORMATS) as img:
                if img.format == "JPEG":
                    side = max(spec.size)  # decode big JPEGs at a reduced DCT scale, never below the target size
                    img.draft(None, (side, side))
                img.load()
                return prepare_image(img, spec)
    except bomb as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else str(exc)
        raise ImageError(f"image too large: {size}, above the {Image.MAX_IMAGE_PIXELS:,}-pixel limit of Pillow's "
                         "decompression-bomb guard (PIL.Image.MAX_IMAGE_PIXELS); downscale it or remove it") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError("not a PNG or JPEG image, or its header is corrupt (Pillow cannot identify it); "
                         "convert it to PNG/JPEG or remove it") from exc
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError… on corrupt data
        detail = str(exc) or type(exc).__name__
        raise ImageError(f"cannot decode image ({detail}): truncated or corrupt; re-save or remove it") from exc


def decode_image(path: Path, io: ModelIO) -> dict[str, np.ndarray]:
    """The ``.png``/``.jpg``/``.jpeg`` decoder of folder-per-label data: one prepared image for the bundle."""
    spec = image_params(io)
    return {spec.input: load_image(path, spec)}


for _ext in EXTENSIONS:
    register_decoder(_ext, decode_image)
