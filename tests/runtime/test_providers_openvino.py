"""Every zoo family trains with ``--providers OpenVINO`` in the onnxruntime-openvino venv, every stage whole on the
EP: each stage reports the providers its session ran on and the nodes that fell back to the CPU EP (measured from
the session's profile); a graph the EP cannot load moves to the CPU EP with a warning naming the EP — never an
internal error. SYNTHETIC data (random feeds)."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np

from ftedge.bundle.loader import load_bundle
from tests.helpers.common import ROOT, random_feeds, random_targets
from tests.helpers.zoo import FAMILIES, PORTABLE_ONLY

OV = "OpenVINOExecutionProvider"
STAGES = ("backbone", "step", "head")

# One process trains every family (one onnxruntime-openvino import, not fifteen).
SCRIPT = r"""
import json, sys
from ftedge.runtime import tasks
for line in sys.stdin:
    job = json.loads(line)
    row, dt = tasks.for_bundle(job["bundle"])
    try:
        result = dt.train(tasks.TrainRequest(bundle=job["bundle"], data=job["data"], run_dir=job["run"],
                                             options=job["options"]))
        print(json.dumps({"family": job["family"], "status": result["status"], "providers": result["providers"]}))
    except Exception as exc:
        print(json.dumps({"family": job["family"], "status": "error", "error": f"{type(exc).__name__}: {exc}"}))
    sys.stdout.flush()
"""



def _train_all(python: str, jobs: list[dict]) -> dict[str, dict]:
    proc = subprocess.run([python, "-c", SCRIPT], input="\n".join(map(json.dumps, jobs)), text=True,
                          capture_output=True, cwd=ROOT, timeout=900, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            out[row["family"]] = row
    return out | {"_stderr": {"text": proc.stderr}}


def test_every_zoo_family_trains_with_every_stage_on_openvino(openvino_python, family_bundle, tmp_path):
    jobs = []
    for family in sorted({**FAMILIES, **PORTABLE_ONLY}):
        bundle = load_bundle(family_bundle(family))
        np.savez(tmp_path / f"{family}.npz", labels=random_targets(bundle, 24), **random_feeds(bundle.inputs, 24, seed=3))
        jobs.append({"family": family, "bundle": str(bundle.path), "data": str(tmp_path / f"{family}.npz"),
                     "run": str(tmp_path / "runs" / family),
                     "options": {"epochs": 1, "batch_size": 8, "providers": ["OpenVINO"]}})
    done = _train_all(openvino_python, jobs)
    stderr = done.pop("_stderr")["text"]
    assert sorted(done) == sorted(j["family"] for j in jobs)
    for family, row in done.items():
        assert row["status"] == "succeeded", (family, row)
        for stage in STAGES:
            placed = row["providers"][stage]
            # every zoo graph runs whole on OpenVINO (tests/runtime/test_openvino_graphs.py: STILL_FALLS_BACK is
            # empty): no graph moved to the CPU EP, no node left to it — counted from the session's profile
            assert placed["requested"][0] == OV and placed["providers"][0] == OV, (family, stage, placed)
            assert placed["fallback"] is None and placed["cpu_fallback_nodes"] == 0, (family, stage, placed)
            assert placed["nodes"] >= 1, (family, stage, placed)
    assert "running this graph on the CPU execution provider instead" not in stderr



def test_inspect_reports_where_each_graph_of_a_bundle_runs(openvino_python, family_bundle):
    """``ftedge inspect --providers OpenVINO --step-providers CPU --json``: a placement per graph, measured."""
    bundle = family_bundle("mlp-mse")
    proc = subprocess.run([openvino_python, "-m", "ftedge", "inspect", str(bundle), "--providers", "OpenVINO",
                           "--step-providers", "CPU", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    placed = json.loads(proc.stdout)["placement"]
    assert placed["backbone"]["providers"][0] == OV and placed["backbone"]["cpu_fallback_nodes"] == 0
    assert placed["backbone"]["nodes"] >= 1
    assert placed["step"]["providers"] == ["CPUExecutionProvider"] and placed["step"]["cpu_fallback_nodes"] == 0
    plain = subprocess.run([openvino_python, "-m", "ftedge", "inspect", str(bundle), "--json"], capture_output=True,
                           text=True, timeout=300)
    assert "placement" not in json.loads(plain.stdout), "without --providers inspect opens no session"


FALLBACK_SCRIPT = r"""
import json, sys
import numpy as np
from ftedge.runtime.engines.ort_backend import InferenceModel
m = InferenceModel(sys.argv[1], ["OpenVINOExecutionProvider", "CPUExecutionProvider"])
y = m.run({"x": np.array([[1.0, 2.0, 3.0, 4.0]] * 2, np.float32)})["y"]
print(json.dumps({"placement": m.placement(), "y": y.tolist()}))
"""


def test_a_graph_the_ep_refuses_runs_on_the_cpu_ep_with_a_warning(openvino_python, tmp_path):
    """onnxruntime-openvino 1.24.1 refuses this valid graph (an IsNaN the EP does not take, between two nodes it
    does: "the graph is not acyclic"); the session moves to the CPU EP, says why, and computes the right values."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("IsNaN", ["a"], ["b"]),
             helper.make_node("Cast", ["b"], ["c"], to=TensorProto.FLOAT), helper.make_node("Add", ["a", "c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel())])
    path = tmp_path / "diamond.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    proc = subprocess.run([openvino_python, "-c", FALLBACK_SCRIPT, str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["y"] == [[1.0, 2.0, 3.0, 4.0]] * 2
    placed = out["placement"]
    assert placed["providers"] == ["CPUExecutionProvider"] and placed["requested"][0] == OV
    assert placed["fallback"].startswith("the OpenVINO execution provider cannot load diamond.onnx"), placed
    assert "running this graph on the CPU execution provider instead" in proc.stderr
