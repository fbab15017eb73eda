"""The resumable part of a run directory: ``RUN_DIR/checkpoint/``.

``state.json`` names the last complete epoch's engine checkpoint (parameters + optimizer state) and the
best epoch's. Each checkpoint file is written to a temporary name, fsynced and renamed; ``state.json``
is replaced atomically only after the file it names is durable, so a crash at any instant leaves a
consistent pair.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ftedge.errors import FtedgeError
from ftedge.durable import atomic_write_json, fsync_dir, replace_file


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
