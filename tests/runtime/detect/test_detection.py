"""Object detection: export (--task detect) checked against PyTorch, training on the device (cached feature maps,
flips, resume, gate), the personalized model.onnx, `ftedge detect` / `evaluate`, and a device-venv run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftedge.cli import main
from ftedge.errors import EXIT_USAGE
from tests.helpers.common import ROOT

LABELS = ["sneaker", "bag", "ankle_boot"]


@pytest.fixture(scope="module")
def det_bundle(shop_detector) -> Path:
    return shop_detector   # tests/conftest.py: exported once per session


@pytest.fixture(scope="module")
def shop_data(tmp_path_factory) -> Path:
    """SYNTHETIC scenes (real photos + real Fashion-MNIST products), YOLO layout + COCO JSON."""
    out = tmp_path_factory.mktemp("shopdata") / "shop"
    proc = subprocess.run([sys.executable, str(ROOT / "examples/detect/make_shop.py"), str(out), "--train", "24",
                           "--heldout", "24", "--seed", "3"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out


def _train(bundle: Path, data: Path, run: Path, *extra: str) -> dict:
    rc = main(["train", str(bundle), "--data", str(data), "-o", str(run), "--no-cache", "--quiet", *extra])
    assert rc == 0
    return json.loads((run / "result.json").read_text())


# --------------------------------------------------------------------------------------------------- export
def test_export_records_parity_of_backbone_head_nms_and_step(det_bundle):
    m = json.loads((det_bundle / "manifest.json").read_text())
    assert m["task"] == "detection" and m["labels"] == LABELS
    assert m["detection"]["strides"] == [16, 32] and m["detection"]["points"] == 20 * 20 + 10 * 10
    assert m["preprocessing"]["resize"] == "letterbox" and m["preprocessing"]["size"] == [320, 320]
    p = m["parity"]
    assert p["skipped"] is False
    assert p["backbone p16"]["relative"] < 1e-4 and p["backbone p32"]["relative"] < 1e-4
    assert p["head + nms"]["same_detections"] and p["head + nms"]["detections"] > 0
    assert p["step"]["max_rel_diff"] < 1e-4
    from ftedge.bundle.summary import summary

    text = summary(det_bundle, m)
    assert "head + NMS: the same" in text and "backbone, stride 16" in text and "NMS IoU 0.6" in text


def test_exported_head_and_nms_match_pytorch_on_the_same_feature_maps(det_bundle):
    """Independent of the export's own check: other feature maps, other head parameters."""
    import onnxruntime as ort
    import torch
    from ftedge.export.tasks.detect.model import decode, head_forward, nms_reference
    from ftedge.runtime.tasks.detect.targets import grid_of
    from safetensors.torch import load_file

    m = json.loads((det_bundle / "manifest.json").read_text())
    d = m["detection"]
    grid = grid_of(d, (320, 320))
    g = torch.Generator().manual_seed(123)
    feats = [torch.randn(3, 96, 20, 20, generator=g) * 2, torch.randn(3, 320, 10, 10, generator=g)]
    params = {k: v + 0.5 * torch.randn(v.shape, generator=g) * (".out." in k)
              for k, v in load_file(det_bundle / "portable/init.safetensors").items()}
    with torch.no_grad():
        boxes, scores = decode(head_forward(params, feats), torch.from_numpy(grid.points),
                               torch.from_numpy(grid.strides), len(LABELS))
    nms = d["nms"]
    kept = nms_reference(boxes, scores, nms["iou_threshold"], nms["score_threshold"], nms["max_per_class"])
    sess = ort.InferenceSession(str(det_bundle / "portable/head.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(d["outputs"], {"p16": feats[0].numpy(), "p32": feats[1].numpy(),
                                  **{k: v.numpy() for k, v in params.items()}})
    got = dict(zip(d["outputs"], out))
    assert len(kept) == len(got["det_scores"]) > 10
    assert [(b, c) for b, c, _ in kept] == list(zip(got["det_batch"].tolist(), got["det_labels"].tolist()))
    ref_boxes = np.stack([boxes[b, i].numpy() for b, _, i in kept])
    ref_scores = np.array([float(scores[b, i, c]) for b, c, i in kept])
    np.testing.assert_allclose(got["det_boxes"], ref_boxes, atol=1e-3)
    np.testing.assert_allclose(got["det_scores"], ref_scores, atol=1e-5)


def test_any_backbone_returning_feature_maps_exports_efficientnet_lite0(tmp_path):
    out = tmp_path / "eff"
    rc = main(["export", "ftedge.export.detect_sources:efficientnet_lite0", "-o", str(out), "--task", "detect",
               "--labels", "a,b", "--mean", "0.498,0.498,0.498", "--std", "0.502,0.502,0.502", "--quiet"])
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["detection"]["strides"] == [16, 32] and m["detection"]["channels"] == [112, 320]
    assert m["preprocessing"]["mean"] == [0.498] * 3
    assert m["parity"]["head + nms"]["same_detections"] and m["parity"]["backbone p32"]["relative"] < 1e-4


def test_detect_task_rejects_classification_flags(tmp_path):
    rc = main(["export", "ftedge.export.detect_sources:mobilenet_v2", "-o", str(tmp_path / "b"), "--task", "detect",
               "--labels", "a", "--input", "x:float32:1,3,32,32", "--quiet"])
    assert rc == 2
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------------------------------- training
def test_training_on_cached_maps_beats_the_untuned_head_and_writes_a_detector(det_bundle, shop_data, tmp_path):
    result = _train(det_bundle, shop_data, tmp_path / "run", "--epochs", "12", "--eval-data", str(shop_data))
    assert result["status"] == "succeeded" and result["task"] == "detection" and result["mode"] == "cached"
    assert result["baseline"]["map50"] < 0.05                 # the fresh head finds ~nothing
    assert result["metrics"]["map50"] > result["baseline"]["map50"] + 0.2
    assert result["promoted"] is True
    assert result["samples"] == {"total": 48, "train": 24, "val": 24, "boxes": result["samples"]["boxes"]}
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, 13)) and all("val_map50" in r for r in lines)
    # the personalized model.onnx (backbone + tuned head + NMS) scores what training measured on the same images
    from ftedge.runtime.tasks.detect.detector import Detector

    ev = Detector(tmp_path / "run").evaluate(shop_data, split="val")
    assert ev["kind"] == "personalized model" and ev["samples"] == 24
    assert abs(ev["map50"] - result["metrics"]["map50"]) < 0.03  # image vs letterboxed pixels, boxes clipped


def test_gate_keeps_a_model_that_does_not_clear_min_gain(det_bundle, shop_data, tmp_path, capsys):
    result = _train(det_bundle, shop_data, tmp_path / "run", "--epochs", "2", "--min-gain", "0.99")
    assert result["status"] == "succeeded"
    assert result["promoted"] is False and result["gain"] < 0.99
    assert (tmp_path / "run/model.onnx").is_file()
    assert result["headline"]["metric"] == "map50" and result["headline"]["tuned"] == result["metrics"]["map50"]
    # the run directory now holds a run: the same refusal and exit code as every task's (tests/test_tasks.py)
    rc = main(["train", str(det_bundle), "--data", str(shop_data), "-o", str(tmp_path / "run"), "--epochs", "2"])
    assert rc == 1 and "already holds a run; pass --resume" in capsys.readouterr().err


def test_resume_after_a_stop_continues_exactly(det_bundle, shop_data, tmp_path):
    from ftedge.runtime.tasks.detect.trainer import DetTrainConfig, DetTrainer

    cfg = DetTrainConfig(epochs=4, batch_size=8, seed=1)
    whole = DetTrainer(det_bundle, shop_data, tmp_path / "whole", cfg).run()

    class StopAfter2:
        def __init__(self) -> None:
            self.epochs = 0

        def on_epoch(self, record: dict) -> None:
            self.epochs += 1

        def should_stop(self) -> bool:
            return self.epochs >= 2

    part = DetTrainer(det_bundle, shop_data, tmp_path / "part", cfg, callbacks=StopAfter2()).run()
    assert part["status"] == "cancelled" and part["epochs_done"] == 2
    with pytest.raises(Exception, match="--resume"):
        DetTrainer(det_bundle, shop_data, tmp_path / "part", cfg).run()
    cfg_resume = DetTrainConfig(epochs=4, batch_size=8, seed=1, resume=True)
    resumed = DetTrainer(det_bundle, shop_data, tmp_path / "part", cfg_resume).run()
    assert resumed["epochs_run"] == 4
    a = [json.loads(x) for x in (tmp_path / "whole/metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "part/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in b] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["train_loss"] for r in b], [r["train_loss"] for r in a], rtol=1e-5)
    np.testing.assert_allclose([r["val_map50"] for r in b], [r["val_map50"] for r in a], atol=1e-6)
    assert resumed["metrics"]["map50"] == pytest.approx(whole["metrics"]["map50"], abs=1e-6)


def test_mirrored_boxes_get_mirrored_targets():
    from ftedge.runtime.tasks.detect.targets import assign, flip_boxes, make_grid

    grid = make_grid((320, 320), [16, 32], [[0, 48], [48, 1e8]], 2.5)
    boxes = np.array([[40, 60, 90, 120], [150, 20, 300, 200]], np.float32)
    classes = np.array([0, 2])
    t = assign(boxes, classes, grid, 3)
    tf = assign(flip_boxes(boxes, 320), classes, grid, 3)
    assert t[:, -1].sum() == tf[:, -1].sum() > 0
    for (h, w), start in ((grid.shapes[0], 0), (grid.shapes[1], 400)):
        pos = t[start:start + h * w, -1].reshape(h, w)
        pos_f = tf[start:start + h * w, -1].reshape(h, w)
        np.testing.assert_array_equal(pos[:, ::-1], pos_f)   # the positives of the mirrored map, mirrored
    assert t[:400, -1].sum() > 0 and t[400:, -1].sum() > 0   # the small box on stride 16, the large on 32


def test_bad_images_and_boxes_are_skipped_and_reported(det_bundle, shop_data, tmp_path):
    data = tmp_path / "shop"
    shutil.copytree(shop_data, data)
    (data / "images/train/000001.jpg").write_bytes(b"not a jpeg")               # corrupt image
    (data / "labels/train/000002.txt").unlink()                                 # missing label file
    with open(data / "labels/train/000003.txt", "a") as f:
        f.write("7 0.5 0.5 0.1 0.1\n0 1.5 1.5 0.1 0.1\n1 0.5 0.5 0 0.2\n")      # unknown class, outside, zero area
    result = _train(det_bundle, data, tmp_path / "run", "--epochs", "1")
    assert result["status"] == "succeeded"
    files = {s["file"] for s in result["skipped"]}
    assert any("000001" in f for f in files) and any("000002" in f for f in files)
    reasons = " ".join(d["reason"] for d in result["dropped_boxes"])
    assert "unknown class" in reasons and "outside the image" in reasons and "zero area" in reasons


def test_coco_json_trains_like_the_yolo_layout(det_bundle, shop_data, tmp_path):
    from ftedge.runtime.tasks.detect.data import load_detection

    a = load_detection(shop_data, LABELS)
    b = load_detection(shop_data / "annotations/instances_train.json", LABELS)
    assert [s.image for s in a.samples] == [s.image for s in b.samples]
    for x, y in zip(a.samples, b.samples):  # YOLO stores 6 decimals of normalized coordinates
        np.testing.assert_allclose(x.boxes, y.boxes, atol=1e-3)
        np.testing.assert_array_equal(x.classes, y.classes)
    coco = _train(det_bundle, shop_data / "annotations/instances_train.json", tmp_path / "c", "--epochs", "4")
    assert coco["format"] == "coco" and coco["samples"]["train"] + coco["samples"]["val"] == 24
    assert coco["metrics"]["map50"] > coco["baseline"]["map50"]


def test_full_mode_trains_on_augmented_images(det_bundle, shop_data, tmp_path):
    result = _train(det_bundle, shop_data, tmp_path / "run", "--epochs", "2", "--mode", "full")
    assert result["mode"] == "full" and result["status"] == "succeeded"
    assert result["cache"] == {"computed": 0, "reused": 0}   # no feature cache in full mode


# --------------------------------------------------------------------------------------------------- CLI
def test_detect_cli_prints_json_and_draws_boxes(det_bundle, shop_data, tmp_path, capsys):
    _train(det_bundle, shop_data, tmp_path / "run", "--epochs", "8", "--eval-data", str(shop_data))
    images = tmp_path / "imgs"
    images.mkdir()
    for p in sorted((shop_data / "images/val").glob("*.jpg"))[:4]:
        shutil.copy(p, images / p.name)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    capsys.readouterr()
    rc = main(["detect", str(tmp_path / "run"), "--images", str(images), "--json", "--threshold", "0.2",
               "--draw", str(tmp_path / "drawn")])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["images"]) == 4 and len(out["skipped"]) == 1
    found = [d for im in out["images"] for d in im["detections"]]
    assert found and all(d["label"] in LABELS and d["score"] >= 0.2 for d in found)
    assert all(0 <= d["box"][0] < d["box"][2] and 0 <= d["box"][1] < d["box"][3] for d in found)
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 4
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:  # the contract's bare --draw: ./detections
        assert main(["detect", str(tmp_path / "run"), "--images", str(images), "--draw"]) == 0
    finally:
        os.chdir(cwd)
    assert len(list((tmp_path / "detections").glob("*.png"))) == 4
    # images sharing a stem get one drawing each; --draw into the --images folder is refused, inputs untouched
    same = tmp_path / "same"
    (same / "sub").mkdir(parents=True)
    first = sorted((shop_data / "images/val").glob("*.jpg"))[0]
    shutil.copy(first, same / "x.jpg")
    shutil.copy(first, same / "sub" / "x.jpg")
    Image.open(first).save(same / "x.png")
    before = {p: p.read_bytes() for p in same.rglob("*") if p.is_file()}
    assert main(["detect", str(tmp_path / "run"), "--images", str(same), "--draw", str(tmp_path / "drawn2")]) == 0
    drawn = sorted(p.relative_to(tmp_path / "drawn2").as_posix() for p in (tmp_path / "drawn2").rglob("*.png"))
    assert drawn == ["sub/x.png", "x.jpg.png", "x.png.png"]
    assert main(["detect", str(tmp_path / "run"), "--images", str(same), "--draw", str(same)]) == EXIT_USAGE
    assert {p: p.read_bytes() for p in same.rglob("*") if p.is_file()} == before
    capsys.readouterr()
    rc = main(["evaluate", str(tmp_path / "run"), "--data", str(shop_data), "--json"])
    assert rc == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["task"] == "detection" and ev["map50"] > 0.1 and set(ev["per_class"]) == set(LABELS)


# --------------------------------------------------------------------------------------------------- device venv
def test_device_venv_trains_and_detects_without_torch(det_bundle, shop_data, tmp_path, device_python):
    bindir = Path(device_python).parent
    run = tmp_path / "run"
    proc = subprocess.run([str(bindir / "ftedge"), "train", str(det_bundle), "--data", str(shop_data), "-o", str(run),
                           "--epochs", "6", "--no-cache", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["task"] == "detection" and result["metrics"]["map50"] > result["baseline"]["map50"]
    code = ("import sys, json; from ftedge.runtime.tasks.detect.detector import Detector; "
            f"d = Detector({str(run)!r}); print(json.dumps(d.evaluate({str(shop_data)!r}, 'val')['map50'])); "
            "assert 'torch' not in sys.modules")
    proc = subprocess.run([device_python, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.strip()) >= 0.0


def test_data_whose_class_names_match_no_label_is_a_clear_error(det_bundle, tmp_path):
    from ftedge.runtime.tasks.detect.trainer import DetTrainConfig, DetTrainer

    from ftedge.errors import DataError

    data = tmp_path / "other"
    proc = subprocess.run([sys.executable, str(ROOT / "examples/detect/make_shop.py"), str(data), "--train", "6",
                           "--heldout", "0", "--products", "sandal,coat,shirt", "--format", "yolo"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(DataError, match="no box to train on.*unknown class 'sandal'.*check the labels' class names"):
        DetTrainer(det_bundle, data, tmp_path / "run", DetTrainConfig(epochs=1))
    assert not (tmp_path / "run").exists()
