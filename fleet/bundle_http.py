"""The collector's bundle downloads: ``GET``/``HEAD /bundles/<sha256>.tar.gz`` for holders of a signed URL.

A mixin of :class:`~ftedge.fleet.http.FleetHTTPServer`'s request handler (which sets ``fleet_server`` and
``timeout``): the signature (:mod:`.url_signing`) is checked before the archive is looked up, single ranges
are honoured (206/416), files are streamed in chunks with a deadline per write and for the whole transfer, and
at most ``MAX_BUNDLE_TRANSFERS`` run at once, so downloads never take the connections the dashboard needs.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any
from urllib.parse import urlparse

from . import url_signing
from .bundle_store import SUFFIX as BUNDLE_SUFFIX
from .bundle_store import valid_sha

log = logging.getLogger(__name__)

BUNDLE_CHUNK = 256 * 1024      # bytes per write of a bundle download
BUNDLE_MIN_RATE = 16 * 1024    # bytes/s a bundle download must average (beyond REQUEST_DEADLINE_S), or it is cut
MAX_BUNDLE_TRANSFERS = 32      # bundle downloads at once (at most half of http.MAX_CONNECTIONS: the rest stay free)
BUNDLE_RETRY_AFTER_S = 5       # the Retry-After of the 503 a download beyond MAX_BUNDLE_TRANSFERS gets
BUNDLE_MAX_AGE_S = 365 * 86400  # Cache-Control max-age of an archive (content-addressed: it never changes)
CLIENT_GONE = 499               # the code a bundle request is counted under when its client left before the reply


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """The byte range ``(first, last)`` (inclusive) a ``Range`` header asks of a ``size``-byte file; None to
    send the whole file (no header, a malformed one, another unit, or several ranges: RFC 9110 14.2 lets a
    server ignore those); ``"unsatisfiable"`` when the one range lies past the end (416)."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    first_s, last_s = first_s.strip(), last_s.strip()
    if not dash or not all(x.isascii() and x.isdigit() for x in (first_s, last_s) if x) or not (first_s or last_s):
        return None
    if not first_s:                         # bytes=-N: the last N bytes
        n = int(last_s)
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else "unsatisfiable"
    first = int(first_s)
    if last_s and int(last_s) < first:
        return None                         # invalid: ignored
    if first >= size:
        return "unsatisfiable"
    return first, min(int(last_s), size - 1) if last_s else size - 1


class BundleRequests:
    """The handler methods that answer bundle requests."""

    fleet_server: Any
    timeout: float

    def _bundle(self, head: bool) -> None:
        code, sent = 500, 0
        try:
            code, sent = self._serve_bundle(head)
        except OSError as exc:    # the client left before the headers were written
            code, self.close_connection = CLIENT_GONE, True
            log.info("bundle request %s: the client left (%s)", self.path.split("?")[0], exc)
        finally:
            self.fleet_server._count_bundle(code, sent)

    def _text(self, code: int, text: str, head: bool, headers: dict[str, str] | None = None) -> int:
        body = (text + "\n").encode()
        self._reply(code, b"" if head else body, "text/plain; charset=utf-8", headers)
        return code

    def _serve_bundle(self, head: bool) -> tuple[int, int]:
        """Answer a bundle request; return (HTTP code, body bytes sent)."""
        if not self._url_ok():
            return 400, 0
        url = urlparse(self.path)
        name = url.path[len("/bundles/"):]
        sha = name[: -len(BUNDLE_SUFFIX)] if name.endswith(BUNDLE_SUFFIX) else ""
        if self.fleet_server.bundles is None or not valid_sha(sha):
            return self._text(404, "no such bundle: this collector serves /bundles/<sha256>.tar.gz of the "
                              "archives its rollouts published", head), 0
        if self.fleet_server._url_key is None:
            return self._text(403, "this collector has no URL key, so no download is authorized", head), 0
        reason = url_signing.verify(self.fleet_server._url_key, sha, url.query)
        if reason is not None:
            return self._text(403, f"download refused: {reason}; ask the collector for a new deploy "
                              "command (its URL is signed for one device, rollout and time)", head), 0
        path = self.fleet_server.bundles.path(sha)
        f = None
        try:
            f = open(path, "rb") if path is not None else None   # noqa: SIM115 - closed below
        except OSError:
            pass
        if f is None:
            return self._text(404, "no such bundle: it was never published here (or was removed)", head), 0
        with f:
            return self._send_file(f, sha, head)

    def _send_file(self, f: Any, sha: str, head: bool) -> tuple[int, int]:
        size = os.fstat(f.fileno()).st_size
        etag = f'"{sha}"'
        wanted = parse_range(self.headers.get("Range"), size)
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range.strip() != etag:
            wanted = None           # the client's partial copy is of another file: send the whole one
        common = {"Accept-Ranges": "bytes", "ETag": etag}
        if wanted == "unsatisfiable":
            return self._text(416, f"the range {self.headers.get('Range')!r} lies past the end of the "
                              f"{size}-byte archive", head, {**common, "Content-Range": f"bytes */{size}"}), 0
        first, last = wanted if isinstance(wanted, tuple) else (0, size - 1)
        code = 206 if isinstance(wanted, tuple) else 200
        if not self.fleet_server._bundle_slots.acquire(blocking=False):
            return self._text(503, "too many bundle downloads at once: retry shortly", head,
                              {"Retry-After": str(BUNDLE_RETRY_AFTER_S)}), 0
        try:
            self.connection.settimeout(self.timeout)
            self.send_response(code)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(last - first + 1))
            self.send_header("Cache-Control", f"private, max-age={BUNDLE_MAX_AGE_S}, immutable")
            for k, v in common.items():
                self.send_header(k, v)
            if code == 206:
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            self.end_headers()
            return code, 0 if head else self._stream(f, first, last - first + 1)
        finally:
            self.fleet_server._bundle_slots.release()

    def _stream(self, f: Any, offset: int, length: int) -> int:
        """Send ``length`` bytes of ``f`` from ``offset`` in chunks; each write within the request deadline,
        the whole within ``self.timeout + length / BUNDLE_MIN_RATE`` (else the connection is dropped)."""
        end = time.monotonic() + self.timeout + length / BUNDLE_MIN_RATE
        f.seek(offset)
        sent = 0
        try:
            while sent < length:
                chunk = f.read(min(BUNDLE_CHUNK, length - sent))
                if not chunk:
                    raise OSError("the archive is shorter than when the download started")
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the download averaged under {BUNDLE_MIN_RATE} bytes/s")
                self.connection.settimeout(min(self.timeout, left))   # sendall: the timeout bounds the write
                self.wfile.write(chunk)
                sent += len(chunk)
        except OSError as exc:
            log.info("bundle download of %s cut after %d of %d bytes: %s", self.path.split("?")[0], sent,
                     length, exc)
            self.close_connection = True
        return sent
