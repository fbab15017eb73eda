"""Device code never imports torch: proven in subprocesses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.common import ROOT

CHECK = """
import importlib, pkgutil, sys
import ftedge.runtime, ftedge.device_agent, ftedge.bundle, ftedge.cli
names = ["ftedge.cli"]
for pkg in (ftedge.runtime, ftedge.device_agent, ftedge.bundle):
    names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
for name in names:
    importlib.import_module(name)
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))[:5]
assert len(names) > 60, names   # the walk found the task packages' modules too
print("ok")
"""


def test_runtime_and_agent_import_without_torch():
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_no_bare_top_level_runtime_package(tmp_path):
    """The asked-for folders install as ftedge.* subpackages only."""
    code = "import importlib.util as u; print([n for n in ('runtime','export','device_agent','fleet') if u.find_spec(n)])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_device_environment_trains_resumes_and_evaluates_without_torch(device_python, cnn_bundle, tmp_path):
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 16)
    x = (0.7 * y[:, None, None] + rng.standard_normal((64, 101, 40))).astype(np.float32)  # SYNTHETIC
    np.savez(tmp_path / "d.npz", x=x, labels=y)

    def ftedge(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([device_python, "-m", "ftedge", *args], capture_output=True, text=True, cwd=ROOT)

    base = ["train", str(cnn_bundle), "--data", str(tmp_path / "d.npz"), "-o", str(tmp_path / "run"),
            "--epochs", "6", "--lr", "0.05", "--cache-dir", str(tmp_path / "cache"), "--json"]
    proc = ftedge(*base)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "succeeded" and result["mode"] == "cached" and result["promoted"]
    again = ftedge(*base, "--resume")  # resuming a finished run re-reads its checkpoint, trains nothing
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["metrics"] == result["metrics"]
    ev = ftedge("evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "d.npz"), "--json")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["samples"] == 64
    auto = ftedge("train", str(cnn_bundle), "--data", str(tmp_path / "d.npz"), "-o", str(tmp_path / "auto"), "--auto",
                  "--max-trials", "3", "--folds", "3", "--epochs", "3", "--cache-dir", str(tmp_path / "cache"), "--json")
    assert auto.returncode == 0, auto.stderr
    searched = json.loads(auto.stdout.strip().splitlines()[-1])
    assert len(searched["search"]["trials"]) == 3 and searched["epochs_run"] == searched["search"]["chosen"]["epochs"]
    assert searched["cache"]["computed"] == 0        # the search ran on the embeddings the first run cached


KILL_AT_EPOCH_2 = """
import os, signal, sys
from ftedge.runtime.tasks.classify.trainer import TrainCallbacks, TrainConfig, train

class Crash(TrainCallbacks):
    def on_epoch(self, record):
        if record["epoch"] == 2:  # after epoch 2's checkpoint files are written, before they are committed
            os.kill(os.getpid(), signal.SIGKILL)

bundle, data, run = sys.argv[1:4]
train(bundle, data, run, TrainConfig(epochs=4, seed=3, cache_dir=None), callbacks=Crash())
"""


def test_every_family_trains_resumes_after_sigkill_and_evaluates_in_the_device_environment(device_python, tmp_path,
                                                                                           family_bundle):
    """Bundles of every exported architecture family (and the portable-only GroupNorm / HardSwish blocks) train on
    the portable engine with only [device] (no torch, no onnxruntime.training), resume after a SIGKILL to the same
    result as an uninterrupted run (dropout masks included), evaluate, and write model.onnx."""
    import json

    import numpy as np
    from ftedge.runtime import load_bundle

    from tests.helpers.common import random_feeds, random_targets
    from tests.helpers.zoo import FAMILIES, PORTABLE_ONLY

    probe = "import importlib.util as u, sys; sys.exit(u.find_spec('onnxruntime.training') is not None)"
    assert subprocess.run([device_python, "-c", probe]).returncode == 0, "onnxruntime-training in the device venv"
    jobs = []
    for family in sorted({**FAMILIES, **PORTABLE_ONLY}):
        out = family_bundle(family)
        bundle = load_bundle(out)
        np.savez(tmp_path / f"{family}.npz", labels=random_targets(bundle, 24), **random_feeds(bundle.inputs, 24))
        jobs.append((str(out), str(tmp_path / f"{family}.npz"), str(tmp_path / f"run-{family}")))
    for bundle, data, run in jobs:
        crashed = subprocess.run([device_python, "-c", KILL_AT_EPOCH_2, bundle, data, run + "-crash"],
                                 capture_output=True, text=True, cwd=ROOT)
        assert crashed.returncode == -9, crashed.stderr[-2000:]
        assert json.loads(Path(run + "-crash", "checkpoint", "state.json").read_text())["epochs_done"] == 1
    script = (
        "import json, sys\n"
        "from ftedge.cli import main\n"
        "for bundle, data, run in json.loads(sys.argv[1]):\n"
        "    base = ['train', bundle, '--data', data, '--epochs', '4', '--seed', '3', '--quiet', '--no-cache']\n"
        "    assert main([*base, '-o', run]) == 0\n"
        "    assert main([*base, '-o', run + '-crash', '--resume']) == 0\n"
        "    assert main(['evaluate', run, '--data', data, '--json']) == 0\n"
        "assert 'torch' not in sys.modules and 'onnxruntime.training' not in sys.modules\n"
        "print('ok')\n"
    )
    proc = subprocess.run([device_python, "-c", script, json.dumps(jobs)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for _, _, run in jobs:
        assert (Path(run) / "model.onnx").stat().st_size > 0
        whole = json.loads((Path(run) / "result.json").read_text())
        resumed = json.loads((Path(run + "-crash") / "result.json").read_text())
        assert whole["status"] == resumed["status"] == "succeeded" and whole["engine"] == "portable"
        assert resumed["epochs_run"] == 4
        lines = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]
        again = [json.loads(x) for x in (Path(run + "-crash") / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in again] == [1, 2, 3, 4]
        for a, b in zip(lines, again):  # the same losses: resume is exact, dropout masks included
            assert abs(a["train_loss"] - b["train_loss"]) <= 1e-6 * max(1.0, abs(a["train_loss"])), (run, a, b)
            assert abs(a["val_loss"] - b["val_loss"]) <= 1e-6 * max(1.0, abs(a["val_loss"])), (run, a, b)
