"""Signed bundles (`ftedge keygen`, `export --sign-key`), `ftedge pack`, and deploy: fetch, verify, atomic unpack."""

from __future__ import annotations

import functools
import gzip
import io
import json
import shutil
import stat
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ftedge.bundle.hashing import sha256_file
from ftedge.bundle.pack import pack_bundle
from ftedge.bundle.signing import (
    key_id,
    load_public_key,
    sign_manifest,
    verify_manifest,
)
from ftedge.device_agent.install import (
    LOCK_NAME,
    BundleExistsError,
    BundleRejectedError,
    DeployRequestError,
    FetchError,
    HashMismatchError,
    UnsafeArchiveError,
    deploy_bundle,
)
from ftedge.runtime import load_bundle

from ftedge.cli import main
from ftedge.errors import BundleError
from tests.helpers.common import ZOO, export


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    assert main(["keygen", "-o", str(d / "release")]) == 0
    assert main(["keygen", "-o", str(d / "other")]) == 0
    return {"private": d / "release.key.pem", "public": d / "release.pub.pem", "other": d / "other.pub.pem",
            "other_private": d / "other.key.pem"}


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "mlp"
    export(f"{ZOO}:mlp", out, "--input", "x:float32:1,20", "--sign-key", str(keys["private"]), "--name", "mlp")
    return out


@pytest.fixture(scope="module")
def archive(tmp_path_factory, signed) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("dist") / "mlp.tar.gz"
    return path, pack_bundle(signed, path)


def _copy_with_manifest(src: Path, dst: Path, change) -> Path:  # noqa: ANN001
    shutil.copytree(src, dst)
    mpath = dst / "manifest.json"
    manifest = change(json.loads(mpath.read_text()))
    mpath.write_text(json.dumps(manifest, indent=2))
    return dst


def _tamper(m: dict) -> dict:
    m["optimizer"]["lr"] = 0.5
    return m


def _unsign(m: dict) -> dict:
    del m["signature"]
    return m


def _entries(root: Path) -> list[str]:
    """What a deploy left in ``root`` (the bundle root's lock file does not count)."""
    return sorted(p.name for p in root.iterdir() if p.name != LOCK_NAME) if root.exists() else []


# -- signing ------------------------------------------------------------------------------------------


def test_keygen_writes_private_key_0600_and_never_overwrites(capsys, keys):
    assert stat.S_IMODE(keys["private"].stat().st_mode) == 0o600
    assert keys["public"].read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert main(["keygen", "-o", str(keys["private"]).removesuffix(".key.pem")]) == 1
    assert "already exist" in capsys.readouterr().err


def test_export_sign_key_roundtrip(capsys, signed, keys):
    manifest = json.loads((signed / "manifest.json").read_text())
    kid = key_id(load_public_key(keys["public"]))
    assert manifest["signature"]["alg"] == "ed25519" and manifest["signature"]["key_id"] == kid
    assert "files" in manifest and verify_manifest(manifest, [keys["public"]]) == kid
    assert verify_manifest(manifest, keys["public"].read_text()) == kid  # PEM text works too
    assert load_bundle(signed, trusted_keys=[keys["public"], keys["other"]]).signed_by == kid
    assert load_bundle(signed).signed_by is None  # no keys: no signature check

    assert main(["inspect", str(signed), "--trusted-key", str(keys["public"])]) == 0
    assert f"signed by {kid} (ed25519); verified with a trusted key" in capsys.readouterr().out
    assert main(["inspect", str(signed)]) == 0
    assert f"signed by {kid} (ed25519); not checked" in capsys.readouterr().out


def test_tampered_manifest_field_is_refused(capsys, signed, keys, tmp_path):
    bundle = _copy_with_manifest(signed, tmp_path / "t", _tamper)
    load_bundle(bundle)  # file hashes still match: only the signature catches it
    with pytest.raises(BundleError, match="signature does not match: the manifest was modified after signing"):
        load_bundle(bundle, trusted_keys=[keys["public"]])
    assert main(["inspect", str(bundle), "--trusted-key", str(keys["public"])]) == 1
    assert "signature does not match" in capsys.readouterr().err


def test_unsigned_bundle_refused_when_keys_required(signed, keys, tmp_path):
    bundle = _copy_with_manifest(signed, tmp_path / "u", _unsign)
    with pytest.raises(BundleError, match="bundle is not signed"):
        load_bundle(bundle, trusted_keys=[keys["public"]])
    with pytest.raises(BundleError, match="no trusted public keys"):
        load_bundle(signed, trusted_keys=[])


def test_unknown_key_is_refused(signed, keys):
    with pytest.raises(BundleError, match="signed by unknown key"):
        load_bundle(signed, trusted_keys=[keys["other"]])


def test_bad_sign_key_fails_before_exporting(capsys, tmp_path, keys):
    out = tmp_path / "b"
    args = ["export", f"{ZOO}:mlp", "-o", str(out), "--input", "x:float32:1,20", "--sign-key"]
    assert main([*args, str(tmp_path / "no.pem")]) == 1
    assert "cannot read signing key" in capsys.readouterr().err and not out.exists()
    rc = main([*args, str(keys["public"])])
    assert rc == 1 and "not a PEM private key" in capsys.readouterr().err and not out.exists()


# -- pack ---------------------------------------------------------------------------------------------


def test_pack_is_deterministic(capsys, signed, archive, tmp_path):
    path, sha = archive
    assert main(["pack", str(signed), "-o", str(tmp_path / "again.tar.gz")]) == 0
    assert capsys.readouterr().out.split()[0] == sha
    shutil.copytree(signed, tmp_path / "copy" / "mlp")  # new mtimes, same content
    assert pack_bundle(tmp_path / "copy" / "mlp", tmp_path / "copy.tar.gz") == sha == sha256_file(path)
    with tarfile.open(path) as tf:
        names = tf.getnames()
        assert names[0] == "mlp/manifest.json" and all(n.startswith("mlp/") for n in names)
        assert {m.mtime for m in tf.getmembers()} == {0}


def test_pack_refuses_damaged_bundle(capsys, signed, tmp_path):
    bundle = tmp_path / "d"
    shutil.copytree(signed, bundle)
    (bundle / "portable" / "init.safetensors").write_bytes(b"junk")
    assert main(["pack", str(bundle), "-o", str(tmp_path / "d.tar.gz")]) == 1
    assert "failed verification" in capsys.readouterr().err and not (tmp_path / "d.tar.gz").exists()


# -- deploy -------------------------------------------------------------------------------------------


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: ANN002
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/nolength/"):  # stream without Content-Length, HTTP/1.0 close-delimited
            data = (Path(self.directory) / self.path.split("/", 2)[2]).read_bytes()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(data)
            return
        super().do_GET()


@pytest.fixture()
def http_dir(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_deploy_from_file_url(archive, keys, tmp_path):
    path, sha = archive
    root = tmp_path / "bundles"
    deployed = deploy_bundle(path.as_uri(), sha, root, trusted_keys=[keys["public"]])
    assert deployed == root / "mlp" and _entries(root) == ["mlp"]
    assert load_bundle(deployed, trusted_keys=[keys["public"]]).signed_by
    assert deploy_bundle(path.as_uri(), sha.upper(), root, name="mlp-v2") == root / "mlp-v2"


def test_deploy_from_http_server(archive, keys, tmp_path, http_dir):
    served, base = http_dir
    path, sha = archive
    shutil.copy(path, served / "mlp.tar.gz")
    root = tmp_path / "bundles"
    deployed = deploy_bundle(f"{base}/mlp.tar.gz?token=secret", sha, root, trusted_keys=[keys["public"]], timeout=10)
    assert load_bundle(deployed).name == "mlp" and _entries(root) == ["mlp"]
    with pytest.raises(FetchError, match="HTTP 404") as exc:
        deploy_bundle(f"{base}/missing.tar.gz?token=secret", sha, root, name="x")
    assert "secret" not in str(exc.value) and _entries(root) == ["mlp"]


def test_wrong_sha256_is_refused_before_unpacking(archive, tmp_path):
    path, sha = archive
    root = tmp_path / "bundles"
    with pytest.raises(HashMismatchError, match="nothing was unpacked"):
        deploy_bundle(path.as_uri(), "0" * 64, root)
    assert _entries(root) == []


def test_bad_signature_is_refused_and_nothing_written(signed, keys, tmp_path):
    bundle = _copy_with_manifest(signed, tmp_path / "mlp", _tamper)
    sha = pack_bundle(bundle, tmp_path / "t.tar.gz")
    root = tmp_path / "bundles"
    with pytest.raises(BundleRejectedError, match="signature does not match"):
        deploy_bundle((tmp_path / "t.tar.gz").as_uri(), sha, root, trusted_keys=[keys["public"]])
    with pytest.raises(BundleRejectedError, match="signed by unknown key"):
        deploy_bundle((tmp_path / "t.tar.gz").as_uri(), sha, root, trusted_keys=[keys["other"]])
    assert _entries(root) == []


def test_unreadable_trusted_key_fails_before_download(archive, tmp_path):
    path, sha = archive
    with pytest.raises(DeployRequestError, match="trusted keys: cannot read"):
        deploy_bundle(path.as_uri(), sha, tmp_path / "bundles", trusted_keys=[tmp_path / "nope.pub.pem"])
    assert _entries(tmp_path / "bundles") == []


def _write_tar(path: Path, members: list[tuple[str, str, bytes | str]]) -> str:
    """members: (name, kind, data-or-linkname), kind in file/dir/sym/hard/chr. Returns the sha256."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                         "chr": tarfile.CHRTYPE}[kind]
            if kind in ("sym", "hard"):
                info.linkname = data
            tf.addfile(info)
    path.write_bytes(gzip.compress(buf.getvalue()))
    return sha256_file(path)


MANIFEST = ("mlp/manifest.json", "file", json.dumps({
    "schema_version": 2, "name": "mlp", "layout": "full", "engines": {"portable": {}}, "files": {},
    "roles": {"step": "s", "head": "h", "init": "i"}}).encode())


@pytest.mark.parametrize("members,match", [
    ([MANIFEST, ("../evil", "file", b"x")], r"contains '\.\.'"),
    ([MANIFEST, ("mlp/../../evil", "file", b"x")], r"contains '\.\.'"),
    ([MANIFEST, ("/tmp/evil", "file", b"x")], "absolute path"),
    ([MANIFEST, ("mlp/link", "sym", "/etc/passwd")], "is a symlink"),
    ([MANIFEST, ("mlp/hard", "hard", "mlp/manifest.json")], "hard link"),
    ([MANIFEST, ("mlp/dev", "chr", "")], "device"),
    ([MANIFEST, ("other/manifest.json", "file", b"{}")], "more than one top-level entry"),
    ([("manifest.json", "file", b"{}")], "file at the top level"),
    ([MANIFEST, MANIFEST], "appears twice"),
    ([], "archive is empty"),
])
def test_unsafe_archive_is_refused(tmp_path, members, match):
    root = tmp_path / "root" / "bundles"
    sha = _write_tar(tmp_path / "bad.tar.gz", members)
    with pytest.raises(UnsafeArchiveError, match=match):
        deploy_bundle((tmp_path / "bad.tar.gz").as_uri(), sha, root)
    assert _entries(root) == [] and not (tmp_path / "root" / "evil").exists() and not (tmp_path / "evil").exists()


def test_not_a_tar_gz_is_refused(tmp_path):
    (tmp_path / "x.tar.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UnsafeArchiveError, match="cannot unpack the archive"):
        deploy_bundle((tmp_path / "x.tar.gz").as_uri(), sha256_file(tmp_path / "x.tar.gz"), tmp_path / "b")
    assert _entries(tmp_path / "b") == []


def test_unlisted_file_is_refused(signed, tmp_path):
    bundle = tmp_path / "mlp"
    shutil.copytree(signed, bundle)
    members = [(f"mlp/{p.relative_to(bundle).as_posix()}", "file", p.read_bytes())
               for p in sorted(bundle.rglob("*"), key=lambda p: p.name != "manifest.json") if p.is_file()]
    sha = _write_tar(tmp_path / "x.tar.gz", [*members, ("mlp/payload.sh", "file", b"#!/bin/sh\n")])
    with pytest.raises(BundleRejectedError, match="does not list.*payload.sh"):
        deploy_bundle((tmp_path / "x.tar.gz").as_uri(), sha, tmp_path / "b")
    assert _entries(tmp_path / "b") == []


def test_redeploy_is_idempotent_and_replace_keeps_the_old_bundle(archive, signed, keys, tmp_path):
    path, sha = archive
    root = tmp_path / "bundles"
    first = deploy_bundle(path.as_uri(), sha, root)
    mtime = (first / "manifest.json").stat().st_mtime_ns
    assert deploy_bundle(path.as_uri(), sha, root, trusted_keys=[keys["public"]]) == first
    assert _entries(root) == ["mlp"] and (first / "manifest.json").stat().st_mtime_ns == mtime

    # a newer, differently signed bundle with the same name
    newer = _copy_with_manifest(signed, tmp_path / "src" / "mlp",
                                lambda m: sign_manifest({**_tamper(m)}, keys["other_private"]))
    new_sha = pack_bundle(newer, tmp_path / "new.tar.gz")
    with pytest.raises(BundleExistsError, match="holds a different bundle.*replace=True"):
        deploy_bundle((tmp_path / "new.tar.gz").as_uri(), new_sha, root)
    assert _entries(root) == ["mlp"]
    deployed = deploy_bundle((tmp_path / "new.tar.gz").as_uri(), new_sha, root, replace=True,
                             trusted_keys=[keys["other"]])
    assert load_bundle(deployed).manifest["optimizer"]["lr"] == 0.5
    entries = _entries(root)
    assert len(entries) == 2 and entries[0] == "mlp" and entries[1].startswith("mlp.replaced-")
    assert load_bundle(root / entries[1]).manifest["optimizer"]["lr"] != 0.5


def test_max_bytes_is_enforced(archive, tmp_path, http_dir):
    served, base = http_dir
    path, sha = archive
    shutil.copy(path, served / "mlp.tar.gz")
    root = tmp_path / "bundles"
    with pytest.raises(FetchError, match="more than the 1000-byte limit"):  # announced size (Content-Length)
        deploy_bundle(path.as_uri(), sha, root, max_bytes=1000)
    with pytest.raises(FetchError, match="sent more than the 1000-byte limit"):  # streamed, no Content-Length
        deploy_bundle(f"{base}/nolength/mlp.tar.gz", sha, root, max_bytes=1000)
    assert _entries(root) == []
    assert deploy_bundle(f"{base}/nolength/mlp.tar.gz", sha, root).name == "mlp"


@pytest.mark.parametrize("kwargs,match", [
    ({"url": "ftp://host/x.tar.gz"}, "http://, https:// or file://"),
    ({"sha256": "abc"}, "not 64 hex digits"),
    ({"name": "../escape"}, "not usable as a folder name"),
    ({"name": ".hidden"}, "not usable as a folder name"),
])
def test_bad_requests_are_refused(archive, tmp_path, kwargs, match):
    path, sha = archive
    args = {"url": path.as_uri(), "sha256": sha, "bundle_root": tmp_path / "b", **kwargs}
    with pytest.raises(DeployRequestError, match=match):
        deploy_bundle(**args)
    assert _entries(tmp_path / "b") == []


def test_progress_callback_reports_and_can_cancel(archive, tmp_path):
    path, sha = archive
    seen: list[tuple[int, int | None]] = []
    deploy_bundle(path.as_uri(), sha, tmp_path / "ok", progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (path.stat().st_size, path.stat().st_size)

    class Cancelled(Exception):
        pass

    def cancel(done: int, total: int | None) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        deploy_bundle(path.as_uri(), sha, tmp_path / "cancel", progress=cancel)
    assert _entries(tmp_path / "cancel") == []
