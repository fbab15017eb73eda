"""A throw-away Mosquitto on a free loopback port, for ``ftedge demo`` (a real broker, not a stand-in)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from ftedge.errors import FtedgeError

INSTALL_HINT = ("Mosquitto is not installed: run `sudo apt-get install mosquitto` (Debian/Ubuntu) or "
                "`scripts/dev.sh setup`, or point the demo at a broker you run")


def find_mosquitto() -> str:
    """Path of the ``mosquitto`` binary (PATH, then /usr/sbin where Debian puts it)."""
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)
    if found is None:
        raise FtedgeError(INSTALL_HINT)
    return found


def die_with_parent() -> None:
    """``preexec_fn`` for helper processes: Linux sends them SIGTERM if the demo itself dies (even SIGKILL)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass   # not Linux/glibc: the demo's own cleanup still stops them


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalBroker:
    """``mosquitto -c CONF`` listening on 127.0.0.1 only, state under ``root``; a context manager.

    The demo's broker is anonymous and in-memory; subclasses (the tests' broker with passwords, ACL and TLS,
    the ingest benchmark's) override :meth:`config_lines` and keep this start/stop lifecycle.
    """

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.root / "mosquitto.conf"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def config_lines(self) -> list[str]:
        """The configuration, without the ``user root`` line :meth:`start` adds when running as root."""
        return [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false",
                f"log_dest file {self.root / 'mosquitto.log'}", "max_queued_messages 100000"]

    def log(self) -> str:
        p = self.root / "mosquitto.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def start(self, timeout: float = 10.0) -> LocalBroker:
        binary = find_mosquitto()
        lines = self.config_lines()
        if os.geteuid() == 0:
            lines.append("user root")   # mosquitto otherwise drops to `mosquitto`, which cannot write root's dirs
        self.conf.write_text("\n".join(lines) + "\n")
        # its own process group: a Ctrl-C in the terminal reaches the demo, which then stops the broker last
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")[-1000:] if self.proc.stderr else ""
                raise FtedgeError(f"mosquitto exited at start (port {self.port}): {err.strip() or 'no output'}; "
                                  f"see {self.root / 'mosquitto.log'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise FtedgeError(f"mosquitto did not listen on 127.0.0.1:{self.port} within {timeout:g} s")

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence file), SIGKILL after 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
