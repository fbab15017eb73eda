"""Detection data for ``task: "detection"`` bundles: labelled images → boxes (torch-free: numpy, Pillow, PyYAML).

:func:`load_detection` accepts three layouts (``split`` picks train / val / test where the layout has splits):

1. **Ultralytics / YOLO with a yaml**: ``PATH`` is a ``*.yaml`` file, or a folder holding ``data.yaml``. Keys:
   ``path`` (dataset root, relative to the yaml's folder; ignored when it does not exist there), ``train`` / ``val``
   / ``test`` (an image folder relative to the root, a list of them, or a ``.txt`` listing image paths; Roboflow's
   ``../train/images`` also resolves under the root), ``names`` (a list, or ``{index: name}``) and optionally ``nc``
   (must equal the number of names). The label file of ``root/images/train/a.jpg`` is ``root/labels/train/a.txt``
   (the last ``/images/`` component becomes ``/labels/``, the extension ``.txt``), one box a line:
   ``class cx cy w h`` normalized to 0..1 of the EXIF-oriented image. Classes map to the bundle's labels *by name*.
2. **YOLO without a yaml**: a folder with ``images/`` (or ``images/<split>``, or ``<split>/images``) and the
   matching ``labels/`` folders. A ``classes.txt`` (one name a line, in the folder or in ``labels/``) names the
   classes, which then map by name; without it the class index is the index into the bundle's labels.
3. **COCO JSON**: ``PATH`` is a ``.json`` file, or a folder holding ``annotations/instances_<split>.json``,
   ``annotations/<split>.json``, ``_annotations.coco.json``, ``<split>/_annotations.coco.json`` (Roboflow), the
   only ``.json`` of ``annotations/``, or the only ``.json`` of the folder. ``bbox`` is ``[x, y, w, h]`` in pixels;
   categories map to the bundle's labels by name. An image's ``file_name`` is looked up next to the JSON, in its
   parent folder, in ``images/`` beside it, then (COCO's own layout) in ``../<stem>/``, ``../images/<stem>/`` and
   ``../images/`` (stem: the JSON's name without ``instances_``). Images without annotations are background images.

Images are ``.jpg`` / ``.jpeg`` / ``.png`` (any case; dot-files ignored), taken in the order of their relative
paths. Bad input never stops the load: a whole image is **skipped** (``DetDataset.skipped``) when it cannot be
decoded (the :mod:`ftedge.runtime.data.image` wording: corrupt, truncated, empty, not PNG/JPEG, decompression bomb), its
file is missing, its YOLO label file is missing or unreadable (an *empty* label file means "no objects"), or its
COCO ``width``/``height`` disagree with the file; a single box is **dropped** (``DetDataset.dropped_boxes``) when
its line is malformed, it is not a box line (segmentation polygons, keypoints), its class is unknown, it is a COCO
crowd box, it has no area, or it lies outside the image (a box partly outside is clipped; under 1 pixel wide or
high after clipping it has no area). YOLO label files without an image are ignored. Only when no usable image
remains does :func:`load_detection` raise :class:`DataError`. Skipped images and dropped boxes are all counted
(``skipped_count``, ``dropped_count``); the first ``MAX_LISTED`` of each are listed.

Everything read is bounded (:mod:`ftedge.runtime.tasks.detect.bounds`: file sizes, folder walks; YAML aliases are
refused; images above :data:`~ftedge.runtime.tasks.detect.letterbox.MAX_DECODE_PIXELS` are skipped), and with a
``root`` (the agent's ``data_root``) a ``path:`` or split entry outside it is an error, and an image or label
file resolving outside it (``.txt`` list, COCO ``file_name``, symlink) is skipped.

Images are only verified and measured here; :mod:`ftedge.runtime.tasks.detect.letterbox` turns them into model inputs.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ftedge.errors import DataError, DataTooLarge, ImageError
from ftedge.runtime.data.image import EXTENSIONS
from ftedge.runtime.tasks.detect.bounds import (MAX_COCO_BYTES, MAX_LABEL_BYTES, MAX_LIST_BYTES, MAX_LISTED,
                                               MAX_YAML_BYTES, Confine, images_under, read_capped)
from ftedge.runtime.tasks.detect.letterbox import _decode

SPLIT_KEYS = ("train", "val", "test", "minival")
_NOT_SPLITS = ("path", "names", "nc", "download", "yaml_file", "channels")


@dataclass
class DetSample:
    """One usable image and its kept boxes."""

    image: Path
    boxes: np.ndarray      # float32 [n, 4]: x1, y1, x2, y2 in the original image's pixels
    classes: np.ndarray    # int64 [n]: index into the bundle's labels
    size: tuple[int, int]  # (height, width) of the original (EXIF-oriented) image


@dataclass
class DetDataset:
    """What :func:`load_detection` found: usable samples, and everything it left out with the reason."""

    names: list[str]                 # the bundle's labels (class index order)
    samples: list[DetSample]
    skipped: list[dict]              # whole images left out: {"file": str, "reason": str} (the first MAX_LISTED)
    dropped_boxes: list[dict]        # {"file": str, "box": int, "reason": str} (box: 1-based line / annotation id;
                                     # the first MAX_LISTED)
    format: str                      # "yolo" or "coco"
    source: str                      # the path given
    skipped_count: int = 0           # all skipped images, listed or not
    dropped_count: int = 0           # all dropped boxes, listed or not


def _clip(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> tuple[list[float] | None, str]:
    """A box of positive size clipped to the image, or None and why it cannot be kept."""
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return None, "outside the image"
    x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None, "zero area"
    return [x1, y1, x2, y2], ""


class _Collector:
    """Accumulates samples, skipped images and dropped boxes of one load."""

    def __init__(self, labels: list[str], fmt: str, source: str) -> None:
        self.ds = DetDataset(list(labels), [], [], [], fmt, source)

    def skip(self, rel: str, reason: str) -> None:
        self.ds.skipped_count += 1
        if len(self.ds.skipped) < MAX_LISTED:  # a dataset of a million bad lines must not fill memory with them
            self.ds.skipped.append({"file": rel, "reason": reason})

    def drop(self, rel: str, box: int, reason: str) -> None:
        self.ds.dropped_count += 1
        if len(self.ds.dropped_boxes) < MAX_LISTED:
            self.ds.dropped_boxes.append({"file": rel, "box": box, "reason": reason})

    def verify(self, image: Path, rel: str) -> tuple[int, int] | None:
        """The image's oriented (height, width), or None (skipped) if it is missing or cannot be decoded."""
        if not image.is_file():
            self.skip(rel, f"image file not found ({image})")
            return None
        try:
            _, height, width = _decode(image, pixels=False)
        except ImageError as exc:
            self.skip(rel, str(exc))
            return None
        return height, width

    def add(self, image: Path, size: tuple[int, int], boxes: list[list[float]], classes: list[int]) -> None:
        self.ds.samples.append(DetSample(image, np.asarray(boxes, np.float32).reshape(-1, 4),
                                         np.asarray(classes, np.int64).reshape(-1), size))

    def done(self, hint: str) -> DetDataset:
        if not self.ds.samples:
            skipped = self.ds.skipped
            reasons = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:5]) + ("; …" if skipped[5:] else "")
            found = (f"{self.ds.skipped_count} image(s), all skipped: {reasons}" if skipped
                     else "no .jpg/.jpeg/.png images")
            raise DataError(f"no usable images in {self.ds.source} ({self.ds.format} layout: found {found}); {hint}")
        return self.ds


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _short(value: Any) -> str:
    """``repr(value)`` cut to 80 characters: an error message quotes a hostile value without copying it whole."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``/images/`` component becomes ``/labels/``, the extension ``.txt``."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(sb.join(str(image).rsplit(sa, 1))).with_suffix(".txt")


def _class_mapper(names: dict[int, str] | None, labels: list[str]) -> Callable[[int], tuple[int | None, str]]:
    """YOLO class index → (bundle label index, "") or (None, why it is unknown)."""
    def by_index(i: int) -> tuple[int | None, str]:
        return (i, "") if i < len(labels) else (None, f"unknown class {i} (the bundle has {len(labels)} labels)")

    def by_name(i: int) -> tuple[int | None, str]:
        assert names is not None
        if i not in names:
            return None, f"unknown class {i} (the dataset names {len(names)} classes)"
        return (labels.index(names[i]), "") if names[i] in labels else (None, f"unknown class {names[i]!r}")
    return by_index if names is None else by_name


def _yolo_line(line: str, width: int, height: int, to_label: Callable[[int], tuple[int | None, str]]
               ) -> tuple[list[float] | None, int, str]:
    fields = line.split()
    if len(fields) > 5:
        return None, -1, "not a box line"
    if len(fields) < 5:
        return None, -1, f"malformed line: {len(fields)} fields, expected 'class cx cy w h'"
    try:
        values = [float(f) for f in fields]
    except ValueError:
        return None, -1, f"malformed line: not numbers ({line.strip()!r})"
    if not all(math.isfinite(v) for v in values):
        return None, -1, "malformed line: NaN or infinite value"
    if not values[0].is_integer() or values[0] < 0:
        return None, -1, f"malformed line: class {fields[0]!r} is not a non-negative integer"
    label, why = to_label(int(values[0]))
    if label is None:
        return None, -1, why
    cx, cy, w, h = values[1:]
    if w <= 0 or h <= 0:
        return None, -1, "zero area"
    box, why = _clip((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height,
                     width, height)
    return box, label, why


def _load_yolo(images: list[Path], root: Path, labels: list[str], names: dict[int, str] | None, source: str,
               hint: str, confine: Confine) -> DetDataset:
    out = _Collector(labels, "yolo", source)
    to_label = _class_mapper(names, labels)
    unique = {str(p.absolute()): p for p in images}
    for image in sorted(unique.values(), key=lambda p: _rel(p, root)):
        rel, label_file = _rel(image, root), _label_path(image)
        if not image.is_file():  # listed in a .txt but not there
            out.skip(rel, f"image file not found ({image})")
            continue
        outside = confine.outside(image) or confine.outside(label_file)
        if outside:
            out.skip(rel, outside)
            continue
        if not label_file.is_file():
            out.skip(rel, f"no label file {_rel(label_file, root)}; an image without objects needs an empty .txt")
            continue
        try:
            text = read_capped(label_file, MAX_LABEL_BYTES, "label file").decode("utf-8-sig")
        except DataTooLarge as exc:
            out.skip(rel, str(exc))
            continue
        except (OSError, UnicodeDecodeError) as exc:
            out.skip(rel, f"cannot read label file {_rel(label_file, root)} ({exc}); save it as UTF-8 text")
            continue
        size = out.verify(image, rel)
        if size is None:
            continue
        boxes, classes = [], []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            box, label, why = _yolo_line(line, size[1], size[0], to_label)
            if box is None:
                out.drop(rel, number, why)
            else:
                boxes.append(box)
                classes.append(label)
        out.add(image, size, boxes, classes)
    return out.done(hint)


def _read_yaml(file: Path) -> dict[str, Any]:
    """The mapping of a data.yaml of at most MAX_YAML_BYTES, without aliases (``*name``): an alias re-uses a node,
    and a few nested ones expand to billions of values wherever the data is walked or printed (a "billion laughs"
    bomb); a data.yaml never needs them."""
    try:
        import yaml
    except ImportError as exc:
        raise DataError(f"reading {file} needs PyYAML, which is not installed ({exc}); pip install pyyaml") from exc
    try:
        text = read_capped(file, MAX_YAML_BYTES, "data.yaml").decode("utf-8-sig")
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise DataError(f"{file} uses a YAML alias (*name); write the values out instead of anchors and aliases")
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
        raise DataError(f"cannot read {file}: {exc}; fix the YAML (Ultralytics data.yaml layout)") from exc
    if not isinstance(data, dict):
        raise DataError(f"{file} is not a YAML mapping; an Ultralytics data.yaml has train/val and names keys")
    return data


def _yaml_names(data: dict[str, Any], file: Path) -> dict[int, str]:
    raw = data.get("names")

    def name(v: Any) -> str:
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise TypeError(f"class name {_short(v)} is not a string")
        return str(v)
    try:
        if isinstance(raw, list):
            names = {i: name(n) for i, n in enumerate(raw)}
        elif isinstance(raw, dict):
            names = {int(k): name(v) for k, v in raw.items()}
        else:
            raise TypeError(f"names is {type(raw).__name__}")
        if data.get("nc") is not None and int(data["nc"]) != len(names):
            raise ValueError(f"nc is {_short(data['nc'])} but names lists {len(names)}")
    except (TypeError, ValueError) as exc:
        raise DataError(f"{file}: bad class names ({exc}); give names: [a, b, …] (or {{0: a, 1: b}}) in class index "
                        "order, and nc equal to their count or no nc") from exc
    return names


def _yaml_images(value: Any, root: Path, key: str, file: Path, confine: Confine) -> list[Path]:
    images: list[Path] = []
    for entry in value if isinstance(value, list) else [value]:
        if not isinstance(entry, str) or not entry:
            raise DataError(f"{file}: {key} entry {_short(entry)} is not a path; give a folder, a list of them or a "
                            ".txt")
        p = Path(entry) if Path(entry).is_absolute() else root / entry
        if not p.exists() and entry.startswith("../"):  # Roboflow writes ../train/images beside the yaml
            p = root / entry[3:]
        outside = confine.outside(p)
        if outside:
            raise DataError(f"{file}: {key} {_short(entry)}: {outside}")
        if p.is_dir():
            images += images_under(p)
        elif p.is_file() and p.suffix.lower() == ".txt":
            try:
                lines = read_capped(p, MAX_LIST_BYTES, "image list").decode("utf-8-sig").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"cannot read the image list {p} ({key} in {file}): {exc}") from exc
            for line in (x.strip() for x in lines):
                if line and not line.startswith("#"):
                    q = Path(line) if Path(line).is_absolute() else p.parent / line
                    images.append(q if q.exists() or Path(line).is_absolute() or not (root / line).exists()
                                  else root / line)
        elif p.is_file() and p.suffix.lower() in EXTENSIONS:
            images.append(p)
        else:
            raise DataError(f"{file}: {key} {_short(entry)} → {p} is not an image folder, .txt list or image; "
                            f"fix the path (it is relative to the dataset root {root})")
    return [Path(os.path.normpath(p)) for p in images]


def _load_yaml(file: Path, labels: list[str], split: str, source: str, confine: Confine) -> DetDataset:
    outside = confine.outside(file)
    if outside:
        raise DataError(f"data.yaml {outside}")
    data = _read_yaml(file)
    names = _yaml_names(data, file)
    root = file.parent
    if isinstance(data.get("path"), str) and data["path"]:
        candidate = root / data["path"]  # absolute stays absolute
        root = candidate if candidate.is_dir() else root  # a path of another machine: the yaml's folder
        outside = confine.outside(root)
        if outside:
            raise DataError(f"{file}: path {_short(data['path'])}: {outside}")
    root = Path(os.path.normpath(root))
    if split in _NOT_SPLITS or not data.get(split):
        has = [k for k in SPLIT_KEYS if data.get(k)]
        raise DataError(f"{file} has no {split!r} split (it has {', '.join(has) or 'none'}); pick one of those, "
                        f"or add {split}: <image folder> to it")
    images = _yaml_images(data[split], root, split, file, confine)
    return _load_yolo(images, root, labels, names, source,
                      f"each image of {split!r} needs a PNG/JPEG file and a label file under labels/", confine)


def _load_yolo_folder(folder: Path, labels: list[str], split: str, source: str, confine: Confine) -> DetDataset:
    alias = ("valid",) if split == "val" else ()  # Roboflow's name for val
    images_dir = next((d for s in (split, *alias) for d in (folder / "images" / s, folder / s / "images")
                       if d.is_dir()), None)
    if images_dir is None:
        top = folder / "images"
        splits = sorted(d.name for d in top.iterdir() if d.is_dir() and d.name in (*SPLIT_KEYS, "valid")) \
            if top.is_dir() else []
        splits += sorted(d.name for d in folder.iterdir() if (d / "images").is_dir())
        if not top.is_dir() or (splits and not any(p.suffix.lower() in EXTENSIONS for p in top.iterdir())):
            raise DataError(f"{folder} has no {split!r} split (it has {', '.join(splits) or 'none'}); pick one of "
                            "those")
        images_dir = top
    names = None
    for classes in (folder / "classes.txt", folder / "labels" / "classes.txt"):
        if classes.is_file():
            outside = confine.outside(classes)
            if outside:
                raise DataError(f"cannot read {classes}: {outside}")
            try:
                text = read_capped(classes, MAX_YAML_BYTES, "class list").decode("utf-8-sig")
                listed = [x.strip() for x in text.splitlines() if x.strip()]
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"cannot read {classes} ({exc}); save it as UTF-8, one class name a line") from exc
            names = dict(enumerate(listed))
            break
    return _load_yolo(images_under(images_dir), folder, labels, names, source,
                      "put PNG/JPEG files in images/ and a label .txt for each in labels/", confine)


def _coco_dirs(file: Path) -> list[Path]:
    d, stem = file.parent, file.stem.removeprefix("instances_")
    return [d, d.parent, d / "images", d.parent / stem, d.parent / "images" / stem, d.parent / "images"]


def _ident(v: Any) -> int | str | None:
    """A COCO id (int or str), or None when it is missing or of another type."""
    return v if isinstance(v, (int, str)) and not isinstance(v, bool) else None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _load_coco(file: Path, labels: list[str], source: str, confine: Confine) -> DetDataset:
    try:
        data = json.loads(read_capped(file, MAX_COCO_BYTES, "COCO file").decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataError(f"cannot read COCO file {file}: {exc}; fix the JSON") from exc
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DataError(f"{file} is not COCO detection JSON: no {key!r} list; a COCO file needs images, "
                            "annotations and categories (for COCO itself use annotations/instances_*.json)")
    try:
        categories = {c["id"]: str(c["name"]) for c in data["categories"]}
        if any(_ident(k) is None for k in categories):
            raise TypeError("a category id is neither a number nor a string")
    except (TypeError, KeyError) as exc:
        raise DataError(f"{file}: a category lacks its id or name ({exc!r}); each needs "
                        "{'id': …, 'name': …}") from exc
    out = _Collector(labels, "coco", source)
    entries: dict[Any, dict[str, Any]] = {}
    for i, entry in enumerate(data["images"]):
        where = f"{file.name} images[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str)\
                or _ident(entry.get("id")) is None:
            out.skip(where, "image entry without id or file_name")
        elif entry["id"] in entries:
            out.skip(entry["file_name"], f"duplicate image id {entry['id']!r} ({where})")
        else:
            entries[entry["id"]] = entry
    per_image: dict[Any, list[tuple[int, dict[str, Any]]]] = {}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            out.drop(file.name, i, f"annotations[{i}] is not an object")
            continue
        ident = ann.get("id", i)
        ident = ident if isinstance(ident, int) and not isinstance(ident, bool) else i
        image_id = _ident(ann.get("image_id"))
        if image_id not in entries:
            out.drop(file.name, ident, f"annotation for image_id {ann.get('image_id')!r}, which is not in images")
        else:
            per_image.setdefault(image_id, []).append((ident, ann))
    for image_id, entry in sorted(entries.items(), key=lambda kv: (kv[1]["file_name"], str(kv[0]))):
        rel = entry["file_name"]
        tried = [d / rel for d in _coco_dirs(file)]
        image = next((p for p in tried if p.is_file()), None)
        if image is None:
            out.skip(rel, "image file not found (looked in " + ", ".join(str(p.parent) for p in tried) + ")")
            continue
        outside = confine.outside(image)
        if outside:  # an absolute file_name, ../.. or a symlink out of the dataset
            out.skip(rel, outside)
            continue
        size = out.verify(image, rel)
        if size is None:
            continue
        height, width = size
        if _number(entry.get("width")) and _number(entry.get("height")) and entry["width"] and entry["height"] \
                and (entry["height"], entry["width"]) != size:
            out.skip(rel, f"the JSON says {entry['width']}x{entry['height']} but the file is {width}x{height} "
                          "(after EXIF orientation); fix width/height in the JSON or the image")
            continue
        boxes, classes = [], []
        for ident, ann in per_image.get(image_id, []):
            bbox = ann.get("bbox")
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_number(v) for v in bbox):
                out.drop(rel, ident, f"malformed bbox {bbox!r}, expected [x, y, width, height] in pixels")
                continue
            if ann.get("iscrowd"):
                out.drop(rel, ident, "crowd")
                continue
            cid = _ident(ann.get("category_id"))
            if cid not in categories:
                out.drop(rel, ident, f"unknown category_id {ann.get('category_id')!r}")
                continue
            if categories[cid] not in labels:
                out.drop(rel, ident, f"unknown class {categories[cid]!r}")
                continue
            x, y, w, h = (float(v) for v in bbox)
            box, why = _clip(x, y, x + w, y + h, width, height) if w > 0 and h > 0 else (None, "zero area")
            if box is None:
                out.drop(rel, ident, why)
                continue
            boxes.append(box)
            classes.append(labels.index(categories[cid]))
        out.add(image, size, boxes, classes)
    return out.done(f"check that each file_name of {file.name} exists next to it (or in images/) as PNG/JPEG")


def _coco_file(folder: Path, split: str) -> Path | None:
    """The COCO JSON a folder holds for ``split``; None if it holds none; DataError if it has others only."""
    ann = folder / "annotations"
    for p in (ann / f"instances_{split}.json", ann / f"{split}.json", folder / "_annotations.coco.json",
              folder / split / "_annotations.coco.json",
              *((folder / "valid" / "_annotations.coco.json",) if split == "val" else ())):
        if p.is_file():
            return p
    in_ann = sorted(ann.glob("*.json")) if ann.is_dir() else []
    if len(in_ann) == 1:
        return in_ann[0]
    if in_ann:
        raise DataError(f"{ann} has no {split!r} annotations (it has {', '.join(p.name for p in in_ann)}); pick "
                        "another split or pass the .json itself")
    top = sorted(folder.glob("*.json"))
    return top[0] if len(top) == 1 else None


def load_detection(path: str | Path, labels: list[str], split: str = "train",
                   root: str | Path | None = None) -> DetDataset:
    """Load YOLO or COCO detection data (see the module docstring) with classes mapped to ``labels``; DataError if
    the layout is unknown or malformed, a file is over its size cap (:mod:`.bounds`), or no usable image remains.
    With ``root`` (the agent's data_root) nothing outside that folder is read."""
    src, labels, confine = Path(path), [str(x) for x in labels], Confine(root)
    if not labels:
        raise DataError("the bundle has no labels; a detection bundle needs its class names")
    if not src.exists():
        raise DataError(f"detection data {src} does not exist; pass a data.yaml, a COCO .json or their folder")
    outside = confine.outside(src)
    if outside:
        raise DataError(f"detection data {outside}")
    if src.is_file():
        if src.suffix.lower() in (".yaml", ".yml"):
            return _load_yaml(src, labels, split, str(path), confine)
        if src.suffix.lower() == ".json":
            return _load_coco(src, labels, str(path), confine)
        raise DataError(f"{src} is neither a data.yaml nor a COCO .json; pass one of those or their folder")
    for name in ("data.yaml", "data.yml"):
        if (src / name).is_file():
            return _load_yaml(src / name, labels, split, str(path), confine)
    coco = _coco_file(src, split)
    if coco is not None:
        outside = confine.outside(coco)
        if outside:
            raise DataError(f"COCO file {outside}")
        return _load_coco(coco, labels, str(path), confine)
    if (src / "images").is_dir() or any((src / s / "images").is_dir() for s in (split, "valid")):
        return _load_yolo_folder(src, labels, split, str(path), confine)
    raise DataError(f"{src} holds no detection data: expected a data.yaml (Ultralytics), images/ + labels/ "
                    "folders (YOLO) or a COCO .json (e.g. annotations/instances_train.json)")


def _looks_coco(file: Path) -> bool:
    with open(file, "rb") as f:
        head = f.read(1 << 16)
    return any(key in head for key in (b'"images"', b'"annotations"', b'"categories"'))


def is_detection_data(path: str | Path) -> bool:
    """Whether ``path`` looks like detection data :func:`load_detection` reads (a cheap check of names only, plus
    the first 64 KiB of a .json); never raises."""
    try:
        p = Path(path)
        if p.is_file():
            suffix = p.suffix.lower()
            return suffix in (".yaml", ".yml") or (suffix == ".json" and _looks_coco(p))
        if not p.is_dir():
            return False
        if (p / "data.yaml").is_file() or (p / "data.yml").is_file() or (p / "images").is_dir():
            return True
        if (p / "_annotations.coco.json").is_file() or any((p / "annotations").glob("*.json")):
            return True
        if any((d / "images").is_dir() or (d / "_annotations.coco.json").is_file() for d in p.iterdir() if d.is_dir()
               and d.name in (*SPLIT_KEYS, "valid")):
            return True
        top = list(p.glob("*.json"))
        return len(top) == 1 and _looks_coco(top[0])
    except OSError:
        return False
