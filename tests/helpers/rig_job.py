"""The device-side job of tests/test_rigs.py, run INSIDE a platform rig (a Debian rootfs) with the rig's
torch-free venv:

    in_rootfs.sh ROOTFS /opt/ftedge-venv/bin/python /src/rig_job.py --work /tmp/ftedge-rig-job-ID

/src (read-only) holds ``bundle/`` (exported on the host) and ``data/<label>/*.wav``. Everything is done
through the installed ``ftedge`` CLI, as a user of the box would:

  1. ``ftedge inspect`` the bundle;
  2. ``ftedge train --epochs 3 --json`` (default mode), then ``ftedge evaluate RUN --json``;
  3. crash/resume: an uninterrupted reference run, and the same run SIGKILLed once ``metrics.jsonl``
     holds 2 epochs and then continued with ``--resume``; their final metrics must agree. These runs
     reuse step 2's on-disk embedding cache (the backbone pass is what costs under emulation: ~0.5 s a
     clip on qemu-user), and have many short epochs so that the kill lands mid-run.

Each step's argv, exit code, wall time, parsed JSON and output tails go to WORK/summary.json (rewritten
after every step, so a crash leaves what was done); the host reads it at ROOTFS/WORK/summary.json.
Standard library only: it checks the installed package, it does not use it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

CRASH_EPOCHS = 40         # the interrupted run and its reference (cached mode; natively ~50 ms an epoch here)
KILL_AFTER = 2            # epochs in metrics.jsonl before the SIGKILL
CRASH_ARGS = ["--batch-size", "8", "--seed", "1", "--quiet"]


class Job:
    def __init__(self, ftedge: str, src: Path, work: Path) -> None:
        self.ftedge, self.src, self.work = ftedge, src, work
        self.summary: dict = {
            "python": platform.python_version(), "machine": platform.machine(),
            "onnxruntime": _version("onnxruntime"), "ftedge": _version("ftedge"), "steps": {},
        }

    def save(self) -> None:
        tmp = self.work / "summary.json.tmp"
        tmp.write_text(json.dumps(self.summary, indent=2))
        os.replace(tmp, self.work / "summary.json")

    def step(self, name: str, args: list[str], want_json: bool = True) -> dict:
        t0 = time.perf_counter()
        proc = subprocess.run([self.ftedge, *args], capture_output=True, text=True)
        rec = {"argv": ["ftedge", *args], "rc": proc.returncode, "wall_s": round(time.perf_counter() - t0, 3),
               "stderr_tail": proc.stderr[-3000:]}
        if want_json:
            try:
                rec["json"] = json.loads(proc.stdout)
            except ValueError:
                rec["stdout_tail"] = proc.stdout[-3000:]
        self.summary["steps"][name] = rec
        self.save()
        return rec

    def crash_and_resume(self, bundle: str, data: str) -> None:
        base = ["train", bundle, "--data", data, "--epochs", str(CRASH_EPOCHS), *CRASH_ARGS,
                "--cache-dir", str(self.work / "cache")]
        self.step("reference", [*base, "-o", str(self.work / "reference"), "--json"])

        run = self.work / "killed"
        metrics = run / "metrics.jsonl"
        t0 = time.perf_counter()
        proc = subprocess.Popen([self.ftedge, *base, "-o", str(run)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        lines = 0
        deadline = time.time() + 1800
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists():
                lines = sum(1 for line in metrics.read_text().splitlines() if line.strip())
                if lines >= KILL_AFTER:
                    break
            time.sleep(0.002)
        alive = proc.poll() is None
        if alive:
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        self.summary["steps"]["killed"] = {
            "argv": ["ftedge", *base, "-o", str(run)], "wall_s": round(time.perf_counter() - t0, 3),
            "killed": alive, "rc": proc.returncode, "metrics_lines_at_kill": lines,
            "result_json_after_kill": (run / "result.json").exists(), "stderr_tail": (err or "")[-3000:],
        }
        self.save()
        self.step("resume", [*base, "-o", str(run), "--resume", "--json"])
        self.summary["steps"]["resume"]["metrics_epochs"] = _epochs(metrics)
        self.save()


def _version(dist: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _epochs(path: Path) -> list:
    if not path.exists():
        return []
    return [json.loads(line).get("epoch") for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="fresh folder inside the rig for runs and summary.json")
    ap.add_argument("--src", type=Path, default=Path("/src"), help="folder with bundle/ and data/ (default /src)")
    ap.add_argument("--ftedge", default=str(Path(sys.executable).with_name("ftedge")), help="the CLI to test")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    job = Job(args.ftedge, args.src, args.work)
    bundle, data = str(args.src / "bundle"), str(args.src / "data")
    t0 = time.perf_counter()

    job.step("inspect", ["inspect", bundle, "--json"])
    run = args.work / "run"
    train = job.step("train", ["train", bundle, "--data", data, "-o", str(run), "--epochs", "3", "--json",
                               "--cache-dir", str(args.work / "cache")])
    result_file = run / "result.json"
    train["result_json"] = json.loads(result_file.read_text()) if result_file.exists() else None
    train["model_onnx_bytes"] = (run / "model.onnx").stat().st_size if (run / "model.onnx").exists() else None
    train["metrics_epochs"] = _epochs(run / "metrics.jsonl")
    job.save()
    job.step("evaluate", ["evaluate", str(run), "--data", data, "--json"])
    job.crash_and_resume(bundle, data)

    job.summary["total_s"] = round(time.perf_counter() - t0, 3)
    job.summary["done"] = True
    job.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
