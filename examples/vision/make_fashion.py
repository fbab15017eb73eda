"""Write Fashion-MNIST product photos as PNG files, a folder per label (REAL data, offline).

    python examples/vision/make_fashion.py --split train --n 500 --seed 0 -o data/fashion/train
    python examples/vision/make_fashion.py --split test --n 1000 --seed 0 -o data/fashion/test
    # → data/fashion/train/<label>/<index>.png, e.g. data/fashion/train/Ankle_boot/04211.png

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, Zalando Research) is 70,000 REAL Zalando product photos
(60,000 ``train`` + 10,000 ``t10k``), each reduced to 28×28 8-bit grayscale, 10 classes. It is read from the
Debian package ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``), which installs the four
original gzipped IDX files in ``/usr/share/datasets/fashion-mnist/``; they are parsed here with gzip + numpy
(no torchvision, no download). ``--root`` or ``$FASHION_MNIST_DIR`` points elsewhere.

Pixels are written as stored (the data set's polarity: a light product on a black background, 0 = black);
``--invert`` writes dark on white (the look of the original catalogue photos). Folder names are the class names
made folder-safe (:data:`LABELS`: ``T-shirt_top`` … ``Ankle_boot``); file names are the image's index in
its split, zero-padded, so any file can be traced back. Samples are stratified by label (n // 10 per class,
the remainder spread over randomly chosen classes) and reproducible from ``--seed``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import struct
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
APT_PACKAGE = "dataset-fashion-mnist"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
SPLITS = {"train": "train", "test": "t10k", "t10k": "t10k"}
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801   # IDX: 0x08 = unsigned byte, then 3 / 1 dimensions


def folder_safe(name: str) -> str:
    """A class name as a folder name: '/' and spaces become '_' ("T-shirt/top" → "T-shirt_top")."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


LABELS = [folder_safe(c) for c in CLASS_NAMES]   # folder names, in label-index order


def root_dir(root: str | Path | None = None) -> Path:
    return Path(root or os.environ.get("FASHION_MNIST_DIR") or DEFAULT_ROOT)


def _files(split: str, root: Path) -> tuple[Path, Path]:
    if split not in SPLITS:
        raise SystemExit(f"unknown split {split!r}: use train or test (t10k)")
    stem = SPLITS[split]
    return root / f"{stem}-images-idx3-ubyte.gz", root / f"{stem}-labels-idx1-ubyte.gz"


def read_idx(path: Path, magic: int) -> np.ndarray:
    """One gzipped IDX file (unsigned-byte data) as a uint8 array of the shape its header gives."""
    if not path.is_file():
        raise SystemExit(f"Fashion-MNIST file {path} not found: install the Debian package {APT_PACKAGE} "
                         f"(sudo apt-get install {APT_PACKAGE}) or point --root / $FASHION_MNIST_DIR at a folder "
                         "holding the four *-ubyte.gz files")
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise SystemExit(f"{path}: not an IDX file (only {len(data)} bytes)")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise SystemExit(f"{path}: IDX magic {found:#010x}, expected {magic:#010x}; is the file corrupt?")
    ndim = found & 0xFF
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise SystemExit(f"{path}: header says {dims} ({int(np.prod(dims))} bytes), body has {body.size}; truncated?")
    return body.reshape(dims)


@lru_cache(maxsize=4)
def load(split: str, root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of ``split`` (train: 60,000; test/t10k: 10,000)."""
    img_path, lab_path = _files(split, root_dir(root))
    images, labels = read_idx(img_path, IMAGE_MAGIC), read_idx(lab_path, LABEL_MAGIC).astype(np.int64)
    if len(images) != len(labels):
        raise SystemExit(f"{img_path.name} has {len(images)} images, {lab_path.name} {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= len(LABELS):
        raise SystemExit(f"{lab_path}: labels outside 0..{len(LABELS) - 1}")
    images.flags.writeable = False
    return images, labels


def _digits_module():  # noqa: ANN202 - the sibling make_digits.py (its stratified sampler is shared)
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_digits", Path(__file__).with_name("make_digits.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def stratified(labels: np.ndarray, n: int, seed: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """``n`` indices spread evenly over the labels (sorted), drawn with ``seed``, none from ``exclude``
    (``make_digits.stratified``: the same sampler as the digits benchmark)."""
    return _digits_module().stratified(labels, n, seed, exclude)


def write(out: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, invert: bool = False) -> list[str]:
    """Write ``images[indices]`` as 8-bit grayscale ``out/<label>/<index>.png``; the files, relative to ``out``."""
    from PIL import Image

    files = []
    for i in indices:
        px = 255 - images[i] if invert else images[i]
        folder = out / LABELS[int(labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{int(i):05d}.png"
        Image.fromarray(np.ascontiguousarray(px), mode="L").save(path)
        files.append(path.relative_to(out).as_posix())
    return files


def write_sample(out: Path, split: str, n: int, seed: int, invert: bool = False,
                 root: str | None = None) -> np.ndarray:
    """A stratified sample of ``n`` images of ``split`` written under ``out``; the indices written."""
    images, labels = load(split, root)
    idx = stratified(labels, n, seed)
    write(out, images, labels, idx, invert)
    return idx


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", choices=["train", "test"], default="train", help="train (60,000) or test (t10k, 10,000)")
    p.add_argument("--n", type=int, default=500, help="images to write, stratified by label (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder (<label>/<index>.png in it)")
    p.add_argument("--invert", action="store_true", help="dark product on white instead of the stored polarity")
    p.add_argument("--root", help=f"folder of the *-ubyte.gz files (default $FASHION_MNIST_DIR or {DEFAULT_ROOT})")
    args = p.parse_args(argv)
    idx = write_sample(args.out, args.split, args.n, args.seed, args.invert, args.root)
    _, labels = load(args.split, args.root)
    counts = {LABELS[c]: int((labels[idx] == c).sum()) for c in range(len(LABELS))}
    print(json.dumps({"split": args.split, "n": len(idx), "seed": args.seed, "out": str(args.out), "per_class": counts,
                      "data": "REAL Zalando product photos (Fashion-MNIST), 28x28 grayscale PNG"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
