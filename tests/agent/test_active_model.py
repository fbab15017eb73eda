"""ActiveModel: the box's app gets the active model version without a restart; the ``models/active`` link.

Versions are real ONNX graphs (x [batch, 20] → logits [batch, 4], built with onnx.helper so each version answers a
known class) stored by the real ModelStore; the fallback is a real exported bundle; onnxruntime runs everything.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ftedge.device_agent.versions import ModelStore
from ftedge.runtime import ActiveModel
from ftedge.runtime.active_model import CHECK_INTERVAL_S

from ftedge.errors import DataError, FtedgeError
from tests.helpers.common import ROOT, ZOO, export

LABELS = ["a", "b", "c", "d"]
SERVE_WITHIN_S = 1.0   # the contract: a promotion or rollback serves within a second (docs/app.md)
VENV_FTEDGE = ROOT / ".venv" / "bin" / "ftedge"


@pytest.fixture(scope="module")
def mlp_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bundles")
    export(f"{ZOO}:mlp", root / "mlp", "--input", "x:float32:1,20", "--labels", ",".join(LABELS), "--lr", "0.01")
    return root / "mlp"


def onnx_classifier(path: Path, winner: int, seed: int) -> None:
    """logits = x @ W + b with b[winner] = 100: this graph answers class ``winner`` for any small input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = (0.01 * rng.standard_normal((20, 4))).astype(np.float32)
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


def make_run(tmp_path: Path, bundle: Path, name: str, winner: int, promoted: bool = True,
             model_bytes: bytes | None = None) -> Path:
    """A finished `ftedge train` run directory: model.onnx, model.json (the bundle's I/O), result.json."""
    run = tmp_path / "runs" / name
    run.mkdir(parents=True)
    if model_bytes is None:
        onnx_classifier(run / "model.onnx", winner, seed=winner)
    else:
        (run / "model.onnx").write_bytes(model_bytes)
    manifest = json.loads((bundle / "manifest.json").read_text())
    (run / "model.json").write_text(json.dumps(
        {k: manifest.get(k) for k in ("name", "inputs", "output", "labels", "loss", "task", "preprocessing")}))
    (run / "result.json").write_text(json.dumps({
        "status": "succeeded", "promoted": promoted, "task": "classification", "metrics": {"accuracy": 0.9},
        "baseline": {"accuracy": 0.5}, "gain": 0.4, "bundle": {"name": "mlp", "path": str(bundle)}}))
    return run


def samples(n: int = 3) -> list[dict]:
    rng = np.random.default_rng(7)
    return [{"x": rng.standard_normal(20).astype(np.float32)} for _ in range(n)]


def link(state: Path) -> str | None:
    p = state / "models" / "active"
    return os.readlink(p) if p.is_symlink() else None


def wait_for(cond, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


class Reader(threading.Thread):
    """Calls predict in a loop; records each answer's labels (one tuple per call) and every error."""

    def __init__(self, model: ActiveModel, batch: list[dict]) -> None:
        super().__init__(daemon=True)
        self.model, self.batch = model, batch
        self.answers: list[tuple[float, tuple[str, ...]]] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                out = self.model.predict(self.batch)
                self.answers.append((time.monotonic(), tuple(r["label"] for r in out)))
            except BaseException as exc:  # noqa: BLE001 - the test asserts there are none
                self.errors.append(exc)

    def first_after(self, t: float, labels: tuple[str, ...]) -> float | None:
        return next((at for at, got in list(self.answers) if at >= t and got == labels), None)


def test_promotion_and_rollback_serve_within_a_second_while_a_reader_loops(tmp_path, mlp_bundle):
    state = tmp_path / "state"
    store = ModelStore(state)
    store.add_version(make_run(tmp_path, mlp_bundle, "r1", winner=0), "job-1")
    model = ActiveModel(state, bundle=mlp_bundle)
    assert model.version == "v0001" and model.task == "classification" and link(state) == "v0001"
    batch = samples(4)
    old, new = ("a",) * 4, ("b",) * 4
    reader = Reader(model, batch)
    reader.start()
    try:
        assert wait_for(lambda: len(reader.answers) > 5)
        v2 = store.add_version(make_run(tmp_path, mlp_bundle, "r2", winner=1), "job-2")
        promoted_at = time.monotonic()  # the promotion is done: active.json and the link are written
        assert v2["activated"] and link(state) == "v0002"
        assert wait_for(lambda: reader.first_after(promoted_at, new) is not None)
        assert reader.first_after(promoted_at, new) - promoted_at < SERVE_WITHIN_S
        assert model.version == "v0002"
        store.rollback()
        rolled_at = time.monotonic()
        assert link(state) == "v0001"
        assert wait_for(lambda: reader.first_after(rolled_at, old) is not None)
        assert reader.first_after(rolled_at, old) - rolled_at < SERVE_WITHIN_S
        settled = len(reader.answers)
        assert wait_for(lambda: len(reader.answers) > settled + 5)
    finally:
        reader.stop.set()
        reader.join(10)
    assert reader.errors == []
    answers = [got for _, got in reader.answers]
    assert set(answers) == {old, new}  # every call answered wholly by one version: never a mix within a batch
    changes = [i for i in range(1, len(answers)) if answers[i] != answers[i - 1]]
    assert len(changes) == 2 and answers[0] == old and answers[changes[0]] == new and answers[-1] == old
    assert model.version == "v0001" and model.last_error is None


def test_scores_and_file_samples(tmp_path, mlp_bundle):
    state = tmp_path / "state"
    ModelStore(state).add_version(make_run(tmp_path, mlp_bundle, "r1", winner=2), "job-1")
    model = ActiveModel(state)
    npy = tmp_path / "s.npy"
    np.save(npy, np.ones(20, np.float64))  # float64 is cast safely, as training does
    out = model.predict([npy, samples(1)[0]])
    assert [r["label"] for r in out] == ["c", "c"]
    assert set(out[0]["scores"]) == set(LABELS) and abs(sum(out[0]["scores"].values()) - 1) < 1e-6
    assert out[0]["score"] == out[0]["scores"]["c"] > 0.99
    bad = tmp_path / "bad.npy"
    np.save(bad, np.ones(7, np.float32))
    with pytest.raises(DataError, match=r"bad\.npy: shape \[7\] does not match input 'x' \[20\]"):
        model.predict([bad])
    with pytest.raises(DataError, match=r"unsupported file type \.mp3"):
        model.predict([tmp_path / "song.mp3"])
    with pytest.raises(DataError, match="lacks input"):
        model.predict([{"y": np.zeros(20)}])
    with pytest.raises(DataError, match="list of samples"):
        model.predict(npy)
    with pytest.raises(FtedgeError, match=r"generate\(\) does not fit v0001: it is a classification model; use "
                                          r"predict\(\)"):
        model.generate("hello")
    with pytest.raises(FtedgeError, match="it is a classification model"):
        model.detect([npy])


def test_deactivate_falls_back_to_the_bundle(tmp_path, mlp_bundle):
    from ftedge.bundle.loader import load_bundle
    from ftedge.runtime.engines.session import BundleSession

    state = tmp_path / "state"
    store = ModelStore(state)
    store.add_version(make_run(tmp_path, mlp_bundle, "r1", winner=3), "job-1")
    model = ActiveModel(state, bundle=mlp_bundle)
    batch = samples(5)
    assert {r["label"] for r in model.predict(batch)} == {"d"}
    store.deactivate()
    assert link(state) is None and not (state / "models" / "active").exists()
    assert model.reload() is None and model.version is None
    untuned = BundleSession(load_bundle(mlp_bundle)).predict({"x": np.stack([s["x"] for s in batch])})
    assert [r["label"] for r in model.predict(batch)] == [LABELS[i] for i in untuned.argmax(1)]
    store.rollback()  # back to v0001 within a second, no reload() call
    assert wait_for(lambda: model.version == "v0001", SERVE_WITHIN_S)
    assert {r["label"] for r in model.predict(batch)} == {"d"}


def test_the_fallback_bundle_signature_is_checked_with_trusted_keys(tmp_path, mlp_bundle):
    from ftedge.bundle.signing import generate_keypair

    from ftedge.errors import BundleError

    _private, public = generate_keypair(tmp_path / "fleet")
    with pytest.raises(BundleError, match="not signed|unsigned|signature"):
        ActiveModel(tmp_path / "state", bundle=mlp_bundle, trusted_keys=[public])
    assert ActiveModel(tmp_path / "state", bundle=mlp_bundle).version is None  # without keys: files checked only


def test_no_version_and_no_bundle(tmp_path, mlp_bundle):
    with pytest.raises(FtedgeError, match=r"no model version is active .* pass ActiveModel\(\.\.\., bundle="):
        ActiveModel(tmp_path / "state")
    state = tmp_path / "state"
    store = ModelStore(state)
    store.add_version(make_run(tmp_path, mlp_bundle, "r1", winner=0), "job-1")
    model = ActiveModel(state)
    store.deactivate()
    time.sleep(CHECK_INTERVAL_S + 0.05)
    assert model.predict(samples(1))[0]["label"] == "a"  # nothing to fall back to: the last version keeps serving
    assert model.version == "v0001" and "no bundle to fall back to" in model.last_error


def test_a_corrupt_new_version_keeps_the_old_one_serving(tmp_path, mlp_bundle):
    state = tmp_path / "state"
    store = ModelStore(state)
    store.add_version(make_run(tmp_path, mlp_bundle, "r1", winner=0), "job-1")
    model = ActiveModel(state)
    # not an ONNX graph at all (its recorded sha256 matches: onnxruntime is what refuses it)
    store.add_version(make_run(tmp_path, mlp_bundle, "r2", winner=1, model_bytes=b"not onnx" * 8), "job-2")
    time.sleep(CHECK_INTERVAL_S + 0.05)
    assert model.predict(samples(2))[0]["label"] == "a" and model.version == "v0001"
    assert "cannot load" in model.last_error and "still serving v0001" in model.last_error
    with pytest.raises(FtedgeError, match="still serving v0001"):
        model.reload()
    # flipped bytes after it was stored: the recorded sha256 catches it before onnxruntime runs anything
    v3 = store.add_version(make_run(tmp_path, mlp_bundle, "r3", winner=2), "job-3")
    onnx_path = state / "models" / v3["id"] / "model.onnx"
    onnx_classifier(onnx_path, winner=3, seed=99)
    time.sleep(CHECK_INTERVAL_S + 0.05)
    assert model.predict(samples(1))[0]["label"] == "a"
    assert "does not match its recorded sha256" in model.last_error
    store.activate("v0001")  # a good version again: served, the error cleared
    v4 = store.add_version(make_run(tmp_path, mlp_bundle, "r4", winner=1), "job-4")
    assert wait_for(lambda: model.version == v4["id"], SERVE_WITHIN_S)
    assert model.predict(samples(1))[0]["label"] == "b" and model.last_error is None


def test_active_link_follows_every_change_and_is_repaired_on_open(tmp_path, mlp_bundle):
    state = tmp_path / "state"
    store = ModelStore(state)
    store.add_version(make_run(tmp_path, mlp_bundle, "r1", winner=0), "j1")
    store.add_version(make_run(tmp_path, mlp_bundle, "r2", winner=1, promoted=False), "j2")
    assert link(state) == "v0001"   # a version stored but not promoted leaves the link alone
    store.activate("v0002")
    assert link(state) == "v0002"
    assert (state / "models" / "active" / "model.onnx").read_bytes() == (state / "models/v0002/model.onnx").read_bytes()
    store.rollback()
    assert link(state) == "v0001"
    with pytest.raises(RuntimeError), store.transaction():
        store.activate("v0002")
        assert link(state) == "v0002"
        raise RuntimeError("the bundle part failed")
    assert link(state) == "v0001" and store.active()["id"] == "v0001"
    store.deactivate()
    assert link(state) is None
    store.rollback()
    assert link(state) == "v0001"
    # a crash between active.json and the link: the next store re-derives the link from active.json
    os.replace(state / "models" / "active", state / "models" / "stale")
    os.symlink("v0002", state / "models" / "active")
    ModelStore(state)
    assert link(state) == "v0001"
    (state / "models" / "active").unlink()
    ModelStore(state)
    assert link(state) == "v0001"
    store.deactivate()
    os.symlink("v0001", state / "models" / "active.tmp")
    os.replace(state / "models" / "active.tmp", state / "models" / "active")
    ModelStore(state)
    assert link(state) is None
    assert not [p for p in (state / "models").iterdir() if p.name.startswith("active.tmp")]


def agent_toml(tmp_path: Path, bundle_root: Path, data_root: Path, personalize: str = "") -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text("\n".join([
        'device_id = "box-1"', 'fleet = "test"', f'state_dir = "{tmp_path / "state"}"',
        "[mqtt]", 'url = "mqtt://127.0.0.1:1"', "[deploy]", "require_signed = false",
        "[paths]", f'data_root = "{data_root}"', f'bundle_root = "{bundle_root}"', personalize]) + "\n")
    return cfg


def test_agent_predict_cli(tmp_path, mlp_bundle):
    data = tmp_path / "data"
    data.mkdir()
    cfg = agent_toml(tmp_path, mlp_bundle.parent, data, '[personalize]\nbundle = "mlp"\ndata = "mine"')
    clip = tmp_path / "clip.npy"
    np.save(clip, np.zeros(20, np.float32))

    def predict(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(VENV_FTEDGE), "agent", "predict", "--config", str(cfg), str(clip), *extra],
                              check=False, capture_output=True, text=True, timeout=120)

    r = predict("--json")  # no version yet: the [personalize] bundle answers
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["version"] is None and out["predictions"][0]["file"] == str(clip)
    assert out["predictions"][0]["label"] in LABELS
    ModelStore(tmp_path / "state").add_version(make_run(tmp_path, mlp_bundle, "r1", winner=1), "job-1")
    r = predict()
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "version v0001"
    assert r.stdout.splitlines()[1].startswith(f"{clip}: b 1.000")
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros(3, np.float32))
    r = subprocess.run([str(VENV_FTEDGE), "agent", "predict", "--config", str(cfg), str(bad)],
                       check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "bad.npy: shape [3] does not match input 'x' [20]" in r.stderr


def test_the_docs_example_runs(tmp_path, mlp_bundle, capsys):
    """docs/app.md's Python example, extracted from the page and run as written (its two paths substituted)."""
    page = (ROOT / "docs" / "app.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", page, re.DOTALL).group(1)
    paths = 'STATE, BUNDLE = "/var/lib/ftedge", "/var/lib/ftedge/bundles/kws"'
    assert paths in code
    state = tmp_path / "state"
    code = code.replace(paths, f"STATE, BUNDLE = {str(state)!r}, {str(mlp_bundle)!r}")
    namespace: dict = {}
    exec(compile(code, "docs/app.md", "exec"), namespace)  # noqa: S102 - the page's own example
    sample = tmp_path / "sample.npy"
    np.save(sample, np.full(20, 0.5, np.float32))
    assert namespace["on_sample"](sample) in LABELS
    assert capsys.readouterr().out.startswith("untuned: ")
    ModelStore(state).add_version(make_run(tmp_path, mlp_bundle, "r1", winner=1), "job-1")
    assert wait_for(lambda: namespace["on_sample"](sample) == "b", SERVE_WITHIN_S)
    assert capsys.readouterr().out.splitlines()[-1] == "v0001: b (1.00)"


def test_generate_with_the_bundle_then_a_causal_lm_version(tmp_path, llm_bundle):
    """A causal-LM version answers generate() with its adapter side-loaded on its base, as `ask` does."""
    from ftedge.runtime.tasks.lm.model import open_lm

    from tests.helpers.common import FACTS, write_jsonl

    facts = write_jsonl(tmp_path / "facts.jsonl", [{"prompt": q, "answer": a} for q, a in FACTS])
    run = tmp_path / "run"
    r = subprocess.run([str(VENV_FTEDGE), "train", str(llm_bundle), "--data", str(facts), "-o", str(run),
                        "--epochs", "1", "--quiet"], check=False, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    state = tmp_path / "state"
    model = ActiveModel(state, bundle=llm_bundle)
    untuned = model.generate(FACTS[0][0], max_new_tokens=4)
    assert model.task == "causal-lm" and untuned["version"] is None and 0 < untuned["tokens"] <= 4
    with pytest.raises(FtedgeError, match=r"predict\(\) does not fit the bundle's own model .*: it is a causal-lm "
                                          r"model; use generate\(\)"):
        model.predict([tmp_path / "x.npy"])
    store = ModelStore(state)
    version = store.add_version(run, "job-1")["id"]
    store.activate(version)  # one epoch rarely beats the gate: activated by hand
    assert model.reload() == version
    tuned = model.generate(FACTS[0][0], max_new_tokens=4)
    direct = open_lm(state / "models" / version).answer(FACTS[0][0], max_new_tokens=4)
    assert tuned["version"] == version and tuned["text"] == direct.text and tuned["tokens"] == len(direct.ids)


def test_detect_with_the_bundle_then_a_detection_version(tmp_path, shop_detector):
    """A detection version answers detect() as `ftedge detect` does (the same Detector), boxes per image."""
    import sys

    from ftedge.runtime.tasks.detect.detector import Detector

    from ftedge.cli import main

    data = tmp_path / "data" / "shop"
    proc = subprocess.run([sys.executable, str(ROOT / "examples/detect/make_shop.py"), str(data), "--train", "8",
                           "--heldout", "4", "--seed", "5", "--format", "yolo"],
                          check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    bundle = tmp_path / "bundles" / "shop"
    shutil.copytree(shop_detector, bundle)   # exported once per session (tests/conftest.py)
    images = sorted((data / "images" / "val").iterdir())[:2]
    state = tmp_path / "state"
    model = ActiveModel(state, bundle=bundle)
    untuned = model.detect(images)
    assert model.task == "detection" and [d["file"] for d in untuned] == [str(p) for p in images]
    with pytest.raises(FtedgeError, match=r"generate\(\) does not fit .*: it is a detection model; use detect\(\)"):
        model.generate("hi")
    run = tmp_path / "run"
    assert main(["train", str(bundle), "--data", str(data), "-o", str(run), "--epochs", "1", "--quiet"]) == 0
    store = ModelStore(state)
    version = store.add_version(run, "job-1")["id"]
    store.activate(version)
    assert model.reload() == version
    direct, _ = Detector(state / "models" / version).detect(images)
    assert model.detect(images) == [d.to_json(["sneaker", "bag", "ankle_boot"]) for d in direct]
    with pytest.raises(DataError, match="not a PNG or JPEG"):
        (tmp_path / "junk.png").write_text("junk")
        model.detect([tmp_path / "junk.png"])
