"""Devices download bundles the collector serves: a cut download resumes with Range, and an archive tampered
with on the collector's disk is refused by every box (the device checks the sha256 whatever the server sends)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ftedge.bundle.pack import pack_bundle
from ftedge.device_agent.install import deploy_bundle
from ftedge.errors import FetchError
from ftedge.fleet import url_signing
from ftedge.fleet.bundle_store import BundleStore
from ftedge.fleet.http import FleetHTTPServer
from tests.helpers.agent_harness import FLEET, Collector, agent_config


@pytest.fixture(scope="module")
def archive(bundles, tmp_path_factory) -> tuple[Path, str]:
    """The test mlp bundle packed as `ftedge pack` does: (archive, sha256)."""
    out = tmp_path_factory.mktemp("packed") / "mlp.tar.gz"
    return out, pack_bundle(bundles / "mlp", out)


# -- resume: a server that cuts the first download mid-way ---------------------------------------------------


class _Cutting(BaseHTTPRequestHandler):
    """Serves ``data``; the first GET stops after half of what it was asked (``cut``: "close" ends the connection, "reset"
    aborts it with RST); later GETs honour ``Range: bytes=N-`` unless ``ranges`` is False."""

    data = b""
    cut = "close"
    ranges = True
    seen: list[dict] = []

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.seen.append({"range": self.headers.get("Range"), "if_range": self.headers.get("If-Range")})
        data, first = self.data, len(self.seen) == 1
        start = 0
        rng = self.headers.get("Range")
        if self.ranges and rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[len("bytes="):-1])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("ETag", '"v1"')
        self.end_headers()
        if first:
            self.wfile.write(data[start: start + (len(data) - start) // 2])
            self.wfile.flush()
            if self.cut == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        self.wfile.write(data[start:])


@pytest.fixture()
def cutting(archive):
    made = []

    def start(cut: str = "close", ranges: bool = True) -> tuple[str, list[dict]]:
        handler = type("H", (_Cutting,), {"data": archive[0].read_bytes(), "cut": cut, "ranges": ranges,
                                          "seen": []})
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        made.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/mlp.tar.gz?token=s3cret", handler.seen
    yield start
    for srv in made:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("cut", ["close", "reset"])
def test_a_download_cut_mid_way_resumes_with_a_range(archive, cutting, tmp_path, cut, caplog):
    path, sha = archive
    url, seen = cutting(cut)
    with caplog.at_level("INFO", logger="ftedge.device_agent.install"):
        installed = deploy_bundle(url, sha, tmp_path / "b", name="mlp", deadline_s=30)
    assert (installed / "manifest.json").is_file()
    half = path.stat().st_size // 2
    assert seen == [{"range": None, "if_range": None}, {"range": f"bytes={half}-", "if_range": '"v1"'}]
    assert "resuming" in caplog.text and "s3cret" not in caplog.text


def test_a_resume_answered_with_the_whole_file_starts_over(archive, cutting, tmp_path):
    path, sha = archive
    url, seen = cutting(ranges=False)
    installed = deploy_bundle(url, sha, tmp_path / "b", name="mlp", deadline_s=30)
    assert (installed / "manifest.json").is_file()
    assert [s["range"] for s in seen] == [None, f"bytes={path.stat().st_size // 2}-"]


def test_a_server_that_always_cuts_ends_in_a_fetch_error(archive, tmp_path):
    path, sha = archive
    handler = type("H", (_Cutting,), {"data": path.read_bytes(), "seen": []})
    handler.do_GET = lambda self: (self.seen.clear(), _Cutting.do_GET(self))   # every request is a "first"
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(FetchError, match="5 resumes"):
            deploy_bundle(f"http://127.0.0.1:{srv.server_address[1]}/x.tar.gz", sha, tmp_path / "b", deadline_s=60)
    finally:
        srv.shutdown()
        srv.server_close()
    assert [p.name for p in (tmp_path / "b").iterdir() if not p.name.startswith(".ftedge-bundles")] == []


def test_a_server_that_is_down_when_the_download_starts_is_asked_again_until_it_is_back(archive, tmp_path, caplog):
    """The collector serving the bundle restarts while a rollout's deploy is on its way: the box tries again with
    a growing pause (install.MAX_CONNECT_RETRIES) within the deploy's deadline instead of failing the deploy."""
    from ftedge.fleet.local_broker import free_port

    path, sha = archive
    port = free_port()
    handler = type("H", (_Cutting,), {"data": path.read_bytes(), "seen": [{}]})   # not a "first": serves whole
    made: list[ThreadingHTTPServer] = []

    def come_back() -> None:
        time.sleep(2.0)                    # connections are refused meanwhile
        srv = ThreadingHTTPServer(("127.0.0.1", port), handler)
        srv.daemon_threads = True
        made.append(srv)
        srv.serve_forever()

    threading.Thread(target=come_back, daemon=True).start()
    try:
        with caplog.at_level("INFO", logger="ftedge.device_agent.install"):
            installed = deploy_bundle(f"http://127.0.0.1:{port}/x.tar.gz", sha, tmp_path / "b", name="mlp",
                                      deadline_s=60)
    finally:
        for srv in made:
            srv.shutdown()
            srv.server_close()
    assert (installed / "manifest.json").is_file()
    assert "trying again" in caplog.text


def test_a_server_that_stays_down_fails_the_deploy_within_its_deadline(archive, tmp_path):
    from ftedge.fleet.local_broker import free_port

    path, sha = archive
    t0 = time.monotonic()
    with pytest.raises(FetchError, match="check the URL and the network"):
        deploy_bundle(f"http://127.0.0.1:{free_port()}/x.tar.gz", sha, tmp_path / "b", deadline_s=4)
    assert time.monotonic() - t0 < 10


class _BusyFirst(BaseHTTPRequestHandler):
    """Answers the first ``busy`` GETs 503 with ``Retry-After: 1`` (a collector at its cap), then ``data``."""

    data = b""
    busy = 2
    seen: list[int] = []

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.seen.append(1)
        if len(self.seen) <= self.busy:
            self.send_response(503)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.data)))
        self.end_headers()
        self.wfile.write(self.data)


def test_a_busy_server_is_asked_again_after_its_retry_after(archive, tmp_path):
    path, sha = archive
    handler = type("H", (_BusyFirst,), {"data": path.read_bytes(), "seen": []})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/x.tar.gz"
    try:
        assert (deploy_bundle(url, sha, tmp_path / "b", name="mlp", deadline_s=30) / "manifest.json").is_file()
        assert len(handler.seen) == 3
        handler.seen.clear()
        with pytest.raises(FetchError, match="HTTP 503"):   # no time left to wait: the 503 is the answer
            deploy_bundle(url, sha, tmp_path / "c", name="mlp", deadline_s=1)
    finally:
        srv.shutdown()
        srv.server_close()


# -- the real agent, downloading from the collector ----------------------------------------------------------


def _send(col: Collector, device: str, args: dict) -> str:
    """Publish a deploy to ``device`` of the test fleet; return its cmd_id."""
    cmd_id = uuid.uuid4().hex[:12]
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = f"ftedge/v1/{FLEET}/{device}/cmdres/test-host"
    props.CorrelationData = cmd_id.encode()
    col.client.publish(f"ftedge/v1/{FLEET}/{device}/cmd/deploy", json.dumps({"cmd_id": cmd_id, "args": args}),
                       qos=1, properties=props)
    return cmd_id


def _final(col: Collector, cmd_id: str, timeout: float = 60) -> dict:
    final = lambda: [r for r in col.replies.get(cmd_id, []) if r["status"] != "accepted"]  # noqa: E731
    assert col.wait(final, timeout), f"no final reply to deploy {cmd_id}: {col.replies.get(cmd_id)}"
    return final()[0]


def test_agents_deploy_from_the_collector_and_refuse_a_tampered_archive(broker, device, agents, archive,
                                                                         tmp_path):
    path, sha = archive
    store = BundleStore(tmp_path / "collector" / "bundles")
    assert store.publish(path) == sha
    key = url_signing.load_or_create_key(tmp_path / "collector" / "bundle-url.key")
    http = FleetHTTPServer(None, "127.0.0.1", 0, bundles=store, url_key=key).start()
    col = Collector(broker)
    try:
        agents(device(broker))                                   # dev-001
        second = tmp_path / "dev-002"
        for d in ("state", "data", "bundles"):
            (second / d).mkdir(parents=True)
        cfg = agent_config(second / "state", broker, second / "data", second / "bundles")
        cfg.write_text(cfg.read_text().replace('device_id = "dev-001"', 'device_id = "dev-002"'))
        agents(cfg)
        assert col.wait(lambda: len({t.split("/")[3] for t, b, _ in col.messages
                                     if t.endswith("/status") and b.get("reason") == "birth"}) == 2, 30)
        expires = int(time.time()) + 600

        def url(device: str) -> str:
            return url_signing.bundle_url(http.url, key, sha, f"{FLEET}/{device}", "ro-1", expires)

        done = _final(col, _send(col, "dev-001", {"url": url("dev-001"), "sha256": sha, "name": "served"}))
        assert (done["status"], done.get("bundle")) == ("done", "served"), done
        assert (tmp_path / "bundles" / "served" / "manifest.json").is_file()
        assert http.bundle_requests == {200: 1} and http.bundle_bytes == path.stat().st_size

        published = store.path(sha)
        data = bytearray(published.read_bytes())
        data[len(data) // 2: len(data) // 2 + 16] = bytes(b ^ 0xFF for b in data[len(data) // 2: len(data) // 2 + 16])
        published.write_bytes(bytes(data))                       # same size, same name: tampered on disk
        for device_id, root, name in (("dev-002", second / "bundles", "served"),
                                      ("dev-001", tmp_path / "bundles", "served-again")):
            final = _final(col, _send(col, device_id, {"url": url(device_id), "sha256": sha, "name": name}))
            assert (final["status"], final["code"], final.get("reason")) == ("error", "deploy_failed", "sha256"), \
                final
            assert not (root / name).exists()
            assert not [p for p in root.iterdir() if p.name.startswith(".ftedge-deploy-")]
        assert http.bundle_requests == {200: 3}
    finally:
        col.close()
        http.stop()
