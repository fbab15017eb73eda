"""Free space of the state directory's filesystem, with a small ballast file kept in reserve.

The agent writes everything (outbox, job state, replies) under ``state_dir``. When that filesystem fills
up, the ballast (``.ftedge-reserve``, 1 MiB) is deleted so the agent can still store its replies and the
failed job's state and say "disk full"; it is re-created once space is back.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RESERVE_NAME = ".ftedge-reserve"
RESERVE_BYTES = 1 << 20
FULL_BELOW = 1 << 20  # free bytes under which the filesystem counts as full


class DiskGuard:
    """``state()`` → ``{"full", "free_bytes", "total_bytes"}``; releases/restores the ballast as needed."""

    def __init__(self, state_dir: Path, reserve_bytes: int = RESERVE_BYTES, full_below: int = FULL_BELOW) -> None:
        self.dir = Path(state_dir)
        self.reserve = self.dir / RESERVE_NAME
        self.reserve_bytes, self.full_below = reserve_bytes, full_below
        self.released = False
        self.lock = threading.Lock()

    def _free(self) -> tuple[int, int]:
        st = os.statvfs(self.dir)
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize

    def _make_reserve(self) -> bool:
        try:
            with open(self.reserve, "wb") as f:
                f.write(b"\0" * self.reserve_bytes)
                f.flush()
                os.fsync(f.fileno())
            return True
        except OSError:
            self.reserve.unlink(missing_ok=True)
            return False

    def state(self) -> dict[str, Any]:
        """Check now: release the ballast when full, re-create it when space is back."""
        with self.lock:
            try:
                free, total = self._free()
            except OSError as exc:
                return {"full": False, "free_bytes": None, "total_bytes": None, "error": str(exc)}
            if free < self.full_below and not self.released:
                if self.reserve.exists():
                    self.reserve.unlink(missing_ok=True)
                    log.error("disk full under %s (%d bytes free): released the %d-byte reserve; free space "
                              "(delete old runs or models) and the agent recovers by itself",
                              self.dir, free, self.reserve_bytes)
                self.released = True
            elif not self.reserve.exists() and free >= self.full_below + 2 * self.reserve_bytes:
                if self._make_reserve():
                    if self.released:
                        log.info("disk space is back under %s (%d bytes free)", self.dir, free)
                    self.released = False
            try:
                free, total = self._free()
            except OSError:
                pass
            return {"full": self.released or free < self.full_below, "free_bytes": int(free),
                    "total_bytes": int(total)}

    def problem(self) -> str | None:
        """A one-line problem for ``status`` when full, else None."""
        s = self.state()
        if not s["full"]:
            return None
        return (f"disk full: {s['free_bytes']} bytes free on the filesystem of {self.dir}; jobs fail and "
                "messages may be lost until space is freed (delete old runs/models or lower the retention settings)")


def is_disk_full(exc: BaseException) -> bool:
    """True for ENOSPC/EDQUOT, including SQLite's 'database or disk is full' wrapped in our errors."""
    import errno

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "disk is full" in str(seen) or "No space left" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
