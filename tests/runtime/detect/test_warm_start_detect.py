"""`ftedge train --warm-start DIR` for a detector: the detection head continues from a previous run's weights and
is judged against it on the same held-out images. SYNTHETIC scenes (examples/detect/make_shop.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from ftedge.cli import main
from tests.helpers.common import ROOT

LABELS = ["sneaker", "bag", "ankle_boot"]


@pytest.fixture(scope="module")
def shop_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shopdata") / "shop"
    proc = subprocess.run([sys.executable, str(ROOT / "examples/detect/make_shop.py"), str(out), "--train", "16",
                           "--heldout", "12", "--seed", "5", "--format", "yolo"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out


def _train(bundle: Path, data: Path, run: Path, *extra: str) -> dict:
    assert main(["train", str(bundle), "--data", str(data), "-o", str(run), "--no-cache", "--quiet",
                 "--eval-data", str(data), *extra]) == 0
    return json.loads((run / "result.json").read_text())


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["train_loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_detector_warm_start_continues_the_head_and_is_judged_against_it(shop_detector, shop_data, tmp_path):
    det_bundle = shop_detector   # tests/conftest.py: exported once per session
    prev = _train(det_bundle, shop_data, tmp_path / "prev", "--epochs", "8")
    assert prev["promoted"] is True and "previous" not in prev
    with safe_open(str(tmp_path / "prev" / "weights.safetensors"), framework="numpy") as f:
        assert f.metadata()["steps"] == "0" and all(k[:2] in ("p:", "b:") for k in f.keys())
    warm = _train(det_bundle, shop_data, tmp_path / "warm", "--epochs", "2", "--warm-start", str(tmp_path / "prev"))
    cold = _train(det_bundle, shop_data, tmp_path / "cold", "--epochs", "2")
    assert _losses(tmp_path / "warm")[0] < 0.7 * _losses(tmp_path / "cold")[0]
    assert _losses(tmp_path / "warm")[0] < 1.3 * _losses(tmp_path / "prev")[-1]
    assert warm["warm_start"] == {"from": str(tmp_path / "prev"), "version": None}
    assert warm["previous"]["map50"] == pytest.approx(prev["metrics"]["map50"])   # the same held-out images
    assert warm["previous_gain"] == pytest.approx(warm["metrics"]["map50"] - prev["metrics"]["map50"])
    assert warm["promoted"] is (warm["previous_gain"] > 0 and warm["gain"] > 0)
    if not warm["promoted"]:
        assert "does not beat the active model" in warm["stop_reason"]
    # a hugely too high learning rate wrecks the head: not promoted over the previous model, and it says why
    worse = _train(det_bundle, shop_data, tmp_path / "worse", "--epochs", "1", "--lr", "5",
                   "--warm-start", str(tmp_path / "prev"))
    assert worse["previous_gain"] < 0 and worse["promoted"] is False
    assert "not promoted: does not beat the active model" in worse["stop_reason"]
