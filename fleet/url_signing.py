"""Signed, short-lived bundle download URLs: ``/bundles/<sha256>.tar.gz?dev=…&ro=…&exp=…&sig=…``.

``sig`` is HMAC-SHA256, under the collector's URL key, over the archive's sha256, the device, the rollout and
the expiry (Unix seconds), encoded unambiguously (a JSON array: no field can run into the next). So a URL
works for one archive, one device and one rollout until it expires; any change to a part is a bad signature.
The URL reaches its device inside its own ``deploy`` command, on a topic the broker ACL lets only that device
read. The key is 32 random bytes in a 0600 file (:func:`load_or_create_key`); collectors sharing a database
share the key file. The URL is authorization only: the device still checks the sha256 and the signature of
what it downloads.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode

from ftedge.durable import fsync_dir, fsync_file
from ftedge.errors import KeyFileError

log = logging.getLogger(__name__)

KEY_BYTES = 32          # the URL key's length
_DOMAIN = "ftedge-bundle-url/1"   # a signature for a bundle URL is never valid for anything else
_PARAMS = ("dev", "ro", "exp", "sig")


def _mac(key: bytes, sha256: str, device: str, rollout: str, expires: int) -> str:
    msg = json.dumps([_DOMAIN, sha256, device, rollout, int(expires)], ensure_ascii=True, separators=(",", ":"))
    return hmac.new(key, msg.encode("ascii"), hashlib.sha256).hexdigest()


def sign(key: bytes, sha256: str, device: str, rollout: str, expires: int) -> str:
    """The query string ``dev=…&ro=…&exp=…&sig=…`` authorizing ``device`` (give ``FLEET/DEVICE`` to bind the
    fleet too) to download archive ``sha256`` for ``rollout`` until ``expires`` (Unix seconds)."""
    return urlencode({"dev": device, "ro": rollout, "exp": str(int(expires)),
                      "sig": _mac(key, sha256, device, rollout, expires)})


def bundle_url(base_url: str, key: bytes, sha256: str, device: str, rollout: str, expires: int) -> str:
    """``{base_url}/bundles/{sha256}.tar.gz?{sign(...)}``: the URL to put in the device's deploy command."""
    return f"{base_url.rstrip('/')}/bundles/{sha256}.tar.gz?{sign(key, sha256, device, rollout, expires)}"


def verify(key: bytes, sha256: str, query: str, now: float | None = None) -> str | None:
    """None when ``query`` (a URL's query string) authorizes downloading ``sha256`` now; else the reason:
    ``"missing parameters"``, ``"malformed parameters"`` (a part twice, or an expiry that is not a number),
    ``"bad signature"`` or ``"expired"``. The signature is compared in constant time."""
    q = parse_qs(query, keep_blank_values=True)
    if any(not q.get(p) or not q[p][0] for p in _PARAMS):
        return "missing parameters"
    if any(len(q[p]) != 1 for p in _PARAMS):
        return "malformed parameters"
    raw_exp = q["exp"][0]
    if not (raw_exp.isascii() and raw_exp.isdigit() and len(raw_exp) <= 12):
        return "malformed parameters"
    expected = _mac(key, sha256, q["dev"][0], q["ro"][0], int(raw_exp))
    if not hmac.compare_digest(expected.encode(), q["sig"][0].encode("utf-8", "replace")):
        return "bad signature"
    if int(raw_exp) < (time.time() if now is None else now):
        return "expired"
    return None


def expiry(query: str) -> int | None:
    """The ``exp`` of a URL's query string (Unix seconds), or None; read only after :func:`verify` passed."""
    raw = (parse_qs(query).get("exp") or [""])[0]
    return int(raw) if raw.isascii() and raw.isdigit() else None


def load_or_create_key(path: Path) -> bytes:
    """The URL key in ``path``: read it, or create it (``KEY_BYTES`` random bytes, mode 0600). Creation is
    atomic and first-wins (the file is linked into place, never replaced), so collectors starting together on a
    shared folder end with the same key. Raises :class:`KeyFileError` for a file of the wrong size."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)   # 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(KEY_BYTES))
            fsync_file(tmp)
            try:
                os.link(tmp, path)          # fails if another process created it meanwhile: theirs wins
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
        fsync_dir(path.parent)
    try:
        key = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeyFileError(f"cannot read the bundle URL key {path}: {exc.strerror or exc}; check its permissions "
                           "(it must be readable by the collector only)") from exc
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"the bundle URL key {path} holds {len(key)} bytes, not {KEY_BYTES}; remove it to have a "
                           "new one made (URLs signed with the old key then stop working), or restore the right file")
    if mode & 0o077:
        log.warning("the bundle URL key %s is readable by other users (mode %o): anyone who reads it can sign "
                    "download URLs; chmod 600 it", path, mode & 0o777)
    return key
