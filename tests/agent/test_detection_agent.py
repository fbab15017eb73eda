"""The device agent personalizes a detector over MQTT: train job with mAP progress, a model version, rollback."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from ftedge.cli import main
from tests.helpers.agent_harness import AgentProc, Collector, agent_config
from tests.helpers.common import ROOT


@pytest.fixture()
def det_device(tmp_path, shop_detector):
    data = tmp_path / "data"
    proc = subprocess.run([sys.executable, str(ROOT / "examples/detect/make_shop.py"), str(data / "shop"),
                           "--train", "16", "--heldout", "12", "--seed", "5", "--format", "yolo"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    bundles = tmp_path / "bundles"
    shutil.copytree(shop_detector, bundles / "shop")   # exported once per session (tests/conftest.py)

    return lambda b: agent_config(tmp_path / "state", b, data, bundles)


def test_agent_trains_a_detector_reports_map_and_keeps_versions(broker, det_device, tmp_path):  # noqa: F811
    col = Collector(broker)
    agent = AgentProc(det_device(broker), tmp_path / "agent.log")
    try:
        col.wait_online()
        for bad, why in (({"bundle": "shop", "data": "shop", "off_topic": "x.jsonl"}, "do(es) not apply"),
                         ({"bundle": "shop", "data": "shop", "eval_data": "../../etc"}, "outside"),
                         ({"bundle": "shop", "data": "shop", "flip": "yes"}, "boolean")):
            reply = col.send("train", bad)
            assert reply["status"] == "rejected" and why in reply["detail"], reply
        # data inside data_root whose data.yaml points outside it (issue 33, finding 10): the job fails, nothing
        # outside is read
        secret = tmp_path / "secret"
        for part in ("images", "labels"):
            shutil.copytree(tmp_path / "data/shop" / part, secret / part)
        (tmp_path / "data/leak").mkdir()
        (tmp_path / "data/leak/data.yaml").write_text(f"path: {secret}\ntrain: images/train\n"
                                                      "names: [sneaker, bag, ankle_boot]\n")
        leak = col.send("train", {"bundle": "shop", "data": "leak", "epochs": 1})
        assert leak["status"] == "accepted", leak
        assert col.wait(lambda: col.of(f"jobs/{leak['job']}/result"), 60), agent.text()[-3000:]
        failed = col.of(f"jobs/{leak['job']}/result")[0]
        assert failed["status"] == "failed" and "outside the data root" in failed["error"], failed
        settings = {"bundle": "shop", "data": "shop", "eval_data": "shop", "epochs": 8, "flip": True}
        first = col.send("train", settings)
        assert first["status"] == "accepted", first
        assert col.wait(lambda: col.of(f"jobs/{first['job']}/result"), 180), agent.text()[-3000:]
        result = col.of(f"jobs/{first['job']}/result")[0]
        assert result["status"] == "succeeded" and result["promoted"] and result["version"] == "v0001", result
        assert result["final"]["map50"] > result["baseline"]["map50"] + 0.1
        progress = col.of(f"jobs/{first['job']}/progress")
        assert [p["epoch"] for p in progress] == list(range(1, 9))
        assert all("val_map50" in p["metrics"] for p in progress)
        version = tmp_path / "state" / "models" / "v0001"
        assert (version / "model.onnx").is_file() and (version / "model.json").is_file()
        rc = main(["detect", str(version), "--images", str(tmp_path / "data/shop/images/val"), "--json"])
        assert rc == 0
        second = col.send("train", {**settings, "seed": 1})
        assert col.wait(lambda: col.of(f"jobs/{second['job']}/result"), 180), agent.text()[-3000:]
        assert col.of(f"jobs/{second['job']}/result")[0]["version"] == "v0002"
        back = col.send("rollback", {})
        assert back["status"] == "done" and back["active_version"] == "v0001", back
    finally:
        col.close()
        agent.stop()
