"""Hostile detection data (issue 33, findings 6 and 10): what a dataset may make the device read is bounded — YAML
aliases and non-scalar names are refused, an image's pixel count is checked from its header before decoding, COCO
JSON, label files and image lists have size caps, skip/drop lists are bounded and counted, folder walks are
bounded — and with a data root nothing outside it is read (yaml ``path:``, absolute entries, ``..``, ``.txt``
lists, COCO ``file_name``, symlinks). Real files in tmp_path."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from ftedge.runtime.tasks.detect import bounds
from ftedge.runtime.tasks.detect.bounds import MAX_COCO_BYTES, MAX_LABEL_BYTES, MAX_LISTED
from ftedge.runtime.tasks.detect.data import load_detection
from ftedge.runtime.tasks.detect.letterbox import MAX_DECODE_PIXELS, LetterboxSpec, load_letterboxed
from PIL import Image

from ftedge.errors import DataError, ImageError

LABELS = ["cat", "dog"]


def _png(path: Path, width: int = 20, height: int = 16, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _labelled(root: Path, name: str, lines: str = "0 0.5 0.5 0.5 0.5\n", split: str = "train") -> Path:
    image = _png(root / "images" / split / name)
    label = root / "labels" / split / (Path(name).stem + ".txt")
    label.parent.mkdir(parents=True, exist_ok=True)
    label.write_text(lines)
    return image


def _yaml(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(text)
    return root / "data.yaml"


def _sparse_16bit_png(path: Path, width: int, height: int) -> Path:
    """A valid 16-bit grayscale PNG of ``width``x``height`` zero pixels, written compactly (streamed zlib) so the
    test itself never holds the pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    z, row, idat = zlib.compressobj(9), b"\x00" * (1 + 2 * width), []
    for _ in range(height):
        idat.append(z.compress(row))
    idat.append(z.flush())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b""))
    return path


# -- finding 6: memory and time ---------------------------------------------------------------------------------

def test_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    """A billion-laughs data.yaml (anchors nested 6 deep: a million names from a few hundred bytes) is a clear
    DataError; before, str(name) expanded it (7 levels: 1.1 s / 109 MB, x10 a level)."""
    _labelled(tmp_path, "a.png")
    levels = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    levels += [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 6)]
    text = "\n".join(levels) + "\ntrain: images/train\nnames: [*l5, dog]\n"
    assert len(text.encode()) < 500
    with pytest.raises(DataError, match=r"alias"):
        load_detection(_yaml(tmp_path, text), LABELS)


@pytest.mark.parametrize("names", ["[[cat, dog], dog]", "{0: {a: 1}, 1: dog}", "[cat, null]"])
def test_class_names_must_be_scalars(tmp_path, names):
    _labelled(tmp_path, "a.png")
    with pytest.raises(DataError, match=r"bad class names .*not a string"):
        load_detection(_yaml(tmp_path, f"train: images/train\nnames: {names}\n"), LABELS)


def test_huge_16bit_png_is_refused_from_its_header_and_skipped(tmp_path):
    """A ~150 KB 16-bit PNG declaring 8900x8900 pixels (1.1 GB on its way to RGB) is refused before decoding,
    with the file named; in a dataset it is skipped and counted while the others load."""
    bomb = _sparse_16bit_png(tmp_path / "images" / "train" / "bomb.png", 8900, 8900)
    assert bomb.stat().st_size < 400_000 and 8900 * 8900 > MAX_DECODE_PIXELS
    spec = LetterboxSpec("image", (32, 32), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    with pytest.raises(ImageError, match=r"bomb\.png is too large to decode: 8900x8900 pixels"):
        load_letterboxed(bomb, spec)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "bomb.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    _labelled(tmp_path, "ok.png")
    ds = load_detection(_yaml(tmp_path, "train: images/train\nnames: [cat, dog]\n"), LABELS)
    assert [s.image.name for s in ds.samples] == ["ok.png"]
    assert ds.skipped_count == 1 and "too large to decode" in ds.skipped[0]["reason"]


def test_oversized_coco_json_is_refused_without_parsing(tmp_path):
    coco = tmp_path / "coco.json"
    with open(coco, "w") as f:  # valid COCO JSON, just over the cap
        f.write('{"images": [], "annotations": [], "categories": [], "pad": "')
        f.write("x" * MAX_COCO_BYTES)
        f.write('"}')
    with pytest.raises(DataError, match=r"coco\.json is larger than 67,108,864 bytes"):
        load_detection(coco, LABELS)


def test_oversized_label_file_skips_its_image(tmp_path):
    _labelled(tmp_path, "big.png", "0 0.5 0.5 0.5 0.5\n" * (MAX_LABEL_BYTES // 18 + 1))
    _labelled(tmp_path, "ok.png")
    ds = load_detection(_yaml(tmp_path, "train: images/train\nnames: [cat, dog]\n"), LABELS)
    assert [s.image.name for s in ds.samples] == ["ok.png"]
    assert ds.skipped == [{"file": "images/train/big.png", "reason": ds.skipped[0]["reason"]}]
    assert "label file" in ds.skipped[0]["reason"] and "larger than" in ds.skipped[0]["reason"]


def test_skipped_and_dropped_lists_are_bounded_and_counted(tmp_path):
    """5000 bad box lines and 1005 images without labels: the first MAX_LISTED of each are listed, all counted."""
    _labelled(tmp_path, "ok.png", "0 0.5 0.5 0.5 0.5\n" + "bad line\n" * 5000)
    png = (tmp_path / "images" / "train" / "ok.png").read_bytes()
    for i in range(MAX_LISTED + 5):
        (tmp_path / "images" / "train" / f"n{i:04d}.png").write_bytes(png)
    ds = load_detection(_yaml(tmp_path, "train: images/train\nnames: [cat, dog]\n"), LABELS)
    assert len(ds.samples) == 1 and len(ds.samples[0].boxes) == 1
    assert ds.dropped_count == 5000 and len(ds.dropped_boxes) == MAX_LISTED
    assert ds.skipped_count == MAX_LISTED + 5 and len(ds.skipped) == MAX_LISTED


def test_folder_walk_is_bounded(tmp_path, monkeypatch):
    """``train: .`` above a huge tree stops at MAX_WALK_ENTRIES with advice (``path: /`` walked the whole disk)."""
    monkeypatch.setattr(bounds, "MAX_WALK_ENTRIES", 50)  # the real cap is 500,000 entries
    _labelled(tmp_path, "ok.png")
    for i in range(60):
        (tmp_path / "junk" / f"{i}.bin").parent.mkdir(exist_ok=True)
        (tmp_path / "junk" / f"{i}.bin").write_bytes(b"")
    with pytest.raises(DataError, match=r"more than 50 files and folders; point the split at the image folder"):
        load_detection(_yaml(tmp_path, "train: .\nnames: [cat, dog]\n"), LABELS)


# -- finding 10: nothing outside the data root ------------------------------------------------------------------

@pytest.fixture()
def roots(tmp_path) -> tuple[Path, Path]:
    """(data root holding one good YOLO dataset, a folder beside it holding labelled images it must not read)."""
    root, outside = tmp_path / "data", tmp_path / "secret"
    _labelled(root / "ds", "ok.png")
    _labelled(outside, "leak.png")
    return root, outside


def test_yaml_path_outside_the_root_is_refused(roots):
    root, outside = roots
    for path in ("../../secret", str(outside), "/"):
        yaml = _yaml(root / "ds", f"path: {path}\ntrain: images/train\nnames: [cat, dog]\n")
        with pytest.raises(DataError, match=r"path .*resolves outside the data root"):
            load_detection(yaml, LABELS, root=root)


@pytest.mark.parametrize("entry", ["{outside}/images/train", "../../secret/images/train",
                                   "[images/train, {outside}/images/train]"])
def test_split_entries_outside_the_root_are_refused(roots, entry):
    root, outside = roots
    yaml = _yaml(root / "ds", f"train: {entry.format(outside=outside)}\nnames: [cat, dog]\n")
    with pytest.raises(DataError, match=r"train .*resolves outside the data root"):
        load_detection(yaml, LABELS, root=root)


def test_image_list_lines_outside_the_root_are_skipped(roots):
    root, outside = roots
    (root / "ds" / "train.txt").write_text(f"images/train/ok.png\n{outside}/images/train/leak.png\n"
                                           "../../secret/images/train/leak.png\n")
    ds = load_detection(_yaml(root / "ds", "train: train.txt\nnames: [cat, dog]\n"), LABELS, root=root)
    assert [s.image.name for s in ds.samples] == ["ok.png"]
    assert ds.skipped_count == 1 and "outside the data root" in ds.skipped[0]["reason"]  # both lines: one file


def test_symlinks_out_of_the_root_are_skipped(roots):
    root, outside = roots
    images, labels = root / "ds" / "images" / "train", root / "ds" / "labels" / "train"
    (images / "img_link.png").symlink_to(outside / "images" / "train" / "leak.png")
    (labels / "img_link.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    _labelled(root / "ds", "lbl_link.png")
    (labels / "lbl_link.txt").unlink()
    (labels / "lbl_link.txt").symlink_to(outside / "labels" / "train" / "leak.txt")
    (images / "dir_link").symlink_to(outside / "images" / "train", target_is_directory=True)
    ds = load_detection(_yaml(root / "ds", "train: images/train\nnames: [cat, dog]\n"), LABELS, root=root)
    assert [s.image.name for s in ds.samples] == ["ok.png"]
    reasons = {s["file"]: s["reason"] for s in ds.skipped}
    assert set(reasons) == {"images/train/img_link.png", "images/train/lbl_link.png"}
    assert all("outside the data root" in r for r in reasons.values())
    # the data path itself, a symlink out of the root
    (root / "link.yaml").symlink_to(_yaml(outside, "train: images/train\nnames: [cat, dog]\n"))
    with pytest.raises(DataError, match=r"outside the data root"):
        load_detection(root / "link.yaml", LABELS, root=root)


def test_coco_file_names_outside_the_root_are_skipped(roots):
    root, outside = roots
    _png(root / "ds" / "ok.png")
    images = [{"id": 1, "file_name": "ok.png"}, {"id": 2, "file_name": str(outside / "images" / "train" / "leak.png")},
              {"id": 3, "file_name": "../../secret/images/train/leak.png"}]
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5]} for i in (1, 2, 3)]
    coco = root / "ds" / "coco.json"
    coco.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "cat"}]}))
    ds = load_detection(coco, LABELS, root=root)
    assert [s.image.name for s in ds.samples] == ["ok.png"]
    assert ds.skipped_count == 2 and all("outside the data root" in s["reason"] for s in ds.skipped)
    assert len(load_detection(coco, LABELS).samples) == 3  # without a root (the CLI) it is the user's own data


def test_without_a_root_the_cli_still_reads_relative_layouts(tmp_path):
    """COCO's own layout (images in ../val2017 of the annotations folder) and Roboflow's ../train/images stay
    readable inside the root."""
    _png(tmp_path / "coco" / "val2017" / "a.png")
    ann = tmp_path / "coco" / "annotations" / "instances_val2017.json"
    ann.parent.mkdir(parents=True)
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [],
                               "categories": [{"id": 1, "name": "cat"}]}))
    assert len(load_detection(ann, LABELS, root=tmp_path).samples) == 1
    _labelled(tmp_path / "rf" / "train", "a.png", split=".")
    rf = _yaml(tmp_path / "rf", "train: ../train/images\nnames: [cat, dog]\n")
    assert len(load_detection(rf, LABELS, root=tmp_path / "rf").samples) == 1
