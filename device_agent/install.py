"""Fetch a packed bundle (:mod:`ftedge.bundle.pack`), verify it and install it atomically (the agent's deploy).

:func:`deploy_bundle` downloads into a temporary file inside the bundle root (hashing while it streams,
within a size cap and an overall deadline), refuses a wrong sha256 before unpacking, then streams the
archive through :mod:`ftedge.bundle.archive`: the manifest first (schema and signature checked before
anything else is written), then only the files its table lists, each checked against its size and hash.
It installs the verified folder by rename under :func:`bundle_lock`. On any failure the bundle root is
left as it was.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import fcntl
import glob
import hashlib
import json
import logging
import os
import random
import re
import shutil
import stat
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException, IncompleteRead
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

import ftedge
from ftedge.errors import (  # noqa: F401 - the deploy errors, re-exported for the agent and tests
    BundleError,
    BundleExistsError,
    BundleRejectedError,
    BundleRestoreError,
    DeployError,
    DeployRequestError,
    DowngradeError,
    FetchError,
    FtedgeError,
    HashMismatchError,
    UnsafeArchiveError,
)
from ftedge.bundle.archive import unpack_bundle_archive
from ftedge.bundle.loader import load_bundle
from ftedge.durable import swap_dir
from ftedge.bundle.hashing import sha256_file
from ftedge.bundle.manifest import MANIFEST_NAME, check_schema
from ftedge.bundle.signing import verify_manifest

log = logging.getLogger(__name__)

TEMP_PREFIX = ".ftedge-deploy-"
LOCK_NAME = ".ftedge-bundles.lock"
_CHUNK = 1 << 20
MAX_RESUMES = 5         # resumed requests (Range) of one http(s) download cut mid-way, within its deadline
RESUME_PAUSE_S = 0.5    # wait before the Nth resume: N times this (at most half the time left)
MAX_BUSY_RETRIES = 30   # tries again after a 503/429 (a collector serving its cap of downloads), within the deadline
BUSY_PAUSE_S = 5.0      # wait after a 503/429 without a usable Retry-After (and the most a Retry-After may ask)
MAX_CONNECT_RETRIES = 8  # tries again when the server refuses or drops the connection before answering (a collector
CONNECT_PAUSE_S = 1.0    # restarting mid-rollout); the Nth waits min(2**(N-1), 10) times this, within the deadline
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_SHA_RE = re.compile(r"[0-9a-f]{64}")


def _redact(url: str) -> str:
    """The URL without credentials or query string (presigned URLs carry tokens there)."""
    try:
        p = urllib.parse.urlsplit(url)
        host = (p.hostname or "") + (f":{p.port}" if p.port else "")
    except ValueError:
        return "<unparseable URL>"
    return urllib.parse.urlunsplit((p.scheme, host, p.path, "…" if p.query else "", ""))


# -- fetch --------------------------------------------------------------------------------------------


Progress = Callable[[int, "int | None"], None]


def _open_file(url: str, file_root: Path | None, max_bytes: int) -> tuple[IO[bytes], int]:
    """Open a file:// URL: only a regular file, and (with ``file_root``) only one under that folder."""
    shown = _redact(url)
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise DeployRequestError(f"{shown} names another host; a file:// URL must be file:///ABSOLUTE/PATH")
    path = Path(os.path.realpath(urllib.request.url2pathname(parts.path)))
    if file_root is not None:
        root = Path(os.path.realpath(file_root))
        if path != root and root not in path.parents:
            raise DeployRequestError(f"{shown} is not under the deploy file_root {root}; copy the archive there "
                                     "or serve it over https")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise FetchError(f"cannot open {shown}: {exc.strerror or exc}; check the path and its permissions") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FetchError(f"{shown} is not a regular file (a device, FIFO or folder); give the path of a "
                         "`ftedge pack` archive")
    if st.st_size > max_bytes:
        os.close(fd)
        raise FetchError(f"{shown} is {st.st_size} bytes, more than the {max_bytes}-byte limit; raise max_bytes "
                         "if this bundle is really that large")
    return os.fdopen(fd, "rb"), st.st_size


def _request(url: str) -> urllib.request.Request:
    """The GET for ``url``; userinfo (``https://USER:PASS@host/...``) becomes a Basic Authorization header."""
    headers = {"User-Agent": f"ftedge/{ftedge.__version__}"}
    p = urllib.parse.urlsplit(url)
    if p.username is not None:
        cred = f"{urllib.parse.unquote(p.username)}:{urllib.parse.unquote(p.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode("ascii")
        host = f"[{p.hostname}]" if ":" in (p.hostname or "") else (p.hostname or "")
        host += f":{p.port}" if p.port else ""
        url = urllib.parse.urlunsplit((p.scheme, host, p.path, p.query, ""))
    return urllib.request.Request(url, headers=headers)


def _digits(text: str) -> bool:
    """Whether ``text`` is a decimal number (ASCII: ``"²".isdigit()`` is true, and ``int("²")`` raises)."""
    return text.isascii() and text.isdigit()


def _content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``(first, last, total or None)`` of a ``Content-Range: bytes FIRST-LAST/TOTAL`` header, or None."""
    unit, _, rest = (value or "").strip().partition(" ")
    span, _, total = rest.partition("/")
    first, _, last = span.partition("-")
    if unit.lower() != "bytes" or not (_digits(first) and _digits(last)) or not (_digits(total) or total == "*"):
        return None
    return int(first), int(last), int(total) if _digits(total) else None


def _busy_pause(exc: urllib.error.HTTPError, tries: int, end: float | None) -> float | None:
    """How long to wait before asking again after ``exc``, or None to give up: only a 503/429 (the server is busy),
    at most ``MAX_BUSY_RETRIES`` times, and only if the wait ends before the deadline. The wait is the server's
    ``Retry-After`` (seconds, at most ``BUSY_PAUSE_S``) times 1 to 2, so devices told together spread out."""
    if exc.code not in (429, 503) or tries >= MAX_BUSY_RETRIES:
        return None
    raw = (exc.headers.get("Retry-After") or "").strip() if exc.headers is not None else ""
    base = min(float(raw), BUSY_PAUSE_S) if _digits(raw) else BUSY_PAUSE_S
    pause = base * (1 + random.random())   # noqa: S311 - jitter, not a secret
    if end is not None and time.monotonic() + pause >= end:
        return None
    return pause


def _fetch(url: str, out: IO[bytes], timeout: float, max_bytes: int, progress: Progress | None = None,
           deadline_s: float | None = None, file_root: Path | None = None) -> str:
    """Stream ``url`` into ``out`` within ``deadline_s`` seconds in all; return the sha256 of what was written.

    An http(s) download cut after its response began (connection reset, short body, read timeout) resumes with
    ``Range: bytes=DONE-`` (and ``If-Range`` with the first response's ETag) up to ``MAX_RESUMES`` times within
    the deadline: a 206 from DONE is appended, a 200 (the server ignored the range) starts over."""
    shown = _redact(url)
    h, n = hashlib.sha256(), 0
    end = None if deadline_s is None else time.monotonic() + deadline_s
    read_timeout = timeout if deadline_s is None else max(0.1, min(timeout, deadline_s))
    is_file = urllib.parse.urlsplit(url).scheme.lower() == "file"
    etag: str | None = None
    resumes = busy = connects = 0
    started = False          # a response arrived: from then on a cut is resumed

    def too_slow() -> FetchError:
        return FetchError(f"download of {shown} took longer than the {deadline_s:g} s deadline "
                          f"({n} bytes so far); retry from a faster server or raise the deploy deadline_s")

    while True:
        try:
            if is_file:
                resp, total = _open_file(url, file_root, max_bytes)
                read = resp.read1
            else:
                request = _request(url)
                if n:
                    request.add_header("Range", f"bytes={n}-")
                    if etag:
                        request.add_header("If-Range", etag)
                wait = read_timeout if end is None else max(0.1, min(read_timeout, end - time.monotonic()))
                resp = urllib.request.urlopen(request, timeout=wait)  # noqa: S310 - scheme checked by the caller
                started = True
                length = resp.headers.get("Content-Length")
                body = int(length) if length and _digits(length.strip()) else None
                if n and resp.status == 206:
                    span = _content_range(resp.headers.get("Content-Range"))
                    if span is None or span[0] != n:
                        resp.close()
                        raise FetchError(f"{shown} answered the resume from byte {n} with the range "
                                         f"{resp.headers.get('Content-Range')!r}; retry the deploy")
                    total = span[2] if span[2] is not None else span[1] + 1
                elif n and resp.status == 200:   # the server ignores ranges (or the file changed): start over
                    log.info("download of %s: the server sent the whole archive again; starting over", shown)
                    out.seek(0)
                    out.truncate()
                    h, n = hashlib.sha256(), 0
                    total = body
                elif n:
                    resp.close()
                    raise FetchError(f"{shown} answered the resume from byte {n} with HTTP {resp.status}; "
                                     "retry the deploy")
                else:
                    total = body
                    tag = (resp.headers.get("ETag") or "").strip()
                    etag = tag if tag.startswith('"') else None    # If-Range takes only a strong validator
                read = resp.read1 if hasattr(resp, "read1") else resp.read
            with resp:
                if total is not None and total > max_bytes:
                    raise FetchError(f"{shown} is {total} bytes, more than the {max_bytes}-byte limit; "
                                     "raise max_bytes if this bundle is really that large")
                while chunk := read(_CHUNK):
                    n += len(chunk)
                    if n > max_bytes:
                        raise FetchError(f"{shown} sent more than the {max_bytes}-byte limit; download stopped "
                                         "(raise max_bytes if this bundle is really that large)")
                    if end is not None and time.monotonic() > end:
                        raise too_slow()
                    h.update(chunk)
                    try:
                        out.write(chunk)
                    except OSError as exc:   # disk full: resuming cannot help
                        raise FetchError(f"cannot store the download of {shown}: {exc}; free space in the bundle "
                                         "root") from exc
                    if progress is not None:
                        progress(n, total)
                if not is_file and total is not None and n < total:   # read1 just returns b"" on a short body
                    raise IncompleteRead(b"", total - n)
            break
        except urllib.error.HTTPError as exc:
            pause = _busy_pause(exc, busy, end)
            if pause is None:
                raise FetchError(f"{shown} answered HTTP {exc.code} {exc.reason}; check the URL and that the server "
                                 "serves the archive") from exc
            busy += 1
            log.info("download of %s: the server is busy (HTTP %d); trying again in %.1f s (%d of %d)", shown,
                     exc.code, pause, busy, MAX_BUSY_RETRIES)
            time.sleep(pause)
        except (OSError, HTTPException) as exc:  # resets, timeouts, truncated bodies, refused reconnects
            left = None if end is None else end - time.monotonic()
            reason = getattr(exc, "reason", exc)
            if not is_file and not started and isinstance(reason, (ConnectionError, TimeoutError)) \
                    and connects < MAX_CONNECT_RETRIES:
                pause = CONNECT_PAUSE_S * min(2 ** connects, 10)
                if left is None or pause < left:
                    connects += 1
                    log.info("download of %s: %s; trying again in %.1f s (%d of %d)", shown, reason, pause,
                             connects, MAX_CONNECT_RETRIES)
                    time.sleep(pause)
                    continue
            if is_file or not started or resumes >= MAX_RESUMES or (left is not None and left <= 0):
                if isinstance(exc, urllib.error.URLError) and not started:
                    raise FetchError(f"cannot fetch {shown}: {exc.reason}; check the URL and the network") from exc
                if left is not None and left <= 0:
                    raise too_slow() from exc
                raise FetchError(f"download of {shown} failed after {n} bytes"
                                 + (f" and {resumes} resumes" if resumes else "")
                                 + f": {type(exc).__name__}: {exc}; retry the deploy") from exc
            resumes += 1
            pause = RESUME_PAUSE_S * resumes if left is None else min(RESUME_PAUSE_S * resumes, left / 2)
            log.info("download of %s cut after %d bytes (%s: %s); resuming from there (%d of %d) in %.1f s",
                     shown, n, type(exc).__name__, exc, resumes, MAX_RESUMES, pause)
            time.sleep(pause)
    out.flush()
    os.fsync(out.fileno())
    return h.hexdigest()



# -- lock ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def bundle_lock(bundle_root: str | Path, shared: bool = False) -> Iterator[None]:
    """Hold the bundle root's lock: exclusive while a deploy swaps a folder in, shared while a job pins one.

    Blocks until granted. It is an ``flock`` on ``BUNDLE_ROOT/.ftedge-bundles.lock``, so it excludes other
    threads (each call opens its own descriptor) and other processes alike.
    """
    root = Path(bundle_root)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# -- deploy -------------------------------------------------------------------------------------------


def _check_name(name: str, what: str, error: type[DeployError]) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise error(f"{what} {name!r} is not usable as a folder name: use letters, digits, '.', '_', '+', '-' "
                    "(up to 128, not starting with '.' or '-')")
    return name


# What `_backup_path` names a replaced bundle: NAME.replaced-<UTC time>[-N]; a rollback restores only these.
REPLACED_SUFFIX_RE = re.compile(r"\.replaced-\d{8}T\d{6}Z(?:-\d{1,6})?")


def _backup_path(root: Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    candidate, i = root / f"{name}.replaced-{stamp}", 1
    while candidate.exists() or candidate.is_symlink():
        candidate, i = root / f"{name}.replaced-{stamp}-{i}", i + 1
    return candidate


def _created(manifest: dict[str, Any]) -> _dt.datetime | None:
    """The manifest's ``created_at`` (the exporter writes it, and the signature covers it), or None."""
    value = manifest.get("created_at")
    try:
        when = _dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when


def check_not_older(new: dict[str, Any], old: dict[str, Any], where: str) -> None:
    """Refuse ``new`` if it was created before ``old`` (no ``created_at`` counts as oldest)."""
    old_at, new_at = _created(old), _created(new)
    if old_at is not None and (new_at is None or new_at < old_at):
        raise DowngradeError(
            f"the bundle (created {new.get('created_at') or 'at an unknown time'}) is older than the one at {where} "
            f"(created {old.get('created_at')}); refusing a downgrade — send args.allow_downgrade: true "
            "if the rollback is intended")


def deploy_bundle(url: str, sha256: str, bundle_root: Path, name: str | None = None,
                  trusted_keys: Iterable[Any] | None = None, timeout: float = 60, max_bytes: int = 2 * 2**30,
                  replace: bool = False, progress: Progress | None = None, *, deadline_s: float | None = None,
                  allow_file: bool = True, file_root: Path | None = None, allow_downgrade: bool = False,
                  keep_replaced: int | None = None, report: dict[str, Any] | None = None) -> Path:
    """Fetch the .tar.gz at ``url``, check it is ``sha256``, verify it and install it as ``bundle_root/NAME``.

    - ``url``: http://, https:// (certificates verified) or file:// (when ``allow_file``; only regular files,
      and only under ``file_root`` when given). ``timeout`` bounds connecting and each read;
      ``deadline_s`` the whole download. ``max_bytes`` bounds the download *and* the unpacked size.
    - ``name``: the folder to install as (default: the manifest's ``name``).
    - ``trusted_keys``: public key PEM paths/texts; when given (even empty) the manifest must be signed by one
      of them, checked before any member but the manifest is unpacked. ``None`` skips signature checks.
    - An existing identical bundle (same ``manifest.json`` sha256, still verifying) is returned as is; a
      different one is refused unless ``replace``, which renames it to ``NAME.replaced-<UTC time>`` (keeping
      the newest ``keep_replaced`` of those when given). A bundle created before the one it replaces is
      refused unless ``allow_downgrade``.
    - ``progress(bytes_done, bytes_total_or_None)`` is called after each downloaded chunk; an exception it
      raises cancels the deploy (it propagates after the cleanup).
    - ``report``: a dict that, on success, gets ``replaced`` (the ``NAME.replaced-<time>`` folder the old
      bundle was kept as, or None: nothing replaced, the identical bundle was already there, or
      ``keep_replaced = 0`` removed it) and ``manifest_sha256`` (of the installed ``manifest.json``).

    Returns the installed bundle's path. Raises a :class:`DeployError` subclass (``.reason`` names the
    stage); on any failure nothing is added to ``bundle_root``. Error messages never carry a hash of what
    was read.
    """
    shown = _redact(url)
    scheme = urllib.parse.urlsplit(url).scheme.lower() if isinstance(url, str) else ""
    allowed = ("http", "https", "file") if allow_file else ("http", "https")
    if scheme not in allowed:
        raise DeployRequestError(f"cannot deploy from {shown}: use an "
                                 + ("http://, https:// or file:// URL" if allow_file else
                                    "http:// or https:// URL (file:// URLs need [deploy] file_root on the device)"))
    expected = sha256.strip().lower() if isinstance(sha256, str) else ""
    if not _SHA_RE.fullmatch(expected):
        raise DeployRequestError(f"sha256 {sha256!r} is not 64 hex digits; give the sha256 `ftedge pack` printed")
    if name is not None:
        _check_name(name, "bundle name", DeployRequestError)
    keys = None
    if trusted_keys is not None:
        from ftedge.bundle.signing import load_trusted_keys

        try:  # load now: a key problem must not cost a download
            keys = list(load_trusted_keys(trusted_keys).values())
        except FtedgeError as exc:
            raise DeployRequestError(f"trusted keys: {exc}") from exc
        if not keys:
            raise DeployRequestError("signatures are required but no trusted keys are configured, so every bundle "
                                     "is refused; add [deploy] trusted_keys = [\"FLEET.pub.pem\"]")
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
            digest = _fetch(url, out, timeout, max_bytes, progress, deadline_s, file_root)
        if digest != expected:  # never say what the hash was: it would reveal a digest of any readable file
            raise HashMismatchError(f"{shown} does not have the expected sha256 {expected}: the download is damaged "
                                    "or the URL serves another file; nothing was unpacked")

        def accept(manifest: dict[str, Any]) -> None:
            try:
                check_schema(manifest, "the archive's manifest")
                if keys is not None:
                    verify_manifest(manifest, keys)
            except BundleError as exc:
                raise BundleRejectedError(f"the bundle from {shown} was rejected: {exc}. Nothing was "
                                          "unpacked") from exc

        stage = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=root))
        bundle_dir = unpack_bundle_archive(Path(download), stage, max_bytes, accept)
        Path(download).unlink()
        try:
            bundle = load_bundle(bundle_dir, trusted_keys=keys)
        except BundleError as exc:
            raise BundleRejectedError(f"the bundle from {shown} was rejected: {exc}. Nothing was installed") from exc
        final = name or _check_name(bundle.manifest.get("name"), "the manifest's bundle name", BundleRejectedError)
        try:
            with bundle_lock(root):
                return _install(bundle_dir, root, final, keys, replace, allow_downgrade, keep_replaced, report)
        except OSError as exc:
            raise DeployError(f"cannot install the bundle as {root / final}: {exc}; check space and permissions "
                              f"of {root}") from exc
    finally:
        Path(download).unlink(missing_ok=True)
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)


def _install(bundle_dir: Path, root: Path, name: str, keys: list[Any] | None, replace: bool,
             allow_downgrade: bool = False, keep_replaced: int | None = None,
             report: dict[str, Any] | None = None) -> Path:
    """Rename the verified ``bundle_dir`` to ``root/name`` (idempotent for an identical bundle); hold the lock.
    ``report`` (when given) gets ``replaced`` and ``manifest_sha256`` (see :func:`deploy_bundle`)."""
    target = root / name
    new_sha = sha256_file(bundle_dir / MANIFEST_NAME)
    if report is not None:
        report.update(replaced=None, manifest_sha256=new_sha)
    if target.exists() or target.is_symlink():
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
        if not allow_downgrade and old_manifest.is_file() and not old_manifest.is_symlink():
            try:
                old = json.loads(old_manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = {}
            new = json.loads((bundle_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
            check_not_older(new, old if isinstance(old, dict) else {}, str(target))
        backup = _backup_path(root, name)
        swap_dir(bundle_dir, target, backup)
        log.warning("replaced bundle %s; the old one is kept as %s", target, backup)
        if keep_replaced is not None:
            prune_replaced(root, name, keep_replaced)
        if report is not None and backup.is_dir():  # keep_replaced = 0 removes it at once
            report["replaced"] = backup.name
    else:
        swap_dir(bundle_dir, target)
    return target


def prune_replaced(bundle_root: Path, name: str, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` ``NAME.replaced-*`` folders; return what was removed."""
    old = sorted((p for p in Path(bundle_root).glob(f"{glob.escape(name)}.replaced-*")
                  if p.is_dir() and not p.is_symlink()), key=lambda p: (p.stat().st_mtime_ns, p.name))
    gone = old[: max(0, len(old) - keep)]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
        log.info("removed old bundle %s (keeping %d replaced folder(s) per bundle)", p, keep)
    return gone


# -- rollback: put a replaced bundle back ------------------------------------------------------------------


def check_restore_names(name: Any, restore: Any) -> tuple[str, str]:
    """``(name, restore)`` if ``restore`` is exactly a ``NAME.replaced-<UTC time>[-N]`` folder name of bundle
    ``name`` (what a ``replace`` deploy or a rollback keeps); DeployRequestError otherwise."""
    _check_name(name, "bundle name", DeployRequestError)
    if not isinstance(restore, str) or not (restore.startswith(f"{name}.")
                                            and REPLACED_SUFFIX_RE.fullmatch(restore, len(name))):
        raise DeployRequestError(f"restore {restore!r} is not a kept folder of bundle {name!r}: give the "
                                 f"{name}.replaced-YYYYMMDDTHHMMSSZ name a replace deploy answered as `replaced`")
    return name, restore


def restore_replaced(bundle_root: Path, name: str, restore: str, trusted_keys: Iterable[Any] | None = None,
                     check: Callable[[], None] | None = None) -> str | None:
    """Put the kept folder ``restore`` (``NAME.replaced-<time>``) back as ``bundle_root/NAME``: a deploy's rollback.

    Under the exclusive :func:`bundle_lock`: ``check()`` runs first (it raises to refuse, e.g. while a job
    trains on the bundle); ``restore`` must be a real folder (not a symlink) holding a bundle that verifies
    (hashes; the signature when ``trusted_keys`` is given); then the current ``NAME`` becomes a new
    ``NAME.replaced-<time>`` (a later rollback or deploy can bring it back) and ``restore`` takes its place
    in one :func:`~ftedge.durable.swap_dir`. Returns that new folder's name (None when there was no ``NAME``).
    Raises DeployRequestError for a malformed name, BundleRestoreError otherwise; a failure changes nothing.
    """
    check_restore_names(name, restore)
    root = Path(bundle_root)
    src, target = root / restore, root / name
    with bundle_lock(root):
        if check is not None:
            check()
        try:
            mode = os.lstat(src).st_mode
        except OSError as exc:
            raise BundleRestoreError(f"there is no kept bundle {restore} under {root} ({exc.strerror or exc}); "
                                     f"name one that exists (`[deploy] keep_replaced` bounds how many are kept), "
                                     f"or deploy the bundle again") from None
        if not stat.S_ISDIR(mode):
            raise BundleRestoreError(f"{src} is not a folder (a symlink or a file); refusing to restore it — "
                                     "deploy the bundle again instead")
        try:
            load_bundle(src, trusted_keys=None if trusted_keys is None else list(trusted_keys))
        except BundleError as exc:
            raise BundleRestoreError(f"the kept bundle {restore} does not verify ({exc}); deploy the bundle "
                                     "again instead") from exc
        backup = _backup_path(root, name)
        try:
            moved = swap_dir(src, target, backup)
        except OSError as exc:
            raise BundleRestoreError(f"cannot put {src} back as {target}: {exc}; check space and permissions "
                                     f"of {root}") from exc
    log.warning("restored bundle %s from %s%s", target, restore,
                f"; the one it replaced is kept as {moved.name}" if moved else "")
    return moved.name if moved is not None else None


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
