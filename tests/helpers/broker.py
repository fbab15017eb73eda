"""A real Mosquitto broker for tests: started on a free loopback port, with optional passwords, ACL and TLS."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ftedge.fleet.local_broker import LocalBroker

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def make_certs(directory: Path) -> dict[str, Path]:
    """A throwaway CA, a server cert for 127.0.0.1/localhost and a client cert (openssl CLI)."""
    d = directory
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=ftedge-test-ca")
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in (("server", "localhost"), ("client", "dev-001")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        extra = ["-extfile", "san.cnf"] if name == "server" else []
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", *extra)
    return {k: d / f"{k}" for k in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


class Broker(LocalBroker):
    """The product's local broker plus what tests need: persistence across restarts, full logs, passwords, an
    ACL and TLS. Configured at construction, started by ``start()`` (again after ``stop()``, same port)."""

    def __init__(self, root: Path, users: dict[str, str] | None = None, acl: str | None = None,
                 tls: bool = False, require_certificate: bool = False) -> None:
        super().__init__(root)
        self.users, self.acl, self.tls, self.require_certificate = users, acl, tls, require_certificate
        self.certs = make_certs(self.root / "certs") if tls else {}

    def config_lines(self) -> list[str]:
        lines = [f"listener {self.port} 127.0.0.1", "persistence true", f"persistence_location {self.root}/",
                 "autosave_interval 1", f"log_dest file {self.root}/mosquitto.log", "log_type all",
                 "max_queued_messages 100000"]
        if self.users is not None:
            pw = self.root / "passwd"
            pw.write_text("")
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            (self.root / "acl").write_text(self.acl)
            lines.append(f"acl_file {self.root / 'acl'}")
        if self.tls:
            lines += [f"cafile {self.certs['ca.crt']}", f"certfile {self.certs['server.crt']}",
                      f"keyfile {self.certs['server.key']}"]
            if self.require_certificate:
                lines += ["require_certificate true"]
        return lines

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"
