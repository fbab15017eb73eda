"""ftedge.runtime.tasks.detect.metrics: COCO bbox mAP, checked against pycocotools' COCOeval on the same boxes.

pycocotools is a dev dependency only (the device never imports it); it is imported at module level on purpose, so a
missing pycocotools makes these tests fail rather than skip.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

import numpy as np
import pytest
from ftedge.runtime.tasks.detect.metrics import IOU_THRESHOLDS, coco_map, iou_matrix
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ftedge.errors import DataError

LABELS = ["cat", "dog", "bird"]  # "bird" never has ground truth in the random scenes
TOL = 1e-9


# --- pycocotools on the same boxes ---

def _xywh(box) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def pycoco(detections: list[dict], truths: list[dict], n_labels: int, max_dets: int = 100) -> COCOeval:
    """COCOeval (bbox) run in memory on our format; images get ids 1.., classes ids 1.., all boxes non-crowd."""
    anns = []
    for i, truth in enumerate(truths):
        for box, label in zip(truth["boxes"], truth["labels"]):
            xywh = _xywh(box)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(label) + 1, "bbox": xywh,
                         "area": xywh[2] * xywh[3], "iscrowd": 0})
    results = [{"image_id": i + 1, "category_id": int(label) + 1, "bbox": _xywh(box), "score": float(score)}
               for i, det in enumerate(detections)
               for box, score, label in zip(det["boxes"], det["scores"], det["labels"])]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [{"id": i + 1} for i in range(len(truths))], "annotations": anns,
                      "categories": [{"id": c + 1, "name": str(c)} for c in range(n_labels)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.params.maxDets = [1, 10, max_dets] if max_dets > 10 else [1, 2, max_dets]  # stats[0..2] use maxDets[2]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def assert_same_as_pycoco(ours: dict, ev: COCOeval) -> None:
    precision = ev.eval["precision"][:, :, :, 0, 2]  # [T, R, K] at area "all", maxDets[2] (= max_dets)
    valid = lambda s: s[s > -1]  # noqa: E731  (pycocotools' own filter: -1 marks classes without ground truth)
    assert ours["map50_95"] == pytest.approx(valid(precision).mean(), abs=TOL)
    assert ours["map50"] == pytest.approx(valid(precision[0]).mean(), abs=TOL)
    assert ours["map75"] == pytest.approx(valid(precision[5]).mean(), abs=TOL)
    if ev.params.maxDets[2] == 100:  # stats[0] is hard-wired to maxDets=100 (stats[1], stats[2] use maxDets[2])
        assert [ours["map50_95"], ours["map50"], ours["map75"]] == pytest.approx(list(ev.stats[:3]), abs=TOL)
    for k, entry in enumerate(ours["per_class"].values()):
        if (precision[:, :, k] == -1).all():
            assert entry["ap50"] is None and entry["ap50_95"] is None and entry["gt"] == 0
        else:
            assert entry["ap50_95"] == pytest.approx(precision[:, :, k].mean(), abs=TOL)
            assert entry["ap50"] == pytest.approx(precision[0, :, k].mean(), abs=TOL)


# --- scenes ---

def random_scene(seed: int, n_images: int = 20, per_image_fp: int = 4) -> tuple[list[dict], list[dict]]:
    """Seeded images: some without ground truth, classes 0/1 only in the truth, detections = jittered true boxes
    (some missed, some doubled) + false positives of any class, scores on a 0.1 grid so many tie."""
    rng = np.random.default_rng(seed)
    detections, truths = [], []

    def box(x1: float, y1: float, w: float, h: float) -> list[float]:
        return [x1, y1, x1 + w, y1 + h]

    for _ in range(n_images):
        n_gt = 0 if rng.random() < 0.2 else int(rng.integers(1, 7))
        g_boxes = [box(*rng.uniform(0, 500, 2), *rng.uniform(8, 150, 2)) for _ in range(n_gt)]
        g_labels = rng.integers(0, 2, n_gt).tolist()
        d_boxes, d_labels = [], []
        for (x1, y1, x2, y2), label in zip(g_boxes, g_labels):
            for _ in range(rng.choice([0, 1, 1, 1, 2])):
                w, h = x2 - x1, y2 - y1
                j = rng.normal(0, rng.choice([0.03, 0.1, 0.25]), 4) * [w, h, w, h]
                nx1, ny1 = x1 + j[0], y1 + j[1]
                d_boxes.append([nx1, ny1, max(nx1 + 1, x2 + j[2]), max(ny1 + 1, y2 + j[3])])
                d_labels.append(label if rng.random() < 0.9 else int(rng.integers(0, 3)))
        for _ in range(int(rng.integers(0, per_image_fp + 1))):
            d_boxes.append(box(*rng.uniform(0, 500, 2), *rng.uniform(8, 150, 2)))
            d_labels.append(int(rng.integers(0, 3)))
        scores = np.round(rng.random(len(d_boxes)), 1)
        truths.append({"boxes": np.array(g_boxes).reshape(-1, 4), "labels": np.array(g_labels, dtype=int)})
        detections.append({"boxes": np.array(d_boxes).reshape(-1, 4), "scores": scores,
                           "labels": np.array(d_labels, dtype=int)})
    return detections, truths


def dets(boxes, scores, labels) -> dict:
    return {"boxes": np.array(boxes, dtype=float).reshape(-1, 4), "scores": np.array(scores, dtype=float),
            "labels": np.array(labels, dtype=int)}


def gts(boxes, labels) -> dict:
    return {"boxes": np.array(boxes, dtype=float).reshape(-1, 4), "labels": np.array(labels, dtype=int)}


# --- tests ---

@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_random_scenes_agree_with_pycocotools(seed):
    detections, truths = random_scene(seed)
    ours = coco_map(detections, truths, LABELS)
    assert_same_as_pycoco(ours, pycoco(detections, truths, len(LABELS)))
    assert ours["per_class"]["bird"]["gt"] == 0 and ours["per_class"]["bird"]["detections"] > 0
    assert 0 < ours["map50_95"] < ours["map50"] < 1


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_max_dets_caps_each_image_and_class_like_pycocotools(seed):
    detections, truths = random_scene(seed, per_image_fp=12)
    capped = coco_map(detections, truths, LABELS, max_dets=3)
    assert_same_as_pycoco(capped, pycoco(detections, truths, len(LABELS), max_dets=3))
    assert capped["map50_95"] != coco_map(detections, truths, LABELS)["map50_95"]
    assert capped["max_dets"] == 3 and capped["method"].endswith("maxDets 3)")


def test_max_dets_truncation_drops_low_scored_true_positives():
    g = [[i * 50, 0, i * 50 + 40, 40] for i in range(10)]
    fp = [[i * 50, 200, i * 50 + 40, 240] for i in range(10)]
    detections = [dets(fp + g, [0.9] * 10 + [0.5] * 10, [0] * 20)]
    truths = [gts(g, [0] * 10)]
    for max_dets in (5, 100):
        ours = coco_map(detections, truths, ["a"], max_dets=max_dets)
        assert_same_as_pycoco(ours, pycoco(detections, truths, 1, max_dets=max_dets))
    assert coco_map(detections, truths, ["a"], max_dets=5)["map50"] == 0.0
    assert coco_map(detections, truths, ["a"], max_dets=100)["map50"] > 0.0


def test_a_perfect_detector_scores_one():
    _, truths = random_scene(7)
    detections = [dets(t["boxes"], np.linspace(1, 0.5, len(t["labels"])), t["labels"]) for t in truths]
    ours = coco_map(detections, truths, LABELS)
    assert ours["map50"] == ours["map75"] == ours["map50_95"] == 1.0
    assert ours["per_class"]["bird"]["ap50"] is None
    assert ours["gt"] == sum(len(t["labels"]) for t in truths) and ours["images"] == 20


def test_no_detections_score_zero_for_classes_with_ground_truth():
    _, truths = random_scene(8)
    ours = coco_map([dets([], [], []) for _ in truths], truths, LABELS)
    assert ours["map50"] == ours["map75"] == ours["map50_95"] == 0.0
    assert ours["per_class"]["cat"] == {"ap50": 0.0, "ap50_95": 0.0, "gt": ours["per_class"]["cat"]["gt"],
                                        "detections": 0}
    assert ours["per_class"]["bird"]["ap50"] is None


def test_a_class_with_ground_truth_but_no_detections_counts_as_zero_like_pycocotools():
    detections = [dets([[0, 0, 10, 10]], [0.9], [0])]
    truths = [gts([[0, 0, 10, 10], [50, 50, 60, 60]], [0, 1])]
    ours = coco_map(detections, truths, ["a", "b"])
    assert_same_as_pycoco(ours, pycoco(detections, truths, 2))
    # 0.5 only up to pycocotools' precision tp / (fp + tp + eps): a lone true positive scores 1 - 2.2e-16
    assert ours["map50"] == pytest.approx(0.5, abs=1e-15) and ours["per_class"]["b"]["ap50"] == 0.0


def test_without_any_ground_truth_the_map_values_are_none():
    ours = coco_map([dets([[0, 0, 10, 10]], [0.9], [0])], [gts([], [])], ["a"])
    assert ours["map50"] is None and ours["map50_95"] is None and ours["map75"] is None
    assert ours["per_class"]["a"] == {"ap50": None, "ap50_95": None, "gt": 0, "detections": 1}


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_score_ties_keep_input_order_like_pycocotools(order):
    # Two equal-score detections of the one true box: the first given takes it, the other is a false positive.
    # A third, lower-scored detection in a second image is the only match for that image's box.
    boxes = [[0, 0, 10, 10], [1, 1, 11, 11]]
    detections = [dets([boxes[i] for i in order], [0.5, 0.5], [0, 0]), dets([[0, 0, 10, 10]], [0.5], [0])]
    truths = [gts([[0, 0, 10, 10]], [0]), gts([[0, 0, 10, 10]], [0])]
    assert_same_as_pycoco(coco_map(detections, truths, ["a"]), pycoco(detections, truths, 1))


def test_a_detection_equally_close_to_two_boxes_takes_the_last_like_pycocotools():
    # The wide box has IoU 0.5 with both true boxes; COCOeval takes the *last*, which leaves box A to the exact
    # second detection, so both are true positives at IoU 0.5.
    truths = [gts([[0, 0, 10, 10], [10, 0, 20, 10]], [0, 0])]
    detections = [dets([[0, 0, 20, 10], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])]
    ours = coco_map(detections, truths, ["a"])
    assert_same_as_pycoco(ours, pycoco(detections, truths, 1))
    assert ours["per_class"]["a"]["ap50"] == 1.0


def test_iou_matrix_matches_pycocotools_mask_iou():
    rng = np.random.default_rng(3)
    a = np.concatenate([rng.uniform(0, 50, (7, 2)), np.zeros((7, 2))], axis=1)
    a[:, 2:] = a[:, :2] + rng.uniform(0, 40, (7, 2))
    b = np.concatenate([rng.uniform(0, 50, (5, 2)), np.zeros((5, 2))], axis=1)
    b[:, 2:] = b[:, :2] + rng.uniform(0, 40, (5, 2))
    ref = mask_utils.iou([_xywh(x) for x in a], [_xywh(x) for x in b], [0] * len(b))
    np.testing.assert_allclose(iou_matrix(a, b), ref, rtol=0, atol=1e-12)


def test_iou_matrix_has_no_plus_one_and_gives_zero_for_touching_or_empty():
    np.testing.assert_allclose(iou_matrix([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]]),
                               [[1.0, 1 / 3, 0.0]])
    assert iou_matrix(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)
    assert iou_matrix([[0, 0, 0, 0]], [[0, 0, 1, 1]]).tolist() == [[0.0]]


def test_the_report_names_its_method_and_thresholds():
    ours = coco_map(*random_scene(9), LABELS)
    assert ours["iou_thresholds"] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    assert len(IOU_THRESHOLDS) == 10
    assert ours["method"] == "COCO (101-point interpolated precision, IoU 0.50:0.05:0.95, area all, maxDets 100)"
    assert set(ours["per_class"]) == set(LABELS)


@pytest.mark.parametrize("detections, truths, labels, max_dets", [
    ([dets([], [], [])], [], ["a"], 100),                                      # one entry per image
    ([dets([[0, 0, 1, 1]], [0.5], [1])], [gts([], [])], ["a"], 100),           # label out of range
    ([dets([], [], [])], [gts([[0, 0, 1, 1]], [-1])], ["a"], 100),             # negative truth label
    ([dets([[0, 0, 1, 1]], [0.5, 0.4], [0])], [gts([], [])], ["a"], 100),      # lengths differ
    ([dets([[0, 0, 1, 1]], [np.nan], [0])], [gts([], [])], ["a"], 100),        # NaN score
    ([dets([[5, 0, 1, 1]], [0.5], [0])], [gts([], [])], ["a"], 100),           # inverted box
    ([{"boxes": [[0, 0, 1]], "scores": [0.5], "labels": [0]}], [gts([], [])], ["a"], 100),  # not [k, 4]
    ([dets([], [], [])], [gts([], [])], ["a", "a"], 100),                      # repeated class name
    ([dets([], [], [])], [gts([], [])], ["a"], 0),                             # max_dets < 1
])
def test_malformed_input_raises_data_error(detections, truths, labels, max_dets):
    with pytest.raises(DataError):
        coco_map(detections, truths, labels, max_dets=max_dets)


def test_the_module_imports_neither_torch_nor_pycocotools():
    code = ("import sys, ftedge.runtime.tasks.detect.metrics; "
            "print(sorted(m for m in ('torch', 'pycocotools') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
