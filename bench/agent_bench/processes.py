"""The processes the bench starts: an agent (``ftedge agent run``), the outbox worker, the measured CLI runs; and the
configs they read."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
from pathlib import Path

from bench._common import ROOT, run_measured
from bench.agent_bench.collector import FLEET
from bench.signing import KeyPair


def write_config(work: Path, dev: str, port: int, data_root: Path, bundle_root: Path, keys: KeyPair) -> Path:
    """The agent config of device ``dev``; it trusts ``keys`` (the bundle is signed with them)."""
    state = work / f"state-{dev}"
    lines = [f'device_id = "{dev}"', f'fleet = "{FLEET}"', f'state_dir = "{state}"', 'log_level = "info"',
             "[mqtt]", f'url = "mqtt://127.0.0.1:{port}"',
             "[paths]", f'data_root = "{data_root}"', f'bundle_root = "{bundle_root}"', *keys.deploy_toml()]
    cfg = work / f"agent-{dev}.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


class AgentProc:
    def __init__(self, py: str, config: Path, log: Path, env: dict[str, str], cwd: Path) -> None:
        self.log = log
        self._err = open(log, "ab")
        self.proc = subprocess.Popen([py, "-m", "ftedge", "agent", "run", "--config", str(config)],
                                     cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=self._err)
        self.pid = self.proc.pid

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._err.close()
        return rc

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""



# Peak RSS caveat (as in bench/train_speed): ru_maxrss survives execve and a child forked from this parent would
# report at least the parent's RSS, so the CLI runs are started by a bare `python -I -S` fork+exec launcher.
def measure(cmd: list[str], env: dict[str, str], cwd: Path) -> dict:
    """Whole-process wall time, peak RSS (ru_maxrss), CPU time and the last-line JSON of ``cmd``."""
    return run_measured(cmd, cwd, env)


class Worker:
    """The outbox worker subprocess (``-m bench.agent_bench --worker outbox``, from the repository root); its JSON
    event lines are read by a thread."""

    def __init__(self, py: str, env: dict[str, str], config: Path, scenario: str, messages: int, log: Path,
                 timeout: float) -> None:
        self._err = open(log, "ab")
        self.log = log
        self.proc = subprocess.Popen([py, "-m", "bench.agent_bench", "--worker", "outbox", "--config", str(config),
                                      "--scenario", scenario, "--messages", str(messages), "--timeout", str(timeout)],
                                     cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._err, text=True)
        self.events: "queue.Queue[dict | None]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                self.events.put(json.loads(line))
        self.events.put(None)

    def expect(self, name: str, timeout: float) -> dict:
        try:
            ev = self.events.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"outbox worker: no '{name}' event within {timeout:g} s\n{self.tail()}") from None
        if ev is None or ev.get("event") != name:
            raise RuntimeError(f"outbox worker: expected '{name}', got {ev}\n{self.tail()}")
        return ev

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self) -> int:
        try:
            rc = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._err.close()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def fs_type(path: Path) -> str:
    best, kind = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and str(path).startswith(parts[1].rstrip("/") + "/") and len(parts[1]) >= len(best):
                best, kind = parts[1], f"{parts[2]} on {parts[0]} (mounted at {parts[1]})"
    except OSError:
        pass
    return kind
