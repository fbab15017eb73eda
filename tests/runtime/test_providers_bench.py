"""bench/providers.py cannot rot: its timing phase at smoke size on the small MLP (SYNTHETIC data), the runtime half
in the OpenVINO venv (the ``openvino_python`` fixture: onnxruntime-openvino; skipped with its reason where there is
none, required under CI), and the JSON that BENCHMARKS.md's tables are made from."""

from __future__ import annotations

import json

CPU, OV = "CPUExecutionProvider", "OpenVINOExecutionProvider"


def test_the_providers_bench_times_every_stage_on_both_eps(openvino_python, tmp_path, capsys):
    from bench.providers import PLACEMENTS, has_step_providers, main

    out = tmp_path / "providers.json"
    assert main(["--models", "mlp", "--samples", "48", "--epochs", "1", "--repeat", "3", "--steps", "3",
                 "--modes", "cached", "--openvino-python", openvino_python, "--workdir", str(tmp_path / "work"), "--json-out", str(out)]) == 0
    assert "OpenVINO ÷ CPU" in capsys.readouterr().out
    res = json.loads(out.read_text())
    [row] = res["timing"]
    assert row["model"] == "mlp" and row["ort_version"]
    for variant in ("fp32", "int8", "qdq"):   # each int8 backbone is its own graph: all load on both EPs here
        assert row["backbone"][f"{variant}/{CPU}"]["providers"] == [CPU]
        assert row["backbone"][f"{variant}/{OV}"]["providers"][0] == OV
        assert all(row["backbone"][f"{variant}/{ep}"]["ms_per_sample"] > 0 for ep in (CPU, OV))
    assert row["step"][CPU]["providers"] == [CPU] and row["step"][OV]["providers"][0] == OV
    assert row["step"][CPU]["ms"] > 0 and row["step"][OV]["ms"] > 0
    expected = [p.name for p in PLACEMENTS if not p.needs_step_flag or has_step_providers(openvino_python)]
    assert [(j["placement"], j["mode"]) for j in row["jobs"]] == [(p, "cached") for p in expected]
    for job in row["jobs"]:
        assert job.get("status") == "succeeded", job
        assert job["wall_s"] > 0 and job["rss_mib"] > 0
