"""Per-device caps on the rows a device's messages create (issue 33): what a device names — its jobs, their
epochs — and the holes it leaves must not grow the database without bound.

Per device the store keeps at most ``max_jobs_per_device`` jobs (progress and result rows; the jobs whose
newest row is oldest go first), ``max_epochs_per_job`` progress rows per job (the lowest epochs go first) and
``max_gaps_per_device`` counted holes (the oldest closed ones, or those of boots no longer kept, go first; a
hole still open is kept: a late arrival may fill it) and ``max_history_per_device`` personalization history rows
(one per job result, kept longer than the results themselves; the oldest go first). Pruning is amortized: a device's rows are pruned in the
transaction that writes its ``PRUNE_EVERY``-th progress, result or gap row since the last prune, so a cap is
exceeded by at most ``PRUNE_EVERY`` rows (and by up to ``PRUNE_EVERY`` more per collector on a shared
database, or after a restart).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MAX_EPOCHS_PER_JOB = 1000    # progress rows kept per (device, job)
MAX_JOBS_PER_DEVICE = 100    # jobs (with progress or a result) kept per device
MAX_GAPS_PER_DEVICE = 1000   # counted holes kept per device (open ones are never pruned)
MAX_HISTORY_PER_DEVICE = 200  # personalization history rows kept per device (fleet/personalization.py)
PRUNE_EVERY = 100            # rows a device writes between two prunes of its rows


class DeviceCaps:
    """Counts the rows each device writes and prunes them past the caps (a mixin of
    :class:`~ftedge.fleet.store.FleetStore`, which sets the three ``max_…`` attributes)."""

    max_epochs_per_job: int
    max_jobs_per_device: int
    max_gaps_per_device: int
    max_history_per_device: int

    def __init__(self) -> None:
        self._written: dict[tuple[str, str], int] = {}   # rows written per device since its last prune

    def _prune_due(self, devices: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Count one written row per item of ``devices``; returns the devices whose rows are due for pruning."""
        due = []
        for key in devices:
            n = self._written.get(key, 0) + 1
            if n >= PRUNE_EVERY:
                due.append(key)
                self._written.pop(key, None)
            else:
                self._written[key] = n
        return sorted(set(due))

    def _prune_jobs(self, db: Any, fleet: str, device: str) -> None:
        """Keep the newest ``max_jobs_per_device`` jobs of a device, the newest ``max_epochs_per_job`` epochs of
        each and its newest ``max_history_per_device`` history rows (inside the caller's transaction, which holds
        the device)."""
        jobs = db.execute(
            "SELECT job, MAX(ts), SUM(n) FROM (SELECT job, MAX(ts) AS ts, COUNT(*) AS n FROM progress"
            " WHERE fleet = ? AND device = ? GROUP BY job UNION ALL SELECT job, ts, 0 FROM results"
            " WHERE fleet = ? AND device = ?) AS j GROUP BY job ORDER BY MAX(ts) DESC, job DESC",
            (fleet, device, fleet, device)).fetchall()
        old = [(fleet, device, job) for job, _, _ in jobs[self.max_jobs_per_device:]]
        if old:
            db.executemany("DELETE FROM progress WHERE fleet = ? AND device = ? AND job = ?", old)
            db.executemany("DELETE FROM results WHERE fleet = ? AND device = ? AND job = ?", old)
        db.execute(
            "DELETE FROM personalization WHERE fleet = ? AND device = ? AND (at_ms, job) < (SELECT at_ms, job FROM"
            " personalization WHERE fleet = ? AND device = ? ORDER BY at_ms DESC, job DESC LIMIT 1 OFFSET ?)",
            (fleet, device, fleet, device, self.max_history_per_device - 1))
        long = [(fleet, device, job, fleet, device, job, self.max_epochs_per_job - 1)
                for job, _, n in jobs[:self.max_jobs_per_device] if int(n or 0) > self.max_epochs_per_job]
        if long:
            db.executemany(
                "DELETE FROM progress WHERE fleet = ? AND device = ? AND job = ? AND epoch < (SELECT epoch FROM"
                " progress WHERE fleet = ? AND device = ? AND job = ? ORDER BY epoch DESC LIMIT 1 OFFSET ?)", long)

    def _prune_gaps(self, db: Any, fleet: str, device: str) -> None:
        """Keep the newest ``max_gaps_per_device`` holes of a device, and every hole still open of a boot it
        keeps (a late arrival fills it)."""
        db.execute(
            "DELETE FROM gaps WHERE fleet = ? AND device = ? AND id < (SELECT id FROM gaps WHERE fleet = ? AND"
            " device = ? ORDER BY id DESC LIMIT 1 OFFSET ?) AND (filled_ts IS NOT NULL OR boot NOT IN"
            " (SELECT boot FROM boots WHERE fleet = ? AND device = ?))",
            (fleet, device, fleet, device, self.max_gaps_per_device - 1, fleet, device))
