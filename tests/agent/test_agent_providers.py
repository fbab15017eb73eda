"""The agent's execution providers: ``[runtime] providers`` in its config, a ``providers`` train option checked
against the EPs the box's onnxruntime has, the EPs in ``meta``, and per-stage placement in the job's result —
on the OpenVINO EP in its own venv (onnxruntime-openvino), over real Mosquitto."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ftedge.device_agent.config import load_config
from ftedge.errors import FtedgeError
from tests.helpers.agent_harness import Collector, agents, bundles, device  # noqa: F401 - fixtures

pytestmark = pytest.mark.needs("mosquitto")

OV = "OpenVINOExecutionProvider"



def test_train_command_naming_an_ep_the_box_lacks_is_refused(broker, device, agents):
    col = Collector(broker)
    agents(device(broker))
    col.wait_online()
    for bad, why in ((["NoSuchAccelerator"], "does not have"), ("CPU", "list of"), ([], "list of"),
                     (["CPU;rm -rf"], "list of")):
        reply = col.send("train", {"bundle": "mlp", "data": "blobs.npz", "epochs": 1, "providers": bad})
        assert reply["status"] == "rejected" and reply["code"] == "bad_args", reply
        assert "args.providers" in reply["detail"] and why in reply["detail"], reply
    reply = col.send("train", {"bundle": "mlp", "data": "blobs.npz", "epochs": 1, "step_providers": ["Nope"]})
    assert reply["code"] == "bad_args" and "args.step_providers" in reply["detail"]
    assert not col.of("job"), "a refused command must not start a job"
    col.close()


def test_runtime_providers_in_the_config_are_checked_at_load(tmp_path, device, broker):
    cfg = device(broker, '[runtime]\nproviders = ["NoSuchAccelerator", "CPU"]\n')
    with pytest.raises(FtedgeError) as info:
        load_config(cfg)
    assert "runtime.providers" in str(info.value) and "does not have" in str(info.value)
    ok = load_config(device(broker, '[runtime]\nproviders = ["CPU"]\nstep_providers = ["CPU"]\n'))
    assert ok.runtime.train_defaults() == {"providers": ["CPU"], "step_providers": ["CPU"]}


def test_agent_on_openvino_trains_every_stage_there_and_reports_it(broker, device, agents, openvino_python):
    """The box's config puts every session on OpenVINO; a second job asks for the NPU split (step on the CPU)."""
    col = Collector(broker)
    agents(device(broker, '[runtime]\nproviders = ["OpenVINO"]\n'), python=openvino_python)
    col.wait_online()
    assert col.wait(lambda: any(OV in (m.get("providers") or []) for m in col.of("meta")))
    reply = col.send("train", {"bundle": "mlp", "data": "blobs.npz", "epochs": 3, "batch_size": 16})
    assert reply["status"] == "accepted", reply
    assert col.wait(lambda: col.of(f"jobs/{reply['job']}/result"), 120)
    result = col.of(f"jobs/{reply['job']}/result")[0]
    assert result["status"] == "succeeded", result
    placed = result["providers"]
    assert {"backbone", "step", "head"} <= set(placed)
    for stage in ("backbone", "step", "head"):
        assert placed[stage]["providers"][0] == OV and placed[stage]["fallback"] is None, placed[stage]
        assert placed[stage]["cpu_fallback_nodes"] == 0, placed[stage]   # the whole graph on the EP
    split = col.send("train", {"bundle": "mlp", "data": "blobs.npz", "epochs": 2, "step_providers": ["CPU"]})
    assert split["status"] == "accepted", split
    assert col.wait(lambda: col.of(f"jobs/{split['job']}/result"), 120)
    placed = col.of(f"jobs/{split['job']}/result")[0]["providers"]
    assert placed["backbone"]["providers"][0] == OV
    assert placed["step"]["providers"] == ["CPUExecutionProvider"] and placed["step"]["cpu_fallback_nodes"] == 0
    col.close()
