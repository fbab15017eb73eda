"""Which graphs of exported bundles load on an execution provider, and whether their training steps agree with the
CPU EP's. Runs in a device venv whose onnxruntime has the EP (the OpenVINO venv: no torch), as a script:

    FTEDGE_OPENVINO_PYTHON tests/helpers/ep_probe.py REQUEST.json   # prints one JSON object

REQUEST: ``{"provider": EP, "bundles": {name: dir}, "parity": [names], "steps": n}``. Answer:
``{"load": {name: {role: [] | [op types left to the CPU EP] | ["fails: ..."]}}, "parity": {name: {...}}}``
(a family whose step does not run on the EP answers ``{"error": ...}`` in ``parity``).

Loading is strict: ``session.disable_cpu_ep_fallback=1``, so a graph loads only when the EP takes every node. For
a graph that does not, the same session with the fallback on and ORT's verbose log gives the op types ORT placed on
the CPU EP ("Node(s) placed on [CPUExecutionProvider]"). One process for every bundle: the EP loads once.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROLES = ("backbone", "step", "head")
STATE = ("p:", "m:", "v:", "b:")
PARITY_BATCH = 8


def _session(path: Path, providers: list[str], strict: bool, verbose: bool = False):  # noqa: ANN202
    import onnxruntime as ort

    so = ort.SessionOptions()
    if strict:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    so.log_severity_level = 0 if verbose else 3  # verbose: the placement log; else errors only
    return ort.InferenceSession(str(path), so, providers=providers)


def _cpu_ops(path: Path, provider: str) -> list[str]:
    """Op types ORT places on the CPU EP with the fallback on, from its verbose placement log (written to fd 2:
    captured through a temporary file)."""
    with tempfile.TemporaryFile(mode="w+b") as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            _session(path, [provider, "CPUExecutionProvider"], strict=False, verbose=True)
            error = None
        except Exception as exc:  # noqa: BLE001 - the EP's refusal is the measurement
            error = str(exc)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        text = log.read().decode(errors="replace")
    if error is not None:
        return [f"fails: {' '.join(error.split())[:160]}"]
    ops, current = [], False
    for line in text.splitlines():
        m = re.search(r"(?:Node\(s\)|All nodes) placed on \[(\w+)\]", line)
        if m:
            current = m.group(1) == "CPUExecutionProvider" and "All nodes" not in line
            continue
        m = re.search(r"VerifyEachNodeIsAssignedToAnEp\]\s+(\S+) \(", line) if current else None
        if m:
            ops.append(m.group(1))
        else:
            current = False
    return sorted(set(ops))


def load(bundle: Path, provider: str) -> dict[str, list[str]]:
    """Per role file of ``bundle``: [] when it loads strictly on ``provider``, else what stays on the CPU EP."""
    roles = json.loads((bundle / "manifest.json").read_text())["roles"]
    out = {}
    for role in ROLES:
        if not isinstance(roles.get(role), str):
            continue
        path = bundle / roles[role]
        try:
            _session(path, [provider], strict=True)
            out[role] = []
        except Exception:  # noqa: BLE001 - refused: ask which nodes
            out[role] = _cpu_ops(path, provider) or ["fails: refused strictly, nothing placed on the CPU EP"]
    return out


def _losses(bundle: Path, providers: list[str], steps: int) -> np.ndarray:
    """``steps`` training steps of the bundle's step graph on one batch of SYNTHETIC head inputs (seeded), the
    bundle's optimizer at lr 1e-3, no clipping, dropout masks all ones; the loss of each step."""
    from safetensors.numpy import load_file

    roles = json.loads((bundle / "manifest.json").read_text())["roles"]
    init = load_file(str(bundle / roles["init"]))
    sess = _session(bundle / roles["step"], providers, strict=providers != ["CPUExecutionProvider"])
    ins = {i.name: i for i in sess.get_inputs()}
    rng = np.random.default_rng(0)

    def shape(i) -> list[int]:  # noqa: ANN001
        return [PARITY_BATCH if not isinstance(d, int) else d for d in i.shape]

    state = {n: (init[n[2:]].copy() if n[:2] in ("p:", "b:") else np.zeros_like(init[n[2:]]))
             for n in ins if n[:2] in STATE}
    fixed: dict[str, np.ndarray] = {"lr": np.array(1e-3, np.float32), "lr_wd": np.array(0, np.float32),
                                    "max_grad_norm": np.array(0, np.float32),
                                    "weights": np.ones(PARITY_BATCH, np.float32)}
    for name, i in ins.items():
        if name in state or name in fixed:
            continue
        if name == "labels" and i.type == "tensor(int64)":
            fixed[name] = (np.arange(PARITY_BATCH) % 2).astype(np.int64)
        elif name == "labels":
            fixed[name] = rng.integers(0, 2, shape(i)).astype(np.float32)
        elif name.startswith("mask:") or i.type == "tensor(bool)":
            fixed[name] = np.ones(shape(i), np.bool_ if i.type == "tensor(bool)" else np.float32)
        elif i.type == "tensor(float)":
            fixed[name] = rng.standard_normal(shape(i)).astype(np.float32)
        else:  # integer head inputs: ids; 1 is a valid, non-padding id in every zoo vocabulary
            fixed[name] = np.ones(shape(i), np.int64)
    outs = [o.name for o in sess.get_outputs()]
    losses = []
    for _ in range(steps):
        got = dict(zip(outs, sess.run(None, {**state, **fixed})))
        state = {k: got[f"{k}_out"] for k in state}
        losses.append(float(got["loss"]))
    return np.array(losses)


def parity(bundle: Path, provider: str, steps: int) -> dict[str, Any]:
    """Max relative difference of the per-step losses, ``provider`` (strict) vs the CPU EP; ``{"error": ...}``
    when a step graph does not run there (the load answer says why)."""
    try:
        cpu = _losses(bundle, ["CPUExecutionProvider"], steps)
        ep = _losses(bundle, [provider], steps)
    except Exception as exc:  # noqa: BLE001 - reported per family, the other families still run
        return {"error": " ".join(str(exc).split())[:300]}
    rel = np.abs(cpu - ep) / np.maximum(np.abs(cpu), 1e-6)
    return {"max_rel_diff": float(rel.max()), "first_loss": float(cpu[0]), "last_loss": float(cpu[-1]),
            "finite": bool(np.isfinite(cpu).all() and np.isfinite(ep).all())}


def main(request: dict) -> dict:
    provider = request["provider"]
    bundles = {k: Path(v) for k, v in request["bundles"].items()}
    return {"load": {k: load(b, provider) for k, b in bundles.items()},
            "parity": {k: parity(bundles[k], provider, request["steps"]) for k in request.get("parity", [])}}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(Path(sys.argv[1]).read_text()))))
