"""Letterboxed image input of detection bundles (torch-free: numpy, Pillow): decode, letterbox, normalize, and map
boxes between image pixels and model-input pixels.

Model inputs are *letterboxed* (Ultralytics style): resized keeping the aspect ratio, centred, padded with
``pad_value``; :func:`to_input_boxes` / :func:`to_image_boxes` map boxes between the two pixel spaces. Decoding
follows :mod:`ftedge.runtime.data.image` (PNG/JPEG only, EXIF orientation, RGB; its error wording for bad files).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftedge.errors import DataError, ImageError
from ftedge.runtime.data.image import FORMATS, ORIENTATION, ImageSpec, _pil, _to_rgb, load_image

TRANSPOSED = (5, 6, 7, 8)        # EXIF orientations that swap width and height
# The most pixels one image may decode to (a JPEG's after its DCT reduction, a PNG's in full), checked from the
# header before anything is decoded: a 150 KB 16-bit PNG can declare 8900x8900 pixels, which take ~14 bytes each
# on the way to RGB (about 1.1 GB); at this cap an image peaks near 0.5 GB.
MAX_DECODE_PIXELS = 36_000_000
_PROBE = ImageSpec("image", (1, 1), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # only to get image.py's error for a file


@dataclass(frozen=True)
class LetterboxSpec:
    """A detection bundle's image input: letterbox to ``size``, then ``((pixels * scale) - mean) / std``."""

    input: str
    size: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1 / 255
    pad_value: int = 114


def letterbox_spec(preprocessing: dict) -> LetterboxSpec:
    """The :class:`LetterboxSpec` of a manifest's ``preprocessing``; ImageError naming what is wrong otherwise."""
    pp = preprocessing if isinstance(preprocessing, dict) else {}
    redo = "re-export the bundle for detection"
    if pp.get("type") != "image" or pp.get("resize") != "letterbox":
        what = (f"type {pp.get('type')!r}, resize {pp.get('resize')!r}" if pp else "no image preprocessing")
        raise ImageError(f"the bundle's preprocessing is not a letterboxed image input ({what}; detection needs "
                         f"type 'image', resize 'letterbox'); {redo}")
    for key, known in (("layout", "NCHW"), ("channels", 3)):
        if pp.get(key, known) != known:
            raise ImageError(f"image preprocessing {key}={pp[key]!r} is not supported (only {known!r}); {redo}")
    name = pp.get("input")
    if not isinstance(name, str) or not name:
        raise ImageError(f"image preprocessing names no input ('input': {name!r}); {redo}")
    try:
        h, w = (int(v) for v in pp["size"])
        mean = tuple(float(v) for v in pp["mean"])
        std = tuple(float(v) for v in pp["std"])
        scale = float(pp.get("scale", 1 / 255))
        pad = pp.get("pad_value", 114)
        pad_ok = not isinstance(pad, bool) and float(pad).is_integer() and 0 <= float(pad) <= 255
    except (KeyError, TypeError, ValueError) as exc:
        raise ImageError(f"malformed image preprocessing ({pp}): {type(exc).__name__} {exc}; {redo}") from exc
    if (h < 1 or w < 1 or len(mean) != 3 or len(std) != 3 or min(std) <= 0 or not pad_ok
            or not all(math.isfinite(v) for v in (*mean, *std, scale)) or scale <= 0):
        raise ImageError(f"malformed image preprocessing (size {pp.get('size')}, mean {pp.get('mean')}, std "
                         f"{pp.get('std')}, scale {pp.get('scale')}, pad_value {pad!r}): need H,W ≥ 1, three means, "
                         f"three positive stds, a positive scale and a pad_value in 0..255; {redo}")
    return LetterboxSpec(name, (h, w), mean, std, scale, int(float(pad)))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Letterbox:
    """How an original image maps into the model input: ``input = original * scale + (pad_x, pad_y)``."""

    scale: float
    pad_x: float
    pad_y: float
    height: int  # the original (EXIF-oriented) image's
    width: int


def _geometry(height: int, width: int, size: tuple[int, int]) -> tuple[Letterbox, int, int]:
    """The letterbox of a ``height``×``width`` image into ``size`` and the resized (unpadded) width, height."""
    out_h, out_w = size
    r = min(out_h / height, out_w / width)
    new_w, new_h = max(1, round(width * r)), max(1, round(height * r))
    return Letterbox(r, float((out_w - new_w) // 2), float((out_h - new_h) // 2), height, width), new_w, new_h


def letterbox_geometry(height: int, width: int, size: tuple[int, int]) -> Letterbox:
    """The letterbox a ``height``×``width`` image gets in ``size`` (what :func:`load_letterboxed` applies), without
    decoding it: boxes can be mapped into model-input pixels from the image's size alone."""
    return _geometry(height, width, size)[0]


def _paste(pixels: np.ndarray, lb: Letterbox, new_w: int, new_h: int, size: tuple[int, int],
           pad: float) -> np.ndarray:
    """Resize ``pixels`` (uint8 HxWx3, or float32 HxW for 16-bit grayscale) and centre it on a padded canvas."""
    Image, _ = _pil()
    if pixels.shape[:2] != (new_h, new_w):
        img = Image.fromarray(pixels, mode="F") if pixels.dtype == np.float32 else Image.fromarray(pixels)
        pixels = np.asarray(img.resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=pixels.dtype)
    canvas = np.full((*size, *pixels.shape[2:]), pad, dtype=pixels.dtype)
    x, y = int(lb.pad_x), int(lb.pad_y)
    canvas[y:y + new_h, x:x + new_w] = pixels
    return canvas


def letterbox(img_rgb: np.ndarray, size: tuple[int, int], pad_value: int = 114) -> tuple[np.ndarray, Letterbox]:
    """uint8 HxWx3 → uint8 ``size`` (H, W) x3: resized keeping the aspect ratio (Pillow bilinear), centred, padded
    with ``pad_value`` (the odd pixel of an uneven pad goes right / bottom, as Ultralytics does)."""
    arr = np.asarray(img_rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or 0 in arr.shape:
        raise ImageError(f"letterbox needs a uint8 HxWx3 image, got {arr.dtype}{list(arr.shape)}")
    lb, new_w, new_h = _geometry(arr.shape[0], arr.shape[1], (int(size[0]), int(size[1])))
    return _paste(arr, lb, new_w, new_h, (int(size[0]), int(size[1])), pad_value), lb


def _decode(path: Path, draft: int | None = None, pixels: bool = True) -> tuple[np.ndarray | None, int, int]:
    """Decode one PNG/JPEG: (pixels, height, width), the size being the full-resolution EXIF-oriented one. Pixels are
    uint8 HxWx3 RGB, or float32 HxW on 0..1 for 16-bit grayscale; a big JPEG decodes at a reduced DCT scale, never
    below ``draft`` pixels a side. ``pixels=False`` only verifies the file (still decoded whole, at 1/8 scale for a
    JPEG). ImageError if it cannot be used."""
    Image, ImageOps = _pil()
    try:
        if path.stat().st_size == 0:
            raise ValueError("empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is an error, not a warning
            with Image.open(path, formats=FORMATS) as img:  # reads the header only
                width, height = img.size
                if img.format == "JPEG" and (draft or not pixels):
                    img.draft(None, (draft, draft) if draft else (1, 1))
                _check_pixels(path, img.size, (width, height))
                img.load()
                orientation = img.getexif().get(ORIENTATION, 1)
                if orientation in TRANSPOSED:
                    width, height = height, width
                if not pixels:
                    return None, height, width
                if orientation != 1:
                    img = ImageOps.exif_transpose(img)
                rgb = _to_rgb(img, Image)
                return np.array(rgb, dtype=np.float32 if rgb.mode == "F" else np.uint8), height, width
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError… on bad files
        raise _image_error(path, exc) from exc


def _check_pixels(path: Path, decoded: tuple[int, int], full: tuple[int, int]) -> None:
    """ImageError naming ``path`` when decoding it would produce more than MAX_DECODE_PIXELS pixels."""
    if decoded[0] * decoded[1] > MAX_DECODE_PIXELS:
        raise ImageError(f"image {path} is too large to decode: {full[0]}x{full[1]} pixels"
                         + (f" (decoded at {decoded[0]}x{decoded[1]})" if decoded != full else "")
                         + f", above the {MAX_DECODE_PIXELS:,}-pixel limit for detection images; downscale or tile "
                         "it, or remove it")


def _image_error(path: Path, exc: Exception) -> ImageError:
    """The ImageError :mod:`ftedge.runtime.data.image` gives for the same file, so both loaders word it alike."""
    if isinstance(exc, ImageError):
        return exc
    try:
        load_image(path, _PROBE)
    except ImageError as canonical:
        return canonical
    except Exception:  # noqa: BLE001 - e.g. the file vanished: fall through to our own wording
        pass
    return ImageError(f"cannot decode image ({exc or type(exc).__name__}); re-save or remove it")


def read_rgb(path: str | Path) -> np.ndarray:
    """The decoded uint8 HxWx3 RGB pixels of a PNG/JPEG (EXIF orientation applied); ImageError if unusable."""
    arr, _, _ = _decode(Path(path))
    assert arr is not None
    if arr.dtype == np.float32:
        arr = np.repeat((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)[:, :, None], 3, axis=2)
    return arr


def load_letterboxed(path: str | Path, spec: LetterboxSpec) -> tuple[np.ndarray, Letterbox]:
    """Decode a PNG/JPEG, letterbox it to ``spec.size`` and normalize: float32 [3, H, W] and its :class:`Letterbox`
    (in the original image's full-resolution, EXIF-oriented pixels). ImageError if the file cannot be used."""
    arr, height, width = _decode(Path(path), draft=max(spec.size))
    assert arr is not None
    lb, new_w, new_h = _geometry(height, width, spec.size)
    if arr.dtype == np.float32:  # 16-bit grayscale, already on 0..1 (as runtime/data/image.py treats it)
        x = np.repeat(_paste(arr, lb, new_w, new_h, spec.size, spec.pad_value / 255)[:, :, None], 3, axis=2)
    else:
        x = _paste(arr, lb, new_w, new_h, spec.size, spec.pad_value).astype(np.float32) * np.float32(spec.scale)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32), lb


def _boxes(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim < 1 or b.shape[-1] != 4:
        raise DataError(f"boxes must be [..., 4] (x1, y1, x2, y2), got shape {list(b.shape)}")
    return b


def to_input_boxes(boxes: np.ndarray, lb: Letterbox) -> np.ndarray:
    """x1 y1 x2 y2 boxes in original-image pixels → model-input pixels (float32, same shape)."""
    return (_boxes(boxes) * lb.scale + np.array([lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y])).astype(np.float32)


def to_image_boxes(boxes: np.ndarray, lb: Letterbox) -> np.ndarray:
    """The inverse of :func:`to_input_boxes`, clipped to the original image (float32, same shape)."""
    b = (_boxes(boxes) - np.array([lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y])) / lb.scale
    return np.clip(b, 0.0, np.array([lb.width, lb.height, lb.width, lb.height], np.float64)).astype(np.float32)
