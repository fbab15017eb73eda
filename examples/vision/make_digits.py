"""Write scikit-learn's handwritten digits as PNG files, a folder per label (REAL data, offline).

    python examples/vision/make_digits.py data/digits --train 500 --test 500 --seed 0
    # → data/digits/train/<0..9>/digit_0042.png and data/digits/test/<0..9>/…

``sklearn.datasets.load_digits`` ships 1,797 real handwritten digits (UCI "Optical Recognition of
Handwritten Digits": 43 writers, 32×32 bitmaps reduced to 8×8 blocks of 0..16 ink counts). Each becomes
an 8×8 8-bit grayscale PNG, dark ink on white paper (``255 - round(v * 255 / 16)``; ``--no-invert``
keeps the original white-on-black); the device resizes it to the bundle's input size. Train and test
sets are disjoint, stratified by label and reproducible from ``--seed``; file names keep the index in
``load_digits`` so any row can be traced back.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

LABELS = [str(d) for d in range(10)]


def digits() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [1797, 8, 8] with ink = 255, labels int [1797]) from scikit-learn."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.round(d.images * (255 / 16)).astype(np.uint8), d.target.astype(np.int64)


def stratified(labels: np.ndarray, n: int, seed: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """``n`` indices spread evenly over the labels (sorted), drawn with ``seed``, none from ``exclude``."""
    rng = np.random.default_rng(seed)
    pool = np.setdiff1d(np.arange(len(labels)), exclude if exclude is not None else [])
    classes = np.unique(labels)
    per = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
    picked = []
    for c, k in zip(classes, rng.permutation(per)):
        members = pool[labels[pool] == c]
        if k > len(members):
            raise SystemExit(f"only {len(members)} images of class {c} left, {k} asked")
        picked.extend(rng.choice(members, k, replace=False))
    return np.sort(np.asarray(picked, dtype=np.int64))


def split(n_train: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint stratified (train, test) indices; the test set depends on ``seed`` and ``n_test`` only."""
    _, y = digits()
    test = stratified(y, n_test, seed)
    return stratified(y, n_train, seed + 1, exclude=test), test


def write(out: Path, indices: np.ndarray, invert: bool = True, mode: str = "L") -> list[str]:
    """Write ``indices`` as ``out/<label>/digit_NNNN.png`` (Pillow ``mode``: L, RGB, P, RGBA …)."""
    from PIL import Image

    images, labels = digits()
    files = []
    for i in indices:
        px = 255 - images[i] if invert else images[i]
        folder = out / LABELS[labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"digit_{i:04d}.png"
        Image.fromarray(px, mode="L").convert(mode).save(path)
        files.append(path.relative_to(out).as_posix())
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output folder (train/ and test/ are created in it)")
    p.add_argument("--train", type=int, default=500, help="training images (default 500)")
    p.add_argument("--test", type=int, default=500, help="test images (default 500, disjoint from train)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-invert", dest="invert", action="store_false", help="white ink on black (sklearn's polarity)")
    args = p.parse_args(argv)
    train, test = split(args.train, args.test, args.seed)
    write(args.out / "train", train, args.invert)
    write(args.out / "test", test, args.invert)
    print(json.dumps({"train": len(train), "test": len(test), "seed": args.seed, "out": str(args.out),
                      "data": "REAL handwritten digits (scikit-learn load_digits), 8x8 PNG"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
