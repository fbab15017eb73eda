"""The collector's HTTP server: the JSON API (``/api/devices`` pages, a job, commands; ``/api/rollouts`` and
``/api/rollouts/<name>``, a device's ``/api/devices/<device>/personalization``), ``/metrics`` (:mod:`.metrics`) and
the live dashboard (``/``, ``/fragment``: :mod:`.dashboard`; ``/rollouts/<name>`` and its ``/fragment``:
:mod:`.rollout_page`; ``/devices/<device>?fleet=F`` and its ``/fragment``: :mod:`.device_page`).

Stdlib ``ThreadingHTTPServer`` bound to loopback by default; commands over HTTP need a bearer token (and
are disabled when none is configured; compared in constant time). Every request's ``Host`` must be an IP
address, ``localhost`` or an allowed name (else 421: a DNS-rebinding page cannot read the GET endpoints);
POST bodies have a size cap.

Slow clients: at most ``MAX_CONNECTIONS`` connections are served at once (one thread and one file descriptor
each; further ones get a 503 and are closed at once), and a request must arrive whole within
``REQUEST_DEADLINE_S`` of the connection waiting for it — a per-read timeout alone lets a client that trickles
a byte now and then hold its connection forever, and enough of them used to exhaust the process's file
descriptors (database and MQTT reconnects then failed too).

Bundles (:mod:`.bundle_store`, answered by :mod:`.bundle_http`): ``GET``/``HEAD /bundles/<sha256>.tar.gz?dev=…``
serves a published archive to a device holding a URL signed for it (:mod:`.url_signing`; no bearer token, and
no ``Host`` check: the signature is the authorization, which a DNS-rebinding page does not have), with single
ranges, per-write and per-transfer deadlines and a cap on transfers at once.
"""

from __future__ import annotations

import hmac
import html
import io
import ipaddress
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, unquote, urlencode, urlparse

from .bundle_http import MAX_BUNDLE_TRANSFERS, BundleRequests
from .bundle_store import BundleStore
from .dashboard import dashboard_fragment, dashboard_page, page_args
from .device_page import device_doc, device_fragment, device_html
from .metrics import prometheus_text
from .rollout_page import rollout_doc, rollout_fragment, rollout_html, rollouts_list

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024       # bytes of a POST body (command args)
REQUEST_DEADLINE_S = 30.0  # a request (line, headers, body) must arrive whole within this; also per reply write
MAX_CONNECTIONS = 64       # connections served at once; further ones get 503 and are closed
API_PAGE = 500         # devices per /api/devices page unless ?limit=N
API_PAGE_MAX = 5000    # the largest ?limit=


def devices_api(store: Any, query: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """``GET /api/devices`` for a query string: one page of device views (a JSON list, ``(fleet, device)``
    order) and its headers — ``X-Total-Count`` (devices of ``?fleet=``, or all) and, when more remain,
    ``Link: </api/devices?limit=N&after=FLEET/DEVICE>; rel="next"``. Query: ``limit`` (default ``API_PAGE``,
    at most ``API_PAGE_MAX``), ``after=FLEET/DEVICE`` (the last row of the previous page; keyset, so a device
    added meanwhile shifts nothing), ``fleet``. A bad value raises ValueError (400)."""
    q = parse_qs(query)
    raw_limit = (q.get("limit") or [""])[0].strip()
    if raw_limit and (not (raw_limit.isascii() and raw_limit.isdigit()) or int(raw_limit) < 1):
        raise ValueError(f"limit={raw_limit!r}: give a number of devices from 1 to {API_PAGE_MAX}")
    limit = min(int(raw_limit), API_PAGE_MAX) if raw_limit else API_PAGE
    fleet = (q.get("fleet") or [""])[0] or None
    raw_after = (q.get("after") or [""])[0]
    after = None
    if raw_after:
        a_fleet, sep, a_device = raw_after.partition("/")   # topic levels: neither name holds a "/"
        if not sep or not a_fleet or not a_device:
            raise ValueError(f"after={raw_after!r}: give FLEET/DEVICE of the previous page's last device")
        after = (a_fleet, a_device)
    rows = store.devices_page(fleet=fleet, limit=limit + 1, after=after)
    headers = {"X-Total-Count": str(store.device_count(fleet))}
    if len(rows) > limit:
        rows = rows[:limit]
        nxt = {"limit": limit, **({"fleet": fleet} if fleet else {}),
               "after": f"{rows[-1]['fleet']}/{rows[-1]['device']}"}
        headers["Link"] = f'</api/devices?{urlencode(nxt)}>; rel="next"'
    return rows, headers


def url_problem(path: str) -> str | None:
    """Why a request's path and query cannot name anything the collector stores, or None. Names come from MQTT
    topics, which never hold U+0000 (MQTT 5, 1.5.4), and PostgreSQL text cannot: a NUL reaching a query was a
    500 with a traceback in the log; it is a 400 instead."""
    url = urlparse(path)
    values = [v for pair in parse_qs(url.query, keep_blank_values=True).items() for v in (pair[0], *pair[1])]
    if "\x00" in url.path or any("\x00" in v for v in values):
        return "the URL holds a NUL character (%00): no fleet, device or job name has one"
    return None


def host_allowed(header: str | None, allowed: frozenset[str]) -> bool:
    """Whether a request's ``Host`` header names this server: an IP literal, ``localhost``, or a name in
    ``allowed`` (lower case). A DNS-rebinding page reaches us under the attacker's own name, never these."""
    if not header:
        return False
    h = header.strip().lower()
    if h.startswith("["):                      # [IPv6]:port
        name = h[1:h.find("]")] if "]" in h else ""
    else:
        name, sep, port = h.rpartition(":")
        if not sep or not port.isdigit():
            name = h
    name = name.rstrip(".")
    if not name:
        return False
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return name == "localhost" or name in allowed


class _DeadlineReader(io.RawIOBase):
    """Reads a connection's socket until its handler's ``deadline`` (``time.monotonic()``): each read waits only
    for the time left, and raises TimeoutError once none is (http.server then drops the connection)."""

    def __init__(self, sock: socket.socket, handler: Any) -> None:
        super().__init__()
        self.sock, self.handler = sock, handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive within its deadline")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n" \
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"


class _CappedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them; a connection beyond is answered 503 (best
    effort, without blocking) and closed at once, so slow clients cannot take every file descriptor."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, max_connections: int) -> None:
        self.max_connections = max_connections
        self.slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0            # connections answered 503 (only this thread counts)
        self._warned_at = -1e9
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)   # the thread releases the slot
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def _refuse(self, request: socket.socket) -> None:
        self.refused += 1
        if time.monotonic() - self._warned_at > 60:   # at most one line a minute however many are refused
            self._warned_at = time.monotonic()
            log.warning("HTTP: all %d connections that are served at once are open: refusing further ones with "
                        "503 (%d so far); a slow or idle client holds one until its request deadline",
                        self.max_connections, self.refused)
        body = json.dumps({"error": f"too many connections ({self.max_connections} at once): retry shortly"}).encode()
        try:
            request.setblocking(False)
            request.send(_BUSY % (len(body), body))
            request.recv(65536)   # what already arrived: closing with unread bytes would reset, losing the 503
        except OSError:
            pass
        self.shutdown_request(request)


class FleetHTTPServer:
    """The HTTP side. ``token``: bearer token enabling POST commands (None: commands disabled);
    ``allowed_hosts``: host names (besides IP literals and ``localhost``) the ``Host`` header may carry, e.g.
    the DNS name the dashboard is opened under; ``timeout_s``: the deadline of a request's arrival (and the
    timeout of each reply write); ``max_connections``: connections served at once (see the module docstring).

    ``/metrics`` adds this collector process's series (label ``instance``) given ``collector`` (a
    :class:`~ftedge.fleet.ingest.Collector`: its ``instance`` or ``settings.client_id`` names it, its ``stats``
    are counted) or ``instance`` with an optional ``stats`` callable returning such a dict.

    ``bundles`` and ``url_key``: serve the store's archives at ``/bundles/<sha256>.tar.gz`` to holders of a URL
    signed with ``url_key`` (:func:`~ftedge.fleet.url_signing.bundle_url`). Counted in ``bundle_requests``
    (HTTP code -> requests), ``bundle_bytes`` (body bytes sent) and ``bundle_refused`` (403s)."""

    def __init__(self, store: Any, host: str = "127.0.0.1", port: int = 8080, token: str | None = None,
                 send: Callable[[str, str, str, dict], dict] | None = None,
                 allowed_hosts: Iterable[str] = (), timeout_s: float = REQUEST_DEADLINE_S, collector: Any = None,
                 instance: str | None = None, stats: Callable[[], dict[str, Any]] | None = None,
                 max_connections: int = MAX_CONNECTIONS, bundles: BundleStore | None = None,
                 url_key: bytes | None = None) -> None:
        self.store, self._token, self.send = store, token, send
        self.bundles, self._url_key = bundles, url_key
        self.bundle_requests: dict[int, int] = {}
        self.bundle_bytes = 0
        self.bundle_refused = 0
        self._bundle_lock = threading.Lock()
        self._bundle_slots = threading.BoundedSemaphore(max(1, min(MAX_BUNDLE_TRANSFERS, max_connections // 2)))
        if collector is not None:
            instance = instance or getattr(collector, "instance", None) or collector.settings.client_id
            stats = stats or (lambda: collector.stats)
        self.instance, self.stats = instance, stats
        names = {h.strip().lower().rstrip(".") for h in allowed_hosts if h.strip()}
        if host and not host.replace(".", "").isdigit() and ":" not in host and host not in ("0.0.0.0", ""):
            names.add(host.lower())            # bound to a name: that name is fine too
        self.allowed_hosts = frozenset(names)
        outer = self

        class Handler(BundleRequests, BaseHTTPRequestHandler):
            timeout = timeout_s   # StreamRequestHandler sets it on the socket (the reply's writes keep it)
            fleet_server = outer
            deadline = 0.0        # time.monotonic() by which the current request must have arrived

            def setup(self) -> None:
                super().setup()
                self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self))

            def handle_one_request(self) -> None:
                # The wait for a request counts too: an idle keep-alive connection is closed at the deadline.
                self.deadline = time.monotonic() + timeout_s
                super().handle_one_request()

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("http: " + fmt, *args)

            def _host_ok(self) -> bool:
                if host_allowed(self.headers.get("Host"), outer.allowed_hosts):
                    return True
                self._json(421, {"error": f"Host {self.headers.get('Host')!r} is not a name this server answers "
                                          "to (DNS-rebinding protection): open it by IP address or localhost, or "
                                          "start it with --allow-host NAME"})
                return False

            def _reply(self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
                self.connection.settimeout(timeout_s)   # the last read may have left only a sliver of time
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                self._reply(code, json.dumps(obj).encode(), "application/json", headers)

            def _url_ok(self) -> bool:
                problem = url_problem(self.path)
                if problem:
                    self._json(400, {"error": problem})
                return problem is None

            def do_HEAD(self) -> None:  # noqa: N802 - http.server API
                if urlparse(self.path).path.startswith("/bundles/"):
                    return self._bundle(head=True)
                self._reply(405, b"", "text/plain", {"Allow": "GET, POST"})

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                if urlparse(self.path).path.startswith("/bundles/"):
                    return self._bundle(head=False)   # the signed URL authorizes; no Host check (docstring)
                if not self._host_ok() or not self._url_ok():
                    return
                url = urlparse(self.path)
                parts = [p for p in url.path.split("/") if p]
                try:
                    if url.path == "/":
                        self._reply(200, dashboard_page(outer.store, *page_args(url.query)).encode(),
                                    "text/html; charset=utf-8")
                    elif url.path == "/fragment":
                        self._reply(200, dashboard_fragment(outer.store, *page_args(url.query)).encode(),
                                    "text/html; charset=utf-8")
                    elif url.path == "/metrics":
                        from prometheus_client import CONTENT_TYPE_LATEST

                        self._reply(200, prometheus_text(outer.store, outer.instance, outer.stats,
                                                         outer.bundle_stats()), CONTENT_TYPE_LATEST)
                    elif parts == ["api", "devices"]:
                        try:
                            rows, headers = devices_api(outer.store, url.query)
                        except ValueError as exc:
                            return self._json(400, {"error": str(exc)})
                        self._json(200, rows, headers)
                    elif parts == ["api", "rollouts"]:
                        self._json(200, rollouts_list(outer.store))
                    elif len(parts) == 3 and parts[:2] == ["api", "rollouts"]:
                        doc = rollout_doc(outer.store, parts[2])
                        if doc is None:
                            return self._json(404, {"error": f"no rollout named {unquote(parts[2])!r}: GET "
                                                             "/api/rollouts lists them"})
                        self._json(200, doc)
                    elif parts[:1] == ["rollouts"] and (len(parts) == 2 or parts[2:] == ["fragment"]):
                        doc = rollout_doc(outer.store, parts[1])
                        if doc is None:
                            body = (f"<!doctype html><title>no such rollout</title><p>no rollout named "
                                    f"{html.escape(unquote(parts[1]))}: see <a href=\"/\">the dashboard</a></p>")
                            return self._reply(404, body.encode(), "text/html; charset=utf-8")
                        page = rollout_fragment(doc) if len(parts) == 3 else rollout_html(doc)
                        self._reply(200, page.encode(), "text/html; charset=utf-8")
                    elif parts[:1] == ["devices"] and (len(parts) == 2 or parts[2:] == ["fragment"]):
                        doc = device_doc(outer.store, parts[1], parse_qs(url.query).get("fleet", [None])[0])
                        if doc is None:
                            body = (f"<!doctype html><title>no such device</title><p>no device named "
                                    f"{html.escape(unquote(parts[1]))}: see <a href=\"/\">the dashboard</a></p>")
                            return self._reply(404, body.encode(), "text/html; charset=utf-8")
                        page = device_fragment(doc) if len(parts) == 3 else device_html(doc)
                        self._reply(200, page.encode(), "text/html; charset=utf-8")
                    elif len(parts) == 4 and parts[:2] == ["api", "devices"] and parts[3] == "personalization":
                        doc = device_doc(outer.store, parts[2], parse_qs(url.query).get("fleet", [None])[0])
                        self._json(200, doc) if doc else self._json(404, {"error": "no such device"})
                    elif len(parts) == 5 and parts[:2] == ["api", "devices"] and parts[3] == "jobs":
                        fleet = parse_qs(url.query).get("fleet", [None])[0] or outer._fleet_of(parts[2])
                        job = outer.store.job(fleet, parts[2], parts[4]) if fleet else None
                        self._json(200, job) if job else self._json(404, {"error": "no such device or job"})
                    else:
                        self._json(404, {"error": f"no route {url.path}"})
                except Exception as exc:  # noqa: BLE001 - keep serving
                    log.exception("GET %s failed", url.path)
                    self._json(500, {"error": str(exc)})

            def do_POST(self) -> None:  # noqa: N802
                if not self._host_ok() or not self._url_ok():
                    return
                url = urlparse(self.path)
                parts = [p for p in url.path.split("/") if p]
                if not (len(parts) == 5 and parts[:2] == ["api", "devices"] and parts[3] == "commands"):
                    return self._json(404, {"error": f"no route {url.path}"})
                if not outer._token:
                    return self._json(403, {"error": "commands over HTTP are disabled: start the collector with "
                                                     "--token-file FILE or FTEDGE_FLEET_TOKEN"})
                given = (self.headers.get("Authorization") or "").encode()
                if not hmac.compare_digest(given, f"Bearer {outer._token}".encode()):
                    return self._json(401, {"error": "missing or wrong bearer token: send "
                                                     "'Authorization: Bearer TOKEN' with the collector's token"})
                raw_length = self.headers.get("Content-Length") or "0"
                if not raw_length.isdigit():
                    return self._json(400, {"error": "Content-Length is not a number of bytes"})
                length = int(raw_length)
                if length > MAX_BODY:
                    self.close_connection = True
                    return self._json(413, {"error": f"the body of {length} bytes is too large: command args "
                                                     f"must fit in {MAX_BODY} bytes"})
                if outer.send is None:
                    return self._json(503, {"error": "this server has no MQTT connection to send commands"})
                try:
                    args = json.loads(self.rfile.read(length) or b"{}")
                    if not isinstance(args, dict):
                        raise ValueError("the body must be a JSON object of command args")
                except ValueError as exc:
                    return self._json(400, {"error": str(exc)})
                fleet = parse_qs(url.query).get("fleet", [None])[0] or outer._fleet_of(parts[2])
                if not fleet:
                    return self._json(404, {"error": f"unknown device {parts[2]}"})
                try:
                    self._json(200, outer.send(fleet, parts[2], parts[4], args))
                except TimeoutError as exc:
                    self._json(504, {"error": str(exc)})

        self.httpd = _CappedHTTPServer((host, port), Handler, max_connections)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="ftedge-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def token(self) -> str | None:
        return self._token

    def __repr__(self) -> str:   # never the token
        return f"FleetHTTPServer({self.url}, commands {'enabled' if self._token else 'disabled'})"

    def _count_bundle(self, code: int, sent: int) -> None:
        with self._bundle_lock:
            self.bundle_requests[code] = self.bundle_requests.get(code, 0) + 1
            self.bundle_bytes += sent
            self.bundle_refused += code == 403

    def bundle_stats(self) -> dict[str, Any] | None:
        """The bundle counters for ``/metrics`` (None when this server serves no bundles)."""
        if self.bundles is None:
            return None
        with self._bundle_lock:
            return {"requests": dict(self.bundle_requests), "bytes": self.bundle_bytes}

    def _fleet_of(self, device: str) -> str | None:
        """The first fleet (by name) holding a device named ``device``, or None."""
        fleets = self.store.device_fleets(device)
        return fleets[0] if fleets else None

    def start(self) -> "FleetHTTPServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
