"""Every zoo family's graphs (backbone, training step, head), and a few of the wide zoo's, load on the OpenVINO
execution provider with the CPU EP fallback disabled, and their training steps agree with the CPU EP's (issue 35,
docs/openvino-probe.md).

Runs the zoo bundles the other tests export (the session's bundle farm) in the OpenVINO venv (``openvino_python``:
onnxruntime-openvino, no torch), one subprocess for every family (tests/helpers/ep_probe.py).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers.common import HELPERS
from tests.helpers.zoo import FAMILIES, PORTABLE_ONLY
from tests.helpers.zoo_wide import WIDE

PROVIDER = "OpenVINOExecutionProvider"
ALL = sorted({**FAMILIES, **PORTABLE_ONLY})
# Hugging Face families of the wide zoo (exported for tests/export/test_zoo_wide.py anyway): GPT-2's step has an
# indexing gradient (ScatterND add) and an unread input, the last-block ones a transformer block of each kind.
WIDE_PROBED = ["gpt2", "gpt2-last", "bert-last", "llama-last"]
assert set(WIDE_PROBED) <= set(WIDE)

# Graphs the OpenVINO EP (onnxruntime-openvino 1.24.1) does not take whole: family -> ({role: op types ORT leaves
# to the CPU EP}, why). Asserted exactly: a family that starts loading strictly must leave this table.
STILL_FALLS_BACK: dict[str, tuple[dict[str, list[str]], str]] = {}

# Families whose 50 steps are compared with the CPU EP's (CI time: one per kind of step graph): a recurrent step,
# SGD, a transformer block, SDPA with its NaN guard, convolutions with a trainable BatchNorm, an indexing gradient.
PARITY = ["gru", "mlp-l1-sgd", "transformer-last-block", "sdpa-masks", "hardswish-block", "wide-gpt2"]
PARITY_STEPS = 50
PARITY_TOLERANCE = 1e-4  # relative, per step's loss (issue 35)


@pytest.fixture(scope="module")
def probed(openvino_python, family_bundle, wide_bundles, tmp_path_factory) -> dict:
    bundles = {f: str(family_bundle(f)) for f in ALL}
    for f in WIDE_PROBED:
        proc, path = wide_bundles(f)
        assert proc.returncode == 0, proc.stderr[-3000:]
        bundles[f"wide-{f}"] = str(path)
    request = {"provider": PROVIDER, "bundles": bundles, "parity": PARITY, "steps": PARITY_STEPS}
    path = tmp_path_factory.mktemp("ep-probe") / "request.json"
    path.write_text(json.dumps(request))
    proc = subprocess.run([openvino_python, str(HELPERS / "ep_probe.py"), str(path)], capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_every_zoo_graph_loads_on_openvino_without_cpu_fallback(probed):
    falls_back = {family: {role: ops for role, ops in roles.items() if ops} for family, roles in probed["load"].items()}
    assert {f: r for f, r in falls_back.items() if r} == {f: ops for f, (ops, _) in STILL_FALLS_BACK.items()}
    assert all(set(roles) >= {"step", "head"} for roles in probed["load"].values())


@pytest.mark.parametrize("family", PARITY)
def test_training_steps_on_openvino_match_the_cpu_ep(probed, family):
    got = probed["parity"][family]
    assert "error" not in got, got
    assert got["finite"] and got["last_loss"] < got["first_loss"], got  # it trains, on both EPs
    assert got["max_rel_diff"] <= PARITY_TOLERANCE, got
