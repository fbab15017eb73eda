"""A real headless browser for tests and benchmarks: Debian ``chromium`` (command line and DevTools protocol).

* :func:`dump_dom` — the DOM after scripts ran (``--dump-dom``), with a virtual-time budget so timers such as
  the dashboard's 2 s live refresh fire without waiting in real time;
* :func:`screenshot` — a PNG of the rendered page (``--screenshot``);
* :class:`Browser` — one page driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``,
  stdlib only, no websocket client), in real time: navigate, evaluate, wait for a condition, screenshot;
* :func:`first_paint` — real-time navigation figures (first contentful paint, DOMContentLoaded, load);
* :func:`parse_html` — a small tree of a DOM dump to assert on;
* :func:`require_chromium` — the browser's path; under CI (``CI=true``) a missing browser **fails** the
  test (never pass CI by skipping), elsewhere it skips with the install hint;
* :func:`png_info`, :func:`count_colour` — a tiny PNG reader (numpy, no Pillow) to check what a screenshot shows.

Every run gets a fresh ``--user-data-dir`` and a timeout. Running as root needs ``--no-sandbox``.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome-headless-shell")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
         "--mute-audio", "--disable-component-update", "--disable-sync")


def find_chromium() -> str | None:
    """``$FTEDGE_CHROMIUM`` or the first Chromium-family browser on PATH (Debian: ``/usr/bin/chromium``)."""
    env = os.environ.get("FTEDGE_CHROMIUM")
    if env:
        return env if Path(env).exists() else shutil.which(env)
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def require_chromium() -> str:
    """The browser path; fails under CI, skips elsewhere, when there is none (tests/helpers/services.py)."""
    from tests.helpers.services import require

    require("chromium")
    return find_chromium()


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    """Run the browser once (own process group, so a timeout kills its helper processes too)."""
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("no chromium on PATH (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="ftedge-chromium-") as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", *args]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise TimeoutError(f"chromium did not finish in {timeout} s: {' '.join(args)}") from None
    if proc.returncode != 0:  # stderr is mostly noise (dbus, zygote): show its tail only on failure
        raise RuntimeError(f"chromium exited with {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc.stdout is not None:
        proc.communicate()
    else:
        proc.wait()


def dump_dom(url: str, budget_ms: int = 5000, timeout: float = 60.0) -> str:
    """The serialized DOM after ``budget_ms`` of virtual time (timers and fetches run; no real wait).
    ``budget_ms`` must be positive: Chromium never returns with a zero budget."""
    if budget_ms <= 0:
        raise ValueError("budget_ms must be > 0")
    return _run([f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout).stdout.decode()


def screenshot(url: str, path: Path | str, size: tuple[int, int] = (1400, 1000), budget_ms: int = 3000,
               timeout: float = 60.0) -> Path:
    """Write a PNG of the page at ``size`` (CSS px) to ``path`` and return it."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    _run([f"--virtual-time-budget={budget_ms}", f"--screenshot={path}", f"--window-size={size[0]},{size[1]}", url],
         timeout)
    if not path.exists():
        raise RuntimeError(f"chromium wrote no screenshot to {path}")
    return path


# -- DevTools protocol over a pipe (fd 3: commands in, fd 4: replies out; NUL-terminated JSON) -------------------

class Browser:
    """One headless Chromium with one page, driven over the DevTools protocol on a pipe
    (``--remote-debugging-pipe``): navigate, evaluate JavaScript, wait for a condition, screenshot — in real
    time. Use as a context manager; every instance has its own fresh profile."""

    def __init__(self, size: tuple[int, int] = (1400, 1000), timeout: float = 30.0) -> None:
        browser = find_chromium()
        if browser is None:
            raise FileNotFoundError("no chromium on PATH (apt-get install chromium)")
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="ftedge-chromium-")
        to_browser_r, self._out = os.pipe()
        self._in, from_browser_w = os.pipe()
        # The browser reads fd 3 and writes fd 4. Move the child's ends above 9 so the shell's
        # redirections cannot clobber one another, then let `bash` put them in place (no preexec_fn:
        # not safe with the test's server threads).
        r, w = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser_r, from_browser_w))
        os.close(to_browser_r)
        os.close(from_browser_w)
        cmd = [browser, *FLAGS, f"--user-data-dir={self._profile.name}", "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec \"$@\" 3<&{r} 4>&{w} {r}<&- {w}>&-", "bash", *cmd],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(r, w),
            start_new_session=True)
        os.close(r)
        os.close(w)
        self._buf = b""
        self._id = 0
        self._events: list[dict[str, Any]] = []
        try:
            target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            self.call("Emulation.setDeviceMetricsOverride", {"width": size[0], "height": size[1],
                                                             "deviceScaleFactor": 1, "mobile": False})
            self.call("Page.enable")
            self.call("Network.enable")
            self.call("Network.setCacheDisabled", {"cacheDisabled": True})
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError("chromium did not answer on the DevTools pipe in time")
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe (did it crash?)")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def _call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A DevTools-protocol command on the page."""
        return self._call(method, params, self._session)

    def _wait_event(self, method: str) -> dict[str, Any]:
        for i, ev in enumerate(self._events):
            if ev.get("method") == method:
                return self._events.pop(i)
        deadline = time.monotonic() + self.timeout
        while True:
            ev = self._read(deadline)
            if ev.get("method") == method:
                return ev
            self._events.append(ev)

    def goto(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self._events = [e for e in self._events if e.get("method") != "Page.loadEventFired"]
        reply = self.call("Page.navigate", {"url": url})
        if reply.get("errorText"):
            raise RuntimeError(f"cannot load {url}: {reply['errorText']}")
        self._wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (promises are awaited)."""
        res = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression!r} threw: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0, poll: float = 0.1) -> Any:
        """Poll ``expression`` until it is truthy; its value. TimeoutError (with the last value) otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} still {value!r} after {timeout} s")
            time.sleep(poll)

    def html(self) -> str:
        return self.evaluate("document.documentElement.outerHTML")

    def events(self, *methods: str) -> list[dict[str, Any]]:
        """The DevTools events of ``methods`` seen so far (e.g. ``Runtime.exceptionThrown`` once ``Runtime.enable``
        was called); a short evaluate first drains those already sent."""
        self.evaluate("0")
        return [e for e in self._events if e.get("method") in methods]

    def console_errors(self) -> list[str]:
        """Uncaught exceptions, ``console.error`` calls and error log entries (failed loads, CSP) so far; call
        :meth:`call` ``("Runtime.enable")`` and ``("Log.enable")`` before navigating."""
        out = []
        for e in self.events("Runtime.exceptionThrown", "Runtime.consoleAPICalled", "Log.entryAdded"):
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                out.append(json.dumps(p.get("exceptionDetails", {}))[:500])
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(json.dumps(p.get("args", []))[:500])
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(f"{p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def screenshot(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"]))
        return path

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._call("Browser.close")
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        for fd in (self._in, self._out):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _kill_group(self.proc)
        self._profile.cleanup()


PAINT_JS = """new Promise(done => {
  const read = () => {
    const nav = performance.getEntriesByType('navigation')[0] || {};
    const fcp = performance.getEntriesByName('first-contentful-paint')[0];
    const fp = performance.getEntriesByName('first-paint')[0];
    if (!fcp) return requestAnimationFrame(read);
    done({first_paint_ms: fp ? fp.startTime : null, first_contentful_paint_ms: fcp.startTime,
      response_end_ms: nav.responseEnd, dom_content_loaded_ms: nav.domContentLoadedEventEnd,
      load_ms: nav.loadEventEnd, transfer_bytes: nav.transferSize, html_bytes: nav.decodedBodySize,
      dom_nodes: document.getElementsByTagName('*').length});
  };
  read();
})"""


def first_paint(url: str, runs: int = 1, size: tuple[int, int] = (1400, 1000), timeout: float = 60.0) -> list[dict]:
    """Load ``url`` ``runs`` times in one headless browser (real time, cache disabled) and return, per run,
    Navigation/Paint Timing figures in ms from navigation start: ``first_paint_ms``,
    ``first_contentful_paint_ms``, ``response_end_ms``, ``dom_content_loaded_ms``, ``load_ms``, plus
    ``transfer_bytes``, ``html_bytes``, ``dom_nodes`` and ``wall_ms`` (navigate → figures read, from Python).
    The first run pays for a cold renderer; later runs are warm. Usable from benchmarks."""
    out: list[dict] = []
    with Browser(size, timeout) as b:
        for _ in range(runs):
            t0 = time.perf_counter()
            b.goto(url)
            figures = dict(b.evaluate(PAINT_JS))
            figures["wall_ms"] = (time.perf_counter() - t0) * 1000.0
            out.append(figures)
    return out


# -- HTML -------------------------------------------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Node:
    """An element of a parsed DOM dump: ``tag``, ``attrs``, ``children``; :attr:`text`, :meth:`find_all`."""

    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[Node | str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def iter(self) -> Iterator[Node]:
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        """Descendants (and self) by tag, class and exact attribute values (``data_x`` matches ``data-x``)."""
        want = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [n for n in self.iter() if (tag is None or n.tag == tag)
                and (cls is None or cls in n.attrs.get("class", "").split())
                and all(n.attrs.get(k) == v for k, v in want.items())]

    def find(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node:
        """The first match; AssertionError when there is none."""
        found = self.find_all(tag, cls, **attrs)
        assert found, f"no <{tag or '*'}> class={cls} {attrs} in the DOM"
        return found[0]

    def by_id(self, ident: str) -> Node:
        return self.find(id=ident)


def parse_html(text: str) -> Node:
    """A forgiving tree of ``text`` (stdlib ``html.parser``), enough to assert on a browser's DOM dump."""
    from html.parser import HTMLParser

    root = Node("#document")
    stack = [root]

    class _Builder(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            node = Node(tag, {k: v or "" for k, v in attrs})
            stack[-1].children.append(node)
            if tag not in VOID:
                stack.append(node)

        def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

        def handle_endtag(self, tag: str) -> None:
            for i in range(len(stack) - 1, 0, -1):
                if stack[i].tag == tag:
                    del stack[i:]
                    break

        def handle_data(self, data: str) -> None:
            stack[-1].children.append(data)

    builder = _Builder(convert_charrefs=True)
    builder.feed(text)
    builder.close()
    return root


# -- PNG ------------------------------------------------------------------------------------------------------

def png_info(path: Path | str) -> dict[str, Any]:
    """``width``, ``height``, ``bytes``, ``colour_type`` and ``pixels`` (an ``(h, w, channels)`` uint8 array) of
    an 8-bit non-interlaced RGB/RGBA PNG — what Chromium writes. Checks the signature and every chunk CRC;
    raises ValueError on anything else."""
    import numpy as np

    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG (bad signature)")
    pos, idat, ihdr = 8, bytearray(), b""
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(kind + body) != crc:
            raise ValueError(f"{path}: CRC mismatch in chunk {kind!r}")
        if kind == b"IHDR":
            ihdr = body
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    if len(ihdr) != 13:
        raise ValueError(f"{path}: no IHDR chunk")
    width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    if depth != 8 or ctype not in (2, 6) or interlace:
        raise ValueError(f"{path}: only 8-bit non-interlaced RGB/RGBA is read here (depth {depth}, type {ctype})")
    bpp = 3 if ctype == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(bytes(idat))
    if len(raw) != height * (stride + 1):
        raise ValueError(f"{path}: image data has {len(raw)} bytes, expected {height * (stride + 1)}")
    rows = np.frombuffer(raw, np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:]
        if kind == 0:
            cur = line.copy()
        elif kind == 1:    # Sub: a running sum per channel
            cur = np.cumsum(line.reshape(width, bpp).astype(np.uint32), axis=0).astype(np.uint8).reshape(-1)
        elif kind == 2:    # Up
            cur = line + prev
        elif kind in (3, 4):  # Average, Paeth: sequential within the row
            cur = _unfilter_seq(int(kind), line.tobytes(), prev.tobytes(), bpp)
        else:
            raise ValueError(f"{path}: bad filter type {kind} in row {y}")
        out[y] = cur
        prev = out[y]
    return {"width": width, "height": height, "bytes": len(data), "colour_type": ctype,
            "pixels": out.reshape(height, width, bpp)}


def _unfilter_seq(kind: int, line: bytes, prev: bytes, bpp: int) -> Any:
    import numpy as np

    cur = bytearray(line)
    for i in range(len(cur)):
        a = cur[i - bpp] if i >= bpp else 0
        b = prev[i]
        if kind == 3:
            cur[i] = (cur[i] + ((a + b) >> 1)) & 0xFF
            continue
        c = prev[i - bpp] if i >= bpp else 0
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
    return np.frombuffer(bytes(cur), np.uint8)


def count_colour(pixels: Any, rgb: tuple[int, int, int], tolerance: int = 40) -> int:
    """Pixels within ``tolerance`` (per channel) of ``rgb``."""
    import numpy as np

    diff = np.abs(pixels[..., :3].astype(np.int16) - np.array(rgb, np.int16))
    return int((diff.max(axis=-1) <= tolerance).sum())
