"""Detection commands: `ftedge detect`, and what `train` / `evaluate` print for a detector. Torch-free."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ftedge.runtime.engines.providers import add_providers_argument

DETECT_EPILOG = """examples:
  ftedge detect runs/shop --images photos/ --json                       # boxes as JSON
  ftedge detect runs/shop --images photos/ --draw out/ --threshold 0.3   # annotated copies in out/
  ftedge detect runs/shop --images photos/ --draw                       # ... in ./detections/
  ftedge detect bundles/shop --images photo.jpg                         # the untuned head (finds ~nothing)

MODEL is a finished `ftedge train` run of a detection bundle (its model.onnx: backbone + tuned head +
NonMaxSuppression), a model version kept by the device agent, or a detection bundle. Boxes are
x1 y1 x2 y2 in each image's own pixels."""


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "detect", help="find objects in images with a detection run or bundle (plain onnxruntime)",
        description="Letterbox each image as the bundle says, run the detector (decoding and NMS are in the graph) "
        "and print its boxes, or write annotated images with --draw. Unreadable images are skipped and reported.",
        epilog=DETECT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("target", metavar="MODEL", help="run directory, model version or detection bundle")
    d.add_argument("--images", required=True, metavar="DIR", help="a folder of .jpg/.jpeg/.png images (searched "
                   "recursively) or one image")
    d.add_argument("--draw", metavar="OUT_DIR", type=Path, nargs="?", const=Path("detections"),
                   help="write each image with its boxes drawn (PNG) into OUT_DIR (default ./detections), "
                   "mirroring the images' subfolders; a.jpg and a.png of one folder become a.jpg.png, a.png.png; "
                   "OUT_DIR may not be the --images folder or inside it")
    d.add_argument("--threshold", type=float, default=0.25, help="minimum score to report (default 0.25)")
    d.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: all cores)")
    add_providers_argument(d)
    d.add_argument("--json", action="store_true", help="print {images: [{file, detections: [{label, score, box}]}], "
                   "skipped}")
    d.set_defaults(handler=run_detect)


def evaluate_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--split", help="the split of a data.yaml / COCO folder to evaluate on (default val)")


def run_detect(args: argparse.Namespace) -> int:
    from ftedge.runtime.tasks.detect.detector import Detector, draw, draw_paths, image_files

    files = image_files(args.images)
    targets = draw_paths(files, args.images, args.draw) if args.draw else {}  # refused before any work
    det = Detector(args.target, args.providers, args.threads)
    found, skipped = det.detect(files, threshold=args.threshold)
    for d in found if args.draw else []:
        draw(d, det.names, targets[d.file])
    if args.json:
        print(json.dumps({"model": str(args.target), "kind": det.kind, "threshold": args.threshold,
                          "images": [d.to_json(det.names) for d in found], "skipped": skipped}))
    else:
        for d in found:
            items = ", ".join(f"{det.names[int(c)]} {float(s):.2f} [{', '.join(f'{v:.0f}' for v in b)}]"
                              for b, s, c in zip(d.boxes, d.scores, d.labels))
            print(f"{d.file}: {items or '(nothing)'}")
        if args.draw:
            print(f"annotated images in {args.draw}", file=sys.stderr)
    for s in skipped:
        print(f"skipped {s['file']}: {s['reason']}", file=sys.stderr)
    return 0


def report(result: dict[str, Any]) -> list[str]:
    m, b = result["metrics"], result["baseline"]

    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:.3f}"

    if result["status"] != "succeeded":
        return [f"{result['status']}: {result['epochs_run']} epoch(s), best {result['best_epoch']}"]
    from ftedge.runtime.training.warm_start import summary_line

    warm = summary_line(result)
    return ([warm] if warm else []) + [f"{result['status']}: {result['epochs_run']} epoch(s), best {result['best_epoch']} "
            f"({result['stop_reason']}); val mAP@0.5 {fmt(b.get('map50'))} untuned → {fmt(m.get('map50'))} tuned "
            f"(mAP@0.5:0.95 {fmt(m.get('map50_95'))}); promoted: {result['promoted']}; "
            f"{result['samples']['train']} train / {result['samples']['val']} val images, "
            f"{result['skipped_count']} skipped, {result['dropped_count']} boxes dropped; "
            f"{result['duration_s']:.1f} s"]


def run_evaluate(args: argparse.Namespace) -> int:
    from ftedge.runtime.tasks.detect.detector import Detector

    det = Detector(args.target, args.providers)
    result = det.evaluate(args.data, split=args.split or "val")
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['kind']} {result['model']} on {result['samples']} images, {result['boxes']} boxes "
          f"({result['skipped_count']} skipped, {result['dropped_count']} boxes dropped)")
    if result["map50"] is None:
        print("no ground-truth boxes: mAP undefined")
        return 0
    print(f"mAP@0.5 {result['map50']:.4f}   mAP@0.5:0.95 {result['map50_95']:.4f}   mAP@0.75 {result['map75']:.4f}")
    for label, c in result["per_class"].items():
        ap = "—" if c["ap50"] is None else f"{c['ap50']:.4f}"
        ap2 = "—" if c["ap50_95"] is None else f"{c['ap50_95']:.4f}"
        print(f"  {label:16s} boxes {c['gt']:5d}  AP@0.5 {ap}  AP@0.5:0.95 {ap2}")
    return 0
