"""Retention, enforced at agent start: run directories, model versions and the embedding cache are capped.

Defaults (``[retention]`` in the agent config): the newest 20 run directories of finished jobs, the newest
10 model versions (the active one and its predecessor are always kept), 512 MiB of cached embeddings.
Runs of queued or running jobs are never touched.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ftedge.device_agent.jobs import ACTIVE, valid_job_id
from ftedge.device_agent.versions import ModelStore

log = logging.getLogger(__name__)
KEEP_JOB_RECORDS = 1000  # finished jobs' small JSON records (history for `status`/`resync`), newest first


def prune_runs(state_dir: Path, keep: int) -> list[str]:
    """Delete run directories of finished jobs beyond the newest ``keep``; returns the job ids removed."""
    runs, jobs = Path(state_dir) / "runs", Path(state_dir) / "jobs"
    if not runs.is_dir():
        return []
    finished: list[tuple[int, str]] = []
    for d in runs.iterdir():
        if not d.is_dir() or d.is_symlink() or not valid_job_id(d.name):
            continue
        try:
            job: dict[str, Any] = json.loads((jobs / f"{d.name}.json").read_text())
        except (OSError, ValueError):
            job = {}  # no job record: a leftover, finished by definition
        if job.get("status") in ACTIVE:
            continue
        finished.append((int(job.get("finished_ms") or job.get("created_ms") or 0), d.name))
    finished.sort()
    doomed = [name for _, name in finished[:max(0, len(finished) - keep)]]
    for name in doomed:
        shutil.rmtree(runs / name, ignore_errors=True)
    return doomed


def prune_job_records(state_dir: Path, keep: int = KEEP_JOB_RECORDS) -> int:
    """Delete the records (``jobs/<id>.json``) of finished jobs beyond the newest ``keep``; returns how many."""
    jobs = Path(state_dir) / "jobs"
    if not jobs.is_dir():
        return 0
    finished: list[tuple[int, Path]] = []
    for p in jobs.glob("*.json"):
        try:
            job: dict[str, Any] = json.loads(p.read_text())
        except (OSError, ValueError):
            continue  # unreadable: the job store reports it; never delete what we cannot judge
        if isinstance(job, dict) and job.get("status") not in ACTIVE:
            finished.append((int(job.get("finished_ms") or job.get("created_ms") or 0), p))
    finished.sort()
    doomed = finished[:max(0, len(finished) - keep)]
    for _, p in doomed:
        p.unlink(missing_ok=True)
    return len(doomed)


def trim_cache(state_dir: Path, max_bytes: int) -> int:
    """Delete the oldest cached embeddings beyond ``max_bytes``; returns the rows deleted."""
    path = Path(state_dir) / "cache" / "embeddings.sqlite"
    if not path.is_file():
        return 0
    from ftedge.runtime.data.cache import EmbeddingCache

    cache = EmbeddingCache(path.parent)
    try:
        return cache.trim(max_bytes)
    finally:
        cache.close()


def enforce_retention(cfg: Any, state_dir: Path, models: ModelStore) -> dict[str, Any]:
    """Apply every cap of ``cfg`` (a RetentionConfig); each step runs even if another fails."""
    report: dict[str, Any] = {}
    steps = (("runs", lambda: prune_runs(state_dir, cfg.keep_runs)),
             ("job_records", lambda: prune_job_records(state_dir)),
             ("versions", lambda: models.prune(cfg.keep_versions)),
             ("cache_rows", lambda: trim_cache(state_dir, cfg.cache_max_bytes)))
    for name, step in steps:
        try:
            report[name] = step()
        except Exception as exc:  # noqa: BLE001 - one failing cap must not stop the others or the agent
            log.error("retention: could not prune %s (%s: %s)", name, type(exc).__name__, exc)
    if any(report.values()):
        log.info("retention: removed %s", report)
    return report
