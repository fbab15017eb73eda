"""Shared by the benchmarks (through :mod:`bench._common`): start a measured command so its peak RSS is its own.

On Linux ru_maxrss survives execve (the exec'd program inherits the high-water mark of the address space it
replaced), and a child forked from a parent holding torch (~300+ MiB) would report at least the parent's RSS.
So every measured command is started by this tiny launcher (a bare `python -I -S`, ~6 MiB): it forks, execs
the command, and writes os.wait4's rusage as JSON:

    python -I -S -c LAUNCHER RECORD.json CMD ARGS...
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

LAUNCHER = r"""
import json, os, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execv(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t
with open(out, "w") as f:
    json.dump({"exit": os.waitstatus_to_exitcode(status), "wall_s": wall, "maxrss_kib": ru.ru_maxrss,
               "utime_s": ru.ru_utime, "stime_s": ru.ru_stime}, f)
"""


def run_measured(cmd: list[str], cwd: str | Path | None = None, env: dict[str, str] | None = None,
                 check: bool = True) -> dict[str, Any]:
    """Run ``cmd`` under :data:`LAUNCHER`: ``wall_s``, ``rss_mib`` (ru_maxrss), ``cpu_s``, ``exit``, ``stdout``,
    ``stderr`` and ``result`` (the last stdout line parsed as JSON, or None). Raises on a non-zero exit when
    ``check``."""
    with tempfile.TemporaryDirectory() as tmp:
        rec_path, out_path, err_path = Path(tmp) / "rusage.json", Path(tmp) / "out", Path(tmp) / "err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            subprocess.run([sys.executable, "-I", "-S", "-c", LAUNCHER, str(rec_path), *cmd], stdout=out,
                           stderr=err, cwd=cwd, env=env, check=False)
        stdout, stderr = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
        if not rec_path.exists():
            raise RuntimeError(f"launcher failed for {' '.join(cmd)}\n{stderr[-3000:]}")
        rec = json.loads(rec_path.read_text())
    if check and rec["exit"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {rec['exit']}\n{stdout[-2000:]}\n{stderr[-3000:]}")
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    try:
        result = json.loads(lines[-1]) if lines else None
    except ValueError:
        result = None
    return {"wall_s": rec["wall_s"], "rss_mib": rec["maxrss_kib"] / 1024, "cpu_s": rec["utime_s"] + rec["stime_s"],
            "exit": rec["exit"], "stdout": stdout, "stderr": stderr, "result": result}
