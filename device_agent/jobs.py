"""Training jobs: persisted on disk, run one at a time by a worker thread, resumed after a crash."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import resource
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

from ftedge.bundle.tasks import Task
from ftedge.device_agent.disk import DiskGuard, is_disk_full
from ftedge.errors import FtedgeError
from ftedge.mqtt.contract import MAX_REASON
from ftedge.durable import atomic_write_json, swap_dir
from ftedge.runtime import tasks
from ftedge.runtime.training.result import COMMON_KEYS

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
MAX_STARTS = 3  # default of [jobs] max_starts: starts without a finished epoch before a job is failed
JOB_ID_RE = re.compile(r"j\d{8}-\d{6}-[0-9a-f]{6}")  # what new_job_id() makes


def tuning_summary(search: dict[str, Any]) -> dict[str, Any]:
    """What ``train --auto`` chose and its cross-validated estimate, small enough for a result message."""
    c, e = search.get("chosen") or {}, search.get("estimate") or {}
    return {"lr": c.get("lr"), "weight_decay": c.get("weight_decay"), "epochs": c.get("epochs"),
            "class_weight": c.get("class_weight"), "trials": len(search.get("trials") or []),
            "cv_score": e.get("tuned"), "cv_untuned": e.get("untuned"), "cv_gain": e.get("gain"),
            "cv_lo": e.get("lo"), "cv_hi": e.get("hi")}


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
    stalled_starts: int = 0  # starts since the last finished epoch (a crash loop shows here)
    trigger: str = "command"          # "command" (the fleet's train) or "policy" (the box's own, [personalize])
    trigger_reason: str | None = None  # why a policy run started

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Job":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def public(self) -> dict[str, Any]:
        return {"job": self.id, "status": self.status, "bundle": Path(self.bundle).name, "cmd_id": self.cmd_id,
                "created_ms": self.created_ms, "started_ms": self.started_ms, "finished_ms": self.finished_ms,
                "attempts": self.attempts, "version": self.version, "error": self.error, "trigger": self.trigger}


def _warm_version(warm: Any) -> str | None:
    """The version id a warm-started run continued from (its directory's name when the result gives none)."""
    if not isinstance(warm, dict):
        return None
    return warm.get("version") or (Path(warm["from"]).name if isinstance(warm.get("from"), str) else None)


def new_job_id() -> str:
    return time.strftime("j%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def valid_job_id(value: Any) -> bool:
    return isinstance(value, str) and JOB_ID_RE.fullmatch(value) is not None


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
        if not valid_job_id(job_id):
            return None
        p = self.dir / f"{job_id}.json"
        return self._read(p) if p.is_file() else None

    @staticmethod
    def _read(p: Path) -> Job | None:
        try:
            return Job.from_dict(json.loads(p.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            log.error("job file %s is unreadable (%s); ignoring it (move it away to silence this)", p, exc)
            return None

    def all(self) -> list[Job]:
        jobs = [j for p in self.dir.glob("*.json") if (j := self._read(p)) is not None]
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
    """Trainer → MQTT progress; cancellation at the next batch (or embed/eval/merge chunk)."""

    def __init__(self, job: Job, emit: Callable[[str, dict[str, Any]], None], cancel: threading.Event,
                 on_epoch_done: Callable[[Job], None] = lambda _j: None) -> None:
        self.job, self.emit, self.cancel, self.step = job, emit, cancel, 0
        self.on_epoch_done = on_epoch_done
        self.task: Task | None = None  # the bundle's row of the task table (set when the job starts)

    def on_start(self, info: dict[str, Any]) -> None:
        log.info("job %s started: %s", self.job.id, info)

    def on_trial(self, trial: dict[str, Any]) -> None:
        """A finished ``--auto`` trial: logged, and it counts as progress (a restart resumes after it)."""
        log.info("job %s: --auto trial %d: lr %.3g, weight decay %.3g, %d epochs, score %.4f", self.job.id,
                 trial["index"], trial["lr"], trial["weight_decay"], trial["epochs"], trial["score"])
        self.on_epoch_done(self.job)

    def on_batch(self, epoch: int, step: int, loss: float) -> None:
        self.step = step

    def on_epoch(self, record: dict[str, Any]) -> None:
        rss_mb = _current_rss_mb()
        self.emit("progress", {
            "job": self.job.id, "epoch": record["epoch"], "step": self.step, "loss": record["train_loss"],
            "metrics": {k: v for k, v in record.items()
                        if k.startswith("val_") and isinstance(v, (int, float)) and not isinstance(v, bool)},
            "lr": record["lr"], "samples_per_s": record["samples_per_s"], "rss_mb": round(rss_mb, 1),
            **({"task": self.task.name, "headline": self.task.headline.progress(record)} if self.task else {}),
        })
        self.on_epoch_done(self.job)

    def should_stop(self) -> bool:
        return self.cancel.is_set()


def pin_bundle(src: Path, dst: Path) -> Path:
    """A private copy of bundle ``src`` at ``dst`` (hard links where possible, else copies).

    Only ``manifest.json`` and the files its ``files`` table lists are taken; a later ``deploy replace`` of
    ``src`` renames a new folder into place and cannot change what the job reads. The caller verifies the
    copy (hashes, signature) before training on it.
    """
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    manifest_bytes = (src / "manifest.json").read_bytes()
    (tmp / "manifest.json").write_bytes(manifest_bytes)
    try:
        files = json.loads(manifest_bytes).get("files") or {}
    except ValueError as exc:
        raise FtedgeError(f"bundle {src}: manifest.json is not JSON ({exc}); re-deploy the bundle") from exc
    for rel in files if isinstance(files, dict) else ():
        source, target = (src / rel).resolve(), (tmp / rel).resolve()
        if src.resolve() not in source.parents or tmp.resolve() not in target.parents:
            raise FtedgeError(f"bundle {src}: file {rel!r} escapes the bundle directory; re-export the bundle")
        if not source.is_file():
            continue  # verification reports it as missing
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    old = swap_dir(tmp, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dst


@contextlib.contextmanager
def _shared_bundle_lock(bundle_root: Path) -> Iterator[None]:
    """The bundle root's shared lock, or none where it cannot be taken (a read-only bundle root: no deploy
    can swap folders there either; the hash check of the copy would catch a mix anyway)."""
    from ftedge.device_agent.install import bundle_lock

    try:
        lock = bundle_lock(bundle_root, shared=True)
        lock.__enter__()
    except OSError as exc:
        log.warning("cannot take the bundle lock in %s (%s); pinning without it", bundle_root, exc)
        yield
        return
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


class JobRunner:
    """Runs queued jobs one at a time in its own thread; the thread survives any exception."""

    def __init__(self, store: JobStore, state_dir: Path, emit: Callable[[str, dict[str, Any]], None],
                 on_finished: Callable[[Job], None], max_starts: int = MAX_STARTS,
                 trusted_keys: list[Path] | None = None, disk: DiskGuard | None = None,
                 data_root: Path | None = None, train_defaults: dict[str, Any] | None = None) -> None:
        self.store, self.state_dir, self.emit, self.on_finished = store, Path(state_dir), emit, on_finished
        self.train_defaults = dict(train_defaults or {})  # [runtime] providers: under every job's own options
        self.data_root = data_root  # a job's data may not lead reads outside it (a data.yaml's path:, symlinks)
        self.max_starts, self.trusted_keys = max_starts, trusted_keys
        self.disk = disk or DiskGuard(self.state_dir)
        self.queue: "queue.Queue[Job | None]" = queue.Queue()
        self.current: Job | None = None
        self.shutting_down = False  # stop at the next batch but leave the job running: resume on next start
        self.cancels: dict[str, threading.Event] = {}
        self.done: set[str] = set()  # finished in this boot even if their final state could not be saved
        self.problems: list[str] = []  # recent job-loop failures, for `status`
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
        if ev is None or job is None or job.status not in ACTIVE or job_id in self.done:
            return False
        ev.set()
        return True

    def queued(self) -> list[str]:
        return [j.id for j in self.store.all() if j.status == "queued" and j.id not in self.done]

    def _problem(self, text: str) -> None:
        self.problems = (self.problems + [text])[-10:]

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            try:
                self._one(job)
            except Exception as exc:  # noqa: BLE001 - even a failing failure path must not end the loop
                log.exception("job loop: job %s could not be handled", job.id)
                self._problem(f"job {job.id}: {type(exc).__name__}: {exc}")
            finally:
                self.current = None

    def _one(self, job: Job) -> None:
        if job.id in self.done:
            return
        job = self.store.get(job.id) or job
        if job.status not in ACTIVE:
            return
        try:
            self._run(job)
        except Exception as exc:  # noqa: BLE001 - a job failure must never kill the agent
            log.exception("job %s failed", job.id)
            msg = f"{type(exc).__name__}: {exc}"
            if is_disk_full(exc):
                self.disk.state()  # releases the reserve so the failure can be recorded and reported
                msg = (f"disk full ({exc}); free space on the state directory's filesystem "
                       "(delete old runs/models), then send the train command again")
            self._finish(job, "failed", None, msg)

    def _run(self, job: Job) -> None:
        from ftedge.bundle.loader import load_bundle

        cancel = self.cancels.setdefault(job.id, threading.Event())
        if cancel.is_set():
            if not self.shutting_down:
                self._finish(job, "cancelled", None, None)
            return
        if job.stalled_starts >= self.max_starts:
            self._finish(job, "failed", None, (
                f"job started {job.stalled_starts} times without finishing an epoch (the agent crashed or was "
                f"killed each time, e.g. out of memory); it is not resumed again ([jobs] max_starts = "
                f"{self.max_starts}). Lower batch_size/embed_batch_size or check the data, then send a new train"))
            return
        run_dir = self.state_dir / "runs" / job.id
        resume = (run_dir / "checkpoint" / "state.json").exists()
        job.status, job.attempts = "running", job.attempts + 1
        job.stalled_starts += 1
        job.started_ms = job.started_ms or int(time.time() * 1000)
        self.current = job
        self.store.save(job)
        self.emit("job", job.public())
        pinned = run_dir / "bundle"
        try:
            if not (resume and (pinned / "manifest.json").is_file()):
                with _shared_bundle_lock(Path(job.bundle).parent):  # a deploy cannot swap it mid-copy
                    pin_bundle(Path(job.bundle), pinned)
            # Re-verify the private copy now (hashes; the signature when keys are required): it is what trains.
            bundle = load_bundle(pinned, verify=True, trusted_keys=self.trusted_keys)
        except FtedgeError as exc:
            self._finish(job, "failed", None, f"bundle {Path(job.bundle).name} refused at job start: {exc}")
            return
        callbacks = _Callbacks(job, self.emit, cancel, self._epoch_done)
        try:
            row, task = tasks.for_bundle(bundle)
            callbacks.task = row
            result = task.train(tasks.TrainRequest(
                bundle=bundle, data=job.data, run_dir=run_dir, options=self.train_defaults | job.options, resume=resume,
                cache_dir=self.state_dir / "cache", callbacks=callbacks, bundle_source=job.bundle,
                data_root=self.data_root))
        except FtedgeError as exc:
            if is_disk_full(exc):
                raise
            self._finish(job, "failed", None, str(exc))
            return
        finally:
            self.current = None
        if result["status"] == "cancelled" and self.shutting_down:
            log.info("job %s paused for shutdown; it resumes from its checkpoint on the next start", job.id)
            job.stalled_starts = 0  # a clean stop is not a crash
            self.store.save(job)
            return
        status = {"succeeded": "succeeded", "cancelled": "cancelled"}.get(result["status"], "failed")
        error = None if status != "failed" else f"training {result['status']}: {result['stop_reason']}"
        self._finish(job, status, result, error)

    def _epoch_done(self, job: Job) -> None:
        if job.stalled_starts:
            job.stalled_starts = 0
            try:
                self.store.save(job)
            except OSError as exc:
                log.error("could not save job %s after its epoch: %s", job.id, exc)

    def _finish(self, job: Job, status: str, result: dict[str, Any] | None, error: str | None) -> None:
        """Record and report the end of ``job``; every step is attempted even if an earlier one fails."""
        job.status, job.error, job.finished_ms = status, error, int(time.time() * 1000)
        job.result = None if result is None else {k: result.get(k) for k in (   # not the skipped list: it can be long
            *(k for k in COMMON_KEYS if k != "skipped"), "gain", "mode", "gate", "warm_start", "previous",
            "previous_gain")}
        if result is not None and isinstance(result.get("search"), dict):
            job.result["tuning"] = tuning_summary(result["search"])
        self.done.add(job.id)
        try:
            self.on_finished(job)  # (first: it may copy files the pinned bundle shares)
        except Exception as exc:  # noqa: BLE001
            log.exception("job %s: post-processing failed", job.id)
            if job.result:
                job.result["promoted"] = False
            job.error = job.error or f"the model could not be stored ({type(exc).__name__}: {exc})"
        self.cancels.pop(job.id, None)
        # The pinned bundle copy is only needed while the job may still resume.
        shutil.rmtree(self.state_dir / "runs" / job.id / "bundle", ignore_errors=True)
        res = job.result or {}
        self.emit("result", {
            "job": job.id, "status": status, "final": res.get("metrics"),
            "baseline": res.get("baseline"), "promoted": bool(res.get("promoted")),
            **{k: res[k] for k in ("task", "epochs_run", "headline") if res.get(k) is not None},
            "duration_s": res.get("duration_s"), "error": job.error, "version": job.version,
            "skipped": (result or {}).get("skipped_count", len((result or {}).get("skipped") or [])),
            **({"tuning": res["tuning"]} if res.get("tuning") else {}),
            **({"providers": res["providers"]} if res.get("providers") else {}),   # per stage, CPU fallbacks
            "trigger": job.trigger, **({"trigger_reason": job.trigger_reason} if job.trigger_reason else {}),
            "warm_start": _warm_version(res.get("warm_start")), "previous": res.get("previous"),
            "previous_gain": res.get("previous_gain"),
            **({"stop_reason": res["stop_reason"][:MAX_REASON]} if isinstance(res.get("stop_reason"), str) else {}),
        })
        try:
            self.store.save(job)
            self.done.discard(job.id)  # its saved state says finished: the in-memory mark is not needed
        except OSError as exc:
            self.disk.state()
            log.error("could not save the final state of job %s (%s); it is reported, not resumed in this boot",
                      job.id, exc)
            self._problem(f"job {job.id}: final state not saved: {exc}")
            try:
                self.store.save(job)  # the reserve may have been released just now
                self.done.discard(job.id)
            except OSError:
                pass
        self.emit("job", job.public())
