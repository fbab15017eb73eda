"""A run directory, the same for every task: ``RUN_DIR/checkpoint/`` (resumable state), ``metrics.jsonl`` (one
record per finished epoch), ``result.json`` (the :mod:`~ftedge.runtime.training.result` schema).

:class:`RunDir` opens it: a new run refuses a directory that holds one (:class:`~ftedge.errors.RunDirInUse`, exit
1, whatever the task), a resumed run must have the same fingerprint (data, settings, bundle) and drops the
``metrics.jsonl`` records of an epoch whose checkpoint never committed — rewritten atomically.

``state.json`` names the last complete epoch's engine checkpoint (parameters + optimizer state) and the
best epoch's. Each checkpoint file is written to a temporary name, fsynced and renamed; ``state.json``
is replaced atomically only after the file it names is durable, so a crash at any instant leaves a
consistent pair.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ftedge.durable import atomic_write_bytes, atomic_write_json, replace_file
from ftedge.errors import FtedgeError, RunDirInUse


@dataclass
class RunState:
    fingerprint: str
    epochs_done: int = 0
    global_step: int = 0
    best_epoch: int | None = None
    best_score: float | None = None
    best_loss: float | None = None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    since_best: int = 0
    baseline: dict[str, Any] = field(default_factory=dict)
    last_checkpoint: str | None = None
    best_checkpoint: str | None = None
    elapsed_s: float = 0.0
    engine: str | None = None  # the engine that wrote the checkpoints (resume uses the same)
    search: dict[str, Any] = field(default_factory=dict)  # --auto: trials, chosen settings, CV estimate
    previous: dict[str, Any] = field(default_factory=dict)  # --warm-start: the starting model on the same split


class CheckpointDir:
    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir) / "checkpoint"
        self.state_path = self.dir / "state.json"

    def exists(self) -> bool:
        return self.state_path.is_file()

    def load(self) -> RunState:
        try:
            return RunState(**json.loads(self.state_path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise FtedgeError(f"{self.state_path} is unreadable ({exc}); start a new run directory") from exc

    def path(self, name: str | None) -> Path | None:
        return self.dir / name if name else None

    def save_model(self, model, name: str, with_optimizer: bool) -> str:  # noqa: ANN001 - any engine
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{name}.tmp"
        model.save_checkpoint(tmp, include_optimizer_state=with_optimizer)
        replace_file(tmp, self.dir / name)
        return name

    def commit(self, state: RunState) -> None:
        """Make ``state`` current, then drop checkpoint files it no longer names."""
        atomic_write_json(self.state_path, asdict(state))
        keep = {state.last_checkpoint, state.best_checkpoint, "state.json", "search.jsonl"}
        for p in self.dir.iterdir():
            if p.name not in keep and not p.name.startswith("."):
                p.unlink(missing_ok=True)


class RunDir:
    """``RUN_DIR`` of one training run, whatever its task."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.ckpt = CheckpointDir(self.path)
        self.metrics_path = self.path / "metrics.jsonl"
        self.result_path = self.path / "result.json"

    def open(self, fingerprint: str, resume: bool, engine: str | None = None) -> RunState:
        """The run's state: resumed from the last complete epoch, or new (a directory in use is refused)."""
        if resume and self.ckpt.exists():
            state = self.ckpt.load()
            if state.fingerprint != fingerprint:
                raise FtedgeError(f"{self.path} was started with other data, settings or bundle; resume with the "
                                 "same ones or choose a new -o")
            self.trim_metrics(state.epochs_done)
            return state
        if self.ckpt.exists() or self.result_path.exists():
            raise RunDirInUse(f"{self.path} already holds a run; pass --resume to continue it or choose a new -o")
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.metrics_path, b"")
        return RunState(fingerprint=fingerprint, engine=engine)

    def trim_metrics(self, epochs_done: int) -> None:
        """Keep the records of epochs up to ``epochs_done`` (a crash may have logged a later one, or cut a line)."""
        try:
            lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            lines = []
        keep = []
        for line in lines:
            try:
                if json.loads(line)["epoch"] <= epochs_done:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by the crash
        atomic_write_bytes(self.metrics_path, "".join(k + "\n" for k in keep).encode("utf-8"))

    def log_epoch(self, record: dict[str, Any]) -> None:
        """Append one epoch's record (before its checkpoint commits: a crash in between is trimmed on resume)."""
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def write_result(self, result: dict[str, Any]) -> dict[str, Any]:
        atomic_write_json(self.result_path, result)
        return result
