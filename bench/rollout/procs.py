"""The bench's child processes and the database figures: the collector host (bench/rollout/host.py) as a
subprocess, and rows and bytes per table of a SQLite fleet database."""

from __future__ import annotations

import json
import queue
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from bench._common import ROOT, proc_cpu_s

# the tables a rollout writes to (rollouts and rollout_devices) and those its devices' answers land in
TABLES = ("rollouts", "rollout_devices", "replies", "results", "progress")


class HostProc:
    """``python -m bench.rollout --host CFG.json``: a collector (+ driver) in its own process, read as JSON lines."""

    def __init__(self, cfg: dict[str, Any], log: Path) -> None:
        self._err = open(log, "ab")
        path = log.with_suffix(".host.json")      # a file: 10,000 device ids overflow one argv string (128 KiB)
        path.write_text(json.dumps(cfg))
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.rollout", "--host", str(path)], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True)
        self.pid, self.log = self.proc.pid, log
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                pass
        self.lines.put(None)

    def expect(self, key: str, timeout: float) -> Any:
        """The next line that carries ``key`` (raises with the host's log when it dies or is late)."""
        while True:
            try:
                obj = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise RuntimeError(f"the collector host sent no {key!r} within {timeout:g} s:\n{self.tail()}") from None
            if obj is None or "error" in (obj or {}):
                raise RuntimeError(f"the collector host failed ({obj}):\n{self.tail()}")
            if key in obj:
                return obj[key]

    def say(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    def stop(self, timeout: float = 30) -> dict[str, Any]:
        self.say("stop")
        out = self.expect("stopped", timeout)
        self.proc.stdin.close()
        self.proc.wait(timeout)
        self._err.close()
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def db_figures(path: Path) -> dict[str, dict[str, int]]:
    """Rows and bytes (dbstat: pages of the table and its indexes, after a WAL checkpoint) per table of ``TABLES``,
    and the main file's size."""
    db = sqlite3.connect(path, timeout=30)
    try:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        rows = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
        idx = {name: tbl for name, tbl in db.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'index'")}
        size: dict[str, int] = {t: 0 for t in TABLES}
        for name, pages in db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
            table = idx.get(name, name)
            if table in size:
                size[table] += int(pages)
        total = db.execute("SELECT page_count * page_size FROM pragma_page_count, pragma_page_size").fetchone()[0]
    finally:
        db.close()
    return {"rows": rows, "bytes": size, "file_bytes": {"all": int(total)}}
