"""A real PostgreSQL server for tests and benchmarks: a throwaway cluster (``initdb``) on a free loopback port.

Uses the server binaries of Debian's ``postgresql`` package (``/usr/lib/postgresql/<major>/bin``, installed by
scripts/dev.sh). PostgreSQL refuses to run as root: when started as root the cluster belongs to the
``postgres`` system user (created by the package) and every server command runs through ``runuser``.
The cluster trusts loopback connections (``postgresql://postgres@127.0.0.1:PORT/ftedge``) and is tuned for
tests, not durability (``fsync off``) unless ``durable=True``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest


def postgres_bindir() -> Path | None:
    """The newest installed PostgreSQL server's bin directory, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """``start()`` makes (once) and starts a cluster in ``root``; ``stop()``, ``restart()``, ``kill()``."""

    def __init__(self, root: Path | None = None, port: int | None = None, durable: bool = False, max_connections: int = 100,
                 database: str = "ftedge") -> None:
        self.bindir = postgres_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql "
                               "(scripts/dev.sh setup does)")
        # Under pytest's basetemp the postgres user may lose access (pytest keeps it 0700): default to our own.
        self.owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="ftedge-pg-")) if root is None else Path(root)
        self.data = self.root / "pgdata"
        self.port = port or _free_port()
        self.durable, self.max_connections, self.database = durable, max_connections, database
        self.as_root = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        argv = [str(self.bindir / cmd[0]), *cmd[1:]]
        if self.as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout, cwd="/")

    def _initdb(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
            os.chmod(self.root, 0o755)
            for parent in self.root.parents:   # postgres must be able to reach its data directory
                if parent == Path("/"):
                    break
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o001)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale")
        conf = [f"port = {self.port}", "listen_addresses = '127.0.0.1'", f"unix_socket_directories = '{self.root}'",
                f"max_connections = {self.max_connections}", "shared_buffers = 128MB", "logging_collector = off",
                "log_min_messages = warning"]
        if not self.durable:
            conf += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n".join(conf) + "\n")

    def start(self) -> PostgresServer:
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
            self._pg_ctl_start()
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.database)
        else:
            self._pg_ctl_start()
        return self

    def _pg_ctl_start(self) -> None:
        res = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60",
                        "start", check=False)
        if res.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace")[-2000:] if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {res.stderr.strip()}\n{log}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("PostgreSQL started but does not accept connections")

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop (fast: every connection is cut), stay down ``down_s`` seconds, start again on the same port."""
        self.stop()
        time.sleep(down_s)
        self._pg_ctl_start()

    def kill(self) -> None:
        """Crash the server (SIGKILL the postmaster): connections drop, committed data survives."""
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().split()[0])
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass

    def sql(self, statement: str) -> str:
        """Run one statement with psql; its unaligned output."""
        psql = shutil.which("psql") or str(self.bindir / "psql")
        res = subprocess.run([psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", self.database,
                              "-At", "-c", statement], check=True, capture_output=True, text=True, timeout=60)
        return res.stdout.strip()

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop("immediate")
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_server():
    """A real PostgreSQL server per test module: required under CI (.ci/run installs it), skipped elsewhere."""
    from tests.helpers.services import require

    require("postgres")
    with PostgresServer() as server:
        yield server


@pytest.fixture()
def pg_url(pg_server):
    """A fresh database on the module's server."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    pg_server.sql(f"CREATE DATABASE {name}")
    return pg_server.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgres"], name="db")
def store_db(request, tmp_path) -> str:  # noqa: ANN001
    """``db``: where a fleet store lives, once per backend: a SQLite file, or a fresh database on the module's
    PostgreSQL server (one shared suite for both, as Flower tests its state backends)."""
    if request.param == "sqlite":
        return str(tmp_path / "fleet.sqlite")
    return request.getfixturevalue("pg_url")
