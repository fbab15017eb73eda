"""The task table and its registries: a toy task registered in a test shows up in `ftedge train --help`, the
agent's validation, `inspect` and `train` without any other module changing; a bundle of a task this ftedge
does not know is refused everywhere with the upgrade message; every task shares one run directory."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from ftedge.bundle import tasks as table
from ftedge.device_agent.commands import train_job
from ftedge.export import tasks as export_tasks
from ftedge.runtime import tasks
from ftedge.runtime.training.options import Option, pick
from ftedge.runtime.training.result import COMMON_KEYS, complete
from ftedge.runtime.training.run_dir import RunDir

from ftedge.cli import main
from ftedge.errors import FtedgeError, Rejected
from tests.helpers.common import ROOT, ZOO, export, write_jsonl

UPGRADE = "this bundle needs a newer ftedge (task 'segmentation'): upgrade ftedge on the device"


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tasks") / "mlp"
    export(f"{ZOO}:mlp", out, "--input", "x:float32:1,20", "--labels", "a,b,c,d", "--lr", "0.01")
    return out


def _with_task(src: Path, dst: Path, task: str) -> Path:
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["task"] = task
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.fixture()
def data(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 12)
    x = (y[:, None] + 0.3 * rng.standard_normal((48, 20))).astype(np.float32)  # SYNTHETIC
    np.savez(tmp_path / "d.npz", x=x, labels=y)
    return tmp_path / "d.npz"


def report(result: dict) -> list[str]:
    """The toy task's `ftedge train` lines (its DeviceTask's cli module is this test module)."""
    return [f"toy: {result['headline']['label']} {result['headline']['tuned']}"]


def _toy_train(req: tasks.TrainRequest) -> dict:
    """A toy trainer: one 'epoch', through the shared run directory and result schema."""
    from ftedge.bundle.loader import load_bundle

    bundle = load_bundle(req.bundle) if not hasattr(req.bundle, "manifest") else req.bundle
    run = RunDir(req.run_dir)
    state = run.open("toy", req.resume)
    run.log_epoch({"epoch": 1, "train_loss": 1.0, "val_miou": req.options.get("toy_strength", 0.5)})
    state.epochs_done = 1
    result = {"status": "succeeded", "stop_reason": "epochs", "epochs_run": state.epochs_done, "best_epoch": 1,
              "metrics": {"miou": 0.5 + req.options.get("toy_strength", 0.5) / 10}, "baseline": {"miou": 0.5},
              "promoted": True, "duration_s": 0.0, "samples": {"total": 0}, "skipped": [], "engine": "portable"}
    return run.write_result(complete(result, bundle.manifest))


@pytest.fixture()
def toy():
    """A registered toy task (one table row, one package per side) with a train option of its own."""
    row = table.register(table.Task("segmentation", "toyseg", table.Headline("miou", "mIoU"), section="toy",
                                    aliases=("seg",), summary="toy",
                                    describe=lambda m: [f"toy      {m.get('toy', {}).get('classes', '?')} masks"]))
    own = Option("toy_strength", float, "how hard the toy trains", default=0.5, bounds=(0, 1))
    dt = tasks.register(tasks.DeviceTask(package="toyseg", options=pick("seed", own=[own]), train=_toy_train,
                                         cli=__name__))
    export_tasks.register(export_tasks.ExportTask(package="toyseg", options=lambda _a, _r: None,
                                                  exporter=lambda: None))
    yield row, dt
    table.unregister(row)
    tasks.unregister("toyseg")
    export_tasks.unregister("toyseg")


def test_a_registered_toy_task_appears_in_help_validation_inspect_and_train(toy, mlp, data, tmp_path, capsys):
    assert main(["train", "--help"]) == 0
    assert "--toy-strength" in capsys.readouterr().out
    bundle = _with_task(mlp, tmp_path / "bundles" / "seg", "segmentation")
    job = train_job({"bundle": "seg", "data": "d.npz", "toy_strength": 0.25, "seed": 3}, data.parent,
                    bundle.parent, "c1")
    assert job.options == {"toy_strength": 0.25, "seed": 3}
    for bad, why in (({"toy_strength": 2}, "between 0 and 1"), ({"epochs": 3}, r"do\(es\) not apply to a segmentation")):
        with pytest.raises(Rejected, match=why):
            train_job({"bundle": "seg", "data": "d.npz", **bad}, data.parent, bundle.parent, "c2")
    plain = _with_task(mlp, tmp_path / "bundles" / "mlp", "classification")
    with pytest.raises(Rejected, match="do\\(es\\) not apply to a classification"):
        train_job({"bundle": plain.name, "data": "d.npz", "toy_strength": 0.1}, data.parent, bundle.parent, "c3")

    m = json.loads((bundle / "manifest.json").read_text())
    m["toy"] = {"classes": 7}
    (bundle / "manifest.json").write_text(json.dumps(m))
    assert main(["inspect", str(bundle)]) == 0
    assert "toy      7 masks" in capsys.readouterr().out

    assert main(["train", str(bundle), "--data", str(data), "-o", str(tmp_path / "run"), "--toy-strength", "0.3",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "segmentation" and result["epochs_run"] == 1
    assert result["headline"] == {"metric": "miou", "label": "mIoU", "higher_is_better": True, "tuned": 0.53,
                                  "untuned": 0.5}
    assert main(["train", str(bundle), "--data", str(data), "-o", str(tmp_path / "r1"), "--toy-strength", "0"]) == 0
    assert "toy: mIoU 0.5" in capsys.readouterr().out
    assert main(["train", str(bundle), "--data", str(data), "-o", str(tmp_path / "r2"), "--epochs", "3"]) == 2
    assert "--epochs do(es) not apply to a segmentation bundle" in capsys.readouterr().err


def test_a_bundle_of_an_unknown_task_is_refused_everywhere_with_the_upgrade_message(mlp, data, tmp_path, capsys):
    bundle = _with_task(mlp, tmp_path / "bundles" / "seg", "segmentation")
    for argv in (["train", str(bundle), "--data", str(data), "-o", str(tmp_path / "run")],
                 ["evaluate", str(bundle), "--data", str(data)],
                 ["inspect", str(bundle)]):
        assert main(argv) == 1, argv
        assert UPGRADE in capsys.readouterr().err, argv
    assert not (tmp_path / "run").exists()
    with pytest.raises(Rejected) as info:
        train_job({"bundle": "seg", "data": "d.npz"}, data.parent, bundle.parent, "c1")
    assert info.value.code == "bad_bundle" and UPGRADE in info.value.detail


def test_every_common_result_key_is_written_and_the_headline_follows_the_task(mlp, data, tmp_path, capsys):
    assert main(["train", str(mlp), "--data", str(data), "-o", str(tmp_path / "run"), "--epochs", "3",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(COMMON_KEYS) <= set(result)
    assert result["task"] == "classification" and result["epochs_run"] == 3
    assert result["headline"]["metric"] == "accuracy" and result["headline"]["tuned"] == result["metrics"]["accuracy"]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["headline"] == result["headline"]
    # the same run directory again, without --resume: refused with the shared error (exit 1)
    assert main(["train", str(mlp), "--data", str(data), "-o", str(tmp_path / "run"), "--epochs", "3"]) == 1
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    # an option a classification bundle does not take is refused before anything runs
    assert main(["train", str(mlp), "--data", str(data), "-o", str(tmp_path / "r2"), "--general", "g.jsonl"]) == 2
    assert "--general do(es) not apply to a classification bundle" in capsys.readouterr().err
    assert main(["train", str(mlp), "--data", str(data), "-o", str(tmp_path / "r3"), "--mode", "fast"]) == 2
    assert "invalid choice: 'fast'" in capsys.readouterr().err


def test_a_language_model_run_directory_in_use_gives_the_same_error(llm_bundle, tmp_path, capsys):
    rows = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": f"question {i}?", "answer": f"answer {i}"}
                                               for i in range(8)])
    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_text("{}")
    assert main(["train", str(llm_bundle), "--data", str(rows), "-o", str(run), "--epochs", "1"]) == 1
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert main(["train", str(llm_bundle), "--data", str(rows), "-o", str(run), "--mode", "full"]) == 2
    assert "--mode do(es) not apply to a causal-lm bundle" in capsys.readouterr().err


def test_resuming_trims_metrics_of_an_uncommitted_epoch_atomically(tmp_path):
    run = RunDir(tmp_path / "run")
    state = run.open("fp", resume=False)
    for epoch in (1, 2, 3):
        run.log_epoch({"epoch": epoch, "train_loss": 1.0 / epoch})
    with open(run.metrics_path, "a") as f:
        f.write('{"epoch": 4, "train_lo')   # a line cut by a crash
    state.epochs_done = 2
    run.ckpt.commit(state)
    before = os.stat(run.metrics_path).st_ino
    resumed = RunDir(tmp_path / "run").open("fp", resume=True)
    assert resumed.epochs_done == 2
    assert [json.loads(ln)["epoch"] for ln in run.metrics_path.read_text().splitlines()] == [1, 2]
    assert os.stat(run.metrics_path).st_ino != before   # replaced (written aside, renamed), not rewritten in place
    with pytest.raises(FtedgeError, match="other data, settings or bundle"):
        RunDir(tmp_path / "run").open("another", resume=True)


def test_every_trainer_opens_its_run_directory_through_the_shared_helper():
    """No task trains outside RunDir: the one place that refuses a used directory and trims metrics."""
    root = ROOT / "runtime" / "tasks"
    for trainer in sorted(root.glob("*/trainer.py")):
        text = trainer.read_text()
        assert "RunDir(" in text and "metrics.jsonl\"" not in text and ".write_text(" not in text, trainer


def test_the_train_options_doc_is_generated_from_the_declarations():
    from ftedge.runtime.tasks import options_markdown

    doc = ROOT / "docs" / "train-options.md"
    assert doc.read_text(encoding="utf-8") == options_markdown(), "regenerate docs/train-options.md (see its header)"


def test_the_command_line_builds_without_numpy_or_onnxruntime():
    """The fleet extra has neither: `ftedge fleet …` must parse with only the task declarations imported."""
    import subprocess
    import sys

    code = ("import sys\n"
            "for m in ('numpy', 'onnxruntime', 'onnx', 'torch'): sys.modules[m] = None  # any import of them fails\n"
            "from ftedge.cli import build_parser\n"
            "p = build_parser()\n"
            "print(sorted(p._subparsers._group_actions[0].choices))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "fleet" in proc.stdout and "train" in proc.stdout and "generate" in proc.stdout


def test_export_task_choices_come_from_the_table_and_a_contradicting_loss_is_refused(tmp_path, capsys):
    assert main(["export", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(t.name in out for t in table.all_tasks()) and "also detect" in out
    assert main(["export", f"{ZOO}:mlp", "-o", str(tmp_path / "b"), "--input", "x:float32:1,20", "--task",
                 "regression", "--quiet"]) == 2
    assert "would write a classification bundle" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_an_option_may_keep_a_rule_of_its_own_per_task(llm_bundle, tmp_path):
    """eval_data is one option; a causal LM takes a file, a detector a dataset folder or file."""
    bundles = tmp_path / "bundles"
    shutil.copytree(llm_bundle, bundles / "faq")
    data = tmp_path / "data"
    (data / "folder").mkdir(parents=True)
    write_jsonl(data / "qa.jsonl", [{"prompt": "q?", "answer": "a"}])
    job = train_job({"bundle": "faq", "data": "qa.jsonl", "eval_data": "qa.jsonl"}, data, bundles, "c1")
    assert job.options["eval_data"] == str((data / "qa.jsonl").resolve())
    with pytest.raises(Rejected, match="no file 'folder'") as info:
        train_job({"bundle": "faq", "data": "qa.jsonl", "eval_data": "folder"}, data, bundles, "c2")
    assert info.value.code == "unknown_data"
    assert tasks.all_options()["eval_data"].path == "any"   # the shared declaration the CLI and docs show
