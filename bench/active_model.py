"""What the app contract costs: `ftedge.runtime.ActiveModel.predict` vs a bare onnxruntime session on the same
model, and how soon a promotion serves while a reader thread loops on predict.

    .venv/bin/python -m bench.active_model [--promotions 20] [--seconds 2] [--json]

The model is a SYNTHETIC 20→4 linear classifier built here (it answers the class its bias favours), stored as real
model versions by the agent's ModelStore in a temporary state directory; every promotion makes a version that
answers another class, so the reader sees exactly when the new one serves. Timings are of this machine, CPU EP.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

LABELS = ["a", "b", "c", "d"]
MODEL_JSON = {"name": "bench", "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 20]}],
              "output": {"name": "logits", "dtype": "float32", "shape": ["batch", 4]}, "labels": LABELS,
              "loss": "cross-entropy", "task": "classification", "preprocessing": {}}


def _classifier(path: Path, winner: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = (0.01 * np.random.default_rng(winner).standard_normal((20, 4))).astype(np.float32)
    b = np.zeros(4, np.float32)
    b[winner] = 100.0
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 20])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _run(root: Path, name: str, winner: int) -> Path:
    """A finished run directory (model.onnx, model.json, result.json) that ModelStore.add_version accepts."""
    run = root / "runs" / name
    run.mkdir(parents=True)
    _classifier(run / "model.onnx", winner)
    (run / "model.json").write_text(json.dumps(MODEL_JSON))
    (run / "result.json").write_text(json.dumps({"status": "succeeded", "promoted": True, "task": "classification",
                                                 "metrics": {"accuracy": 1.0}, "baseline": {"accuracy": 0.25},
                                                 "gain": 0.75, "bundle": {"name": "bench"}}))
    return run


def _rate(fn: Any, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def measure(promotions: int = 20, seconds: float = 2.0) -> dict[str, Any]:
    import onnxruntime as ort

    from ftedge.device_agent.versions import ModelStore
    from ftedge.runtime import ActiveModel

    tmp = Path(tempfile.mkdtemp(prefix="ftedge-bench-active-"))
    store = ModelStore(tmp / "state")
    store.add_version(_run(tmp, "r0", 0), "j0")
    model = ActiveModel(tmp / "state")
    x = np.random.default_rng(7).standard_normal((1, 20)).astype(np.float32)
    batch = [{"x": x[0]}]
    model.predict(batch)
    bare = ort.InferenceSession(str(store.root / "v0001" / "model.onnx"), providers=["CPUExecutionProvider"])
    bare_rate = _rate(lambda: bare.run(["logits"], {"x": x}), seconds)
    active_rate = _rate(lambda: model.predict(batch), seconds)

    answers: list[tuple[float, str]] = []
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                answers.append((time.monotonic(), model.predict(batch)[0]["label"]))
            except Exception as exc:  # noqa: BLE001 - counted: the contract says there are none
                errors.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    latencies = []
    for i in range(1, promotions + 1):
        winner = i % len(LABELS)
        run = _run(tmp, f"r{i}", winner)
        store.add_version(run, f"j{i}")
        done = time.monotonic()   # the promotion is on disk from here
        while True:
            seen = next((at for at, label in list(answers) if at >= done and label == LABELS[winner]), None)
            if seen is not None:
                latencies.append(seen - done)
                break
            time.sleep(0.002)
    stop.set()
    thread.join()
    return {"data": "SYNTHETIC 20→4 linear classifier, CPU EP", "predict_per_s_bare_ort": round(bare_rate),
            "predict_per_s_active_model": round(active_rate), "overhead_ratio": round(bare_rate / active_rate, 2),
            "promotions": promotions, "switch_ms_median": round(statistics.median(latencies) * 1000),
            "switch_ms_max": round(max(latencies) * 1000), "reader_calls": len(answers), "reader_errors": len(errors)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.active_model", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--promotions", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=2.0, help="per throughput measurement")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    r = measure(args.promotions, args.seconds)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"predict, 1 sample, nothing changing: ActiveModel {r['predict_per_s_active_model']:,}/s vs bare "
              f"onnxruntime {r['predict_per_s_bare_ort']:,}/s ({r['overhead_ratio']}× the bare call's time)")
        print(f"switch after a promotion, {r['promotions']} promotions: median {r['switch_ms_median']} ms, max "
              f"{r['switch_ms_max']} ms; reader: {r['reader_calls']:,} calls, {r['reader_errors']} errors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
