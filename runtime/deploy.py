"""Pack a bundle into a deterministic .tar.gz; fetch one, verify it and unpack it atomically.

:func:`deploy_bundle` downloads into a temporary file inside the bundle root (hashing while it streams),
refuses a wrong sha256 before unpacking, unpacks only plain files and folders under one top-level folder,
verifies the bundle (hashes, schema, and the signature when trusted keys are given) and only then renames
it into place. On any failure the bundle root is left as it was.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import IO, Any, Callable, Iterable

import ftedge
from ftedge.errors import BundleError, FtedgeError
from ftedge.runtime.bundle import load_bundle
from ftedge.runtime.hashing import fsync_dir, sha256_file
from ftedge.runtime.manifest import MANIFEST_NAME

log = logging.getLogger(__name__)

TEMP_PREFIX = ".ftedge-deploy-"
_CHUNK = 1 << 20
_MAX_MEMBERS = 10_000
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_SHA_RE = re.compile(r"[0-9a-f]{64}")


class DeployError(FtedgeError):
    """A bundle could not be deployed; ``reason`` names the stage for status reports."""

    reason = "deploy"


class DeployRequestError(DeployError):
    """The request itself is unusable: URL scheme, sha256, name, trusted keys."""

    reason = "request"


class FetchError(DeployError):
    """The archive could not be downloaded, or is larger than allowed."""

    reason = "fetch"


class HashMismatchError(DeployError):
    """The downloaded archive is not the one the sha256 names."""

    reason = "sha256"


class UnsafeArchiveError(DeployError):
    """The archive is not a .tar.gz of one plain folder (links, devices, escaping paths, ...)."""

    reason = "archive"


class BundleRejectedError(DeployError):
    """The unpacked bundle failed verification (hashes, schema, signature, unlisted files)."""

    reason = "bundle"


class BundleExistsError(DeployError):
    """A different bundle already lives under the target name."""

    reason = "exists"


def _redact(url: str) -> str:
    """The URL without credentials or query string (presigned URLs carry tokens there)."""
    try:
        p = urllib.parse.urlsplit(url)
        host = (p.hostname or "") + (f":{p.port}" if p.port else "")
    except ValueError:
        return "<unparseable URL>"
    return urllib.parse.urlunsplit((p.scheme, host, p.path, "…" if p.query else "", ""))


# -- pack ---------------------------------------------------------------------------------------------


def pack_bundle(bundle: str | Path, archive: str | Path) -> str:
    """Write a verified bundle as a deterministic .tar.gz (one top-level folder); return its sha256.

    Only ``manifest.json`` and the files its table lists are packed, sorted, with zeroed owners and
    timestamps and fixed modes, so the same bundle always gives the same bytes.
    """
    b = load_bundle(bundle, verify=True)
    top = b.path.resolve().name
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{archive.name}.", suffix=".tmp", dir=archive.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz, \
                    tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
                for rel in [MANIFEST_NAME, *sorted(b.manifest.get("files") or {})]:
                    src = b.path / rel
                    info = tarfile.TarInfo(f"{top}/{rel}")
                    info.size, info.mode, info.mtime = src.stat().st_size, 0o644, 0
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    with open(src, "rb") as f:
                        tf.addfile(info, f)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, archive)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256_file(archive)


# -- fetch --------------------------------------------------------------------------------------------


Progress = Callable[[int, "int | None"], None]


def _fetch(url: str, out: IO[bytes], timeout: float, max_bytes: int, progress: Progress | None = None) -> str:
    """Stream ``url`` into ``out``; return the sha256 of what was written."""
    shown = _redact(url)
    h, n = hashlib.sha256(), 0
    request = urllib.request.Request(url, headers={"User-Agent": f"ftedge/{ftedge.__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.strip().isdigit() else None
            if total is not None and total > max_bytes:
                raise FetchError(f"{shown} is {total} bytes, more than the {max_bytes}-byte limit; "
                                 "raise max_bytes if this bundle is really that large")
            while chunk := resp.read(_CHUNK):
                n += len(chunk)
                if n > max_bytes:
                    raise FetchError(f"{shown} sent more than the {max_bytes}-byte limit; download stopped "
                                     "(raise max_bytes if this bundle is really that large)")
                h.update(chunk)
                out.write(chunk)
                if progress is not None:
                    progress(n, total)
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{shown} answered HTTP {exc.code} {exc.reason}; check the URL and that the server "
                         "serves the archive") from exc
    except urllib.error.URLError as exc:
        raise FetchError(f"cannot fetch {shown}: {exc.reason}; check the URL and the network") from exc
    except (OSError, HTTPException) as exc:  # timeouts, resets, truncated bodies, disk full
        raise FetchError(f"download of {shown} failed after {n} bytes: {type(exc).__name__}: {exc}; "
                         "retry the deploy") from exc
    out.flush()
    os.fsync(out.fileno())
    return h.hexdigest()


# -- unpack -------------------------------------------------------------------------------------------


def _safe_members(tf: tarfile.TarFile, max_bytes: int) -> tuple[str, list[tarfile.TarInfo]]:
    """Check every member; return the single top-level folder and sanitized copies of the members."""
    top: str | None = None
    members: list[tarfile.TarInfo] = []
    seen: set[str] = set()
    total = 0
    for m in tf:
        what = f"archive member {m.name!r}"
        if len(members) >= _MAX_MEMBERS:
            raise UnsafeArchiveError(f"the archive has more than {_MAX_MEMBERS} members; a bundle has a handful")
        path = PurePosixPath(m.name)
        if path.is_absolute() or m.name.startswith(("/", "\\")):
            raise UnsafeArchiveError(f"{what} has an absolute path; pack bundles with `ftedge pack`")
        if ".." in path.parts:
            raise UnsafeArchiveError(f"{what} contains '..' and would escape the bundle folder; refusing it")
        if m.issym() or m.islnk():
            raise UnsafeArchiveError(f"{what} is a {'symlink' if m.issym() else 'hard link'}; bundles hold only "
                                     "plain files (pack with `ftedge pack`)")
        if not (m.isreg() or m.isdir()):
            raise UnsafeArchiveError(f"{what} is a device, FIFO or other special file; bundles hold only plain files")
        if not path.parts:
            raise UnsafeArchiveError(f"{what} is the archive root; pack the bundle folder itself (`ftedge pack`)")
        if top is None:
            top = path.parts[0]
        elif path.parts[0] != top:
            raise UnsafeArchiveError(f"the archive has more than one top-level entry ({top!r}, {path.parts[0]!r}); "
                                     "it must hold exactly one bundle folder (`ftedge pack` writes that)")
        if len(path.parts) == 1 and not m.isdir():
            raise UnsafeArchiveError(f"{what} is a file at the top level; the archive must hold one bundle folder")
        key = path.as_posix()
        if key in seen:
            raise UnsafeArchiveError(f"{what} appears twice; refusing an archive whose entries overwrite each other")
        seen.add(key)
        total += m.size
        if total > max_bytes:
            raise UnsafeArchiveError(f"the archive unpacks to more than the {max_bytes}-byte limit; "
                                     "raise max_bytes if this bundle is really that large")
        c = copy.copy(m)  # never trust owner, mode or name spelling from the archive
        c.name, c.mode = key, (0o755 if m.isdir() else 0o644)
        c.uid, c.gid, c.uname, c.gname = os.getuid(), os.getgid(), "", ""
        members.append(c)
    if top is None:
        raise UnsafeArchiveError("the archive is empty; pack the bundle with `ftedge pack`")
    return top, members


def _unpack(archive: Path, dest: Path, max_bytes: int) -> Path:
    try:
        with tarfile.open(archive, mode="r:gz") as tf:
            top, members = _safe_members(tf, max_bytes)
            extra: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(dest, members=members, **extra)
    except DeployError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UnsafeArchiveError(f"cannot unpack the archive ({type(exc).__name__}: {exc}); it must be a .tar.gz "
                                 "written by `ftedge pack`") from exc
    bundle_dir = dest / top
    if not bundle_dir.is_dir() or bundle_dir.is_symlink():
        raise UnsafeArchiveError(f"the archive's top-level entry {top!r} is not a folder; pack with `ftedge pack`")
    return bundle_dir


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


# -- deploy -------------------------------------------------------------------------------------------


def _check_name(name: str, what: str, error: type[DeployError]) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise error(f"{what} {name!r} is not usable as a folder name: use letters, digits, '.', '_', '+', '-' "
                    "(up to 128, not starting with '.' or '-')")
    return name


def _backup_path(root: Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    candidate, i = root / f"{name}.replaced-{stamp}", 1
    while candidate.exists() or candidate.is_symlink():
        candidate, i = root / f"{name}.replaced-{stamp}-{i}", i + 1
    return candidate


def deploy_bundle(url: str, sha256: str, bundle_root: Path, name: str | None = None,
                  trusted_keys: Iterable[Any] | None = None, timeout: float = 60, max_bytes: int = 2 * 2**30,
                  replace: bool = False, progress: Progress | None = None) -> Path:
    """Fetch the .tar.gz at ``url``, check it is ``sha256``, verify it and install it as ``bundle_root/NAME``.

    - ``url``: http://, https:// (certificates verified) or file://. ``timeout`` bounds connecting and
      each read (not the whole download). ``max_bytes`` bounds the download *and* the unpacked size.
    - ``name``: the folder to install as (default: the manifest's ``name``).
    - ``trusted_keys``: public key PEM paths/texts; when given the manifest must be signed by one of them.
    - An existing identical bundle (same ``manifest.json`` sha256, still verifying) is returned as is; a
      different one is refused unless ``replace``, which renames it to ``NAME.replaced-<UTC time>``.
    - ``progress(bytes_done, bytes_total_or_None)`` is called after each downloaded MiB; an exception it
      raises cancels the deploy (it propagates after the cleanup).

    Returns the installed bundle's path. Raises a :class:`DeployError` subclass (``.reason`` names the
    stage); on any failure nothing is added to ``bundle_root``.
    """
    shown = _redact(url)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise DeployRequestError(f"cannot deploy from {shown}: use an http://, https:// or file:// URL")
    expected = sha256.strip().lower() if isinstance(sha256, str) else ""
    if not _SHA_RE.fullmatch(expected):
        raise DeployRequestError(f"sha256 {sha256!r} is not 64 hex digits; give the sha256 `ftedge pack` printed")
    if name is not None:
        _check_name(name, "bundle name", DeployRequestError)
    keys = None
    if trusted_keys is not None:
        from ftedge.runtime.signing import load_trusted_keys

        try:  # load now: a key problem must not cost a download
            keys = list(load_trusted_keys(trusted_keys).values())
        except FtedgeError as exc:
            raise DeployRequestError(f"trusted keys: {exc}") from exc
    root = Path(bundle_root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, download = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tar.gz", dir=root)
    except OSError as exc:
        raise DeployRequestError(
            f"cannot write into bundle root {root}: {exc}; check the path and permissions") from exc
    stage: Path | None = None
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _fetch(url, out, timeout, max_bytes, progress)
        if digest != expected:
            raise HashMismatchError(f"{shown} has sha256 {digest}, expected {expected}: the download is damaged or "
                                    "the URL serves another file; nothing was unpacked")
        stage = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=root))
        bundle_dir = _unpack(Path(download), stage, max_bytes)
        Path(download).unlink()
        try:
            bundle = load_bundle(bundle_dir, trusted_keys=keys)
        except BundleError as exc:
            raise BundleRejectedError(f"the bundle from {shown} was rejected: {exc}. Nothing was installed") from exc
        listed = {MANIFEST_NAME, *(bundle.manifest.get("files") or {})}
        unlisted = sorted(p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*")
                          if not p.is_dir() and p.relative_to(bundle_dir).as_posix() not in listed)
        if unlisted:
            raise BundleRejectedError(f"the bundle from {shown} holds files its manifest does not list "
                                      f"({', '.join(unlisted[:5])}); only hashed files may be deployed — re-pack it "
                                      "with `ftedge pack`")
        final = name or _check_name(bundle.manifest.get("name"), "the manifest's bundle name", BundleRejectedError)
        try:
            return _install(bundle_dir, root, final, keys, replace)
        except OSError as exc:
            raise DeployError(f"cannot install the bundle as {root / final}: {exc}; check space and permissions "
                              f"of {root}") from exc
    finally:
        Path(download).unlink(missing_ok=True)
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)


def _install(bundle_dir: Path, root: Path, name: str, keys: list[Any] | None, replace: bool) -> Path:
    """Rename the verified ``bundle_dir`` to ``root/name`` (idempotent for an identical bundle)."""
    target = root / name
    if target.exists() or target.is_symlink():
        new_sha = sha256_file(bundle_dir / MANIFEST_NAME)
        old_manifest = target / MANIFEST_NAME
        if old_manifest.is_file() and sha256_file(old_manifest) == new_sha:
            try:
                load_bundle(target, trusted_keys=keys)
                log.info("bundle %s is already deployed (same manifest); nothing to do", target)
                return target
            except BundleError as exc:
                problem = f"holds this bundle but fails verification ({exc})"
        else:
            problem = "holds a different bundle"
        if not replace:
            raise BundleExistsError(f"{target} {problem}; deploy under another name, or pass replace=True "
                                    f"(the old folder is kept as {name}.replaced-<time>)")
        _fsync_tree(bundle_dir)
        backup = _backup_path(root, name)
        os.rename(target, backup)
        try:
            os.rename(bundle_dir, target)
        except BaseException:
            os.rename(backup, target)
            raise
        log.warning("replaced bundle %s; the old one is kept as %s", target, backup)
    else:
        _fsync_tree(bundle_dir)
        os.rename(bundle_dir, target)
    fsync_dir(root)
    return target


def remove_stale_temp(bundle_root: Path) -> list[Path]:
    """Remove ``.ftedge-deploy-*`` leftovers of an interrupted deploy (power loss); call when none is running."""
    removed = []
    for p in Path(bundle_root).glob(f"{TEMP_PREFIX}*"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed
