"""Write the detection worked example's data: SYNTHETIC shop scenes, real photos pasted onto real photos.

    python examples/detect/make_shop.py OUT [--train 50] [--heldout 200] [--seed 0] [--size 320]
        [--products sneaker,bag,ankle_boot] [--items shop|category] [--format yolo|coco|both] [--root DIR] [--json]

"A shop's three products": a detector is fine-tuned on the device to find the shop's products in photos. No
labelled detection photos are available offline, so every scene is a SYNTHETIC composite of REAL pixels:

- backgrounds: REAL photos, the ones shipped with scikit-image (``skimage/data``: astronaut, brick, camera, cat,
  coffee, coins, grass, gravel, moon, motorcycle, rocket, a Hubble field, microscopy, a retina; see
  :data:`SKIMAGE_PHOTOS`; drawings, test charts and text pages are left out) and scikit-learn's two sample
  photos (china.jpg, flower.jpg). Each scene is a random crop of one (random scale and slight stretch, random
  horizontal flip, brightness ×0.8–1.2) resized to ``--size`` px on the longer side, in one of the aspect ratios
  4:3, 3:4, 16:9, 9:16 and 1:1 (so a detector's letterboxing matters);
- objects: REAL Zalando product photos from Fashion-MNIST (28×28 grayscale, a light product on black; Debian
  package ``dataset-fashion-mnist``), upscaled with Pillow BICUBIC to about 36–120 px (at most 60 % of the
  scene's shorter side), tinted with a random colour (the photo's gray level times an RGB colour) and pasted with
  a soft alpha mask from the intensity (``alpha = clip(4 * gray / 255, 0, 1)``, values under 0.2 set to 0).
  The label box is the tight bounding box of that mask's nonzero pixels (no pixel outside it changes), not the
  pasted square. 1–4 of the shop's products per scene, plus 0–2 DISTRACTORS (other Fashion-MNIST items, see
  ``--items``), which are not labelled: the detector must tell the shop's products from other items. 10 % of each split's scenes (rounded half up) hold no product at all
  (background and distractors only, an empty label file). A placement is redrawn (up to 50 times, then the
  object is left out) when its box has IoU > 0.3 with an object already placed, or would hide more than 30 % of
  an earlier object's solid mask (alpha >= 0.5): every object stays at least 70 % visible.

``--items shop`` (default): the shop sells ONE item of each product class (one Fashion-MNIST photo of the train
file, chosen so that it fills its frame, with its own colour: ``SeedSequence([seed, 2])``), and every product in
every scene, training and held out, is that item: at another size, place, background and light (its colour
×0.8–1.1), mirrored half the time. Distractors then come from every class, other sneakers, bags and boots
included (other brands' items), never the shop's own. ``--items category``: any item of the product classes is a
product, each drawn anew (class-level detection: the held-out scenes show other items of the classes than the
training ones, a much harder task for a few dozen images).

Training scenes take their distractors (and, with ``--items category``, their products) from Fashion-MNIST's
``train`` split, held-out (``val``) scenes from ``t10k``: different physical items (no image occurs in both
splits), each instance used at most once per split (while a class has unused ones), drawn from separate random
streams (``SeedSequence([seed, 0])`` and ``[seed, 1]``). The background photos are shared: it is one shop.

Output (the Ultralytics YOLO layout, plus COCO json):

- ``images/{train,val}/NNNNNN.jpg`` (JPEG quality 92, 4:2:0), numbered from 000001;
- ``labels/{train,val}/NNNNNN.txt``: ``class cx cy w h`` per product, normalized to the image, 6 decimals; empty
  for a background-only scene (``--format yolo`` or ``both``);
- ``data.yaml``: ``path: .`` (this folder), ``train: images/train``, ``val: images/val``, ``nc``, ``names``
  (``--format yolo`` or ``both``);
- ``annotations/instances_{train,val}.json``: COCO detection json, ``file_name`` relative to OUT, ``bbox``
  ``[x, y, w, h]`` in pixels, ``category_id`` 1..nc in ``--products`` order (``--format coco`` or ``both``);
- ``scenes.json``: where every pixel came from (background photo and crop, Fashion-MNIST split and index of every
  product and distractor, its colour and box);
- ``SYNTHETIC.txt``: what is synthetic and what is real.

Rerunning into the same OUT replaces the scenes of an earlier run (``NNNNNN.jpg`` / ``.txt`` files there are
deleted first). Deterministic: the same arguments and library versions give the same bytes. Fashion-MNIST's four
gzipped IDX files are parsed with gzip + numpy: a big-endian header (magic ``0x00000803`` for images: two zero
bytes, type 0x08 = unsigned byte, 3 dimensions; ``0x00000801`` for labels, 1 dimension), one uint32 per
dimension, then the bytes row-major; images 0 = black.
"""

from __future__ import annotations

import argparse
import colorsys
import gzip
import json
import os
import re
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
APT_PACKAGE = "dataset-fashion-mnist"
# Fashion-MNIST label index -> name used here (the data set's "T-shirt/top" ... "Ankle boot").
CLASSES = ("t_shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
ALIASES = {"t_shirt_top": "t_shirt", "tshirt": "t_shirt", "top": "t_shirt", "trousers": "trouser",
           "sneakers": "sneaker", "bags": "bag", "ankle_boots": "ankle_boot", "boot": "ankle_boot"}
DEFAULT_PRODUCTS = ("sneaker", "bag", "ankle_boot")
DEFAULT_PRODUCTS_IDX = tuple(CLASSES.index(n) for n in DEFAULT_PRODUCTS)
FMNIST_SPLIT = {"train": "train", "val": "t10k"}   # our split -> the Fashion-MNIST file stem it draws from
STREAM = {"train": 0, "val": 1}                    # SeedSequence([seed, STREAM[split]])
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801

# Real photos in scikit-image's data folder (scikit-image 0.19-0.26 ship them all; missing ones are skipped).
# Left out: color.png (a rendered colour wheel), chessboard_*.png, logo.png, phantom.png (drawings / test charts),
# text.png and page.png (text), horse.png (a binary silhouette), microaneurysms.png (102x102 px), and the
# non-photo files (*.npy, *.npz, *.tif, *.gif, *.xml).
SKIMAGE_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
                  "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
                  "moon.png", "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg")
MIN_PHOTOS = 5

ASPECTS = ((4, 3), (3, 4), (16, 9), (9, 16), (1, 1))   # scene width : height
CROP_SIDE = (0.45, 1.0)        # crop side as a fraction of the largest crop of the (stretched) aspect that fits
STRETCH = 0.15                 # crop aspect = scene aspect * exp(U(-STRETCH, STRETCH))
BRIGHTNESS = (0.8, 1.2)
OBJECT_SIDE = (36, 120)        # side of the upscaled 28x28 photo, px
OBJECT_MAX_FRACTION = 0.6      # ... at most this fraction of the scene's shorter side
OBJECT_ASPECT = 0.12           # object width / height = exp(U(-OBJECT_ASPECT, OBJECT_ASPECT))
ALPHA_GAIN = 4.0               # alpha = clip(ALPHA_GAIN * gray / 255, 0, 1)
ALPHA_MIN = 0.2                # alpha below this is set to 0: the box is exactly the changed pixels
MIN_BOX = 8                    # px: an instance whose tight box is smaller (a near-black photo) is skipped
PRODUCTS_PER_SCENE = (1, 4)
ITEMS = ("shop", "category")   # --items: the shop's own three items, or any item of the three classes
LIGHTING = (0.8, 1.1)          # shop items: their own colour times this (the scene's light)
ITEM_MIN_SIDE = 48             # shop items: an item whose mask fills at least this much of a 96-px upscale
DISTRACTORS_PER_SCENE = (0, 2)
EMPTY_FRACTION = 0.10
MAX_IOU = 0.3
MIN_VISIBLE = 0.7              # fraction of an object's solid mask (alpha >= SOLID) that must stay visible
SOLID = 0.5
PLACEMENT_TRIES = 50
JPEG_QUALITY = 92
SCENE_FILE = re.compile(r"^\d{6}\.(jpg|txt)$")


class DataMissing(Exception):
    """A data source this script needs is missing or unreadable (reported as ``error: ...``, exit 1)."""


# ---------------------------------------------------------------------------------------------- Fashion-MNIST

def read_idx(path: Path, magic: int) -> np.ndarray:
    """One gzipped IDX file of unsigned bytes as a uint8 array of the shape its header gives."""
    if not path.is_file():
        raise DataMissing(f"Fashion-MNIST file {path} not found: install it with `sudo apt install {APT_PACKAGE}` "
                          "(or point --root / $FASHION_MNIST_DIR at a folder holding the four *-ubyte.gz files)")
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataMissing(f"{path}: cannot read ({e})") from e
    if len(data) < 8:
        raise DataMissing(f"{path}: not an IDX file ({len(data)} bytes)")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise DataMissing(f"{path}: IDX magic {found:#010x}, expected {magic:#010x}")
    ndim = found & 0xFF
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataMissing(f"{path}: header says {dims}, body has {body.size} bytes (truncated?)")
    return body.reshape(dims)


def fashion_root(root: str | Path | None = None) -> Path:
    return Path(root or os.environ.get("FASHION_MNIST_DIR") or DEFAULT_ROOT)


def load_fashion(stem: str, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of ``train`` or ``t10k``."""
    r = fashion_root(root)
    images = read_idx(r / f"{stem}-images-idx3-ubyte.gz", IMAGE_MAGIC)
    labels = read_idx(r / f"{stem}-labels-idx1-ubyte.gz", LABEL_MAGIC).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise DataMissing(f"{r}: {stem} images {images.shape} do not match labels {labels.shape}")
    return images, labels


# ---------------------------------------------------------------------------------------------- backgrounds

def background_photos() -> list[tuple[str, Any]]:
    """``(name, PIL RGB image)`` of every background photo, in a fixed order."""
    try:
        import skimage
    except ImportError as e:
        raise DataMissing("scikit-image is not installed (its sample photos are the backgrounds): "
                          "pip install scikit-image") from e
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as e:
        raise DataMissing("scikit-learn is not installed (its two sample photos are backgrounds too): "
                          "pip install scikit-learn") from e
    from PIL import Image

    folder = Path(skimage.__file__).parent / "data"
    photos = []
    for name in SKIMAGE_PHOTOS:
        path = folder / name
        if path.is_file():
            with Image.open(path) as im:
                photos.append((f"skimage/{name}", im.convert("RGB")))
    sample = load_sample_images()
    for fname, arr in zip(sample.filenames, sample.images):
        photos.append((f"sklearn/{Path(fname).name}", Image.fromarray(np.asarray(arr, dtype=np.uint8), "RGB")))
    if len(photos) < MIN_PHOTOS:
        raise DataMissing(f"only {len(photos)} background photos found (scikit-image's data folder {folder} "
                          "lacks most of its sample photos): pip install --force-reinstall scikit-image")
    return photos


def scene_size(rng: np.random.Generator, size: int) -> tuple[int, int]:
    aw, ah = ASPECTS[int(rng.integers(len(ASPECTS)))]
    return (size, max(1, round(size * ah / aw))) if aw >= ah else (max(1, round(size * aw / ah)), size)


def make_background(rng: np.random.Generator, photos: list[tuple[str, Any]], width: int,
                    height: int) -> tuple[np.ndarray, dict]:
    """A random crop of a random photo (flip, brightness jitter) as uint8 [height, width, 3], and its recipe."""
    from PIL import Image

    k = int(rng.integers(len(photos)))
    name, im = photos[k]
    pw, ph = im.size
    aspect = width / height * float(np.exp(rng.uniform(-STRETCH, STRETCH)))
    cw_max = min(pw, ph * aspect)
    side = rng.uniform(*CROP_SIDE)
    cw, ch = cw_max * side, cw_max * side / aspect
    x0, y0 = rng.uniform(0, pw - cw), rng.uniform(0, ph - ch)
    flip = bool(rng.random() < 0.5)
    gain = float(rng.uniform(*BRIGHTNESS))
    box = (float(x0), float(y0), float(x0 + cw), float(y0 + ch))
    out = im.resize((width, height), Image.Resampling.BILINEAR, box=box)
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.clip(np.rint(np.asarray(out, dtype=np.float32) * gain), 0, 255).astype(np.uint8)
    return arr, {"photo": name, "crop": [round(v, 2) for v in box], "flip": flip, "brightness": round(gain, 4)}


# ---------------------------------------------------------------------------------------------- objects

def random_colour(rng: np.random.Generator) -> np.ndarray:
    """An RGB multiplier in [0, 1]: mostly saturated colours, sometimes white / light gray."""
    h = rng.random()
    s = rng.uniform(0.0, 0.15) if rng.random() < 0.15 else rng.uniform(0.35, 1.0)
    v = rng.uniform(0.75, 1.0)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)


def tight_box(alpha: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x, y, w, h)`` of the nonzero pixels of a mask (pixel edges: x .. x + w), or None if it is empty."""
    ys, xs = np.nonzero(alpha > 0)
    if xs.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def object_patch(gray28: np.ndarray, width: int, height: int,
                 colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A Fashion-MNIST photo upscaled (BICUBIC) to ``width`` x ``height``, tinted and cropped to its mask's tight
    box: (RGB float32 [h, w, 3] in 0..255, alpha float32 [h, w] in {0} ∪ [ALPHA_MIN, 1]). Empty if the photo is
    blank."""
    from PIL import Image

    up = Image.fromarray(np.ascontiguousarray(gray28), "L").resize((width, height), Image.Resampling.BICUBIC)
    g = np.asarray(up, dtype=np.float32) / 255.0
    alpha = np.clip(g * ALPHA_GAIN, 0.0, 1.0)
    alpha[alpha < ALPHA_MIN] = 0.0
    box = tight_box(alpha)
    if box is None:
        return np.zeros((0, 0, 3), np.float32), np.zeros((0, 0), np.float32)
    x, y, w, h = box
    rgb = g[y:y + h, x:x + w, None] * colour[None, None, :] * 255.0
    return rgb, alpha[y:y + h, x:x + w]


def paste(canvas: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    """Alpha-blend a patch into a float32 [H, W, 3] canvas at (x, y), in place; nothing outside the patch
    changes, nor any pixel of it whose alpha is 0."""
    h, w = alpha.shape
    region = canvas[y:y + h, x:x + w]
    a = alpha[..., None]
    region[:] = np.where(a > 0, region * (1.0 - a) + rgb * a, region)


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """IoU of two ``(x, y, w, h)`` boxes."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def hides_too_much(owner: np.ndarray, solid: np.ndarray, x: int, y: int, visible: list[int], full: list[int]) -> bool:
    """Would pasting a patch whose solid mask is ``solid`` at (x, y) leave an earlier object (``owner`` map: the
    index of the object on top of each pixel, -1 for none) less than MIN_VISIBLE of its solid pixels visible?"""
    h, w = solid.shape
    under = owner[y:y + h, x:x + w][solid]
    if under.size == 0 or under.max() < 0:
        return False
    covered = np.bincount(under[under >= 0], minlength=len(visible))
    return any((visible[j] - int(covered[j])) < MIN_VISIBLE * full[j] for j in np.flatnonzero(covered))


class InstancePool:
    """Fashion-MNIST indices of one split, per class, in a random order: each drawn once until a class runs out
    (then it is reshuffled and reused; ``reused`` counts those draws)."""

    def __init__(self, labels: np.ndarray, rng: np.random.Generator, exclude: set[int] | None = None) -> None:
        self.labels, self.rng = labels, rng
        self.exclude = exclude or set()   # never drawn (the shop's own items: they are never distractors)
        self.order: dict[int, list[int]] = {}
        self.reused = 0
        self.cycled: set[int] = set()

    def draw(self, cls: int) -> int:
        if not self.order.get(cls):
            if cls in self.order:
                self.cycled.add(cls)
            self.order[cls] = [int(i) for i in self.rng.permutation(np.flatnonzero(self.labels == cls))
                               if int(i) not in self.exclude][::-1]
        if cls in self.cycled:
            self.reused += 1
        return self.order[cls].pop()


# ---------------------------------------------------------------------------------------------- scenes

@dataclass
class Scene:
    image: np.ndarray                     # uint8 [H, W, 3]
    background: np.ndarray                # uint8 [H, W, 3], before any object was pasted
    recipe: dict                          # background photo, crop, flip, brightness
    objects: list[dict] = field(default_factory=list)   # in paste order; "product" True for labelled ones

    @property
    def boxes(self) -> list[tuple[int, tuple[int, int, int, int]]]:
        """(class id, (x, y, w, h) px) of the shop's products, in paste order."""
        return [(o["class_id"], tuple(o["box"])) for o in self.objects if o["product"]]


def shop_items(images: np.ndarray, labels: np.ndarray, products: list[int], seed: int
               ) -> dict[int, tuple[int, np.ndarray]]:
    """``--items shop``: for each product class, the ONE Fashion-MNIST item (of the train file) the shop sells and
    its colour: ``{class: (index, colour)}``; an item whose photo fills its frame well is chosen."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    out = {}
    for cls in products:
        index = -1
        for index in (int(i) for i in rng.permutation(np.flatnonzero(labels == cls))):
            _, alpha = object_patch(images[index], 96, 96, np.ones(3, np.float32))
            if min(alpha.shape) >= ITEM_MIN_SIDE:
                break
        out[cls] = (index, random_colour(rng))
    return out


def make_scene(rng: np.random.Generator, photos: list[tuple[str, Any]], images: np.ndarray, pool: InstancePool,
               products: list[int], distractors: list[int], size: int, empty: bool,
               items: dict[int, tuple[int, np.ndarray]] | None = None, item_images: np.ndarray | None = None) -> Scene:
    """One composite scene: a background crop, then products (unless ``empty``) and distractors in random order.
    With ``items`` every product is the shop's own item of its class (from ``item_images``), in its own colour
    under the scene's light, mirrored half the time."""
    width, height = scene_size(rng, size)
    bg, recipe = make_background(rng, photos, width, height)
    n_products = 0 if empty else int(rng.integers(PRODUCTS_PER_SCENE[0], PRODUCTS_PER_SCENE[1] + 1))
    n_distractors = int(rng.integers(DISTRACTORS_PER_SCENE[0], DISTRACTORS_PER_SCENE[1] + 1)) if distractors else 0
    kinds = [True] * n_products + [False] * n_distractors
    rng.shuffle(kinds)
    canvas = bg.astype(np.float32)
    placed: list[tuple[int, int, int, int]] = []
    owner = np.full((height, width), -1, dtype=np.int32)
    visible: list[int] = []
    full: list[int] = []
    objects: list[dict] = []
    side_max = max(8, int(OBJECT_MAX_FRACTION * min(width, height)))
    side_lo, side_hi = min(OBJECT_SIDE[0], side_max), min(OBJECT_SIDE[1], side_max)
    for is_product in kinds:
        cls_list = products if is_product else distractors
        cls = cls_list[int(rng.integers(len(cls_list)))]
        side = rng.uniform(side_lo, side_hi)
        stretch = float(np.exp(rng.uniform(-OBJECT_ASPECT, OBJECT_ASPECT)))
        ow, oh = max(8, round(side * stretch)), max(8, round(side / stretch))
        ow, oh = min(ow, width), min(oh, height)
        if is_product and items is not None and item_images is not None:
            index, own = items[cls]
            colour = np.clip(own * rng.uniform(*LIGHTING), 0.0, 1.0).astype(np.float32)
            photo = item_images[index][:, ::-1] if rng.random() < 0.5 else item_images[index]
            rgb, alpha = object_patch(photo, ow, oh, colour)
            if min(alpha.shape) < MIN_BOX:
                continue
        else:
            colour = random_colour(rng)
            for _ in range(8):   # a near-blank photo gives a tiny mask: take the next instance of the class
                index = pool.draw(cls)
                rgb, alpha = object_patch(images[index], ow, oh, colour)
                if min(alpha.shape) >= MIN_BOX:
                    break
            else:
                continue
        h, w = alpha.shape
        solid = alpha >= SOLID
        for _ in range(PLACEMENT_TRIES):
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = (x, y, w, h)
            if (all(iou(box, p) <= MAX_IOU for p in placed)
                    and not hides_too_much(owner, solid, x, y, visible, full)):
                break
        else:
            continue
        paste(canvas, rgb, alpha, x, y)
        under = owner[y:y + h, x:x + w][solid]
        for j, k in enumerate(np.bincount(under[under >= 0], minlength=len(visible))):
            visible[j] -= int(k)
        owner[y:y + h, x:x + w][solid] = len(placed)
        visible.append(int(solid.sum()))
        full.append(int(solid.sum()))
        placed.append(box)
        objects.append({"product": is_product, "class_id": products.index(cls) if is_product else None,
                        "fmnist_label": CLASSES[cls], "fmnist_index": index, "box": list(box),
                        "colour": [round(float(c), 4) for c in colour]})
    for o, v, f in zip(objects, visible, full):
        o["visible"] = round(v / f, 3) if f else 1.0
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return Scene(image, bg, recipe, objects)


def make_split(split: str, n: int, seed: int, photos: list[tuple[str, Any]], images: np.ndarray,
               labels: np.ndarray, products: list[int], size: int,
               items: dict[int, tuple[int, np.ndarray]] | None = None, item_images: np.ndarray | None = None
               ) -> tuple[list[Scene], InstancePool]:
    """``n`` scenes of ``split`` (``train`` / ``val``), from its own random stream. With the shop's ``items``,
    distractors are drawn from every class: other items of the product classes are distractors too."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, STREAM[split]]))
    own = {i for i, _ in items.values()} if items is not None and FMNIST_SPLIT[split] == "train" else set()
    pool = InstancePool(labels, rng, own)
    distractors = [c for c in range(len(CLASSES)) if items is not None or c not in products]
    n_empty = int(n * EMPTY_FRACTION + 0.5)
    empty = set(int(i) for i in rng.choice(n, size=n_empty, replace=False)) if n_empty else set()
    scenes = [make_scene(rng, photos, images, pool, products, distractors, size, i in empty, items, item_images)
              for i in range(n)]
    return scenes, pool


# ---------------------------------------------------------------------------------------------- writing

def yolo_lines(scene: Scene) -> str:
    h, w = scene.image.shape[:2]
    rows = [f"{c} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}\n"
            for c, (x, y, bw, bh) in scene.boxes]
    return "".join(rows)


def coco_json(split: str, scenes: list[Scene], names: list[str]) -> dict:
    images, annotations = [], []
    for i, s in enumerate(scenes, 1):
        h, w = s.image.shape[:2]
        images.append({"id": i, "file_name": f"images/{split}/{i:06d}.jpg", "width": w, "height": h})
        for c, (x, y, bw, bh) in s.boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": c + 1,
                                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
    return {
        "info": {"description": f"SYNTHETIC shop scenes ({split}): real Fashion-MNIST product photos pasted onto "
                                "real scikit-image / scikit-learn sample photos by examples/detect/make_shop.py; "
                                "boxes are the tight boxes of the pasted masks",
                 "version": "1.0", "contributor": "ftedge examples/detect/make_shop.py"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": "product"} for k, n in enumerate(names)],
    }


def data_yaml(names: list[str]) -> str:
    return ("# SYNTHETIC detection data (examples/detect/make_shop.py): real Fashion-MNIST product photos pasted\n"
            "# onto real sample photos; see SYNTHETIC.txt. `path: .` is this file's folder.\n"
            "path: .\n"
            "train: images/train\n"
            "val: images/val\n"
            f"nc: {len(names)}\n"
            f"names: [{', '.join(names)}]\n")


def synthetic_note(names: list[str], photos: list[tuple[str, Any]]) -> str:
    distractors = [c for c in CLASSES if c not in names]
    return (
        "SYNTHETIC scenes: every image under images/ is a composite made by examples/detect/make_shop.py; no\n"
        "photo here was taken of a real shop, and the boxes come from the paste masks, not from a person.\n"
        "The pixels pasted together are REAL:\n"
        f"- backgrounds: random crops of {len(photos)} real sample photos shipped with scikit-image and\n"
        f"  scikit-learn ({', '.join(n for n, _ in photos)});\n"
        "- objects: real Zalando product photos from Fashion-MNIST (Xiao, Rasul & Vollgraf 2017; 28x28 grayscale),\n"
        "  upscaled and tinted with a random colour. Products (labelled): "
        f"{', '.join(names)}; distractors (not labelled): {', '.join(distractors) or 'none'}.\n"
        "images/train: products from Fashion-MNIST train; images/val (held out): from t10k (other items).\n"
        "scenes.json records the photo, crop and Fashion-MNIST index behind every scene and box.\n"
    )


def clear_old(folder: Path) -> None:
    """Delete an earlier run's scene files (``NNNNNN.jpg`` / ``.txt``) and label caches from ``folder``."""
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and SCENE_FILE.match(p.name):
                p.unlink()
    for cache in (folder.with_suffix(".cache"),):
        if cache.is_file():
            cache.unlink()


def write_split(out: Path, split: str, scenes: list[Scene], yolo: bool) -> None:
    from PIL import Image

    img_dir, lab_dir = out / "images" / split, out / "labels" / split
    clear_old(img_dir)
    clear_old(lab_dir)
    img_dir.mkdir(parents=True, exist_ok=True)
    if yolo:
        lab_dir.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(scenes, 1):
        Image.fromarray(s.image, "RGB").save(img_dir / f"{i:06d}.jpg", quality=JPEG_QUALITY)
        if yolo:
            (lab_dir / f"{i:06d}.txt").write_text(yolo_lines(s), encoding="utf-8", newline="\n")


def split_summary(split: str, scenes: list[Scene], pool: InstancePool, names: list[str]) -> dict:
    boxes = {n: 0 for n in names}
    for s in scenes:
        for c, _ in s.boxes:
            boxes[names[c]] += 1
    return {
        "scenes": len(scenes),
        "background_only": sum(1 for s in scenes if not s.boxes),
        "boxes": boxes,
        "distractors": sum(1 for s in scenes for o in s.objects if not o["product"]),
        "fashion_mnist_split": FMNIST_SPLIT[split],
        "product_indices": sorted(o["fmnist_index"] for s in scenes for o in s.objects if o["product"]),
        "distractor_indices": sorted(o["fmnist_index"] for s in scenes for o in s.objects if not o["product"]),
        "reused_instances": pool.reused,
    }


def parse_products(text: str) -> list[int]:
    """Class indices of a comma-separated product list (names as in :data:`CLASSES`, or the data set's own)."""
    out = []
    for raw in text.split(","):
        key = re.sub(r"[\s/\-]+", "_", raw.strip().lower())
        key = ALIASES.get(key, key)
        if key not in CLASSES:
            raise ValueError(f"unknown product {raw.strip()!r}: use Fashion-MNIST classes {', '.join(CLASSES)}")
        if CLASSES.index(key) in out:
            raise ValueError(f"product {key!r} given twice")
        out.append(CLASSES.index(key))
    return out


def generate(out: Path, n_train: int, n_heldout: int, seed: int = 0, size: int = 320,
             products: list[int] | None = None, fmt: str = "both", root: str | Path | None = None,
             items: str = "shop") -> dict:
    """Write the data set; returns the summary (see ``--json``). Raises :class:`DataMissing`."""
    products = list(DEFAULT_PRODUCTS_IDX if products is None else products)
    names = [CLASSES[c] for c in products]
    photos = background_photos()
    fashion = {split: load_fashion(stem, root) for split, stem in FMNIST_SPLIT.items()}   # all inputs before writing
    yolo, coco = fmt in ("yolo", "both"), fmt in ("coco", "both")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"out": str(out), "synthetic": True, "names": names, "size": size, "seed": seed,
                               "format": fmt, "items": items, "backgrounds": [n for n, _ in photos]}
    own = shop_items(*fashion["train"], products, seed) if items == "shop" else None
    if own is not None:
        summary["shop_items"] = {CLASSES[c]: {"fmnist_index": i, "colour": [round(float(v), 4) for v in col]}
                                 for c, (i, col) in own.items()}
    provenance: dict[str, list] = {}
    for split, n in (("train", n_train), ("val", n_heldout)):
        images, labels = fashion[split]
        scenes, pool = make_split(split, n, seed, photos, images, labels, products, size, own, fashion["train"][0])
        write_split(out, split, scenes, yolo)
        if coco:
            (out / "annotations").mkdir(exist_ok=True)
            (out / "annotations" / f"instances_{split}.json").write_text(
                json.dumps(coco_json(split, scenes, names), indent=1) + "\n", encoding="utf-8", newline="\n")
        provenance[split] = [{"file": f"images/{split}/{i:06d}.jpg", "width": s.image.shape[1],
                              "height": s.image.shape[0], "background": s.recipe,
                              "objects": [{**o, "name": names[o["class_id"]] if o["product"] else None}
                                          for o in s.objects]}
                             for i, s in enumerate(scenes, 1)]
        summary[split] = split_summary(split, scenes, pool, names)
    if yolo:
        (out / "data.yaml").write_text(data_yaml(names), encoding="utf-8", newline="\n")
    stale = ([] if yolo else [out / "data.yaml"]) + ([] if coco else [out / "annotations" / f"instances_{s}.json"
                                                                       for s in FMNIST_SPLIT])
    for p in stale:   # an earlier run's labels in the format not written now would describe other scenes
        if p.is_file():
            p.unlink()
    (out / "scenes.json").write_text(json.dumps({"synthetic": True, "names": names, "seed": seed, **provenance},
                                                indent=1) + "\n", encoding="utf-8", newline="\n")
    (out / "SYNTHETIC.txt").write_text(synthetic_note(names, photos), encoding="utf-8", newline="\n")
    return summary


def one_line(summary: dict, seconds: float) -> str:
    parts = []
    for split in ("train", "val"):
        s = summary[split]
        boxes = ", ".join(f"{n} {k}" for n, k in s["boxes"].items())
        parts.append(f"{split} {s['scenes']} scenes ({s['background_only']} background-only; boxes: {boxes}; "
                     f"{s['distractors']} distractors; Fashion-MNIST {s['fashion_mnist_split']})")
    return (f"{summary['out']}: SYNTHETIC composites on {len(summary['backgrounds'])} real photos, "
            f"{'; '.join(parts)}; {seconds:.1f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="output folder (created; an earlier run's scenes there are replaced)")
    ap.add_argument("--train", type=int, default=50, help="training scenes (default 50)")
    ap.add_argument("--heldout", type=int, default=200, help="held-out scenes, written as the val split (default 200)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--size", type=int, default=320, help="longer side of every scene in px (default 320)")
    ap.add_argument("--products", default=",".join(DEFAULT_PRODUCTS),
                    help=f"the shop's products, comma-separated Fashion-MNIST classes, in label order "
                         f"(default {','.join(DEFAULT_PRODUCTS)}; classes: {', '.join(CLASSES)})")
    ap.add_argument("--items", choices=ITEMS, default="shop",
                    help="shop (default): the products are the shop's own three items (one Fashion-MNIST photo "
                    "each, its own colour), in every scene, train and held out; other items of the same classes "
                    "are unlabelled distractors. category: any item of the three classes is a product (different "
                    "items in train and held-out scenes): class-level detection, a harder task")
    ap.add_argument("--format", choices=["yolo", "coco", "both"], default="both",
                    help="labels as YOLO txt + data.yaml, COCO json, or both (default both)")
    ap.add_argument("--root", help=f"folder of the Fashion-MNIST *-ubyte.gz files "
                                   f"(default $FASHION_MNIST_DIR or {DEFAULT_ROOT})")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON (with the Fashion-MNIST indices)")
    args = ap.parse_args(argv)
    try:
        products = parse_products(args.products)
    except ValueError as e:
        ap.error(str(e))
    if args.train < 0 or args.heldout < 0 or args.train + args.heldout == 0:
        ap.error("--train and --heldout must be >= 0, and not both 0")
    if args.size < 96:
        ap.error("--size must be at least 96 px")
    if args.seed < 0:
        ap.error("--seed must be >= 0")
    t0 = time.perf_counter()
    try:
        summary = generate(args.out, args.train, args.heldout, args.seed, args.size, products, args.format, args.root,
                           args.items)
    except DataMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    if args.json:
        print(json.dumps({**summary, "seconds": round(seconds, 2)}))
    else:
        print(one_line(summary, seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
