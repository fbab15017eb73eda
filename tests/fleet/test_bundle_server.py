"""Bundles served by the collector: the content-addressed folder, signed per-device URLs, ranges, counters."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import time
import urllib.error
import urllib.request

import pytest
from ftedge.errors import BundleStoreError, KeyFileError
from ftedge.fleet import url_signing
from ftedge.fleet.bundle_store import BundleStore
from ftedge.fleet.bundle_http import parse_range
from ftedge.fleet.http import FleetHTTPServer
from ftedge.fleet.store import FleetStore

KEY = b"k" * 32
SIZE = 300_000      # more than one write chunk of the server


@pytest.fixture()
def archive(tmp_path):
    p = tmp_path / "mlp.tar.gz"
    p.write_bytes(os.urandom(SIZE))
    return p


@pytest.fixture()
def served(tmp_path, archive):
    bundles = BundleStore(tmp_path / "published")
    sha = bundles.publish(archive)
    srv = FleetHTTPServer(FleetStore(tmp_path / "fleet.sqlite"), "127.0.0.1", 0, bundles=bundles,
                          url_key=KEY).start()
    yield srv, sha, archive.read_bytes()
    srv.stop()


def url_for(srv, sha, device="demo/dev-001", rollout="r1", expires=None, key=KEY) -> str:
    return url_signing.bundle_url(srv.url, key, sha, device, rollout, expires or int(time.time()) + 600)


def fetch(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def counted(srv, requests: dict[int, int], sent: int | None = None) -> bool:
    """Whether the server's counters reach these (a handler counts just after its last write, so wait)."""
    end = time.monotonic() + 10
    while time.monotonic() < end:
        if srv.bundle_requests == requests and (sent is None or srv.bundle_bytes == sent):
            return True
        time.sleep(0.02)
    return False


def test_publish_is_content_addressed_atomic_and_idempotent(tmp_path, archive):
    store = BundleStore(tmp_path / "published")
    sha = store.publish(archive)
    assert sha == hashlib.sha256(archive.read_bytes()).hexdigest()
    path = store.path(sha)
    assert path == tmp_path / "published" / f"{sha}.tar.gz" and path.read_bytes() == archive.read_bytes()
    before = path.stat()
    time.sleep(0.01)
    assert store.publish(archive) == sha                       # again: nothing written
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert os.listdir(tmp_path / "published") == [f"{sha}.tar.gz"]   # no temporary file left either
    assert store.published() == [sha]
    for bad in ("../" + sha, sha.upper(), sha[:-1], "", sha + "0"):
        assert store.path(bad) is None
    assert store.path("0" * 64) is None
    with pytest.raises(BundleStoreError, match="not a regular file"):
        store.publish(tmp_path)
    with pytest.raises(BundleStoreError, match="cannot read"):
        store.publish(tmp_path / "missing.tar.gz")


def test_a_signed_url_gets_the_exact_bytes_and_head_the_headers(served):
    srv, sha, data = served
    code, headers, body = fetch(url_for(srv, sha))
    assert (code, body) == (200, data)
    assert headers["Content-Type"] == "application/gzip" and headers["Content-Length"] == str(SIZE)
    assert headers["Accept-Ranges"] == "bytes" and headers["ETag"] == f'"{sha}"'
    assert "private" in headers["Cache-Control"] and "immutable" in headers["Cache-Control"]
    code, headers, body = fetch(url_for(srv, sha), method="HEAD")
    assert (code, body, headers["Content-Length"]) == (200, b"", str(SIZE))
    assert counted(srv, {200: 2}, SIZE), (srv.bundle_requests, srv.bundle_bytes)


def test_a_url_for_another_device_rollout_or_bundle_or_expired_is_refused(served, tmp_path):
    srv, sha, _ = served
    good = url_for(srv, sha)
    base, query = good.split("?")
    other = BundleStore(tmp_path / "published").publish(_other(tmp_path))
    cases = {
        "bad signature": [good.replace("dev=demo%2Fdev-001", "dev=demo%2Fdev-002"),
                          good.replace("ro=r1", "ro=r2"),
                          good.replace(sha, other),                           # a signature for another archive
                          url_for(srv, sha, key=b"x" * 32),
                          good.replace("exp=", "exp=1")],                     # a longer life, forged
        "expired": [url_for(srv, sha, expires=int(time.time()) - 1)],
        "missing parameters": [base, base + "?" + "&".join(p for p in query.split("&") if not p.startswith("sig="))],
    }
    for reason, urls in cases.items():
        for url in urls:
            code, _, body = fetch(url)
            assert code == 403 and reason in body.decode(), (url, code, body)
            assert fetch(url, method="HEAD")[0] == 403
    n = 2 * sum(map(len, cases.values()))
    assert counted(srv, {403: n}, 0) and srv.bundle_refused == n


def _other(tmp_path):
    p = tmp_path / "other.tar.gz"
    p.write_bytes(b"another archive")
    return p


def test_an_unpublished_or_malformed_sha_is_404(served, tmp_path):
    srv, sha, _ = served
    assert fetch(url_for(srv, "0" * 64))[0] == 404                 # validly signed, never published
    assert fetch(url_for(srv, sha).replace(f"{sha}.tar.gz", f"{sha}.zip"))[0] == 404
    assert fetch(url_for(srv, sha.upper()))[0] == 404
    plain = FleetHTTPServer(None, "127.0.0.1", 0).start()          # no bundle folder at all
    try:
        assert fetch(url_for(plain, sha))[0] == 404
    finally:
        plain.stop()


def test_ranges(served):
    srv, sha, data = served
    url = url_for(srv, sha)
    code, headers, body = fetch(url, headers={"Range": "bytes=10-19"})
    assert (code, body, headers["Content-Range"], headers["Content-Length"]) == \
        (206, data[10:20], f"bytes 10-19/{SIZE}", "10")
    code, headers, body = fetch(url, headers={"Range": f"bytes={SIZE - 100}-"})
    assert (code, body, headers["Content-Range"]) == (206, data[-100:], f"bytes {SIZE - 100}-{SIZE - 1}/{SIZE}")
    code, headers, body = fetch(url, headers={"Range": "bytes=-5"})
    assert (code, body, headers["Content-Range"]) == (206, data[-5:], f"bytes {SIZE - 5}-{SIZE - 1}/{SIZE}")
    code, headers, body = fetch(url, headers={"Range": f"bytes={SIZE}-"})
    assert (code, headers.get("Content-Range")) == (416, f"bytes */{SIZE}"), (headers, body)
    code, _, body = fetch(url, headers={"Range": "bytes=0-1,5-6"})                # several: the whole file
    assert (code, body) == (200, data)
    code, _, body = fetch(url, headers={"Range": "bytes=10-", "If-Range": '"another-etag"'})
    assert (code, body) == (200, data)                                             # the client's copy is stale
    code, _, body = fetch(url, headers={"Range": "bytes=10-", "If-Range": f'"{sha}"'})
    assert (code, body) == (206, data[10:])
    assert counted(srv, {206: 4, 416: 1, 200: 2}), srv.bundle_requests


def test_parse_range():
    assert parse_range(None, 10) is None
    assert parse_range("bytes=0-0", 10) == (0, 0)
    assert parse_range("bytes=5-100", 10) == (5, 9)
    assert parse_range("bytes=-100", 10) == (0, 9)
    assert parse_range("bytes=-0", 10) == "unsatisfiable"
    assert parse_range("bytes=0-", 0) == "unsatisfiable"
    for ignored in ("bytes=5-1", "bytes=a-", "bytes=-", "items=0-1", "bytes=1-2,3-4", "bytes=+1-2", "bytes=１-2"):
        assert parse_range(ignored, 10) is None, ignored


def test_a_reader_that_stops_reading_is_cut_at_the_deadline(tmp_path):
    """A client that asks for a bundle and never reads it frees its thread and slot within the write deadline."""
    bundles = BundleStore(tmp_path / "published")
    big = tmp_path / "big.tar.gz"
    big.write_bytes(os.urandom(32 << 20))          # far more than the socket buffers hold
    sha = bundles.publish(big)
    srv = FleetHTTPServer(None, "127.0.0.1", 0, bundles=bundles, url_key=KEY, timeout_s=1,
                          max_connections=2).start()
    try:
        path = url_for(srv, sha)[len(srv.url):]
        with socket.create_connection(srv.httpd.server_address[:2]) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and 200 not in srv.bundle_requests:
                time.sleep(0.1)
            assert srv.bundle_requests == {200: 1} and srv.bundle_bytes < big.stat().st_size
        code, _, body = fetch(url_for(srv, sha))  # the only bundle slot (max_connections // 2) is free again
        assert code == 200 and len(body) == big.stat().st_size
    finally:
        srv.stop()


def test_metrics_show_bundle_requests_and_bytes(served):
    srv, sha, _ = served
    fetch(url_for(srv, sha))
    fetch(url_for(srv, sha, expires=1))
    assert counted(srv, {200: 1, 403: 1}, SIZE)
    text = fetch(srv.url + "/metrics")[2].decode()
    assert 'ftedge_bundle_requests_total{code="200"} 1.0' in text
    assert 'ftedge_bundle_requests_total{code="403"} 1.0' in text
    assert f"ftedge_bundle_bytes_total {float(SIZE)}" in text


def test_url_key_is_created_0600_once_and_read_back(tmp_path):
    path = tmp_path / "keys" / "bundle-url.key"
    key = url_signing.load_or_create_key(path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert url_signing.load_or_create_key(path) == key and os.listdir(path.parent) == [path.name]
    path.write_bytes(b"short")
    with pytest.raises(KeyFileError, match="remove it"):
        url_signing.load_or_create_key(path)
