"""Run a detector on image files (torch-free): a personalized ``model.onnx`` (run directory or agent model
version) or an untuned detection bundle; evaluate it (COCO mAP) on labelled data; draw its boxes.

Images are letterboxed as the manifest's ``preprocessing`` says; the graph's boxes (model-input pixels) are
mapped back to each image's own pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftedge.runtime.tasks.detect import TASK
from ftedge.bundle.manifest import MANIFEST_NAME
from ftedge.errors import FtedgeError, ImageError, UsageError
from ftedge.runtime.tasks.detect.data import load_detection
from ftedge.runtime.data.image import EXTENSIONS
from ftedge.runtime.tasks.detect.letterbox import letterbox_spec, load_letterboxed, read_rgb, to_image_boxes
from ftedge.runtime.tasks.detect.metrics import coco_map
from ftedge.runtime.tasks.detect.trainer import MAX_DETS, OUTPUTS, split_detections
from ftedge.runtime.engines.ort_backend import InferenceModel


@dataclass
class Detections:
    file: str
    boxes: np.ndarray    # [k, 4] x1 y1 x2 y2 in the image's pixels
    scores: np.ndarray
    labels: np.ndarray   # class indices

    def to_json(self, names: list[str]) -> dict[str, Any]:
        return {"file": self.file, "detections": [
            {"label": names[int(c)], "class": int(c), "score": round(float(s), 5),
             "box": [round(float(v), 2) for v in b]} for b, s, c in zip(self.boxes, self.scores, self.labels)]}


class Detector:
    """``target``: a run directory / model version (``model.onnx`` + ``model.json``) or a detection bundle."""

    def __init__(self, target: str | Path, providers: list[str] | None = None, threads: int | None = None) -> None:
        target = Path(target)
        self.target = target
        if (target / "model.onnx").is_file() and (target / "model.json").is_file():
            self.spec = json.loads((target / "model.json").read_text())
            self.kind = "personalized model"
            self._model = InferenceModel(target / "model.onnx", providers, threads)
            self._backbone = self._head = None
        elif (target / MANIFEST_NAME).is_file():
            from ftedge.bundle.loader import load_bundle

            bundle = load_bundle(target)
            self.spec = bundle.manifest
            self.kind = "bundle (untuned)"
            self._model = None
            self._backbone = InferenceModel(bundle.file("backbone"), providers, threads)
            self._head = InferenceModel(bundle.file("head"), providers, threads)
            self._feats = [s["name"] for s in bundle.manifest["head_inputs"]]
        else:
            raise UsageError(f"{target} is neither a run directory (model.onnx + model.json) nor a bundle")
        if not TASK.serves(self.spec):
            raise UsageError(f"{target} is not a detector (task {self.spec.get('task')!r}); `ftedge detect` and "
                             "detection evaluation need a bundle exported with --task detect or a run of one")
        self.names: list[str] = list(self.spec["labels"])
        self.letterbox = letterbox_spec(self.spec["preprocessing"])

    def _run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if self._model is not None:
            return self._model.run({"image": images}, OUTPUTS)
        feats = self._backbone.run({"image": images}, self._feats)  # type: ignore[union-attr]
        return self._head.run(feats, OUTPUTS)  # type: ignore[union-attr]

    def detect(self, paths: list[Path], threshold: float = 0.0, batch: int = 8
               ) -> tuple[list[Detections], list[dict[str, str]]]:
        """Detections per readable image (scores ≥ ``threshold``, at most 100 per image) and the skipped files."""
        out, skipped = [], []
        pending: list[tuple[Path, np.ndarray, Any]] = []

        def flush() -> None:
            if not pending:
                return
            res = self._run(np.stack([x for _, x, _ in pending]))
            for (p, _, lb), d in zip(pending, split_detections(res, len(pending), MAX_DETS)):
                boxes = to_image_boxes(d["boxes"], lb)
                # a box in the letterbox padding is clipped to nothing: not a detection in the image
                keep = (d["scores"] >= threshold) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
                out.append(Detections(str(p), boxes[keep], d["scores"][keep], d["labels"][keep]))
            pending.clear()

        for p in paths:
            try:
                x, lb = load_letterboxed(p, self.letterbox)
            except ImageError as exc:
                skipped.append({"file": str(p), "reason": str(exc)})
                continue
            pending.append((p, x, lb))
            if len(pending) >= batch:
                flush()
        flush()
        return out, skipped

    def evaluate(self, data: str | Path, split: str = "val") -> dict[str, Any]:
        """COCO mAP@0.5 and @0.5:0.95 (and per class) on labelled images (YOLO layout or COCO JSON)."""
        ds = load_detection(data, self.names, split=split)
        dets, skipped = self.detect([s.image for s in ds.samples])
        by_file = {d.file: d for d in dets}
        pairs = [(by_file[str(s.image)], s) for s in ds.samples if str(s.image) in by_file]
        m = coco_map([{"boxes": d.boxes, "scores": d.scores, "labels": d.labels} for d, _ in pairs],
                     [{"boxes": s.boxes, "labels": s.classes} for _, s in pairs], self.names, MAX_DETS)
        return {"model": str(self.target), "kind": self.kind, "task": "detection", "samples": len(pairs),
                "boxes": int(sum(len(s.boxes) for _, s in pairs)), "format": ds.format,
                **{k: m[k] for k in ("map50", "map50_95", "map75", "per_class", "method")},
                "skipped": ds.skipped + skipped, "dropped_boxes": ds.dropped_boxes,
                "skipped_count": ds.skipped_count + len(skipped), "dropped_count": ds.dropped_count}


def image_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise UsageError(f"--images {folder}: no such file or folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    if not files:
        raise FtedgeError(f"--images {folder}: no .jpg/.jpeg/.png files found")
    return files


def draw_paths(files: list[Path], images: str | Path, out_dir: Path) -> dict[str, Path]:
    """Where ``--draw OUT_DIR`` writes each of ``files`` (found under ``--images``), by ``str(file)``.

    OUT_DIR mirrors the images' subfolders; each file is ``<stem>.png``, or ``<name>.png`` (``a.jpg.png``) when
    images of one folder share a stem, so no drawing replaces another. UsageError, before anything runs, when
    OUT_DIR is the ``--images`` folder or inside it, or a drawing would replace an input image.
    """
    base = Path(images)
    out_real = out_dir.resolve()
    if base.is_dir() and (out_real == base.resolve() or base.resolve() in out_real.parents):
        raise UsageError(f"--draw {out_dir} is inside --images {base}: the drawings would replace or join the "
                         "input images; pick a folder outside it (e.g. --draw detections)")
    rels = [f.relative_to(base) if base.is_dir() else Path(f.name) for f in files]
    plain = [r.with_suffix(".png") for r in rels]
    shared = {p for p in plain if plain.count(p) > 1}
    chosen: dict[str, Path] = {}
    taken: set[Path] = set()
    for f, r, p in zip(files, rels, plain):
        target = r.parent / f"{r.name}.png" if p in shared else p
        n = 1
        while target in taken:  # e.g. a.jpg and a.jpg.png in one folder
            target, n = r.parent / f"{r.name}-{n}.png", n + 1
        taken.add(target)
        chosen[str(f)] = out_dir / target
    inputs = {f.resolve() for f in files}
    clash = next((t for t in chosen.values() if t.resolve() in inputs), None)
    if clash is not None:
        raise UsageError(f"--draw {out_dir} would overwrite the input image {clash}; pick another folder")
    return chosen


COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def draw(det: Detections, names: list[str], out: Path) -> None:
    """The image with its boxes, labels and scores drawn, written to ``out`` (PNG or JPEG by suffix)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(read_rgb(det.file))
    pen = ImageDraw.Draw(img)
    for b, s, c in zip(det.boxes, det.scores, det.labels):
        colour = COLOURS[int(c) % len(COLOURS)]
        pen.rectangle([float(v) for v in b], outline=colour, width=2)
        text = f"{names[int(c)]} {float(s):.2f}"
        x, y = float(b[0]), max(0.0, float(b[1]) - 11)
        pen.rectangle([x, y, x + 6 * len(text) + 2, y + 11], fill=colour)
        pen.text((x + 1, y), text, fill=(0, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
