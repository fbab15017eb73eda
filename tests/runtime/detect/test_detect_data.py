"""Detection data on the device (runtime/tasks/detect/data.py): YOLO and COCO layouts give the same boxes, every kind of
bad input is skipped or dropped with its reason while the rest loads, class names map by name, splits, EXIF
orientation, letterbox geometry and normalization, and the module stays torch-free."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ftedge.runtime.tasks.detect.data import (
    DetDataset,
    is_detection_data,
    load_detection,
)
from ftedge.runtime.tasks.detect.letterbox import (
    Letterbox,
    LetterboxSpec,
    letterbox,
    letterbox_spec,
    load_letterboxed,
    read_rgb,
    to_image_boxes,
    to_input_boxes,
)
from PIL import Image

from ftedge.errors import DataError, ImageError
from tests.helpers.common import ROOT

LABELS = ["cat", "dog", "bird"]
PREPROCESSING = {"type": "image", "input": "image", "size": [32, 32], "resize": "letterbox", "pad_value": 114,
                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "scale": 1 / 255, "layout": "NCHW",
                 "channels": 3}
# One scene: per image (width, height, [(label, x1, y1, x2, y2) in pixels]).
SCENE = {
    "a.jpg": (64, 48, [("cat", 4.0, 6.0, 30.0, 40.0), ("bird", 40.5, 10.25, 60.0, 20.0)]),
    "b.png": (40, 50, [("dog", 0.0, 0.0, 40.0, 50.0)]),
    "c.png": (30, 30, []),  # background: no objects
}


def _image(path: Path, width: int, height: int, seed: int = 0, fmt: str | None = None, **save: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt, **save)
    return path


def _yolo_lines(width: int, height: int, boxes: list, names: list[str]) -> str:
    return "".join(f"{names.index(c)} {(x1 + x2) / 2 / width!r} {(y1 + y2) / 2 / height!r} {(x2 - x1) / width!r} "
                   f"{(y2 - y1) / height!r}\n" for c, x1, y1, x2, y2 in boxes)


def _yaml(root: Path, names: object = None, **splits: object) -> Path:
    import yaml

    data = {"path": ".", **splits, "names": LABELS if names is None else names}
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    return root / "data.yaml"


def _write_yolo(root: Path, names: list[str] = LABELS, split: str = "train") -> Path:
    for i, (name, (w, h, boxes)) in enumerate(SCENE.items()):
        _image(root / "images" / split / name, w, h, seed=i)
        label = (root / "labels" / split / name).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text(_yolo_lines(w, h, boxes, names))
    return _yaml(root, names, **{split: f"images/{split}"})


def _coco(root: Path, images: list[dict], annotations: list[dict], categories: list[dict] | None = None,
          name: str = "coco.json") -> Path:
    cats = categories if categories is not None else [{"id": 10 + i, "name": n} for i, n in enumerate(LABELS)]
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    return root / name


def _write_coco(root: Path) -> Path:
    images, anns = [], []
    for i, (name, (w, h, boxes)) in enumerate(SCENE.items()):
        _image(root / "images" / name, w, h, seed=i)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        anns += [{"id": 100 * (i + 1) + j, "image_id": i + 1, "category_id": 10 + LABELS.index(c),
                  "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0} for j, (c, x1, y1, x2, y2) in enumerate(boxes)]
    return _coco(root, images, anns)


def _by_name(ds: DetDataset) -> dict[str, tuple]:
    return {s.image.name: (s.boxes, s.classes, s.size) for s in ds.samples}


def _reasons(entries: list[dict]) -> dict[tuple, str]:
    return {(e["file"], e.get("box")): e["reason"] for e in entries}


def test_yolo_and_coco_layouts_of_one_scene_load_the_same_boxes(tmp_path):
    yolo = load_detection(_write_yolo(tmp_path / "yolo"), LABELS)
    coco = load_detection(_write_coco(tmp_path / "coco"), LABELS)
    assert (yolo.format, coco.format) == ("yolo", "coco")
    assert yolo.skipped == coco.skipped == [] and yolo.dropped_boxes == coco.dropped_boxes == []
    assert [s.image.name for s in yolo.samples] == [s.image.name for s in coco.samples] == list(SCENE)
    for name, (w, h, boxes) in SCENE.items():
        for got in (_by_name(yolo)[name], _by_name(coco)[name]):
            assert got[0].dtype == np.float32 and got[0].shape == (len(boxes), 4)
            assert got[1].dtype == np.int64 and got[1].tolist() == [LABELS.index(b[0]) for b in boxes]
            np.testing.assert_allclose(got[0], np.array([b[1:] for b in boxes]).reshape(-1, 4), atol=1e-4)
            assert got[2] == (h, w)
    assert yolo.names == coco.names == LABELS and yolo.source == str(tmp_path / "yolo" / "data.yaml")


def test_yolo_bad_inputs_are_skipped_or_dropped_with_their_reason_and_the_rest_loads(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    img, lab = root / "images" / "train", root / "labels" / "train"
    lab.mkdir(parents=True)
    good = _image(img / "good.jpg", 100, 50)
    lines = ["0 0.5 0.5 0.2 0.2",                 # 1 kept
             "",                                   # blank: ignored
             "# a comment",                        # ignored
             "1 0.5 0.5 0.2",                      # 4 malformed: 4 fields
             "x 0.5 0.5 0.2 0.2",                  # 5 not numbers
             "1 nan 0.5 0.2 0.2",                  # 6 NaN
             "1 0.5 0.5 0.0 0.2",                  # 7 zero width
             "1 0.5 0.5 0.2 -0.1",                 # 8 negative height
             "1 1.5 0.5 0.2 0.2",                  # 9 entirely outside (right)
             "7 0.5 0.5 0.2 0.2",                  # 10 class index out of range
             "0 0.1 0.2 0.3 0.4 0.5 0.6 0.7",      # 11 segmentation polygon
             "1 0.999 0.5 0.01 0.2",               # 12 clipped to under 1 px wide → zero area
             "2 0.0 0.0 0.4 0.4",                  # 13 partly outside: clipped to (0, 0, 20, 10)
             "1 0.5 0.5 inf 0.2"]                  # 14 infinite
    (lab / "good.txt").write_text("\n".join(lines) + "\n")
    _image(img / "empty_label.png", 20, 10)
    (lab / "empty_label.txt").write_text("")       # an image without objects
    _image(img / "no_label.png", 20, 10)
    _image(img / "latin1.png", 20, 10)
    (lab / "latin1.txt").write_bytes("0 0.5 0.5 0.1 0.1 # caf\xe9\n".encode("latin-1"))
    (img / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not a jpeg at all")
    data = good.read_bytes()
    (img / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (img / "empty.png").write_bytes(b"")
    _image(img / "gif.png", 8, 8, fmt="GIF")
    _image(img / "huge.png", 200, 200)
    _image(img / "UPPER.JPEG", 30, 20)
    (lab / "UPPER.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (img / "notes.bmp").write_bytes(b"ignored: not an image extension")
    (lab / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # a label without an image: ignored
    for name in ("corrupt", "truncated", "empty", "gif", "huge"):
        (lab / f"{name}.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 200x200 = 40,000 pixels: a "bomb" here
    ds = load_detection(_yaml(root, train="images/train"), LABELS)

    assert [s.image.name for s in ds.samples] == ["UPPER.JPEG", "empty_label.png", "good.jpg"]
    upper, empty, kept = ds.samples
    assert empty.boxes.shape == (0, 4) and empty.classes.shape == (0,) and empty.size == (10, 20)
    np.testing.assert_allclose(kept.boxes, [[40, 20, 60, 30], [0, 0, 20, 10]], atol=1e-4)
    assert kept.classes.tolist() == [0, 2] and kept.size == (50, 100)
    assert upper.classes.tolist() == [1]

    skipped = _reasons(ds.skipped)
    assert set(skipped) == {(f"images/train/{n}", None) for n in
                            ("corrupt.jpg", "truncated.jpg", "empty.png", "gif.png", "huge.png", "no_label.png",
                             "latin1.png")}
    assert skipped[("images/train/no_label.png", None)] == (
        "no label file labels/train/no_label.txt; an image without objects needs an empty .txt")
    assert "truncated or corrupt" in skipped[("images/train/truncated.jpg", None)]
    assert "not a PNG or JPEG" in skipped[("images/train/corrupt.jpg", None)]
    assert "not a PNG or JPEG" in skipped[("images/train/gif.png", None)]
    assert "empty file (0 bytes)" in skipped[("images/train/empty.png", None)]
    assert "image too large: 40,000 pixels" in skipped[("images/train/huge.png", None)]
    assert "cannot read label file labels/train/latin1.txt" in skipped[("images/train/latin1.png", None)]

    dropped = {e["box"]: e["reason"] for e in ds.dropped_boxes}
    assert all(e["file"] == "images/train/good.jpg" for e in ds.dropped_boxes)
    assert set(dropped) == {4, 5, 6, 7, 8, 9, 10, 11, 12, 14}
    assert dropped[4].startswith("malformed line: 4 fields") and dropped[5].startswith("malformed line: not numbers")
    assert "NaN or infinite" in dropped[6] and "NaN or infinite" in dropped[14]
    assert dropped[7] == dropped[8] == dropped[12] == "zero area"
    assert dropped[9] == "outside the image"
    assert dropped[10].startswith("unknown class 7")
    assert dropped[11] == "not a box line"


def test_coco_bad_inputs_are_skipped_or_dropped_with_their_reason_and_the_rest_loads(tmp_path):
    root = tmp_path / "coco"
    _image(root / "images" / "ok.jpg", 60, 40)
    _image(root / "bg.png", 10, 10)                  # beside the JSON; no annotations: a background image
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _image(root / "images" / "sideways.png", 30, 20)
    images = [{"id": 1, "file_name": "ok.jpg", "width": 60, "height": 40},
              {"id": 2, "file_name": "bg.png", "width": 10, "height": 10},
              {"id": 3, "file_name": "missing.jpg", "width": 5, "height": 5},
              {"id": 4, "file_name": "broken.png"},
              {"id": 5, "file_name": "sideways.png", "width": 20, "height": 30},
              {"id": 1, "file_name": "again.jpg"},
              {"file_name": "no_id.jpg"}]
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "zebra"}]
    anns = [{"id": 10, "image_id": 1, "category_id": 2, "bbox": [10, 5, 20, 10]},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1},
            {"id": 12, "image_id": 1, "category_id": 9, "bbox": [0, 0, 5, 5]},
            {"id": 13, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5]},
            {"id": 14, "image_id": 1, "category_id": 1, "bbox": [0, 0, 0, 5]},
            {"id": 15, "image_id": 1, "category_id": 1, "bbox": [70, 0, 5, 5]},
            {"id": 16, "image_id": 1, "category_id": 1, "bbox": [0, 0, "5", 5]},
            {"id": 17, "image_id": 1, "category_id": 1, "bbox": [50, 30, 20, 20]},  # clipped to 50,30,60,40
            {"id": 18, "image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5]},
            {"id": 19, "image_id": 3, "category_id": 1, "bbox": [0, 0, 5, 5]},       # its image is missing
            {"id": 20, "image_id": [1], "category_id": 1, "bbox": [0, 0, 5, 5]},
            {"id": 21, "image_id": 1, "category_id": [1], "bbox": [0, 0, 5, 5]},
            "not an annotation"]
    ds = load_detection(_coco(root, images, anns, categories, name="annotations.json"), LABELS)

    assert [s.image.name for s in ds.samples] == ["bg.png", "ok.jpg"]
    bg, ok = ds.samples
    assert bg.boxes.shape == (0, 4) and bg.size == (10, 10)
    np.testing.assert_allclose(ok.boxes, [[10, 5, 30, 15], [50, 30, 60, 40]], atol=1e-4)
    assert ok.classes.tolist() == [1, 0]
    skipped = {e["file"]: e["reason"] for e in ds.skipped}
    assert set(skipped) == {"missing.jpg", "broken.png", "sideways.png", "again.jpg", "annotations.json images[6]"}
    assert skipped["missing.jpg"].startswith("image file not found")
    assert "truncated or corrupt" in skipped["broken.png"] or "not a PNG or JPEG" in skipped["broken.png"]
    assert "the JSON says 20x30 but the file is 30x20" in skipped["sideways.png"]
    assert skipped["again.jpg"].startswith("duplicate image id 1")
    dropped = _reasons(ds.dropped_boxes)
    assert dropped == {("ok.jpg", 11): "crowd", ("ok.jpg", 12): "unknown category_id 9",
                       ("ok.jpg", 13): "unknown class 'zebra'", ("ok.jpg", 14): "zero area",
                       ("ok.jpg", 15): "outside the image",
                       ("ok.jpg", 16): "malformed bbox [0, 0, '5', 5], expected [x, y, width, height] in pixels",
                       ("ok.jpg", 21): "unknown category_id [1]",
                       ("annotations.json", 18): "annotation for image_id 99, which is not in images",
                       ("annotations.json", 20): "annotation for image_id [1], which is not in images",
                       ("annotations.json", 12): "annotations[12] is not an object"}


@pytest.mark.parametrize("content, problem", [("{not json", "cannot read COCO file"),
                                              ("[]", "no 'images' list"),
                                              ('{"images": [], "categories": []}', "no 'annotations' list"),
                                              ('{"images": [], "annotations": [], "categories": [{"id": 1}]}',
                                               "a category lacks its id or name")])
def test_malformed_coco_json_is_a_data_error_naming_the_file(tmp_path, content, problem):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(DataError, match=problem) as err:
        load_detection(tmp_path / "bad.json", LABELS)
    assert "bad.json" in str(err.value)


def test_yaml_class_names_map_to_bundle_labels_by_name_in_any_order(tmp_path):
    names = ["bird", "cat", "dog", "fox"]            # dataset order differs from the bundle's; fox is unknown
    yaml_file = _write_yolo(tmp_path, names=names)
    (tmp_path / "labels" / "train" / "c.txt").write_text("3 0.5 0.5 0.5 0.5\n")
    ds = load_detection(yaml_file, LABELS)
    by = _by_name(ds)
    assert by["a.jpg"][1].tolist() == [0, 2] and by["b.png"][1].tolist() == [1]  # cat, bird / dog: bundle indices
    assert ds.dropped_boxes == [{"file": "images/train/c.png", "box": 1, "reason": "unknown class 'fox'"}]
    assert by["c.png"][0].shape == (0, 4)            # the image stays, as a background image

    _yaml(tmp_path, names={0: "bird", 1: "cat", 2: "dog", 3: "fox"}, train="images/train", nc=4)  # dict form
    assert load_detection(yaml_file, LABELS).samples[0].classes.tolist() == [0, 2]
    _yaml(tmp_path, names=names, train="images/train", nc=3)
    with pytest.raises(DataError, match="nc is 3 but names lists 4"):
        load_detection(yaml_file, LABELS)


def test_split_picks_the_yaml_key_and_a_missing_split_lists_the_ones_there(tmp_path):
    _write_yolo(tmp_path, split="train")
    _write_yolo(tmp_path, split="val")
    _image(tmp_path / "images" / "val" / "extra.png", 12, 12)
    (tmp_path / "labels" / "val" / "extra.txt").write_text("")
    yaml_file = _yaml(tmp_path, train="images/train", val=["images/val"])
    assert len(load_detection(tmp_path, LABELS).samples) == 3          # the folder's data.yaml, split train
    val = load_detection(yaml_file, LABELS, split="val")
    assert [s.image.name for s in val.samples] == ["a.jpg", "b.png", "c.png", "extra.png"]
    with pytest.raises(DataError, match=r"has no 'test' split \(it has train, val\)"):
        load_detection(yaml_file, LABELS, split="test")
    listing = tmp_path / "val.txt"                                      # a .txt list of images (Ultralytics)
    listing.write_text("./images/val/a.jpg\nimages/val/extra.png\n./images/val/gone.jpg\n")
    _yaml(tmp_path, train="images/train", val="val.txt")
    listed = load_detection(yaml_file, LABELS, split="val")
    assert [s.image.name for s in listed.samples] == ["a.jpg", "extra.png"]
    assert [(e["file"], e["reason"].split(" (")[0]) for e in listed.skipped] == [("images/val/gone.jpg",
                                                                                  "image file not found")]


def test_roboflow_yaml_relative_paths_and_a_foreign_dataset_root_resolve_beside_the_yaml(tmp_path):
    import yaml

    _image(tmp_path / "train" / "images" / "r.jpg", 20, 20)
    (tmp_path / "train" / "labels").mkdir()
    (tmp_path / "train" / "labels" / "r.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"path": "/elsewhere/datasets/x", "train": "../train/images",
                                                        "nc": 3, "names": LABELS}))
    ds = load_detection(tmp_path, LABELS)
    assert [s.image.name for s in ds.samples] == ["r.jpg"] and ds.samples[0].classes.tolist() == [0]


def test_yolo_folder_without_yaml_uses_label_indices_or_classes_txt(tmp_path):
    _image(tmp_path / "images" / "p.png", 10, 10)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "p.txt").write_text("2 0.5 0.5 0.5 0.5\n3 0.5 0.5 0.5 0.5\n")
    ds = load_detection(tmp_path, LABELS)
    assert ds.format == "yolo" and ds.samples[0].classes.tolist() == [2]
    assert ds.dropped_boxes[0]["reason"].startswith("unknown class 3")
    (tmp_path / "classes.txt").write_text("dog\ncat\nbird\ncow\n")
    ds = load_detection(tmp_path, LABELS)
    assert ds.samples[0].classes.tolist() == [2] and ds.dropped_boxes[0]["reason"] == "unknown class 'cow'"

    robo = tmp_path / "robo"                           # Roboflow's YOLO folders: <split>/images, val named valid
    _image(robo / "valid" / "images" / "r.png", 10, 10)
    (robo / "valid" / "labels").mkdir()
    (robo / "valid" / "labels" / "r.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    assert load_detection(robo, LABELS, split="val").samples[0].classes.tolist() == [1]

    split = tmp_path / "split"
    _image(split / "images" / "val" / "v.png", 10, 10)
    (split / "labels" / "val").mkdir(parents=True)
    (split / "labels" / "val" / "v.txt").write_text("")
    assert load_detection(split, LABELS, split="val").samples[0].image.name == "v.png"
    with pytest.raises(DataError, match=r"has no 'train' split \(it has val\)"):
        load_detection(split, LABELS)


def test_coco_folder_layouts_find_the_split_json_and_its_images(tmp_path):
    root = tmp_path / "coco"
    _image(root / "val2017" / "v.jpg", 20, 10)        # COCO's own layout: annotations/ beside <split>/
    _coco(root, [{"id": 1, "file_name": "v.jpg", "width": 20, "height": 10}],
          [{"id": 5, "image_id": 1, "category_id": 11, "bbox": [1, 1, 5, 5]}],
          name="annotations/instances_val2017.json")
    _coco(root, [], [], name="annotations/instances_train2017.json")
    ds = load_detection(root, LABELS, split="val2017")
    assert ds.format == "coco" and ds.samples[0].classes.tolist() == [1]
    with pytest.raises(DataError, match="has no 'test' annotations"):
        load_detection(root, LABELS, split="test")
    with pytest.raises(DataError, match="found no .jpg/.jpeg/.png images"):
        load_detection(root, LABELS, split="train2017")

    robo = tmp_path / "robo"                           # Roboflow: <split>/_annotations.coco.json beside its images
    _image(robo / "valid" / "r.png", 8, 8)
    _coco(robo, [{"id": 0, "file_name": "r.png", "width": 8, "height": 8}], [], name="valid/_annotations.coco.json")
    assert [s.image.name for s in load_detection(robo, LABELS, split="val").samples] == ["r.png"]


def test_exif_rotated_jpeg_has_its_oriented_size_and_yolo_boxes_refer_to_it(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6                                   # stored 40 wide x 20 high, shown rotated: 20 wide x 40 high
    path = _image(tmp_path / "images" / "rot.jpg", 40, 20, exif=exif.tobytes())
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "rot.txt").write_text("0 0.5 0.25 0.5 0.5\n")
    ds = load_detection(tmp_path, LABELS)
    assert ds.samples[0].size == (40, 20)
    np.testing.assert_allclose(ds.samples[0].boxes, [[5, 0, 15, 20]], atol=1e-4)
    assert read_rgb(path).shape == (40, 20, 3)
    x, lb = load_letterboxed(path, letterbox_spec(PREPROCESSING))
    assert (lb.height, lb.width, lb.scale, lb.pad_x, lb.pad_y) == (40, 20, 0.8, 8.0, 0.0) and x.shape == (3, 32, 32)


def test_letterbox_geometry_is_ultralytics_style():
    img = np.zeros((480, 640, 3), np.uint8)
    out, lb = letterbox(img, (320, 320))
    assert out.shape == (320, 320, 3) and out.dtype == np.uint8
    assert lb == Letterbox(scale=0.5, pad_x=0.0, pad_y=40.0, height=480, width=640)
    assert (out[:40] == 114).all() and (out[280:] == 114).all() and (out[40:280] == 0).all()
    out, lb = letterbox(np.zeros((10, 15, 3), np.uint8), (8, 8), pad_value=7)  # 15x10 → 8x5: pad 3 split 1 / 2
    assert (lb.pad_x, lb.pad_y) == (0.0, 1.0) and (out[0] == 7).all() and (out[6:] == 7).all() and (out[1:6] == 0).all()
    with pytest.raises(ImageError, match="uint8 HxWx3"):
        letterbox(np.zeros((4, 4), np.uint8), (8, 8))


def test_letterbox_box_mapping_round_trips_and_clips_to_the_image():
    lb = letterbox(np.zeros((37, 91, 3), np.uint8), (64, 48))[1]
    boxes = np.array([[0, 0, 91, 37], [10.5, 3.25, 40.75, 30]], np.float32)
    inside = to_input_boxes(boxes, lb)
    np.testing.assert_allclose(inside[0], [0, lb.pad_y, 48, lb.pad_y + 37 * lb.scale], atol=1e-4)
    np.testing.assert_allclose(to_image_boxes(inside, lb), boxes, atol=1e-4)
    np.testing.assert_allclose(to_image_boxes(np.array([[-5, -5, 100, 100]]), lb), [[0, 0, 91, 37]])


def test_load_letterboxed_normalizes_with_mean_and_std_and_pads_with_pad_value(tmp_path):
    spec = letterbox_spec(PREPROCESSING)
    path = tmp_path / "flat.png"
    Image.new("RGB", (64, 32), (200, 100, 50)).save(path)
    x, lb = load_letterboxed(path, spec)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    assert (lb.scale, lb.pad_x, lb.pad_y, lb.height, lb.width) == (0.5, 0.0, 8.0, 32, 64)
    mean, std = np.array(spec.mean, np.float32)[:, None], np.array(spec.std, np.float32)[:, None]
    np.testing.assert_allclose(x[:, :8].reshape(3, -1), np.broadcast_to((114 / 255 - mean) / std, (3, 256)), atol=1e-5)
    np.testing.assert_allclose(x[:, 8:24].reshape(3, -1),
                               np.broadcast_to((np.array([[200], [100], [50]]) / 255 - mean) / std, (3, 512)),
                               atol=1e-5)
    np.testing.assert_allclose(x[:, 24:].reshape(3, -1), np.broadcast_to((114 / 255 - mean) / std, (3, 256)), atol=1e-5)
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ImageError, match="not a PNG or JPEG"):
        load_letterboxed(tmp_path / "bad.png", spec)


def test_letterbox_spec_reads_the_manifest_and_names_what_is_wrong():
    assert letterbox_spec(PREPROCESSING) == LetterboxSpec("image", (32, 32), (0.485, 0.456, 0.406),
                                                          (0.229, 0.224, 0.225), 1 / 255, 114)
    for bad, match in [({**PREPROCESSING, "resize": "bilinear"}, "resize 'bilinear'"),
                       ({}, "no image preprocessing"),
                       ({**PREPROCESSING, "layout": "NHWC"}, "layout='NHWC'"),
                       ({**PREPROCESSING, "std": [1, 0, 1]}, "three positive stds"),
                       ({**PREPROCESSING, "pad_value": 300}, "pad_value 300"),
                       ({**PREPROCESSING, "size": "big"}, "malformed image preprocessing"),
                       ({k: v for k, v in PREPROCESSING.items() if k != "input"}, "names no input")]:
        with pytest.raises(ImageError, match=match):
            letterbox_spec(bad)


def test_nothing_usable_is_a_data_error_saying_what_was_found(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x.jpg").write_bytes(b"junk")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "x.txt").write_text("")
    with pytest.raises(DataError, match=r"no usable images in .* found 1 image\(s\), all skipped: images/x.jpg: not a"):
        load_detection(tmp_path, LABELS)
    with pytest.raises(DataError, match="holds no detection data"):
        load_detection(tmp_path / "labels", LABELS)
    with pytest.raises(DataError, match="does not exist"):
        load_detection(tmp_path / "nowhere", LABELS)


def test_is_detection_data_recognizes_the_layouts_and_nothing_else(tmp_path):
    assert is_detection_data(_write_yolo(tmp_path / "y")) and is_detection_data(tmp_path / "y")
    assert is_detection_data(_write_coco(tmp_path / "c")) and is_detection_data(tmp_path / "c")
    (tmp_path / "cls" / "cat").mkdir(parents=True)    # folder-per-label classification data
    _image(tmp_path / "cls" / "cat" / "1.png", 4, 4)
    (tmp_path / "other.json").write_text('{"x": 1}')
    assert not any(is_detection_data(p) for p in (tmp_path / "cls", tmp_path / "other.json", tmp_path / "none"))


def test_sixteen_bit_grayscale_keeps_its_precision_through_the_letterbox(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((16, 32), 40000, np.uint16)).save(path)
    assert read_rgb(path).shape == (16, 32, 3) and (read_rgb(path) == round(40000 / 65535 * 255)).all()
    spec = letterbox_spec({**PREPROCESSING, "mean": [0, 0, 0], "std": [1, 1, 1]})
    x, lb = load_letterboxed(path, spec)
    assert (lb.scale, lb.pad_y) == (1.0, 8.0)
    np.testing.assert_allclose(x[:, 8:24], 40000 / 65535, atol=1e-6)
    np.testing.assert_allclose(x[:, :8], 114 / 255, atol=1e-6)


IMPORT_CHECK = "import ftedge.runtime.tasks.detect.data, sys; assert 'torch' not in sys.modules, 'torch imported'"


def test_detect_data_imports_without_torch():
    proc = subprocess.run([sys.executable, "-c", IMPORT_CHECK], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


DEVICE_LOAD = """
import sys
from ftedge.runtime.tasks.detect.data import load_detection
from ftedge.runtime.tasks.detect.letterbox import letterbox_spec, load_letterboxed
ds = load_detection(sys.argv[1], ["cat", "dog", "bird"])
x, lb = load_letterboxed(ds.samples[0].image, letterbox_spec(__import__("json").loads(sys.argv[2])))
assert len(ds.samples) == 3 and x.shape == (3, 32, 32), (ds, x.shape)
assert "torch" not in sys.modules
print("ok")
"""


def test_device_environment_loads_yolo_yaml_without_torch(device_python, tmp_path):
    """The [device] venv (no torch) imports the module and reads a data.yaml: PyYAML must be installed there."""
    proc = subprocess.run([device_python, "-c", IMPORT_CHECK], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([device_python, "-c", DEVICE_LOAD, str(_write_yolo(tmp_path)), json.dumps(PREPROCESSING)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
