"""What every benchmark shares: the venv paths, small statistics, process figures (CPU time, RSS), measured
subprocesses (:mod:`bench.proc_launcher`) and Markdown tables.

Standard library only, and little of it at import time (statistics and numpy are imported by the functions that
use them): measured processes import this module too (the device-venv workers, the PyTorch references), and it must
not add to their footprint."""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.proc_launcher import LAUNCHER, run_measured

__all__ = ["LAUNCHER", "run_measured", "ROOT", "HOST_PY", "DEVICE_PY", "LEGACY_PY", "OPENVINO_PY", "CLK_TCK", "median", "mean_sd",
           "mean_sd_text", "percentile", "ms_summary", "timed", "median_ms", "slope_per_min", "dash", "fmt", "rounded", "md_row",
           "md_table", "proc_cpu_s", "proc_status", "rss_mib", "peak_rss_mib", "children", "cpu_times", "omp_env",
           "progress", "load_module", "read_jsonl", "last_json"]

ROOT = Path(__file__).resolve().parents[1]
HOST_PY = ROOT / ".venv" / "bin" / "python"
DEVICE_PY = ROOT / ".venv-device" / "bin" / "python"      # torch-free: `pip install '.[device]'`
LEGACY_PY = ROOT / ".venv-legacy" / "bin" / "python"      # onnxruntime-training 1.19.2: the ort-training engine
# onnxruntime-openvino (the OpenVINO EP) instead of onnxruntime; FTEDGE_OPENVINO_PYTHON names it, as for the tests
OPENVINO_PY = Path(os.environ.get("FTEDGE_OPENVINO_PYTHON") or ROOT / ".venv-openvino" / "bin" / "python")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# == statistics ================================================================================================

def median(vals: Iterable[float]) -> float:
    import statistics

    return float(statistics.median(vals))


def mean_sd(vals: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0.0 for a single value)."""
    import statistics

    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def mean_sd_text(vals: Sequence[float]) -> str:
    """``"0.912 ± 0.013"``; the mean alone for a single value."""
    import statistics

    return f"{statistics.mean(vals):.3f}" + (f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else "")


def percentile(vals: Sequence[float], q: float) -> float:
    """numpy's (linear) percentile."""
    import numpy as np

    return float(np.percentile(np.asarray(vals), q))


def ms_summary(vals_s: Sequence[float]) -> dict[str, Any]:
    """Median, p10 and p90 in milliseconds of timings in seconds, and their count."""
    import statistics

    ms = [v * 1e3 for v in vals_s]
    return {"median_ms": round(statistics.median(ms), 4), "p10_ms": round(percentile(ms, 10), 4),
            "p90_ms": round(percentile(ms, 90), 4), "n": len(ms)}


def timed(fn: Callable[[], object], n: int) -> list[float]:
    """Seconds of each of ``n`` calls of ``fn`` (perf_counter)."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def median_ms(fn: Callable[[], object], steps: int, warmup: int = 3) -> float:
    """Median milliseconds of ``steps`` calls of ``fn`` after ``warmup`` untimed ones."""
    import statistics

    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, steps)) * 1000


def slope_per_min(points: Iterable[tuple[float, float]], min_points: int = 2) -> float | None:
    """Least-squares slope of (seconds, value) points per minute; NaN values are left out. None with fewer than
    ``min_points`` points or no spread in time."""
    pts = [(t, v) for t, v in points if v == v]
    if len(pts) < min_points:
        return None
    mt, mv = sum(t for t, _ in pts) / len(pts), sum(v for _, v in pts) / len(pts)
    var = sum((t - mt) ** 2 for t, _ in pts)
    return 60 * sum((t - mt) * (v - mv) for t, v in pts) / var if var else None


def dash(x: Any, spec: str = ",.0f") -> str:
    """``format(x, spec)``, or an em dash for None / NaN."""
    return "—" if x is None or x != x else format(x, spec)


def fmt(x: Any, spec: str = ".3f") -> str:
    """``format(x, spec)``, or an em dash for None (NaN prints as ``nan``)."""
    return "—" if x is None else format(x, spec)


def rounded(x: Any, nd: int = 4) -> Any:
    """``x`` with every float rounded to ``nd`` decimals, in nested dicts and lists too (for a JSON line)."""
    if isinstance(x, float):
        return round(x, nd)
    if isinstance(x, dict):
        return {k: rounded(v, nd) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [rounded(v, nd) for v in x]
    return x


# == Markdown tables ===========================================================================================

def md_row(cells: Iterable[object]) -> str:
    """``| a | b |``; an empty cell is written ``| |``."""
    return "|" + "".join(f" {c} |" if str(c) != "" else " |" for c in cells)


def md_table(header: Sequence[object], rows: Iterable[Iterable[object]] = ()) -> list[str]:
    """A Markdown table's lines: the header, the ``|---|`` rule, then one line per row."""
    return [md_row(header), "|" + "---|" * len(header), *(md_row(r) for r in rows)]


# == processes =================================================================================================

def proc_cpu_s(pid: int, reaped: bool = False) -> float:
    """utime + stime of every thread of ``pid`` so far, seconds (/proc/PID/stat); ``reaped``: plus its waited-for
    children's."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def proc_status(pid: int | str, keys: Sequence[str] = ("VmRSS", "VmHWM", "Threads")) -> dict[str, int]:
    """Fields of /proc/PID/status as integers (memory in KiB); raises OSError once the process is gone."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in keys:
            out[key] = int(val.split()[0])
    return out


def rss_mib(pid: int | str = "self") -> float | None:
    """VmRSS of ``pid`` in MiB; None once it is gone."""
    try:
        return proc_status(pid, ("VmRSS",))["VmRSS"] / 1024
    except (OSError, KeyError):
        return None


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cpu_times() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole host since boot (/proc/stat; idle and iowait are not busy; zeros off
    Linux)."""
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0, 0.0
    return (sum(v) - v[3] - v[4]) / CLK_TCK, sum(v) / CLK_TCK


def omp_env(threads: int = 2) -> dict[str, str]:
    """This environment with OMP_NUM_THREADS set (every measured child gets the same thread count)."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads)}


# == small conveniences ========================================================================================

def progress(prefix: str = "") -> Callable[[str], None]:
    """A ``say(msg)`` that writes progress to stderr (the reports go to stdout)."""
    def say(msg: str) -> None:
        print(prefix + msg, file=sys.stderr, flush=True)
    return say


def load_module(path: Path, name: str) -> ModuleType:
    """Import a script (an example's, say) by its path under ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file (blank lines skipped)."""
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def last_json(stdout: str) -> Any:
    """The last line of a command's stdout, parsed as JSON."""
    return json.loads(stdout.strip().splitlines()[-1])
