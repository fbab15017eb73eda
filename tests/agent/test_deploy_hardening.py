"""Issue 12, deploy path and bundle trust: bombs, file:// URLs, deadlines, signatures, downgrades, replies.

Unit tests drive :func:`deploy_bundle` and :func:`load_bundle` on real files; the agent tests run the real
agent process against a real Mosquitto broker and serve archives from an HTTP server on loopback.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import socket
import tarfile
import threading
import time
import tracemalloc
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ftedge.bundle.hashing import sha256_file
from ftedge.bundle.pack import pack_bundle
from ftedge.bundle.signing import generate_keypair, sign_manifest
from ftedge.device_agent.install import (
    BundleRejectedError,
    DeployError,
    DeployRequestError,
    FetchError,
    HashMismatchError,
    UnsafeArchiveError,
    deploy_bundle,
)
from ftedge.runtime import load_bundle

from ftedge.errors import BundleError
from tests.helpers.agent_harness import DEV, FLEET, AgentProc, Collector
from tests.helpers.broker import Broker
from tests.helpers.common import ZOO, export

MiB = 1 << 20


# -- material: keys, a signed bundle, variants, bombs ---------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    private, public = generate_keypair(d / "fleet")
    return {"private": private, "public": public}


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys) -> Path:
    out = tmp_path_factory.mktemp("signed") / "mlp"
    export(f"{ZOO}:mlp", out, "--input", "x:float32:1,20", "--sign-key", str(keys["private"]), "--name", "mlp")
    return out


def _variant(src: Path, dst: Path, change, key: Path | None) -> Path:  # noqa: ANN001
    """A copy of bundle ``src`` with its manifest changed (and re-signed with ``key``, or unsigned)."""
    shutil.copytree(src, dst)
    m = change(json.loads((dst / "manifest.json").read_text()))
    m.pop("signature", None)
    if key is not None:
        m = sign_manifest(m, key)
    (dst / "manifest.json").write_text(json.dumps(m, indent=2))
    return dst


def _created(when: str):  # noqa: ANN202
    return lambda m: {**m, "created_at": when}


def _gz_stream(path: Path, pieces) -> str:  # noqa: ANN001
    """Write the gzip of the concatenated byte ``pieces`` (an iterable) to ``path``; return its sha256."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as f:
        for piece in pieces:
            f.write(z.compress(piece))
        f.write(z.flush())
    return sha256_file(path)


def _header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(tarfile.USTAR_FORMAT)


def _bomb(path: Path, size: int, kind: bytes = tarfile.XHDTYPE) -> str:
    """A .tar.gz whose first header is a PAX (or GNU long-name) header of ``size`` bytes of 'a'."""
    def pieces():  # noqa: ANN202
        yield _header("././@PaxHeader" if kind == tarfile.XHDTYPE else "././@LongLink", kind, size)
        prefix = f"{size} path=".encode() if kind == tarfile.XHDTYPE else b""
        yield prefix
        left = size - len(prefix) - 1
        while left > 0:
            n = min(left, 4 * MiB)
            yield b"a" * n
            left -= n
        yield b"\n" + b"\0" * (-size % 512)
        body = b"{}"
        yield _header("mlp/manifest.json", tarfile.REGTYPE, len(body)) + body + b"\0" * (512 - len(body))
        yield b"\0" * 1024
    return _gz_stream(path, pieces())


def _tar_gz(path: Path, members: list[tuple[str, bytes]]) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return _gz_stream(path, [buf.getvalue()])


def _members(bundle: Path, top: str = "mlp") -> list[tuple[str, bytes]]:
    files = sorted(p for p in bundle.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name != "manifest.json")
    return [(f"{top}/{p.relative_to(bundle).as_posix()}", p.read_bytes()) for p in files]


def _entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) if root.exists() else []


# -- finding 1: the memory bomb, unit level -------------------------------------------------------------------


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME], ids=["pax", "gnu-longname"])
def test_huge_tar_header_is_refused_unread(tmp_path, kind):
    sha = _bomb(tmp_path / "bomb.tar.gz", 64 * MiB, kind)
    assert (tmp_path / "bomb.tar.gz").stat().st_size < MiB  # small on the wire, huge once decompressed
    root = tmp_path / "bundles"
    tracemalloc.start()
    try:
        with pytest.raises(UnsafeArchiveError, match="header of 67108864 bytes"):
            deploy_bundle((tmp_path / "bomb.tar.gz").as_uri(), sha, root)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB, f"unpacking a refused archive allocated {peak / MiB:.0f} MiB"
    assert _entries(root) == []


def test_manifest_is_checked_before_any_other_member(signed, keys, tmp_path):
    bad = _variant(signed, tmp_path / "src" / "mlp", lambda m: {**m, "labels": ["x"]}, None)
    m = json.loads((signed / "manifest.json").read_text())
    m["labels"] = ["tampered"]  # the old signature no longer matches
    (bad / "manifest.json").write_text(json.dumps(m))
    members = _members(bad)
    members.insert(1, ("mlp/../../outside", b"x"))  # would be refused as escaping, had it been read first
    sha = _tar_gz(tmp_path / "t.tar.gz", members)
    with pytest.raises(BundleRejectedError, match="signature does not match"):
        deploy_bundle((tmp_path / "t.tar.gz").as_uri(), sha, tmp_path / "b", trusted_keys=[keys["public"]])
    assert _entries(tmp_path / "b") == []


def test_manifest_must_be_the_first_file_and_members_must_match_it(signed, tmp_path):
    members = _members(signed)
    sha = _tar_gz(tmp_path / "late.tar.gz", members[1:] + members[:1])
    with pytest.raises(UnsafeArchiveError, match="first file is .*not manifest.json"):
        deploy_bundle((tmp_path / "late.tar.gz").as_uri(), sha, tmp_path / "b")
    name, data = members[1]
    swapped = [members[0], (name, bytes([data[0] ^ 1]) + data[1:]), *members[2:]]
    sha = _tar_gz(tmp_path / "swapped.tar.gz", swapped)
    with pytest.raises(BundleRejectedError, match="does not match the sha256 its manifest lists"):
        deploy_bundle((tmp_path / "swapped.tar.gz").as_uri(), sha, tmp_path / "b")
    assert _entries(tmp_path / "b") == []


# -- finding 2: file:// URLs, hashes in errors, deadlines, size caps ------------------------------------------------


def test_file_urls_only_regular_files_under_the_root(signed, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    archive = allowed / "mlp.tar.gz"
    sha = pack_bundle(signed, archive)
    outside = tmp_path / "outside.tar.gz"
    shutil.copy(archive, outside)
    root = tmp_path / "bundles"
    with pytest.raises(DeployRequestError, match="file:// URLs need"):
        deploy_bundle(archive.as_uri(), sha, root, allow_file=False)
    with pytest.raises(DeployRequestError, match="is not under the deploy file_root"):
        deploy_bundle(outside.as_uri(), sha, root, file_root=allowed)
    (allowed / "link.tar.gz").symlink_to(outside)
    with pytest.raises(DeployRequestError, match="is not under the deploy file_root"):
        deploy_bundle((allowed / "link.tar.gz").as_uri(), sha, root, file_root=allowed)
    with pytest.raises(FetchError, match="not a regular file"):
        deploy_bundle("file:///dev/zero", sha, root, file_root=Path("/dev"))
    assert _entries(root) == []
    assert deploy_bundle(archive.as_uri(), sha, root, file_root=allowed) == root / "mlp"


def test_a_wrong_sha256_error_never_shows_the_computed_hash(tmp_path):
    secret = tmp_path / "password.txt"
    secret.write_text("hunter2\n")
    with pytest.raises(HashMismatchError) as exc:
        deploy_bundle(secret.as_uri(), "0" * 64, tmp_path / "b")
    assert hashlib.sha256(b"hunter2\n").hexdigest() not in str(exc.value)
    assert "does not have the expected sha256" in str(exc.value)


class _Serve(BaseHTTPRequestHandler):
    """``/trickle``: one byte every 50 ms of a 'large' archive; ``/f/NAME``: a file from ``directory``."""

    directory = Path(".")

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/trickle"):
            self.send_response(200)
            self.send_header("Content-Length", str(10 * MiB))
            self.end_headers()
            try:
                for _ in range(6000):
                    self.wfile.write(b"\x1f")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
            return
        path = self.directory / self.path.split("?")[0].removeprefix("/f/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    served = tmp_path_factory.mktemp("served")
    handler = type("Handler", (_Serve,), {"directory": served})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_deadline_stops_a_trickling_server(tmp_path, http):
    _, base = http
    with pytest.raises(FetchError, match="longer than the 1 s deadline"):
        deploy_bundle(f"{base}/trickle", "0" * 64, tmp_path / "b", deadline_s=1)
    assert _entries(tmp_path / "b") == []


def test_a_deploy_swaps_only_while_no_one_holds_the_bundle_lock(signed, tmp_path):
    from ftedge.device_agent.install import bundle_lock

    root = tmp_path / "bundles"
    deploy_bundle((tmp_path / "a.tar.gz").as_uri(), pack_bundle(signed, tmp_path / "a.tar.gz"), root)
    newer = _variant(signed, tmp_path / "n" / "mlp", _created("2040-01-01T00:00:00+00:00"), None)
    sha = pack_bundle(newer, tmp_path / "n.tar.gz")
    done: list[Path] = []
    with bundle_lock(root, shared=True):  # a job pinning its copy
        t = threading.Thread(target=lambda: done.append(
            deploy_bundle((tmp_path / "n.tar.gz").as_uri(), sha, root, replace=True)))
        t.start()
        t.join(2)
        assert t.is_alive() and not done, "the deploy swapped the bundle while the lock was held"
        assert not load_bundle(root / "mlp").manifest["created_at"].startswith("2040")
    t.join(30)
    assert done and load_bundle(root / "mlp").manifest["created_at"].startswith("2040")


# -- finding 5: signatures required, downgrades --------------------------------------------------------------


def test_empty_trusted_keys_refuse_before_downloading(signed, tmp_path):
    archive = tmp_path / "mlp.tar.gz"
    sha = pack_bundle(signed, archive)
    with pytest.raises(DeployRequestError, match="no trusted keys are configured"):
        deploy_bundle(archive.as_uri(), sha, tmp_path / "b", trusted_keys=[])
    with pytest.raises(BundleError, match="no trusted public keys"):
        load_bundle(signed, trusted_keys=[])


def test_an_older_bundle_does_not_replace_a_newer_one_unless_asked(signed, keys, tmp_path):
    root = tmp_path / "bundles"
    newer = _variant(signed, tmp_path / "n" / "mlp", _created("2030-01-02T00:00:00+00:00"), keys["private"])
    older = _variant(signed, tmp_path / "o" / "mlp", _created("2029-01-01T00:00:00+00:00"), keys["private"])
    sha_new, sha_old = pack_bundle(newer, tmp_path / "new.tar.gz"), pack_bundle(older, tmp_path / "old.tar.gz")
    trusted = [keys["public"]]
    deploy_bundle((tmp_path / "new.tar.gz").as_uri(), sha_new, root, trusted_keys=trusted)
    with pytest.raises(DeployError, match="older than the one at .*allow_downgrade"):
        deploy_bundle((tmp_path / "old.tar.gz").as_uri(), sha_old, root, trusted_keys=trusted, replace=True)
    assert load_bundle(root / "mlp").manifest["created_at"].startswith("2030") and _entries(root) == ["mlp"]
    deploy_bundle((tmp_path / "old.tar.gz").as_uri(), sha_old, root, trusted_keys=trusted, replace=True,
                  allow_downgrade=True)
    assert load_bundle(root / "mlp").manifest["created_at"].startswith("2029")


def test_replaced_folders_are_capped(signed, tmp_path):
    root = tmp_path / "bundles"
    for i in range(4):
        b = _variant(signed, tmp_path / f"v{i}" / "mlp", _created(f"203{i}-01-01T00:00:00+00:00"), None)
        sha = pack_bundle(b, tmp_path / f"v{i}.tar.gz")
        deploy_bundle((tmp_path / f"v{i}.tar.gz").as_uri(), sha, root, replace=True, keep_replaced=2)
    entries = _entries(root)
    assert entries[0] == "mlp" and len(entries) == 3 and all(e.startswith("mlp.replaced-") for e in entries[1:])


def test_the_deploy_report_names_the_kept_folder_and_only_one_that_is_kept(signed, tmp_path):
    root = tmp_path / "bundles"
    shas, reports = [], []
    for i in range(3):
        b = _variant(signed, tmp_path / f"v{i}" / "mlp", _created(f"203{i}-01-01T00:00:00+00:00"), None)
        sha = pack_bundle(b, tmp_path / f"v{i}.tar.gz")
        reports.append({})
        deploy_bundle((tmp_path / f"v{i}.tar.gz").as_uri(), sha, root, replace=True, keep_replaced=1 - i // 2,
                      report=reports[-1])
        shas.append(sha256_file(b / "manifest.json"))
        if i == 1:
            assert reports[1]["replaced"].startswith("mlp.replaced-") and reports[1]["manifest_sha256"] == shas[1]
            assert sha256_file(root / reports[1]["replaced"] / "manifest.json") == shas[0]
    assert reports[0] == {"replaced": None, "manifest_sha256": shas[0]}
    assert reports[2] == {"replaced": None, "manifest_sha256": shas[2]}, "keep_replaced = 0 removed it at once"
    assert _entries(root) == ["mlp"]


# -- finding 6: ONNX external data ----------------------------------------------------------------------------


def _externalize(bundle: Path, location: str, write_to: str | None) -> None:
    """Point the largest initializer of the bundle's first .onnx file at external data ``location``."""
    import onnx

    m = json.loads((bundle / "manifest.json").read_text())
    rel = sorted(r for r in m["files"] if r.endswith(".onnx"))[0]
    model = onnx.load(str(bundle / rel))
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    raw = init.raw_data
    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        e = init.external_data.add()
        e.key, e.value = k, v
    onnx.save(model, str(bundle / rel))
    m["files"][rel] = {"sha256": sha256_file(bundle / rel), "size": (bundle / rel).stat().st_size}
    if write_to is not None:
        target = (bundle / rel).parent / write_to
        target.write_bytes(raw)
        key = target.relative_to(bundle).as_posix()
        m["files"][key] = {"sha256": sha256_file(target), "size": target.stat().st_size}
    m.pop("signature", None)
    (bundle / "manifest.json").write_text(json.dumps(m, indent=2))


@pytest.mark.parametrize("location,match", [
    ("../../etc/passwd", "is absolute or contains '..'"),
    ("/etc/passwd", "is absolute or contains '..'"),
    ("weights.bin", "is not listed in the manifest's files table"),
])
def test_external_data_outside_the_files_table_is_refused(signed, tmp_path, location, match):
    bundle = tmp_path / "mlp"
    shutil.copytree(signed, bundle)
    _externalize(bundle, location, None)
    with pytest.raises(BundleError, match=match):
        load_bundle(bundle)


def test_listed_external_data_still_loads(signed, tmp_path):
    bundle = tmp_path / "mlp"
    shutil.copytree(signed, bundle)
    _externalize(bundle, "weights.bin", "weights.bin")
    assert load_bundle(bundle).name == "mlp"


# -- the real agent over MQTT ---------------------------------------------------------------------------------


class _Agent:
    def __init__(self, root: Path, extra_toml: str) -> None:
        self.broker = Broker(root / "broker").start()
        for d in ("data", "bundles", "state"):
            (root / d).mkdir(parents=True, exist_ok=True)
        cfg = root / "agent.toml"
        cfg.write_text("\n".join([
            f'device_id = "{DEV}"', f'fleet = "{FLEET}"', f'state_dir = "{root / "state"}"', 'log_level = "info"',
            "[mqtt]", f'url = "{self.broker.url}"', "keepalive = 5",
            "[paths]", f'data_root = "{root / "data"}"', f'bundle_root = "{root / "bundles"}"', extra_toml]) + "\n")
        self.bundles = root / "bundles"
        self.col = Collector(self.broker, client_id=f"col-{uuid.uuid4().hex[:6]}")
        self.proc = AgentProc(cfg, root / "agent.log")
        self.col.wait_online()

    def send(self, args: dict, cmd_id: str | None = None) -> tuple[str, int]:
        """Publish a deploy; return its cmd_id and how many replies to it had arrived before."""
        cmd_id = cmd_id or uuid.uuid4().hex[:12]
        before = len(self.col.replies.get(cmd_id, []))
        self.col.send("deploy", args, cmd_id=cmd_id, wait_for=None)
        return cmd_id, before

    def wait(self, cmd_id: str, before: int, timeout: float = 60) -> tuple[dict, dict]:
        """(first reply, final reply) to the deploy sent after ``before`` replies; a rejection is both."""
        got = lambda: self.col.replies.get(cmd_id, [])[before:]  # noqa: E731
        assert self.col.wait(lambda: any(r["status"] != "accepted" for r in got()), timeout), \
            f"no final reply to deploy {cmd_id}: {got()}\n{self.proc.text()[-3000:]}"
        replies = got()
        return replies[0], next(r for r in replies if r["status"] != "accepted")

    def deploy(self, args: dict, cmd_id: str | None = None, timeout: float = 60) -> tuple[dict, dict]:
        return self.wait(*self.send(args, cmd_id), timeout=timeout)

    def vmhwm_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc/PID/status")

    def close(self) -> None:
        self.proc.stop()
        self.col.close()
        self.broker.stop()


@pytest.fixture(scope="module")
def default_agent(tmp_path_factory):
    """An agent with no [deploy] table: the defaults. Its bundle root holds a deploy's leftovers at start."""
    root = tmp_path_factory.mktemp("default-agent")
    (root / "bundles" / ".ftedge-deploy-interrupted" / "mlp").mkdir(parents=True)
    (root / "bundles" / ".ftedge-deploy-partial.tar.gz").write_bytes(b"\x1f\x8b")
    a = _Agent(root, "")
    yield a
    a.close()


@pytest.fixture(scope="module")
def agent(tmp_path_factory, keys, http):
    """An agent that trusts ``keys`` and may deploy file:// URLs from anywhere (to probe what it then refuses)."""
    served, _ = http
    a = _Agent(tmp_path_factory.mktemp("agent"),
               f'[deploy]\ntrusted_keys = ["{keys["public"]}"]\nfile_root = "/"\ndeadline_s = 3\nkeep_replaced = 1\n')
    yield a
    a.close()


@pytest.fixture(scope="module")
def served(http, signed, keys) -> dict[str, tuple[str, str]]:
    """name -> (url, sha256) of archives on the HTTP server."""
    directory, base = http
    out = {}

    def add(name: str, bundle: Path) -> None:
        out[name] = (f"{base}/f/{name}.tar.gz", pack_bundle(bundle, directory / f"{name}.tar.gz"))
    work = directory.parent / "variants"
    add("signed", signed)
    add("unsigned", _variant(signed, work / "u" / "mlp", lambda m: m, None))
    add("newer", _variant(signed, work / "n" / "mlp", _created("2031-01-01T00:00:00+00:00"), keys["private"]))
    add("older", _variant(signed, work / "o" / "mlp", _created("2020-01-01T00:00:00+00:00"), keys["private"]))
    malformed = json.loads((signed / "manifest.json").read_text())
    malformed["files"] = [1, 2]  # schema-valid, signed, but not a files table
    m = sign_manifest({k: v for k, v in malformed.items() if k != "signature"}, keys["private"])
    out["malformed"] = (f"{base}/f/malformed.tar.gz",
                        _tar_gz(directory / "malformed.tar.gz", [("mlp/manifest.json", json.dumps(m).encode())]))
    out["bomb"] = (f"{base}/f/bomb.tar.gz", _bomb(directory / "bomb.tar.gz", 300 * MiB))
    return out


def test_agent_refuses_deploys_by_default_and_checks_argument_types(default_agent, served):
    url, sha = served["signed"]
    first, final = default_agent.deploy({"url": url, "sha256": sha})
    assert (final["status"], final["code"]) == ("rejected", "no_trusted_keys"), final
    assert "trusted_keys" in final["detail"] and "require_signed = false" in final["detail"]
    first, final = default_agent.deploy({"url": "file:///etc/passwd", "sha256": "0" * 64})
    assert (final["status"], final["code"]) == ("rejected", "file_url_refused"), final
    assert "file_root" in final["detail"]
    first, final = default_agent.deploy({"url": url, "sha256": sha, "replace": "false"})
    assert (final["status"], final["code"]) == ("rejected", "bad_args") and "JSON boolean" in final["detail"], final
    assert _entries(default_agent.bundles) == []


def test_agent_removes_leftovers_of_an_interrupted_deploy_at_start(default_agent):
    assert not list(default_agent.bundles.glob(".ftedge-deploy-*"))


def test_agent_deploys_a_signed_bundle_and_redacts_the_url(agent, served):
    url, sha = served["signed"]
    secret_url = url.replace("http://", "http://user:pa55word@") + "?token=s3cret"
    first, final = agent.deploy({"url": secret_url, "sha256": sha})
    assert first["status"] == "accepted" and "s3cret" not in first["detail"] and "pa55word" not in first["detail"]
    assert (final["status"], final["code"], final.get("bundle")) == ("done", "deployed", "mlp"), final
    log = agent.proc.text()
    assert "s3cret" not in log and "pa55word" not in log


def test_agent_refuses_an_unsigned_bundle(agent, served):
    url, sha = served["unsigned"]
    _, final = agent.deploy({"url": url, "sha256": sha, "name": "unsigned"})
    assert final["status"] == "error" and "not signed" in final["detail"], final
    assert not (agent.bundles / "unsigned").exists()


def test_agent_final_reply_wins_over_the_cached_accepted_one(agent):
    with socket.socket() as s:  # a port nobody listens on: the deploy fails at once
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/x.tar.gz"
    finals = {}
    for url in [closed, "ftp://127.0.0.1/x.tar.gz"] * 4:  # fast failures race the `accepted` reply's caching
        cmd_id = uuid.uuid4().hex[:12]
        _, finals[cmd_id] = agent.deploy({"url": url, "sha256": "0" * 64}, cmd_id=cmd_id)
        assert finals[cmd_id]["status"] in ("error", "rejected"), finals[cmd_id]
    for cmd_id, final in finals.items():  # the same cmd_id again: the cached reply is the final one
        again, _ = agent.deploy({"url": closed, "sha256": "0" * 64}, cmd_id=cmd_id)
        assert (again["status"], again["code"]) == (final["status"], final["code"]), again


def test_agent_malformed_manifest_ends_in_an_error_reply(agent, served):
    url, sha = served["malformed"]
    _, final = agent.deploy({"url": url, "sha256": sha, "name": "malformed"})
    assert final["status"] == "error" and "files" in final["detail"], final
    assert not (agent.bundles / "malformed").exists()


def test_agent_file_url_reads_only_regular_files_and_never_echoes_a_hash(agent, tmp_path):
    _, final = agent.deploy({"url": "file:///dev/zero", "sha256": "0" * 64})
    assert final["status"] == "error" and "not a regular file" in final["detail"], final
    secret = tmp_path / "mqtt-password"
    secret.write_text("hunter2\n")
    _, final = agent.deploy({"url": secret.as_uri(), "sha256": "0" * 64})
    assert final["status"] == "error", final
    assert hashlib.sha256(b"hunter2\n").hexdigest() not in json.dumps(final)


def test_agent_runs_one_deploy_at_a_time_within_a_deadline(agent, http):
    _, base = http
    slow = agent.send({"url": f"{base}/trickle", "sha256": "0" * 64})
    assert agent.col.wait(lambda: agent.col.replies.get(slow[0]), 30), "no accepted reply"
    _, busy = agent.deploy({"url": f"{base}/trickle", "sha256": "1" * 64})
    assert (busy["status"], busy["code"]) == ("rejected", "busy"), busy
    _, final = agent.wait(*slow, timeout=30)
    assert final["status"] == "error" and "deadline" in final["detail"], final


def test_agent_refuses_a_downgrade_unless_asked(agent, served):
    for name in ("newer", "older"):
        url, sha = served[name]
        args = {"url": url, "sha256": sha, "name": "roll", "replace": True}
        _, final = agent.deploy(args)
        if name == "newer":
            assert final["status"] == "done", final
    assert final["status"] == "error" and "allow_downgrade" in final["detail"], final
    _, final = agent.deploy({**args, "allow_downgrade": True})
    assert final["status"] == "done", final
    assert load_bundle(agent.bundles / "roll").manifest["created_at"].startswith("2020")
    assert len([p for p in agent.bundles.iterdir() if p.name.startswith("roll.replaced-")]) == 1  # keep_replaced


def test_agent_memory_bomb_gets_an_error_reply_and_rss_stays_bounded(agent, served):
    url, sha = served["bomb"]
    before = agent.vmhwm_kib()
    _, final = agent.deploy({"url": url, "sha256": sha, "name": "bomb"}, timeout=120)
    grown_mib = (agent.vmhwm_kib() - before) / 1024
    assert final["status"] == "error", final
    assert grown_mib < 150, f"the agent's peak RSS grew by {grown_mib:.0f} MiB unpacking a 300 MiB header"
    assert not (agent.bundles / "bomb").exists()
