"""The dashboard's first paint in headless Chromium (tests.helpers.browser), idle or under ingest load, and the
walk over ``/api/devices`` page by page."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.fleet_ingest.collector import SHARE_GROUP, CollectorProc, Mosquitto, proc_rss_mib
from bench.fleet_ingest.database import is_pg, open_db
from ftedge.fleet.local_broker import free_port
from tests.helpers import browser


def _wait_http(url: str, timeout: float = 20.0) -> tuple[float, int]:
    """Seconds until ``url`` answers 200 (then the time of one more GET: the server's page time)."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                r.read()
            break
        except OSError:
            if time.time() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:g} s") from None
            time.sleep(0.1)
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        body = r.read()
    return time.perf_counter() - t, len(body)


def paint_figures(url: str, runs: int = 5) -> dict[str, Any]:
    """Performance-API figures of ``runs`` loads in one headless Chromium (tests/helpers/browser.py first_paint) and the
    whole-process time of ``chromium --headless --dump-dom URL`` (browser start included)."""
    if browser.find_chromium() is None:
        return {"skipped": "no chromium (apt-get install chromium)"}
    get_s, page_bytes = _wait_http(url)
    loads = browser.first_paint(url, runs=runs)
    t = time.perf_counter()
    dom = browser.dump_dom(url, budget_ms=1)
    dump_s = time.perf_counter() - t
    fcp = [x["first_contentful_paint_ms"] for x in loads]
    warm = sorted(fcp[1:]) or fcp
    return {"url": url, "server_get_ms": get_s * 1000, "page_bytes": page_bytes, "loads": loads,
            "fcp_cold_ms": fcp[0], "fcp_warm_median_ms": warm[len(warm) // 2], "fcp_max_ms": max(fcp),
            "dump_dom_process_ms": dump_s * 1000, "dump_dom_device_rows": dom.count('class="device"'),
            "chromium": browser.find_chromium()}


def first_paint(tmp: Path, db: str | Path | None, devices: int, runs: int = 5, api_walk_limit: int = 0,
                name: str = "paint") -> dict[str, Any]:
    """An idle ``ftedge fleet serve`` (fresh broker) on a max phase's database: SQLite (its file) or PostgreSQL
    (its URL; the collector joins share group ``SHARE_GROUP``, random per run); the dashboard's first paint and,
    with ``api_walk_limit``, the walk over ``/api/devices`` page by page."""
    if db is None or (not is_pg(db) and not Path(db).exists()):
        return {"skipped": "needs the max phase's database"}
    root = tmp / name
    broker = Mosquitto(root / "broker")
    port = free_port()
    coll = CollectorProc(broker, db, port, f"bench-collector-{name}", root / "collector.log",
                         share=SHARE_GROUP if is_pg(db) else None)
    try:
        conn = open_db(db)
        try:
            n = int(conn.execute("SELECT COUNT(*) FROM devices").fetchone()[0])
        finally:
            conn.close()
        out = paint_figures(f"http://127.0.0.1:{port}/", runs)
        out["devices_in_db"] = n
        out["store"] = "postgresql" if is_pg(db) else "sqlite"
        if api_walk_limit:
            out["api_walk"] = walk_devices_api(f"http://127.0.0.1:{port}", api_walk_limit, n)
        out["rss_mib_after"] = proc_rss_mib(coll.pid)
    finally:
        coll.stop()
        broker.stop()
    return out


def walk_devices_api(base: str, limit: int, expect: int) -> dict[str, Any]:
    """GET /api/devices?limit=N, then each ``Link: <…>; rel="next"`` until none: pages, time, and whether every
    device came exactly once, in (fleet, device) order, as many as ``X-Total-Count`` says."""
    url: str | None = f"{base}/api/devices?limit={limit}"
    seen: set[tuple[str, str]] = set()
    dupes = pages = 0
    ordered, totals, page_ms, sizes = True, set(), [], []
    prev: tuple[str, str] | None = None
    t0 = time.perf_counter()
    while url:
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as r:
            body = r.read()
            total, link = r.headers.get("X-Total-Count"), r.headers.get("Link")
        rows = json.loads(body)
        page_ms.append((time.perf_counter() - t) * 1000)
        sizes.append(len(body))
        pages += 1
        totals.add(total)
        for row in rows:
            key = (row["fleet"], row["device"])
            if key in seen:
                dupes += 1
            seen.add(key)
            if prev is not None and key <= prev:
                ordered = False
            prev = key
        m = re.search(r'<([^>]+)>;\s*rel="next"', link or "")
        url = base + m.group(1) if m else None
        if pages > 10 * (expect // max(1, limit) + 2):
            raise RuntimeError("/api/devices: too many pages (a Link loop?)")
    total_s = time.perf_counter() - t0
    srt = sorted(page_ms)
    return {"limit": limit, "pages": pages, "devices": len(seen), "duplicates": dupes, "ordered": ordered,
            "x_total_count": sorted(totals), "walk_ms": total_s * 1000, "first_page_ms": page_ms[0],
            "page_ms_median": srt[len(srt) // 2], "page_ms_max": srt[-1],
            "page_bytes_median": sorted(sizes)[len(sizes) // 2],
            "ok": len(seen) == expect and not dupes and ordered and totals == {str(expect)}}


def paint_during(runs: int = 5) -> Callable[[CollectorProc], dict[str, Any]]:
    """The figures of :func:`paint_figures` on a running collector's dashboard (the paced phase's ``during``)."""
    def fn(coll: CollectorProc) -> dict[str, Any]:
        if not coll.http_port:
            return {"skipped": "no HTTP server in this collector"}
        return paint_figures(f"http://127.0.0.1:{coll.http_port}/", runs)
    return fn
