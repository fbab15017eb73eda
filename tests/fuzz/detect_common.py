"""What the three detection-data harnesses (``detect_yaml``, ``detect_labels``, ``detect_coco``) share: a tiny
real dataset in a scratch data root, and the contract check of :func:`load_detection` on it.

Contract: a ``DataError`` (any ``FtedgeError``), or a dataset whose every kept box is finite, of positive size and
inside its image, whose classes index the labels, whose images all lie inside the data root, and whose skip/drop
lists are bounded and match their counts; no hang, no memory bomb (an alias bomb, a huge declared count).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ftedge.runtime.tasks.detect.bounds import MAX_LISTED
from ftedge.runtime.tasks.detect.data import load_detection
from PIL import Image

from ftedge.errors import FtedgeError
from tests.fuzz.common import guarded, workdir

LABELS = ["cat", "dog", "bird"]
YAML = "path: .\ntrain: images/train\nval: images/train\nnames: [cat, dog, bird]\n"
LABEL = "0 0.5 0.5 0.4 0.4\n2 0.25 0.25 0.2 0.3\n"


def dataset(target: str) -> Path:
    """A scratch data root holding ``ds/``: two labelled PNGs (32x24, 24x32) in YOLO layout, and a COCO JSON's
    place beside them; a PNG outside the root (``secret.png``) that nothing may reach."""
    top = workdir(target)
    root = top / "root"
    for name, size in (("a.png", (32, 24)), ("b.png", (24, 32))):
        image = root / "ds" / "images" / "train" / name
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(image)
        label = root / "ds" / "labels" / "train" / (image.stem + ".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text(LABEL)
    Image.new("RGB", (8, 8)).save(top / "secret.png")
    (root / "ds" / "data.yaml").write_text(YAML)
    return root


def check_load(data: Path, root: Path, split: str = "train") -> None:
    """``load_detection(data, root=root)`` under the contract; raises ContractViolation."""
    with guarded("load_detection", (FtedgeError,)):
        ds = load_detection(data, LABELS, split=split, root=root)
        real_root = root.resolve()
        for s in ds.samples:
            assert real_root in s.image.resolve().parents, f"{s.image} is outside the data root"
            h, w = s.size
            b = s.boxes
            assert b.shape == (len(s.classes), 4) and np.isfinite(b).all(), f"boxes {b}"
            assert ((b[:, 2] - b[:, 0]) >= 1).all() and ((b[:, 3] - b[:, 1]) >= 1).all(), f"empty box {b}"
            assert (b[:, :2] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all(), f"box outside {b}"
            assert ((s.classes >= 0) & (s.classes < len(LABELS))).all(), f"classes {s.classes}"
        assert len(ds.skipped) == min(ds.skipped_count, MAX_LISTED), "skipped list and count disagree"
        assert len(ds.dropped_boxes) == min(ds.dropped_count, MAX_LISTED), "dropped list and count disagree"
