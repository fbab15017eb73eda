"""Probe: which of the zoo's graphs (backbone, portable training step, head) load on an execution provider.

Two halves, two environments (one ``onnxruntime`` module per environment):

    .venv/bin/python -m bench.providers_probe export /tmp/probe            # host venv: torch + ftedge export
    .venv-openvino/bin/python -m bench.providers_probe probe /tmp/probe      # scripts/dev.sh setup builds it

``probe`` opens every role file of every bundle twice on ``--provider`` (default OpenVINOExecutionProvider):
once with ``session.disable_cpu_ep_fallback=1`` (loads or not, and the error), once with the fallback on,
counting the nodes the session placed on the CPU EP. The count comes from ORT's own node placement log
(``session.log_severity_level=0`` prints "Node placements" / "Node(s) placed on [CPUExecutionProvider]" lines
with the node names while the session is created; they are parsed from the process's stderr), so it is what the
session did, not a guess from the op list. Prints a markdown table.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("backbone", "step", "head")


def export(out: Path) -> None:
    """Export every zoo family (tests/helpers/zoo.py FAMILIES + PORTABLE_ONLY) with the portable engine."""
    from tests.helpers.common import ZOO
    from tests.helpers.common import export as run_export
    from tests.helpers.zoo import FAMILIES, PORTABLE_ONLY

    for family, (model, args) in {**FAMILIES, **PORTABLE_ONLY}.items():
        target = out / family
        if (target / "manifest.json").exists():
            continue
        try:
            run_export(f"{ZOO}:{model}", target, *args)
        except AssertionError as exc:
            print(f"{family}: export failed: {exc}", file=sys.stderr)


def _open_one(path: str, provider: str, fallback: bool) -> None:
    """Child process: create one session, print a JSON line (stderr carries ORT's placement log)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 0
    if not fallback:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    try:
        sess = ort.InferenceSession(path, so, providers=[provider])
        print(json.dumps({"ok": True, "providers": sess.get_providers()}))
    except Exception as exc:  # noqa: BLE001 - the EP's error text is the measurement
        print(json.dumps({"ok": False, "error": str(exc)}))


def _placement(stderr: str) -> dict[str, list[str]]:
    """Op types per EP from ORT's verbose "Node(s) placed on [EP]. Number of nodes: N" block (after ORT's graph
    optimizations: an EP's fused subgraph counts as one node)."""
    placed: dict[str, list[str]] = {}
    current = None
    for line in stderr.splitlines():
        m = re.search(r"(?:Node\(s\)|All nodes) placed on \[(\w+)\]\. Number of nodes: (\d+)", line)
        if m:
            current = m.group(1)
            placed.setdefault(current, [])
            if "All nodes" in line:
                placed[current] += ["(all)"] * int(m.group(2))  # this form lists no node names
                current = None
            continue
        m = re.search(r"VerifyEachNodeIsAssignedToAnEp\]\s{3}(\S+) \((.*)\)\s*$", line) if current else None
        if m:
            placed[current].append(m.group(1))
        else:
            current = None
    return placed


def _op_types(path: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {n.name: n.op_type for n in model.graph.node}


def _run(path: Path, provider: str, fallback: bool) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-m", "bench.providers_probe", "_open", str(path), provider, "1" if fallback else "0"],
                          capture_output=True, text=True, timeout=600, check=False, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"ok": False, "error": f"crashed (rc {proc.returncode})"}
    return result, proc.stderr


def _short(err: str) -> str:
    """The EP's reason in one table cell: each ONNX frontend check that failed, or the fallback refusal."""
    checks = re.findall(r"While validating ONNX node '<Node\((\w+)\): ([^>]+)>':\n([^\n]+)", err)
    if checks:
        seen = dict.fromkeys(f"{op} ({msg.split('. Got')[0][:90]})" for op, _, msg in checks)
        return "OpenVINO frontend: " + "; ".join(seen)
    if "fallback to CPU EP has been explicitly disabled" in err:
        return "nodes assigned to the CPU EP"
    return " ".join(err.split())[-200:].replace("|", "/")


def probe(out: Path, provider: str) -> None:
    rows = ["| family | graph | strict (no CPU fallback) | with fallback: placement | op types on CPU EP |",
            "|---|---|---|---|---|"]
    for bundle in sorted(p for p in out.iterdir() if (p / "manifest.json").exists()):
        files = json.loads((bundle / "manifest.json").read_text()).get("roles", {})
        for role in ROLES:
            name = files.get(role)
            if not isinstance(name, str) or not (bundle / name).exists():
                continue
            path = bundle / name
            strict, _ = _run(path, provider, fallback=False)
            loose, log = _run(path, provider, fallback=True)
            ops = _op_types(path)
            ov = len(_placement(log).get(provider, []))
            cpu = _placement(log).get("CPUExecutionProvider", [])
            if loose["ok"]:
                counted = Counter(cpu)
                fb = f"{len(cpu)} on CPU EP, {ov} on {provider.replace('ExecutionProvider', '')} ({len(ops)} nodes in file)"
                fops = ", ".join(f"{k}×{v}" for k, v in counted.most_common()) or "—"
            else:
                fb, fops = f"fails: {_short(loose['error'])}", "—"
            st = "loads" if strict["ok"] else f"fails: {_short(strict['error'])}"
            rows.append(f"| {bundle.name} | {role} ({name}) | {st} | {fb} | {fops} |")
            print(rows[-1], file=sys.stderr, flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    if cmd == "export":
        export(Path(rest[0]))
    elif cmd == "_open":
        _open_one(rest[0], rest[1], rest[2] == "1")
    elif cmd == "probe":
        probe(Path(rest[0]), rest[1] if len(rest) > 1 else "OpenVINOExecutionProvider")
    else:
        sys.exit(__doc__)
