"""(c) The archive unpacker, through the public ``deploy_bundle(url, sha256, bundle_root, ...)``: the bytes of a
``.tar.gz`` served by ``file://`` and by a real HTTP server on 127.0.0.1 (honest, missing or lying
Content-Length). The sha256 always matches, so every input reaches the unpacker.

Inputs: hand-built tar streams (PAX and GNU long-name headers, huge declared sizes, symlinks, hard links,
devices, FIFOs, escaping and duplicate names), a gzip member of a 70 MiB header payload (the memory-bomb shape),
and byte mutations of real ``ftedge pack`` archives (mutated inside the gzip layer, then recompressed).

Contract: a ``DeployError`` (any ``FtedgeError``), or an installed bundle that verifies and holds no links;
either way nothing but the installed folder appears in the bundle root, nothing outside it, and the peak
traced allocation stays under the bound.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import inspect
import shutil
import tarfile
import threading
import zlib
from functools import lru_cache
from pathlib import Path

from ftedge.bundle.loader import load_bundle
from ftedge.device_agent.install import deploy_bundle
from hypothesis import strategies as st

from ftedge.errors import FtedgeError
from tests.fuzz.common import corpus, guarded, workdir
from tests.fuzz.mutate import mutated

MAX_BYTES = 16 * 2**20  # deploy limit given to deploy_bundle: unpacked bundles above it must be refused
_DIR = workdir("deploy")
_SERVED: dict[str, bytes | str] = {"body": b"", "length": "honest"}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server API
        body, mode = _SERVED["body"], _SERVED["length"]
        assert isinstance(body, bytes)
        self.send_response(200)
        if mode == "honest":
            self.send_header("Content-Length", str(len(body)))
        elif mode == "more":
            self.send_header("Content-Length", str(len(body) + 1000))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@lru_cache(maxsize=1)
def _server() -> http.server.ThreadingHTTPServer:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, name="fuzz-http", daemon=True).start()
    return srv


# -- hand-built tar streams -------------------------------------------------------------------------------

_TYPES = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE,
          tarfile.FIFOTYPE, tarfile.CONTTYPE, b"V", b"\xff"]
names = st.one_of(
    st.sampled_from(["b", "b/", "b/manifest.json", "b/x.onnx", "b/head/checkpoint", "../evil", "/abs", "b/../../x",
                     "c/manifest.json", ".", "", "b/./manifest.json", "b//manifest.json", "b\\..\\x"]),
    st.builds(lambda n, c: "b/" + c * n, st.integers(90, 5000), st.sampled_from(["a", "é", "/"])),
    st.text(max_size=40).map(lambda t: "b/" + t))


@st.composite
def members(draw: st.DrawFn) -> bytes:
    info = tarfile.TarInfo(draw(names))
    info.type = draw(st.sampled_from(_TYPES))
    content = draw(st.binary(max_size=256)) if info.type in (tarfile.REGTYPE, tarfile.CONTTYPE) else b""
    info.size = len(content)
    info.linkname = draw(st.sampled_from(["", "/etc/passwd", "../../x", "b/manifest.json", "b"]))
    info.mode = draw(st.sampled_from([0o644, 0o4755, 0o777, 0]))
    fmt = draw(st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]))
    if fmt == tarfile.PAX_FORMAT and draw(st.booleans()):
        info.pax_headers = {draw(st.sampled_from(["path", "linkpath", "size", "uid", "comment", "mtime", "x"])):
                            draw(st.sampled_from(["b/m", "99999999999999", "-1", "x" * 3000, "", "NaN"]))}
    try:
        head = info.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape")
    except (ValueError, UnicodeError):
        head = tarfile.TarInfo("b/fallback").tobuf()
    if draw(st.integers(0, 5)) == 0:  # lie about the size in the header block (octal field at 124..136)
        field = draw(st.sampled_from([b"77777777777\0", b"\x80" + b"\0" * 3 + b"\xff" * 8, b"-1\0", b"zz"]))
        head = head[:-512] + head[-512:][:124] + field.ljust(12, b"\0")[:12] + head[-512:][136:]
        chk = sum(head[-512:][:148]) + 256 + sum(head[-512:][156:])
        head = head[:-512] + head[-512:][:148] + f"{chk:06o}\0 ".encode() + head[-512:][156:]
    return head + content + b"\0" * (-len(content) % 512)


@lru_cache(maxsize=1)
def _pax_bomb_member() -> bytes:
    """A gzip member: a PAX extended header declaring (and holding) 70 MiB, the shape of the memory bomb."""
    size = 70 * 2**20
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, size
    head = info.tobuf(format=tarfile.USTAR_FORMAT)
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [comp.compress(head)]
    zeros = b"\0" * 2**20
    for _ in range(size // len(zeros)):
        out.append(comp.compress(zeros))
    return b"".join(out) + comp.flush()


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    seeds = _seed_tars()
    body = b""
    if seeds and draw(st.booleans()):
        base = draw(st.sampled_from(seeds))
        body = base[:draw(st.integers(0, len(base)))] if draw(st.booleans()) else base.rstrip(b"\0")
    parts = [body] if body else []
    for _ in range(draw(st.integers(0, 4))):
        parts.insert(draw(st.integers(0, len(parts))), draw(members()))
    tar = b"".join(parts) + b"\0" * draw(st.sampled_from([0, 512, 1024, 10240]))
    bomb = draw(st.integers(0, 15)) == 0
    wrap = draw(st.sampled_from(["gz", "gz", "gz", "plain", "bz2", "gz-trailing-garbage"]))
    if wrap == "plain":
        return tar
    if wrap == "bz2":
        import bz2
        return bz2.compress(tar)
    out = gzip.compress(tar, mtime=0)
    out = (_pax_bomb_member() + out) if bomb else out
    return out + (b"garbage" if wrap == "gz-trailing-garbage" else b"")


@lru_cache(maxsize=1)
def _seed_tars() -> list[bytes]:
    out = []
    for p in corpus("deploy"):
        try:
            raw = gzip.decompress(p.read_bytes())
        except (OSError, EOFError, zlib.error):
            continue
        if len(raw) < 4 * 2**20:
            out.append(raw)
    return out


def inputs() -> st.SearchStrategy[bytes]:
    seeds = _seed_tars()
    inner = mutated(seeds, max_ops=3).map(lambda t: gzip.compress(t, mtime=0))
    raw = mutated([p.read_bytes() for p in corpus("deploy") if p.stat().st_size < 2**20], max_ops=2)
    return st.one_of(structured(), inner, inner, raw)


# -- the check --------------------------------------------------------------------------------------------

def _listing(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()} if d.exists() else set()


_PAUSES = ("RESUME_PAUSE_S", "CONNECT_PAUSE_S", "BUSY_PAUSE_S")


def _deploy(url: str, sha: str, root: Path) -> None:
    kw: dict[str, object] = {"timeout": 5, "max_bytes": MAX_BYTES}
    if "deadline_s" in inspect.signature(deploy_bundle).parameters:
        kw["deadline_s"] = 10
    # The server lies about lengths on purpose, and the agent answers a short body by resuming after growing
    # pauses (at most install.MAX_RESUMES times): real seconds per example that a fuzz of the parsers need not
    # wait (a CI run of this target took over 20 minutes with them). The pauses are put back afterwards.
    from ftedge.device_agent import install

    saved = {name: getattr(install, name) for name in _PAUSES if hasattr(install, name)}
    for name in saved:
        setattr(install, name, 0.0)
    try:
        _deploy_checked(url, sha, root, kw)
    finally:
        for name, value in saved.items():
            setattr(install, name, value)


def _deploy_checked(url: str, sha: str, root: Path, kw: dict[str, object]) -> None:
    with guarded(f"deploy_bundle({url.split(':')[0]})", (FtedgeError,)):
        path = deploy_bundle(url, sha, root, **kw)
        assert path.parent == root, f"installed outside the bundle root: {path}"
        load_bundle(path)
        links = [str(p) for p in path.rglob("*") if p.is_symlink() or not (p.is_file() or p.is_dir())]
        assert not links, f"installed bundle holds links or special files: {links[:3]}"


def check(data: bytes) -> None:
    """One archive through file:// and http://127.0.0.1; raises ContractViolation."""
    work = _DIR / "w"
    shutil.rmtree(work, ignore_errors=True)
    root, outside = work / "bundles", work / "outside"
    root.mkdir(parents=True)
    outside.mkdir()
    archive = outside / "a.tar.gz"
    archive.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    modes = ["honest", "none", "more"]
    _SERVED.update(body=data, length=modes[int(sha[:2], 16) % 3])
    for url in (archive.as_uri(), f"http://127.0.0.1:{_server().server_address[1]}/a.tar.gz"):
        before = _listing(root)
        _deploy(url, sha, root)
        extra = {n for n in _listing(root) - before if n != ".ftedge-bundles.lock"}  # the deploy lock file stays
        assert len(extra) <= 1 and not any(n.startswith(".") for n in extra), \
            f"deploy left {sorted(extra)} in the bundle root"
        assert _listing(outside) == {"a.tar.gz"}, f"deploy wrote outside the bundle root: {_listing(outside)}"
        assert _listing(work) == {"bundles", "outside"}, f"deploy wrote next to the bundle root: {_listing(work)}"
        for name in extra:  # start the next transport from an empty root
            shutil.rmtree(root / name)
