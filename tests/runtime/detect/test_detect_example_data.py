"""examples/detect/make_shop.py: the SYNTHETIC shop scenes (real photos pasted onto real photos) and their labels."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage  # noqa: F401  (dev extra; scripts/dev.sh installs it: a missing one fails, never skips)
import sklearn  # noqa: F401
import yaml

from tests.helpers.common import ROOT, example_module

EXAMPLE = ROOT / "examples" / "detect"
make_shop = example_module("detect/make_shop.py")

assert (make_shop.fashion_root() / "t10k-images-idx3-ubyte.gz").is_file(), (
    f"Fashion-MNIST is not installed (apt install {make_shop.APT_PACKAGE}; scripts/dev.sh does)")

from PIL import Image  # noqa: E402

N = {"train": 6, "val": 4}
NAMES = ["sneaker", "bag", "ankle_boot"]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("shop")
    summary = make_shop.generate(d, N["train"], N["val"], seed=0)
    return d, summary


@pytest.fixture(scope="module")
def category(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("category")
    return d, make_shop.generate(d, N["train"], N["val"], seed=0, items="category")


def yolo_boxes(out: Path, split: str, i: int) -> list[tuple[int, float, float, float, float]]:
    """(class, x, y, w, h) in pixels of one label file."""
    w, h = Image.open(out / "images" / split / f"{i:06d}.jpg").size
    rows = []
    for line in (out / "labels" / split / f"{i:06d}.txt").read_text(encoding="utf-8").splitlines():
        c, cx, cy, bw, bh = line.split()
        assert all(len(v.split(".")[1]) == 6 for v in (cx, cy, bw, bh)), line
        c, cx, cy, bw, bh = int(c), float(cx), float(cy), float(bw), float(bh)
        rows.append((c, (cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h))
    return rows


def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_files_and_counts(shop: tuple[Path, dict]) -> None:
    out, summary = shop
    for split, n in N.items():
        names = [f"{i:06d}" for i in range(1, n + 1)]
        assert sorted(p.stem for p in (out / "images" / split).glob("*.jpg")) == names
        assert sorted(p.stem for p in (out / "labels" / split).glob("*.txt")) == names
        assert (out / "annotations" / f"instances_{split}.json").is_file()
        assert summary[split]["scenes"] == n
        for i in range(1, n + 1):
            with Image.open(out / "images" / split / f"{i:06d}.jpg") as im:
                assert im.format == "JPEG" and im.mode == "RGB" and max(im.size) == 320, im.size
    data = yaml.safe_load((out / "data.yaml").read_text(encoding="utf-8"))
    assert data == {"path": ".", "train": "images/train", "val": "images/val", "nc": 3, "names": NAMES}
    scenes = json.loads((out / "scenes.json").read_text(encoding="utf-8"))
    assert [len(scenes[s]) for s in N] == list(N.values())


def test_labels_parse_and_boxes_are_inside_and_not_degenerate(shop: tuple[Path, dict]) -> None:
    out, summary = shop
    for split, n in N.items():
        counts = dict.fromkeys(NAMES, 0)
        for i in range(1, n + 1):
            w, h = Image.open(out / "images" / split / f"{i:06d}.jpg").size
            for c, x, y, bw, bh in yolo_boxes(out, split, i):
                assert 0 <= c < 3
                counts[NAMES[c]] += 1
                assert bw >= make_shop.MIN_BOX - 1e-3 and bh >= make_shop.MIN_BOX - 1e-3, (split, i, bw, bh)
                assert x >= -1e-3 and y >= -1e-3 and x + bw <= w + 1e-3 and y + bh <= h + 1e-3, (split, i)
        assert counts == summary[split]["boxes"]
        assert sum(counts.values()) > 0


def test_yolo_and_coco_describe_the_same_boxes(shop: tuple[Path, dict]) -> None:
    out, _ = shop
    for split, n in N.items():
        coco = json.loads((out / "annotations" / f"instances_{split}.json").read_text(encoding="utf-8"))
        assert coco["info"]["description"].startswith("SYNTHETIC")
        assert [c["name"] for c in coco["categories"]] == NAMES and [c["id"] for c in coco["categories"]] == [1, 2, 3]
        assert [im["id"] for im in coco["images"]] == list(range(1, n + 1))
        assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
        for im in coco["images"]:
            with Image.open(out / im["file_name"]) as f:
                assert f.size == (im["width"], im["height"])
            anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
            yolo = yolo_boxes(out, split, im["id"])
            assert len(anns) == len(yolo)
            for a, (c, x, y, bw, bh) in zip(anns, yolo):
                assert a["category_id"] == c + 1 and a["iscrowd"] == 0
                assert np.allclose(a["bbox"], [x, y, bw, bh], atol=1e-3), (a["bbox"], (x, y, bw, bh))
                assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])


def test_box_is_the_tight_box_of_the_pasted_mask() -> None:
    images, labels = make_shop.load_fashion("t10k")
    index = int(np.flatnonzero(labels == make_shop.CLASSES.index("bag"))[0])
    rgb, alpha = make_shop.object_patch(images[index], 90, 80, np.array([0.2, 0.5, 0.9], np.float32))
    h, w = alpha.shape
    assert 8 <= w <= 90 and 8 <= h <= 80
    canvas = np.full((120, 150, 3), 255.0, np.float32)
    make_shop.paste(canvas, rgb, alpha, 30, 20)
    changed = np.any(canvas != 255.0, axis=2)
    ys, xs = np.nonzero(changed)
    assert (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()) == (30, 20, w, h)


def test_scene_changes_no_pixel_outside_the_object_boxes() -> None:
    photos = make_shop.background_photos()
    images, labels = make_shop.load_fashion("train")
    rng = np.random.default_rng(5)
    pool = make_shop.InstancePool(labels, rng)
    products = list(make_shop.DEFAULT_PRODUCTS_IDX)
    distractors = [c for c in range(10) if c not in products]
    for _ in range(3):
        s = make_shop.make_scene(rng, photos, images, pool, products, distractors, 320, empty=False)
        changed = np.any(s.image != s.background, axis=2)
        inside = np.zeros_like(changed)
        assert s.boxes and len(s.boxes) <= 4
        for o in s.objects:
            x, y, w, h = o["box"]
            inside[y:y + h, x:x + w] = True
            edges = [changed[y, x:x + w], changed[y + h - 1, x:x + w], changed[y:y + h, x], changed[y:y + h, x + w - 1]]
            assert all(e.any() for e in edges), o   # the box touches the pasted object on all four sides
            assert o["visible"] >= make_shop.MIN_VISIBLE
            assert o["product"] == (make_shop.CLASSES.index(o["fmnist_label"]) in products)
        assert not (changed & ~inside).any()


def test_shop_items_are_the_same_three_items_in_every_scene_and_distractors_differ(shop: tuple[Path, dict]) -> None:
    out, summary = shop
    assert summary["items"] == "shop" and set(summary["shop_items"]) == set(NAMES)
    own = {v["fmnist_index"] for v in summary["shop_items"].values()}
    train_images, train_labels = make_shop.load_fashion("train")
    assert {make_shop.CLASSES[train_labels[i]] for i in own} == set(NAMES)
    for split in ("train", "val"):
        assert set(summary[split]["product_indices"]) <= own        # train and held-out scenes: the shop's items
    distractors = {split: summary[split]["distractor_indices"] for split in ("train", "val")}
    val_images, _ = make_shop.load_fashion("t10k")
    pixels = ({train_images[i].tobytes() for i in distractors["train"]}, {val_images[i].tobytes() for i in distractors["val"]})
    assert not pixels[0] & pixels[1]                                  # other items in held-out scenes
    assert not {train_images[i].tobytes() for i in own} & (pixels[0] | pixels[1])


def test_category_items_train_and_heldout_use_disjoint_fashion_mnist_items(category: tuple[Path, dict]) -> None:
    out, summary = category
    assert summary["train"]["fashion_mnist_split"] == "train" and summary["val"]["fashion_mnist_split"] == "t10k"
    pixels = {}
    for split, stem in (("train", "train"), ("val", "t10k")):
        s = summary[split]
        used = s["product_indices"] + s["distractor_indices"]
        assert len(used) == len(set(used)) and s["reused_instances"] == 0   # each item at most once per split
        images, labels = make_shop.load_fashion(stem)
        assert all(make_shop.CLASSES[labels[i]] in NAMES for i in s["product_indices"])
        assert not any(make_shop.CLASSES[labels[i]] in NAMES for i in s["distractor_indices"])
        pixels[split] = {images[i].tobytes() for i in used}
        scenes = json.loads((out / "scenes.json").read_text(encoding="utf-8"))[split]
        assert sorted(o["fmnist_index"] for sc in scenes for o in sc["objects"]) == sorted(used)
    assert pixels["train"] and pixels["val"] and not pixels["train"] & pixels["val"]


def test_background_only_scenes_have_empty_label_files(shop: tuple[Path, dict]) -> None:
    out, summary = shop
    empty = [p for p in (out / "labels" / "train").glob("*.txt") if p.stat().st_size == 0]
    assert len(empty) == summary["train"]["background_only"] == int(N["train"] * make_shop.EMPTY_FRACTION + 0.5)
    coco = json.loads((out / "annotations" / "instances_train.json").read_text(encoding="utf-8"))
    with_boxes = {a["image_id"] for a in coco["annotations"]}
    assert {int(p.stem) for p in empty} == {im["id"] for im in coco["images"]} - with_boxes


def test_same_arguments_same_bytes_and_json_summary(shop: tuple[Path, dict], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out, summary = shop
    assert make_shop.main([str(tmp_path), "--train", str(N["train"]), "--heldout", str(N["val"]), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["synthetic"] is True and printed["names"] == NAMES
    assert {k: printed[k] for k in ("train", "val")} == {k: summary[k] for k in ("train", "val")}
    assert all_files(tmp_path) == all_files(out)
    assert make_shop.main([str(tmp_path), "--train", "3", "--heldout", "2", "--seed", "1", "--format", "yolo"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    assert len(list((tmp_path / "images" / "train").glob("*.jpg"))) == 3   # the earlier run's scenes are gone
    assert all_files(tmp_path)["images/train/000001.jpg"] != all_files(out)["images/train/000001.jpg"]


def test_output_says_synthetic(shop: tuple[Path, dict]) -> None:
    out, _ = shop
    assert "SYNTHETIC" in (out / "data.yaml").read_text(encoding="utf-8").splitlines()[0]
    note = (out / "SYNTHETIC.txt").read_text(encoding="utf-8")
    assert note.startswith("SYNTHETIC") and "Fashion-MNIST" in note and "REAL" in note
    assert json.loads((out / "scenes.json").read_text(encoding="utf-8"))["synthetic"] is True


def test_missing_data_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert make_shop.main([str(tmp_path / "a"), "--train", "1", "--heldout", "1", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "apt install dataset-fashion-mnist" in err
    monkeypatch.setitem(sys.modules, "skimage", None)
    assert make_shop.main([str(tmp_path / "b"), "--train", "1", "--heldout", "1"]) == 1
    assert "pip install scikit-image" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        make_shop.main([str(tmp_path / "c"), "--products", "sneaker,hat"])
    assert e.value.code == 2


def test_product_names_and_aliases() -> None:
    assert make_shop.parse_products("Sneaker, bag ,Ankle boot") == [7, 8, 9]
    assert make_shop.parse_products("T-shirt/top,trouser") == [0, 1]
    with pytest.raises(ValueError, match="twice"):
        make_shop.parse_products("bag,bag")
