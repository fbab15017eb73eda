"""The device side installed and run on the platform rigs (docs/platforms.md): Debian 12 arm64 (under qemu-user)
and Debian 13 amd64 (Python 3.13), each a cached root filesystem with `ftedge-*.whl[device]` in
/opt/ftedge-venv (no torch, plain onnxruntime) made by scripts/rigs.sh.

The bundle (examples/kws, the shipped keyword model) is exported on the host, the data is SYNTHETIC speech
from espeak-ng (two accents the model never heard); inside each rig tests/rig_job.py trains, evaluates,
and checks crash + --resume through the installed CLI. Each rig's timings go to
test-artifacts/rig-<name>.json (arm64 ones are emulated: never compare them with x86 figures).

Needs FTEDGE_RIGS (the rig cache folder; `scripts/dev.sh test` sets it) and root (or password-less sudo);
fails under CI without it, skips elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ftedge.cli import main
from tests.helpers.common import HELPERS, ROOT, export
from tests.helpers.services import missing

VENV_IN_RIG = "/opt/ftedge-venv"
RIGS = {  # name: (Debian suite, arch, emulated on this x86_64 host)
    "bookworm-arm64": ("bookworm", "arm64", True),
    "trixie-amd64": ("trixie", "amd64", False),
}
KWS = ROOT / "examples" / "kws"
WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
VOICES = ["es", "en-gb-scotland"]  # accents the shipped model never heard
PER_WORD = 3
ARTIFACTS = Path(os.environ.get("FTEDGE_TEST_ARTIFACTS") or ROOT / "test-artifacts")
_SUMMARY: dict[str, dict] = {}


def _record(rig: str, key: str, value) -> None:
    """Merge into test-artifacts/rig-<rig>.json (rewritten whole: one file per rig per session)."""
    s = _SUMMARY.setdefault(rig, {"rig": rig, "suite": RIGS[rig][0], "arch": RIGS[rig][1],
                                  "timing": (f"emulated (qemu-user, cpu {_qemu_env(rig).get('QEMU_CPU', 'max')})"
                                             if _emulated(rig) else "native"),
                                  "data": f"SYNTHETIC speech (espeak-ng {','.join(VOICES)}, {PER_WORD} per word)"})
    s[key] = value
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"rig-{rig}.json").write_text(json.dumps(s, indent=2, default=str))


def _emulated(rig: str) -> bool:
    import platform
    host = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return RIGS[rig][1] != host


@pytest.fixture(scope="session")
def rig_cache() -> Path:
    cache = os.environ.get("FTEDGE_RIGS")
    if not cache:
        missing("FTEDGE_RIGS is not set: scripts/dev.sh test builds the rigs (scripts/rigs.sh) and sets it")
    if os.geteuid() != 0 and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode != 0:
        missing("the rigs need root (chroot, mount) or password-less sudo")
    return Path(cache)


@pytest.fixture(scope="session")
def in_rootfs() -> list[str]:
    """The command prefix that runs something inside a rig (in_rootfs.sh, through sudo unless root)."""
    for d in (os.environ.get("FTEDGE_RIG_TOOLS"), ROOT / "rigs", ROOT.parent / "shared" / "rigs",
              Path("/work/shared/rigs")):
        if d and (Path(d) / "in_rootfs.sh").is_file():
            tool = str(Path(d) / "in_rootfs.sh")
            return [tool] if os.geteuid() == 0 else ["sudo", "-n", "-E", tool]
    pytest.fail("in_rootfs.sh not found (set FTEDGE_RIG_TOOLS)")


@pytest.fixture(params=list(RIGS), ids=list(RIGS))
def rig(request, rig_cache) -> tuple[str, Path]:
    name = request.param
    rootfs = rig_cache / name
    assert (rootfs / "etc" / "rig" / "stamp").is_file(), f"{rootfs} is not built: run scripts/rigs.sh"
    assert (rootfs / VENV_IN_RIG.lstrip("/") / "bin" / "ftedge").exists(), \
        f"{rootfs}{VENV_IN_RIG} has no ftedge: run scripts/rigs.sh"
    return name, rootfs


def _qemu_env(rig: str) -> dict[str, str]:
    """Emulated arm64: qemu-user's CPU model (default a Cortex-A76, a Raspberry Pi 5's core, as
    scripts/rigs.sh uses; qemu's default `max` model has SVE, which makes onnxruntime's kernels ~12x
    slower under qemu 7.2) and a matching /proc/cpuinfo from rigs.sh."""
    if not (_emulated(rig) and RIGS[rig][1] == "arm64"):
        return {}
    model = os.environ.get("FTEDGE_RIG_QEMU_CPU", "cortex-a76")
    if model in ("", "max"):
        return {}
    env = {"QEMU_CPU": model, "RIG_PASS_ENV": "QEMU_CPU"}
    cpuinfo = os.environ.get("FTEDGE_RIG_CPUINFO")
    if cpuinfo and Path(cpuinfo).is_file():
        env["RIG_CPUINFO"] = cpuinfo
    return env


def run_in(prefix: list[str], rootfs: Path, *cmd: str, src: Path | None = None, timeout: float = 3600):
    env = {**os.environ, "RIG_QUIET": "1", **_qemu_env(rootfs.name)}
    env.pop("SRC", None)
    if src is not None:
        env["SRC"] = str(src)
    t0 = time.perf_counter()
    proc = subprocess.run([*prefix, str(rootfs), *cmd], env=env, capture_output=True, text=True, timeout=timeout)
    return proc, round(time.perf_counter() - t0, 3)


@pytest.fixture(scope="session")
def rig_src(rig_cache, tmp_path_factory) -> Path:
    """Host folder bind-mounted at /src in the rigs: bundle/ (kws, exported here), data/, rig_job.py."""
    src = tmp_path_factory.mktemp("rig-src")
    t0 = time.perf_counter()
    manifest = export(f"{KWS / 'model.py'}:build_model", src / "bundle", "--input", "waveform:float32:1,16000",
                      "--head", "classifier", "--labels", ",".join(WORDS), "--keep-head")
    t_export = time.perf_counter() - t0
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_kws_dataset", ROOT / "examples" / "demo" / "make_kws_dataset.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    t0 = time.perf_counter()
    meta = maker.make_dataset(src / "data", VOICES, per_word=PER_WORD, seed=0)
    t_data = time.perf_counter() - t0
    assert meta["synthetic"] and len(meta["clips"]) == len(VOICES) * len(WORDS) * PER_WORD
    shutil.copy(HELPERS / "rig_job.py", src / "rig_job.py")
    (src / "host.json").write_text(json.dumps({"export_s": round(t_export, 3), "dataset_s": round(t_data, 3),
                                               "clips": len(meta["clips"]), "bundle": manifest["name"]}))
    return src


def test_rig_has_torch_free_device_install(rig, in_rootfs):
    name, rootfs = rig
    check = (
        "import importlib.metadata as md, importlib.util as u, json, platform, sys\n"
        "ort = sorted(d.metadata['Name'].lower() for d in md.distributions() if d.metadata['Name'].lower().startswith('onnxruntime'))\n"
        "import ftedge.runtime, ftedge.device_agent, onnxruntime\n"
        "print(json.dumps({'python': platform.python_version(), 'machine': platform.machine(),\n"
        "  'onnxruntime': onnxruntime.__version__, 'ort_dists': ort, 'ftedge': md.version('ftedge'),\n"
        "  'torch_spec': u.find_spec('torch') is not None, 'torch_loaded': 'torch' in sys.modules,\n"
        "  'ort_training_spec': u.find_spec('onnxruntime.training') is not None,\n"
        "  'providers': onnxruntime.get_available_providers()}))\n")
    proc, wall = run_in(in_rootfs, rootfs, f"{VENV_IN_RIG}/bin/python", "-c", check)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout)
    _record(name, "install", {**info, "import_check_s": wall})
    assert info["machine"] == {"arm64": "aarch64", "amd64": "x86_64"}[RIGS[name][1]]
    assert info["python"].startswith({"bookworm": "3.11.", "trixie": "3.13."}[RIGS[name][0]])
    assert not info["torch_spec"] and not info["torch_loaded"], "torch in the rig's [device] venv"
    assert info["ort_dists"] == ["onnxruntime"] and not info["ort_training_spec"], info
    wheel = os.environ.get("FTEDGE_RIG_WHEEL")
    if wheel:  # the rig holds the wheel scripts/rigs.sh built last (its content hash, see rigs.sh)
        import hashlib
        import zipfile
        h = hashlib.sha256()
        with zipfile.ZipFile(wheel) as z:
            for member in sorted(z.namelist()):
                h.update(member.encode() + b"\0" + hashlib.sha256(z.read(member)).digest())
        stamp = rootfs / VENV_IN_RIG.lstrip("/") / ".ftedge-wheel-sha256"
        assert stamp.read_text().strip() == h.hexdigest(), f"{name} holds another wheel: run scripts/rigs.sh"
    proc, wall = run_in(in_rootfs, rootfs, f"{VENV_IN_RIG}/bin/ftedge", "--help")
    assert proc.returncode == 0 and "train" in proc.stdout, proc.stderr[-2000:]
    _record(name, "help_s", wall)


def test_rig_inspects_host_bundle(rig, in_rootfs, rig_src):
    name, rootfs = rig
    proc, wall = run_in(in_rootfs, rootfs, f"{VENV_IN_RIG}/bin/ftedge", "inspect", "/src/bundle", "--json", src=rig_src)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = json.loads(proc.stdout)
    host = json.loads((rig_src / "bundle" / "manifest.json").read_text())
    _record(name, "inspect_s", wall)
    _record(name, "host", json.loads((rig_src / "host.json").read_text()))
    assert shown["verified"] is True
    assert shown["files"] == host["files"] and shown["labels"] == WORDS


def test_rig_trains_resumes_and_evaluates(rig, in_rootfs, rig_src):
    name, rootfs = rig
    work = f"/tmp/ftedge-rig-job-{uuid.uuid4().hex[:12]}"
    host_work = rootfs / work.lstrip("/")
    try:
        proc, wall = run_in(in_rootfs, rootfs, f"{VENV_IN_RIG}/bin/python", "/src/rig_job.py", "--work", work,
                            src=rig_src)
        summary_file = host_work / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        _record(name, "job", {"wall_s": wall, "rc": proc.returncode, **summary})
        assert proc.returncode == 0 and summary.get("done"), (proc.stdout[-2000:], proc.stderr[-3000:])
    finally:
        shutil.rmtree(host_work, ignore_errors=True)
    steps = summary["steps"]

    def ok(step: str) -> dict:
        rec = steps[step]
        assert rec["rc"] == 0, f"{step} failed in {name}: {rec.get('stderr_tail')}"
        return rec["json"]

    assert ok("inspect")["verified"] is True
    train = ok("train")
    assert train["status"] == "succeeded", train
    assert steps["train"]["model_onnx_bytes"], "no model.onnx in the run directory"
    assert steps["train"]["metrics_epochs"] == [1, 2, 3]
    result = steps["train"]["result_json"]
    assert result["status"] == "succeeded" and result.get("engine") == "portable", result
    assert isinstance(result["metrics"].get("accuracy"), float)
    evaluated = ok("evaluate")
    assert isinstance(evaluated["accuracy"], float) and 0.0 <= evaluated["accuracy"] <= 1.0
    assert evaluated["samples"] + len(evaluated["skipped"]) == len(VOICES) * len(WORDS) * PER_WORD

    reference = ok("reference")
    killed = steps["killed"]
    assert killed["killed"], "training finished before it could be killed; make it longer"
    assert not killed["result_json_after_kill"]
    resumed = ok("resume")
    assert resumed["status"] == "succeeded" and resumed["epochs_run"] == reference["epochs_run"]
    assert resumed["best_epoch"] == reference["best_epoch"]
    assert resumed["metrics"]["loss"] == pytest.approx(reference["metrics"]["loss"], abs=1e-6)
    assert resumed["metrics"]["accuracy"] == reference["metrics"]["accuracy"]
    assert steps["resume"]["metrics_epochs"] == list(range(1, reference["epochs_run"] + 1))


@pytest.fixture(scope="session")
def det_src(tmp_path_factory) -> Path:
    """Host folder for the detection rig run: bundle/ (MobileNetV2 + detection head, exported here) and data/
    (SYNTHETIC shop scenes, YOLO layout)."""
    src = tmp_path_factory.mktemp("rig-det")
    assert main(["export", "ftedge.export.detect_sources:mobilenet_v2", "-o", str(src / "bundle"), "--task", "detect",
                 "--labels", "sneaker,bag,ankle_boot", "--lr", "2e-3", "--quiet"]) == 0
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "detect" / "make_shop.py"), str(src / "data"),
                           "--train", "8", "--heldout", "4", "--format", "yolo"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return src


def test_rig_trains_a_detector_and_detects(rig, in_rootfs, det_src):
    """Detection on the box: the conv head's training-step graph (conv backward as forward convs) and the
    NonMaxSuppression graph on the rig's plain onnxruntime (arm64 emulated: a Raspberry Pi 5 class core)."""
    name, rootfs = rig
    run = f"/tmp/ftedge-rig-det-{uuid.uuid4().hex[:12]}"
    try:
        proc, wall = run_in(in_rootfs, rootfs, f"{VENV_IN_RIG}/bin/ftedge", "train", "/src/bundle", "--data",
                            "/src/data", "--eval-data", "/src/data", "-o", run, "--epochs", "3", "--no-flip",
                            "--no-cache", "--json", src=det_src)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout)
        _record(name, "detect_train", {"wall_s": wall, "map50": result["metrics"].get("map50"),
                                       "baseline_map50": result["baseline"].get("map50")})
        assert result["status"] == "succeeded" and result["task"] == "detection"
        assert result["metrics"]["map50"] > result["baseline"]["map50"]
        proc, wall = run_in(in_rootfs, rootfs, f"{VENV_IN_RIG}/bin/ftedge", "detect", run, "--images",
                            "/src/data/images/val", "--json", "--threshold", "0.05", src=det_src)
        assert proc.returncode == 0, proc.stderr[-3000:]
        found = json.loads(proc.stdout)
        _record(name, "detect_s", wall)
        assert len(found["images"]) == 4 and not found["skipped"]
    finally:
        shutil.rmtree(rootfs / run.lstrip("/"), ignore_errors=True)
