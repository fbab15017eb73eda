"""``ftedge detect --draw`` output names (issue 33, finding 14): images sharing a stem get distinct drawings,
subfolders are mirrored, and OUT_DIR may neither be the --images folder (or inside it) nor replace an input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ftedge.runtime.tasks.detect.detector import draw_paths, image_files
from PIL import Image

from ftedge.errors import UsageError


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, format="PNG" if path.suffix == ".png" else "JPEG")
    return path


def test_images_sharing_a_stem_get_distinct_drawings(tmp_path):
    images = tmp_path / "photos"
    for rel in ("a.jpg", "a.png", "a.jpg.png", "b.jpeg", "sub/a.jpg"):
        _png(images / rel)
    out = tmp_path / "out"
    targets = draw_paths(image_files(images), images, out)
    rel = sorted(t.relative_to(out).as_posix() for t in targets.values())
    assert rel == ["a.jpg.png", "a.jpg.png-1.png", "a.png.png", "b.png", "sub/a.png"]
    assert len(set(targets.values())) == len(targets) == 5


@pytest.mark.parametrize("inside", [".", "drawn"])
def test_draw_into_the_images_folder_is_refused(tmp_path, inside):
    images = tmp_path / "photos"
    _png(images / "a.png")
    with pytest.raises(UsageError, match=r"is inside --images .*pick a folder outside it"):
        draw_paths(image_files(images), images, images / inside)


def test_a_single_image_is_never_overwritten(tmp_path):
    image = _png(tmp_path / "a.png")
    with pytest.raises(UsageError, match=r"would overwrite the input image .*a\.png"):
        draw_paths(image_files(image), image, tmp_path)
    assert draw_paths(image_files(image), image, tmp_path / "detections") == {str(image): tmp_path / "detections/a.png"}
