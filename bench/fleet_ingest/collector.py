"""The collector under test and its broker: ``ftedge fleet serve`` (or the bench's own collector child, profiled or
of an older revision) started under the rusage launcher, and Mosquitto with the benchmark's configuration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import HOST_PY, LAUNCHER, ROOT, children, rss_mib
from bench.fleet_ingest.old_revision import use_revision
from ftedge.fleet.local_broker import LocalBroker
from ftedge.fleet.share_group import generate

FTEDGE = ROOT / ".venv" / "bin" / "ftedge"
SHARE_GROUP = generate()   # per run: `ftedge fleet serve` refuses guessable names


def proc_rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` in MiB; NaN once it is gone."""
    v = rss_mib(pid)
    return float("nan") if v is None else v


class Mosquitto(LocalBroker):
    """ftedge's local broker with the benchmark's configuration: no per-client queue limit (a collector that
    falls behind loses nothing at the broker), no connection limit, no per-PUBLISH logging; started at
    construction (it inherits the bench's raised RLIMIT_NOFILE: one descriptor per simulated device)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.start()

    def config_lines(self) -> list[str]:
        return [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false",
                "max_queued_messages 0", "max_connections -1", f"log_dest file {self.root}/mosquitto.log",
                "log_type error", "log_type warning", "log_type notice", "log_type subscribe",
                "connection_messages false"]


class CollectorProc:
    """``ftedge fleet serve`` under the rusage launcher (or the bench's own profiled collector). ``db``: a SQLite
    path or a PostgreSQL URL; ``share``: the MQTT share group (several collectors on one PostgreSQL database).
    The constructor starts it; :meth:`wait_ready` waits for its SUBSCRIBE in the broker's log."""

    def __init__(self, broker: Mosquitto, db: str | Path, http_port: int, client_id: str, log: Path,
                 child: dict[str, Any] | None = None, share: str | None = None, wait: bool = True) -> None:
        self.db, self.client_id, self.http_port, self.broker = str(db), client_id, http_port, broker
        self.rec, self.log_path = log.with_name(f"{client_id}.rusage.json"), log
        log.parent.mkdir(parents=True, exist_ok=True)
        if child is None:
            cmd = [str(FTEDGE), "fleet", "serve", "--broker", f"mqtt://127.0.0.1:{broker.port}",
                   "--http", f"127.0.0.1:{http_port}", "--db", self.db, "--client-id", client_id]
            if share:
                cmd += ["--share-group", share]
        else:
            if share:
                raise ValueError("the bench's own collector child does not join share groups")
            self.http_port = 0
            cmd = [str(HOST_PY), "-m", "bench.fleet_ingest", "--child-collector", json.dumps(
                {**child, "port": broker.port, "db": self.db, "client_id": client_id})]
        self.sub_line = f" {client_id} 1 {'$share/' + share + '/' if share else ''}ftedge/v1/+/+/#"
        self._log = open(log, "ab")
        self.launcher = subprocess.Popen([str(HOST_PY), "-I", "-S", "-c", LAUNCHER, str(self.rec), *cmd],
                                         stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.time() + 20
        self.pid = 0
        while time.time() < deadline and not self.pid:
            kids = children(self.launcher.pid)
            self.pid = kids[0] if kids else 0
            time.sleep(0.01)
        if not self.pid:
            raise RuntimeError("the collector process did not start")
        self.t_spawn = time.time()
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = self.t_spawn + timeout
        while time.time() < deadline:   # subscribed: the broker logged its SUBSCRIBE
            if any(ln.endswith(self.sub_line) for ln in self.broker.log().splitlines()):
                break
            if self.launcher.poll() is not None:
                raise RuntimeError(f"the collector exited:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        else:
            raise RuntimeError(f"the collector did not subscribe within {timeout:g} s:\n"
                               f"{self.log_path.read_text()[-3000:]}")
        self.t_ready = time.time()

    def stop(self) -> dict[str, Any]:
        if self.launcher.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.launcher.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.launcher.wait()
        self._log.close()
        return json.loads(self.rec.read_text()) if self.rec.exists() else {}

    def log_problems(self) -> list[str]:
        """Warnings/errors of the collector's log (deadlock retries, store outages, batches stored one by one)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        keys = ("WARNING", "ERROR", "Traceback", "deadlock", "retr", "serializ")
        return [ln for ln in text.splitlines() if any(k in ln for k in keys)]


def child_collector(cfg: dict[str, Any]) -> int:
    """``--child-collector``: a collector in this process until SIGTERM, profiled per thread or of an older revision."""
    import threading

    if cfg.get("src"):   # load ftedge.fleet.{ingest,store} from an exported older revision
        use_revision(cfg["src"])
    if cfg.get("profile"):
        import cProfile

        out = Path(cfg["profile"])
        out.mkdir(parents=True, exist_ok=True)
        orig_run = threading.Thread.run

        def run(self: threading.Thread) -> None:
            pr = cProfile.Profile()
            pr.enable()
            try:
                orig_run(self)
            finally:
                pr.disable()
                pr.dump_stats(str(out / f"{self.name.replace('/', '_')}.prof"))

        threading.Thread.run = run  # type: ignore[method-assign]
    from ftedge.fleet.ingest import Collector
    from ftedge.fleet.store import FleetStore

    store = FleetStore(cfg["db"])
    coll = Collector(store, host="127.0.0.1", port=cfg["port"], client_id=cfg["client_id"]).start()
    print(f"collector from {Path(sys.modules[Collector.__module__].__file__).parent}", file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    coll.stop()
    store.close()
    return 0
