"""Deploy errors and a bounded, streaming unpacker for bundle archives (``ftedge pack`` .tar.gz).

:func:`unpack_bundle_archive` reads the gzip stream block by block with its own tar header parser, so
memory stays bounded whatever the archive claims: PAX and GNU long-name headers are limited to a few
KiB, names to :data:`MAX_NAME` bytes, and every decompressed byte is counted. ``manifest.json`` must be
the first file (``ftedge pack`` writes it first); it is parsed and handed to ``accept_manifest`` (schema
and signature checks) before anything else is written, and every later member must be listed in its
``files`` table with the size and sha256 it names, checked while it streams to disk.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Any, Callable

from ftedge.errors import BundleRejectedError, UnsafeArchiveError
from ftedge.bundle.manifest import MANIFEST_NAME

BLOCK = 512
MAX_PAX = 8 * 1024            # one PAX extended header's payload
MAX_NAME = 1024               # a member name, GNU long names included
MAX_MANIFEST = 8 * 1024 * 1024
MAX_MEMBERS = 1_000
_CHUNK = 1 << 20
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_HOW = "pack the bundle with `ftedge pack`"


class _Stream:
    """Decompressed bytes of the archive, counted against a limit."""

    def __init__(self, raw: IO[bytes], limit: int) -> None:
        self.gz = gzip.GzipFile(fileobj=raw, mode="rb")
        self.limit, self.done = limit, 0

    def read(self, n: int) -> bytes:
        if self.done + n > self.limit:
            raise UnsafeArchiveError(f"the archive unpacks to more than {self.limit} bytes; raise the deploy "
                                     "max_bytes if this bundle is really that large")
        data = self.gz.read(n)
        self.done += len(data)
        if len(data) != n:
            raise UnsafeArchiveError(f"the archive is truncated ({self.done} bytes unpacked); re-pack it "
                                     "with `ftedge pack` and re-upload it")
        return data

    def skip_padding(self, size: int) -> None:
        if size % BLOCK:
            self.read(BLOCK - size % BLOCK)


def _octal(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" \0")
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise UnsafeArchiveError(f"the archive has a malformed tar header ({what} {text[:20]!r}); {_HOW}") from None


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        m = re.match(rb"(\d+) ", data[pos:pos + 20])
        if not m or int(m[1]) <= len(m[0]) or pos + int(m[1]) > len(data):
            raise UnsafeArchiveError(f"the archive has a malformed PAX header; {_HOW}")
        record = data[pos + len(m[0]):pos + int(m[1])]
        pos += int(m[1])
        key, sep, value = record.rstrip(b"\n").partition(b"=")
        if not sep:
            raise UnsafeArchiveError(f"the archive has a malformed PAX header; {_HOW}")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
    return out


def _headers(s: _Stream):  # noqa: ANN202 - generator of (name, type, size)
    """Yield ``(name, typeflag, size)`` per member; the caller must consume exactly ``size`` bytes (+padding)."""
    long_name: str | None = None
    pax: dict[str, str] = {}
    count = 0
    while True:
        block = s.read(BLOCK)
        if block == b"\0" * BLOCK:
            return
        stored = _octal(block[148:156], "checksum")
        if stored != sum(block[:148]) + 256 + sum(block[156:]):
            raise UnsafeArchiveError(f"the archive is not a valid tar (bad header checksum); {_HOW}")
        kind, size = chr(block[156]) if block[156] else "0", _octal(block[124:136], "size")
        count += 1
        if count > 3 * MAX_MEMBERS:
            raise UnsafeArchiveError(f"the archive has more than {MAX_MEMBERS} members; a bundle has a handful")
        if kind in ("x", "L"):
            limit = MAX_PAX if kind == "x" else MAX_NAME
            if size > limit:
                what = "PAX extended header" if kind == "x" else "GNU long-name header"
                raise UnsafeArchiveError(f"the archive has a {what} of {size} bytes (the limit is {limit}); "
                                         f"refusing it unread — {_HOW}")
            data = s.read(size)
            s.skip_padding(size)
            if kind == "x":
                pax.update(_pax(data))
            else:
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        if kind == "g":
            raise UnsafeArchiveError(f"the archive has a global PAX header; {_HOW}")
        name = _text(block[:100])
        if block[257:263] == b"ustar\0" and block[345]:
            name = _text(block[345:500]) + "/" + name
        name = pax.get("path", long_name or name)
        if "size" in pax:
            if not pax["size"].isdigit():
                raise UnsafeArchiveError(f"the archive has a malformed PAX size; {_HOW}")
            size = int(pax["size"])
        if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME:
            raise UnsafeArchiveError(f"the archive has a member name over {MAX_NAME} bytes; {_HOW}")
        pax, long_name = {}, None
        yield name, kind, size


def _relpath(name: str) -> tuple[str, ...]:
    what = f"archive member {name[:200]!r}"
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")):
        raise UnsafeArchiveError(f"{what} has an absolute path; {_HOW}")
    parts = tuple(p for p in path.parts if p != ".")
    if ".." in parts:
        raise UnsafeArchiveError(f"{what} contains '..' and would escape the bundle folder; refusing it")
    if not parts:
        raise UnsafeArchiveError(f"{what} is the archive root; pack the bundle folder itself (`ftedge pack`)")
    if any("\0" in p or "\\" in p for p in parts):
        raise UnsafeArchiveError(f"{what} has a NUL or backslash in its name; {_HOW}")
    return parts


def _files_table(manifest: dict[str, Any], max_bytes: int) -> dict[str, tuple[int, str]]:
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleRejectedError("the archive's manifest.json has no `files` object; re-export the bundle")
    table: dict[str, tuple[int, str]] = {}
    for rel, entry in files.items():
        size = entry.get("size") if isinstance(entry, dict) else None
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(rel, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0 \
                or not isinstance(sha, str) or not _SHA_RE.fullmatch(sha):
            raise BundleRejectedError(f"the archive's manifest has a malformed `files` entry {str(rel)[:200]!r} "
                                      "(it needs an integer size and a 64-hex sha256); re-export the bundle")
        parts = _relpath(rel)
        if rel == MANIFEST_NAME or "/".join(parts) != rel:
            raise BundleRejectedError(f"the archive's manifest lists an unusable file name {rel[:200]!r}; "
                                      "re-export the bundle")
        table[rel] = (size, sha)
    if sum(size for size, _ in table.values()) > max_bytes:
        raise UnsafeArchiveError(f"the bundle's files add up to more than the {max_bytes}-byte limit; raise the "
                                 "deploy max_bytes if this bundle is really that large")
    return table


def _write(s: _Stream, target: Path, size: int) -> str:
    """Stream ``size`` bytes into a new file ``target``; return their sha256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    h = hashlib.sha256()
    with os.fdopen(fd, "wb") as out:
        left = size
        while left:
            chunk = s.read(min(_CHUNK, left))
            h.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    s.skip_padding(size)
    return h.hexdigest()


def unpack_bundle_archive(archive: Path, dest: Path, max_bytes: int,
                          accept_manifest: Callable[[dict[str, Any]], None]) -> Path:
    """Unpack the bundle .tar.gz ``archive`` into ``dest/<top>``; return that folder.

    ``accept_manifest(manifest)`` runs on the parsed ``manifest.json`` before any other member is read
    (raise to refuse). Raises :class:`UnsafeArchiveError` or :class:`BundleRejectedError`.
    """
    try:
        with open(archive, "rb") as raw:
            return _unpack(_Stream(raw, max_bytes + (MAX_MEMBERS + 2) * (BLOCK * 2 + MAX_PAX)), dest, max_bytes,
                           accept_manifest)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise UnsafeArchiveError(f"cannot unpack the archive ({type(exc).__name__}: {exc}); it must be a .tar.gz "
                                 "written by `ftedge pack`") from exc


def _unpack(s: _Stream, dest: Path, max_bytes: int, accept_manifest: Callable[[dict[str, Any]], None],
            manifest_only: bool = False) -> Path:
    top: str | None = None
    table: dict[str, tuple[int, str]] | None = None
    seen: set[str] = set()
    for name, kind, size in _headers(s):
        what = f"archive member {name[:200]!r}"
        parts = _relpath(name)
        if kind in ("1", "2", "K"):
            raise UnsafeArchiveError(f"{what} is a {'symlink' if kind == '2' else 'hard link'}; bundles hold only "
                                     f"plain files ({_HOW})")
        if kind not in ("0", "7", "5"):
            raise UnsafeArchiveError(f"{what} is a device, FIFO or other special file; bundles hold only plain files")
        if top is None:
            top = parts[0]
        elif parts[0] != top:
            raise UnsafeArchiveError(f"the archive has more than one top-level entry ({top!r}, {parts[0]!r}); "
                                     "it must hold exactly one bundle folder (`ftedge pack` writes that)")
        if len(parts) == 1 and kind != "5":
            raise UnsafeArchiveError(f"{what} is a file at the top level; the archive must hold one bundle folder")
        key = "/".join(parts)
        if key in seen:
            raise UnsafeArchiveError(f"{what} appears twice; refusing an archive whose entries overwrite each other")
        seen.add(key)
        rel = "/".join(parts[1:])
        if kind == "5":
            if size:
                raise UnsafeArchiveError(f"{what} is a folder with {size} bytes of data; {_HOW}")
            (dest / key).mkdir(parents=True, exist_ok=True)
            continue
        if table is None:
            if rel != MANIFEST_NAME:
                raise UnsafeArchiveError(f"the archive's first file is {rel[:200]!r}, not {MANIFEST_NAME}; the "
                                         f"manifest must come first so it is checked before anything else — {_HOW}")
            if size > MAX_MANIFEST:
                raise UnsafeArchiveError(f"the archive's {MANIFEST_NAME} is {size} bytes (limit {MAX_MANIFEST}); "
                                         "re-export the bundle")
            data = s.read(size)
            s.skip_padding(size)
            try:
                manifest = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise BundleRejectedError(f"the archive's {MANIFEST_NAME} is not valid JSON ({exc}); re-export "
                                          "the bundle") from exc
            if not isinstance(manifest, dict):
                raise BundleRejectedError(f"the archive's {MANIFEST_NAME} is not a JSON object; re-export the bundle")
            accept_manifest(manifest)
            if manifest_only:
                return dest
            table = _files_table(manifest, max_bytes)
            target = dest / key
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "xb") as f:
                f.write(data)
            continue
        if rel not in table:
            raise BundleRejectedError(f"the bundle holds files its manifest does not list ({rel[:200]}); only hashed "
                                      "files may be deployed — re-pack it with `ftedge pack`")
        want_size, want_sha = table[rel]
        if size != want_size:
            raise BundleRejectedError(f"{rel[:200]} in the archive is {size} bytes but the manifest says {want_size}; "
                                      "the bundle was modified: re-export and re-pack it")
        if _write(s, dest / key, size) != want_sha:
            raise BundleRejectedError(f"{rel[:200]} in the archive does not match the sha256 its manifest lists; the "
                                      "bundle was modified: re-export and re-pack it")
    if top is None:
        raise UnsafeArchiveError(f"the archive is empty; {_HOW}")
    if table is None:
        raise UnsafeArchiveError(f"the archive has no {MANIFEST_NAME}; {_HOW}")
    missing = sorted(set(table) - {k.split("/", 1)[1] for k in seen if "/" in k})
    if missing:
        raise BundleRejectedError(f"the archive lacks file(s) its manifest lists ({', '.join(missing[:5])}); re-pack "
                                  "the bundle with `ftedge pack`")
    return dest / top



def read_archive_manifest(archive: Path, max_bytes: int = 2 * 2**30) -> dict[str, Any]:
    """The ``manifest.json`` of a bundle archive, read without unpacking anything else (the fleet's rollouts
    read the bundle's name from it). Raises like :func:`unpack_bundle_archive`."""
    import tempfile

    found: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ftedge-manifest-") as tmp:
        try:
            with open(archive, "rb") as raw:
                _unpack(_Stream(raw, max_bytes + (MAX_MEMBERS + 2) * (BLOCK * 2 + MAX_PAX)), Path(tmp), max_bytes,
                        found.append, manifest_only=True)
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise UnsafeArchiveError(f"cannot read the archive {archive} ({type(exc).__name__}: {exc}); it must be a "
                                     ".tar.gz written by `ftedge pack`") from exc
    if not found:
        raise BundleRejectedError(f"{archive} has no {MANIFEST_NAME}: it is not a bundle archive written by "
                                  "`ftedge pack`")
    return found[0]
