"""Training jobs: persisted on disk, run one at a time by a worker thread, resumed after a crash."""

from __future__ import annotations

import json
import logging
import queue
import resource
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ftedge.errors import FtedgeError
from ftedge.runtime.hashing import atomic_write_json

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
# `ftedge train` options a train command may set, with their types.
TRAIN_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "epochs": int, "batch_size": int, "lr": (int, float), "mode": str, "patience": int,
    "max_seconds": (int, float), "val_fraction": (int, float), "seed": int, "min_gain": (int, float),
    "schedule": str, "backbone": str, "embed_batch_size": int, "engine": str,
}


@dataclass
class Job:
    id: str
    bundle: str
    data: str
    options: dict[str, Any]
    cmd_id: str | None = None
    status: str = "queued"
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    started_ms: int | None = None
    finished_ms: int | None = None
    attempts: int = 0
    result: dict[str, Any] | None = None
    error: str | None = None
    version: str | None = None

    def public(self) -> dict[str, Any]:
        return {"job": self.id, "status": self.status, "bundle": Path(self.bundle).name, "cmd_id": self.cmd_id,
                "created_ms": self.created_ms, "started_ms": self.started_ms, "finished_ms": self.finished_ms,
                "attempts": self.attempts, "version": self.version, "error": self.error}


def new_job_id() -> str:
    return time.strftime("j%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class JobStore:
    """One JSON file per job under ``state_dir/jobs`` (atomic writes)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "jobs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    def save(self, job: Job) -> None:
        with self.lock:
            atomic_write_json(self.dir / f"{job.id}.json", asdict(job))

    def get(self, job_id: str) -> Job | None:
        p = self.dir / f"{job_id}.json"
        return Job(**json.loads(p.read_text())) if p.is_file() else None

    def all(self) -> list[Job]:
        jobs = [Job(**json.loads(p.read_text())) for p in self.dir.glob("*.json")]
        return sorted(jobs, key=lambda j: (j.created_ms, j.id))


def _current_rss_mb() -> float:
    """Resident memory now (Linux /proc); the peak (ru_maxrss) elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Callbacks:
    """Trainer → MQTT progress; cancellation at the next batch."""

    def __init__(self, job: Job, emit: Callable[[str, dict[str, Any]], None], cancel: threading.Event) -> None:
        self.job, self.emit, self.cancel, self.step = job, emit, cancel, 0

    def on_start(self, info: dict[str, Any]) -> None:
        log.info("job %s started: %s", self.job.id, info)

    def on_batch(self, epoch: int, step: int, loss: float) -> None:
        self.step = step

    def on_epoch(self, record: dict[str, Any]) -> None:
        rss_mb = _current_rss_mb()
        self.emit("progress", {
            "job": self.job.id, "epoch": record["epoch"], "step": self.step, "loss": record["train_loss"],
            "metrics": {k: record.get(k) for k in ("val_loss", "val_accuracy", "val_macro_f1", "val_mae")
                        if record.get(k) is not None},
            "lr": record["lr"], "samples_per_s": record["samples_per_s"], "rss_mb": round(rss_mb, 1),
        })

    def should_stop(self) -> bool:
        return self.cancel.is_set()


class JobRunner:
    """Runs queued jobs one at a time in its own thread."""

    def __init__(self, store: JobStore, state_dir: Path, emit: Callable[[str, dict[str, Any]], None],
                 on_finished: Callable[[Job], None]) -> None:
        self.store, self.state_dir, self.emit, self.on_finished = store, Path(state_dir), emit, on_finished
        self.queue: "queue.Queue[Job | None]" = queue.Queue()
        self.current: Job | None = None
        self.shutting_down = False  # stop at the next batch but leave the job running: resume on next start
        self.cancels: dict[str, threading.Event] = {}
        self.thread = threading.Thread(target=self._loop, name="ftedge-jobs", daemon=True)

    def start(self) -> None:
        for job in self.store.all():  # crash or reboot mid-job: pick up where it stopped
            if job.status in ACTIVE:
                log.info("resuming job %s (%s)", job.id, job.status)
                self._enqueue(job)
        self.thread.start()

    def stop(self) -> None:
        self.shutting_down = True
        for ev in self.cancels.values():
            ev.set()
        self.queue.put(None)
        self.thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        self.store.save(job)
        self.emit("job", job.public())
        self._enqueue(job)

    def _enqueue(self, job: Job) -> None:
        self.cancels[job.id] = threading.Event()
        self.queue.put(job)

    def cancel(self, job_id: str) -> bool:
        ev = self.cancels.get(job_id)
        job = self.store.get(job_id)
        if ev is None or job is None or job.status not in ACTIVE:
            return False
        ev.set()
        return True

    def queued(self) -> list[str]:
        return [j.id for j in self.store.all() if j.status == "queued"]

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            job = self.store.get(job.id) or job
            if job.status not in ACTIVE:
                continue
            try:
                self._run(job)
            except Exception as exc:  # noqa: BLE001 - a job failure must never kill the agent
                log.exception("job %s failed", job.id)
                self._finish(job, "failed", None, f"{type(exc).__name__}: {exc}")

    def _run(self, job: Job) -> None:
        from ftedge.runtime.trainer import TrainConfig, Trainer

        cancel = self.cancels.setdefault(job.id, threading.Event())
        if cancel.is_set():
            if not self.shutting_down:
                self._finish(job, "cancelled", None, None)
            return
        run_dir = self.state_dir / "runs" / job.id
        resume = (run_dir / "checkpoint" / "state.json").exists()
        job.status, job.attempts = "running", job.attempts + 1
        job.started_ms = job.started_ms or int(time.time() * 1000)
        self.current = job
        self.store.save(job)
        self.emit("job", job.public())
        cfg = TrainConfig(**{**job.options, "resume": resume, "cache_dir": self.state_dir / "cache"})
        try:
            result = Trainer(job.bundle, job.data, run_dir, cfg, _Callbacks(job, self.emit, cancel)).run()
        except FtedgeError as exc:
            self._finish(job, "failed", None, str(exc))
            return
        finally:
            self.current = None
        if result["status"] == "cancelled" and self.shutting_down:
            log.info("job %s paused for shutdown; it resumes from its checkpoint on the next start", job.id)
            return
        status = {"succeeded": "succeeded", "cancelled": "cancelled"}.get(result["status"], "failed")
        error = None if status != "failed" else f"training {result['status']}: {result['stop_reason']}"
        self._finish(job, status, result, error)

    def _finish(self, job: Job, status: str, result: dict[str, Any] | None, error: str | None) -> None:
        job.status, job.error, job.finished_ms = status, error, int(time.time() * 1000)
        job.result = None if result is None else {k: result.get(k) for k in (
            "status", "stop_reason", "best_epoch", "epochs_run", "metrics", "baseline", "gain", "promoted",
            "duration_s", "samples", "mode", "engine")}
        self.on_finished(job)  # e.g. store a new model version (sets job.version)
        self.emit("result", {
            "job": job.id, "status": status, "final": (result or {}).get("metrics"),
            "baseline": (result or {}).get("baseline"), "promoted": bool((result or {}).get("promoted")),
            "duration_s": (result or {}).get("duration_s"), "error": error, "version": job.version,
            "skipped": len((result or {}).get("skipped") or []),
        })
        self.store.save(job)
        self.emit("job", job.public())
