"""The contenders: their names, the order they run and are reported in, the command each runs, and how one run is
measured (a whole process under the fork+exec launcher, so its peak RSS is its own)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench._common import LEGACY_PY, ROOT, omp_env, run_measured
from bench.train_speed.workers import THREADS

NO_LEGACY = "not measured (no onnxruntime-training venv)"
FTEDGE_RUNS = ("a", "a-L", "a-ort", "b", "b-ort", "e")
FULL_MODE = ("b", "b-ort")
# run order: the pairs being compared side by side (ref/ref-L, a/a-L/a-ort, b/b-ort), so load drift on a shared box
# hits both sides of a ratio alike
RUN_ORDER = ("ref", "ref-L", "a", "a-L", "a-ort", "e", "b", "b-ort", "c", "d")
ORDER = ("a", "a-L", "a-ort", "b", "b-ort", "e", "c", "d", "ref", "ref-L")   # the report's
NAMES = {
    "a": "(a) ftedge train, split, --mode cached, portable (device venv, no torch)",
    "a-L": "(a-L) = (a), portable, in the legacy venv (ORT-training 1.19.2 runtime)",
    "a-ort": "(a-ort) = (a) with --engine ort-training (legacy venv)",
    "b": "(b) ftedge train, --no-split, --mode full, portable (device venv)",
    "b-ort": "(b-ort) = (b) with --engine ort-training (legacy venv)",
    "e": "(e) ftedge train, split, cached, --backbone int8, portable (device venv)",
    "c": "(c) PyTorch eager, frozen backbone every step",
    "d": "(d) PyTorch, backbone once (no_grad), head on cached features",
    "ref": "(ref) ORT InferenceSession, backbone.onnx, one pass (device venv)",
    "ref-L": "(ref-L) = (ref) in the legacy venv (onnxruntime-training 1.19.2)",
}
Command = Callable[[int], list[str]]   # repeat number -> argv


def child_env() -> dict[str, str]:
    """OMP_NUM_THREADS for every child; the export's weights variable removed."""
    env = omp_env(THREADS)
    env.pop("FTEDGE_BENCH_WEIGHTS", None)
    return env


# Peak RSS caveat: on Linux ru_maxrss survives execve (the exec'd program inherits the high-water mark of the
# address space it replaced), and a child forked from this parent (which holds torch, ~300+ MiB) would report at
# least the parent's RSS. So every measured command is started by this tiny launcher (a bare `python -I -S`,
# ~6 MiB, below any Python worker's own RSS): it forks, execs the command, and reports os.wait4's rusage.
def measure(cmd: list[str], env: dict[str, str]) -> dict:
    """Whole-process wall time of ``cmd``, its peak RSS (ru_maxrss, KiB → MiB), CPU time and last-line JSON."""
    rec = run_measured(cmd, ROOT, env)
    return {**rec, "stderr": rec["stderr"].strip()}


def commands(args: object, ctx: dict, work: Path, device_py: Path, torch_py: str) -> dict[str, Command]:
    """Every contender's command line, in :data:`RUN_ORDER` (the legacy-venv ones only with ``args.legacy``)."""
    d, b = ctx["data"], ctx["bundles"]
    common = ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
              "--val-fraction", str(args.val_fraction), "--seed", str(args.seed)]
    ft_opts = ["--data", str(d), *common, "--no-cache", "--quiet", "--json"]
    torch_opts = ["--data", str(d), "--weights", str(ctx["weights"]), "--classes", str(args.classes), *common]
    worker = ["-m", "bench.train_speed", "--worker"]

    def ft(py: Path, name: str, bundle: str, mode: str, engine: str, *more: str) -> Command:
        return lambda r: [str(py), "-m", "ftedge", "train", str(b[bundle]), "-o", str(work / f"run-{name}-{r}"),
                          "--mode", mode, "--engine", engine, *more, *ft_opts]

    contenders: dict[str, Command] = {
        "ref": lambda r: [str(device_py), *worker, "ort-infer", "--data", str(d), "--bundle", str(b["split"])],
        "a": ft(device_py, "a", "split", "cached", "portable"),
        "b": ft(device_py, "b", "full", "full", "portable"),
        "c": lambda r: [torch_py, *worker, "torch-eager", *torch_opts],
        "d": lambda r: [torch_py, *worker, "torch-cached", *torch_opts],
        "e": ft(device_py, "e", "int8", "cached", "portable", "--backbone", "int8"),
    }
    if args.legacy:
        contenders |= {
            "ref-L": lambda r: [str(LEGACY_PY), *worker, "ort-infer", "--data", str(d), "--bundle", str(b["split"])],
            "a-L": ft(LEGACY_PY, "a-L", "split", "cached", "portable"),
            "a-ort": ft(LEGACY_PY, "a-ort", "split", "cached", "ort-training"),
            "b-ort": ft(LEGACY_PY, "b-ort", "full", "full", "ort-training"),
        }
    return {k: contenders[k] for k in RUN_ORDER if k in contenders}
