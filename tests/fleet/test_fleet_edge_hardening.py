"""Issue 33 (hardening II), the collector's edges: a guessable share group, slow HTTP clients, malformed query
strings and passwords in database URLs."""

from __future__ import annotations

import logging
import os
import re
import select
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from ftedge.fleet import share_group
from ftedge.fleet.http import FleetHTTPServer

from ftedge.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]


# -- 9: the share group is a secret ---------------------------------------------------------------------------

def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`ftedge fleet serve` against a closed broker port: it exits at once when it refuses its arguments (before
    the fix it started and retried the broker forever: the timeout fails the test)."""
    cmd = [sys.executable, "-m", "ftedge", "fleet", "serve", "--broker", "mqtt://127.0.0.1:1",
           "--http", "127.0.0.1:0", "--db", str(tmp_path / "fleet.sqlite"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)


@pytest.mark.parametrize("name", ["ftedge-compose", "ftedge-CHANGE-ME-4f9c2e", "ftedge-change-me-5d1b7c90a2e4f1",
                                  "fleet", "bench", "a1b2c3d4e5f6", "aaaaaaaaaaaaaaaaaaaaaaaa",
                                  "abababababababababababab"])
def test_serve_refuses_example_and_guessable_share_groups(tmp_path, name):
    r = _serve(tmp_path, "--share-group", name)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "ftedge fleet share-group" in r.stderr and "collecting from" not in r.stderr


def test_every_share_group_the_docs_and_deploy_files_show_is_refused():
    """A name printed in the repository is public: the collector must refuse each one shipped."""
    shown: set[str] = set()
    files = [*(ROOT / "deploy").rglob("*"), *(ROOT / "docs").glob("*.md"), ROOT / "README.md",
             ROOT / "fleet" / "cli.py"]
    for path in (p for p in files if p.is_file()):
        text = path.read_text(errors="replace")
        shown.update(re.findall(r"FTEDGE_SHARE_GROUP[=:]\s*\$?\{?[A-Z_]*:?-?([A-Za-z0-9._-]+)", text))
        shown.update(re.findall(r"--share-group[ =]([A-Za-z0-9._-]+)", text))
    shown -= {"GROUP", "NAME"}   # placeholders in prose, not names
    assert "ftedge-CHANGE-ME-4f9c2e" in shown   # the env example keeps a placeholder that must be replaced
    for name in shown:
        with pytest.raises(UsageError):
            share_group.check(name)


def test_generated_share_groups_are_accepted_and_differ(tmp_path):
    names = {subprocess.run([sys.executable, "-m", "ftedge", "fleet", "share-group"], capture_output=True,
                            text=True, check=True).stdout.strip() for _ in range(2)}
    assert len(names) == 2
    for name in names:
        assert share_group.check(name) == name


def test_compose_secrets_script_makes_a_share_group_and_keeps_existing_secrets(tmp_path):
    script = ROOT / "deploy" / "compose" / "make-secrets.sh"
    out = tmp_path / "secrets"
    subprocess.run(["sh", str(script), str(out)], check=True, capture_output=True)
    files = {p.name: p.read_text().strip() for p in out.iterdir()}
    assert set(files) == {"pg_password", "mqtt_password", "fleet_token", "share_group"}
    assert share_group.check(files["share_group"]) == files["share_group"]
    assert all(len(v) >= 32 for v in files.values())
    assert all(out.joinpath(n).stat().st_mode & 0o444 == 0o444 for n in files)   # the collectors' non-root user
    subprocess.run(["sh", str(script), str(out)], check=True, capture_output=True)
    assert {p.name: p.read_text().strip() for p in out.iterdir()} == files
    compose = (ROOT / "deploy" / "compose" / "compose.yaml").read_text()
    assert "FTEDGE_SHARE_GROUP" not in compose and '--share-group "$$(cat /run/secrets/share_group)"' in compose


# -- 11: slow HTTP clients --------------------------------------------------------------------------------------

@pytest.fixture()
def empty_store(tmp_path):
    from ftedge.fleet.store import FleetStore

    s = FleetStore(tmp_path / "fleet.sqlite")
    yield s
    s.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_http_drops_a_client_that_trickles_its_request_at_the_deadline(empty_store):
    """One header line every 0.2 s never trips a 1 s per-read timeout: the whole request has a deadline."""
    srv = FleetHTTPServer(empty_store, "127.0.0.1", 0, timeout_s=1.0).start()
    try:
        with socket.create_connection(srv.httpd.server_address[:2], timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            closed = False
            for i in range(75):   # 15 s of trickling at most; the deadline is 1 s
                readable, _, _ = select.select([s], [], [], 0.2)
                if readable:
                    try:
                        closed = s.recv(65536) == b""
                    except ConnectionResetError:
                        closed = True
                    if closed:
                        break
                try:
                    s.sendall(b"X-Slow-%d: 1\r\n" % i)
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
            assert closed, "the server kept a trickling client's connection for 15 s"
            assert i < 40, f"closed only after {i} header lines"
        assert _get(srv.url + "/api/devices")[0] == 200   # and it goes on serving
    finally:
        srv.stop()


def test_http_serves_a_bounded_number_of_connections_and_refuses_the_rest(empty_store):
    cap, extra = 4, 26
    srv = FleetHTTPServer(empty_store, "127.0.0.1", 0, timeout_s=60.0, max_connections=cap).start()
    holders: list[socket.socket] = []
    try:
        before = _open_fds()
        for _ in range(cap):   # slow clients: half a request each, then nothing
            s = socket.create_connection(srv.httpd.server_address[:2], timeout=10)
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            holders.append(s)
        refused = []
        for _ in range(extra):
            with socket.create_connection(srv.httpd.server_address[:2], timeout=10) as s:
                s.sendall(b"GET /api/devices HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                try:
                    reply = s.recv(65536)   # socket.timeout here: the server served it (or kept it waiting)
                except ConnectionResetError:
                    reply = b""
                refused.append(reply.split(b"\r\n", 1)[0])
        assert all(r in (b"HTTP/1.1 503 Service Unavailable", b"") for r in refused), refused
        assert refused.count(b"HTTP/1.1 503 Service Unavailable") >= extra // 2
        assert srv.httpd.refused == extra
        # The server holds one descriptor per served connection, never one per client.
        assert _open_fds() - before <= 2 * cap + 2
        for s in holders:
            s.close()
        holders.clear()
        deadline = time.monotonic() + 20   # the freed slots are taken again by the next clients
        while _get_status(srv.url + "/api/devices") != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _get_status(srv.url + "/api/devices") == 200
    finally:
        for s in holders:
            s.close()
        srv.stop()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _get_status(url: str) -> int:
    try:
        return _get(url)[0]
    except OSError:
        return 0


# -- 12: malformed query strings are 400s (or the documented fallback), never 500s ---------------------------



def _raw_get(server: FleetHTTPServer, target: bytes) -> tuple[int, str]:
    """A GET of ``target`` as given (http.client refuses control characters in a URL)."""
    with socket.create_connection(server.httpd.server_address[:2], timeout=10) as s:
        s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def test_a_non_ascii_digit_page_is_page_one_and_a_limit_of_one_is_a_400(empty_store, caplog):
    """``"²".isdigit()`` is true and ``int("²")`` raises: that was a 500 and a traceback for anyone."""
    srv = FleetHTTPServer(empty_store, "127.0.0.1", 0).start()
    try:
        for path in ("/?page=%C2%B2", "/fragment?page=%C2%B2", "/?page=%D9%A3"):   # ², Arabic-Indic three
            assert _get(srv.url + path)[0] == 200, path     # like ?page=abc: the documented fallback, page 1
        code, body = _get(srv.url + "/api/devices?limit=%C2%B2")
        assert code == 400 and "give a number of devices" in body, (code, body)
    finally:
        srv.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_nul_in_the_url_is_a_400_on_postgresql(pg_server, caplog):
    from ftedge.fleet.store import FleetStore

    name = f"t_{uuid.uuid4().hex[:10]}"
    pg_server.sql(f"CREATE DATABASE {name}")
    store = FleetStore(pg_server.url.rsplit("/", 1)[0] + "/" + name)
    srv = FleetHTTPServer(store, "127.0.0.1", 0, token="t").start()
    try:
        for target in (b"/api/devices?fleet=%00", b"/api/devices?fleet=demo&after=a%00/b", b"/?device=%00",
                       b"/fragment?device=d%00", b"/api/devices/dev-1/jobs/j?fleet=%00",
                       b"/api/devices/dev\x001/jobs/j"):
            code, body = _raw_get(srv, target)
            assert code == 400 and "NUL" in body, (target, code, body)
        req = urllib.request.Request(srv.url + "/api/devices/dev-1/commands/ping?fleet=%00", data=b"{}",
                                     headers={"Authorization": "Bearer t"}, method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == 400
        assert _get(srv.url + "/api/devices?fleet=demo")[0] == 200   # the store is fine and still serving
    finally:
        srv.stop()
        store.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- 13: libpq's ?password= never reaches a log line ------------------------------------------------------------

SECRET = "s3cr3t-Pg-pw"


def test_a_password_in_the_database_url_query_is_redacted_in_every_line(tmp_path, broker, pg_server):
    """The start-up line (and the broker URL's password in it), and the line of a database that cannot be reached (the one every outage warning uses),
    of a real `ftedge fleet serve` whose --db carries libpq's ``?password=`` (the fixture trusts loopback, so
    the URL connects)."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    pg_server.sql(f"CREATE DATABASE {name}")
    base = pg_server.url.rsplit("/", 1)[0]
    url = f"{base}/{name}?sslmode=disable&password={SECRET}&sslpassword={SECRET}"
    port = _free_port()
    broker_url = broker.url.replace("://", f"://collector:{SECRET}@")   # accepted and ignored, never shown
    proc = subprocess.Popen([sys.executable, "-m", "ftedge", "fleet", "serve", "--broker", broker_url, "--db", url,
                             "--http", f"127.0.0.1:{port}"], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "collecting from" in line and f"/{name}?sslmode=disable&password=***" in line, line
        assert SECRET not in line
    finally:
        proc.terminate()
        proc.wait(20)
        proc.stderr.close()
    closed = f"postgresql://postgres@127.0.0.1:{_free_port()}/{name}?password={SECRET}"
    r = _serve(tmp_path, "--db", closed)
    assert r.returncode == 1 and "cannot connect to the fleet database" in r.stderr, r.stderr
    assert SECRET not in r.stderr and "password=***" in r.stderr


@pytest.mark.parametrize(("url", "shown"), [
    (f"postgresql://u:{SECRET}@db/f?password={SECRET}", "postgresql://u:***@db/f?password=***"),
    (f"postgresql://u@db/f?application_name=x&pass%77ord={SECRET}", "postgresql://u@db/f?application_name=x&pass%77ord=***"),
    (f"host=db password={SECRET} dbname=f", "host=db password=*** dbname=f"),
    (f"host=db password = '{SECRET} x' dbname=f", "host=db password = *** dbname=f"),
    ("postgresql://u@db:5432/f?sslmode=verify-full", "postgresql://u@db:5432/f?sslmode=verify-full"),
])
def test_redact_hides_every_form_of_the_libpq_password(url, shown):
    from ftedge.fleet.postgres_db import redact

    assert redact(url) == shown


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
