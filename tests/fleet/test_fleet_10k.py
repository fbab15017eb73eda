"""A fleet of 10,000 devices through the collector's HTTP side (issue 17): ``/api/devices`` pages walk every
device exactly once (keyset pages: a device added during the walk shifts nothing), a dashboard page reads and
shows one table page with the right totals, and ``/metrics`` has one series per device. Timings are printed
(server side), never asserted."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from typing import Any

import pytest
from ftedge.fleet.dashboard import PAGE_SIZE, dashboard_fragment, dashboard_page
from ftedge.fleet.http import API_PAGE, API_PAGE_MAX, FleetHTTPServer
from ftedge.fleet.store import FleetStore

from tests.helpers.browser import parse_html

N = 10_000
FLEETS = ("east", "west")          # device i belongs to FLEETS[i % 2]
T0 = 1_700_000_000_000


def device_messages(i: int, fleet: str | None = None, name: str | None = None) -> list[tuple[str, bytes, bool]]:
    """Contract messages of device ``dev-{i:05d}``: every 10th offline, every 3rd job still running, the others
    succeeded and promoted (accuracy 0.6 → 0.9)."""
    dev, fleet, seq = name or f"dev-{i:05d}", fleet or FLEETS[i % 2], 0
    out = []

    def m(suffix: str, body: dict[str, Any]) -> None:
        nonlocal seq
        seq += 1
        env = {"v": 1, "ts": T0 + seq, "dev": dev, "boot": "b00t00000001", "seq": seq, "hist": False}
        out.append((f"ftedge/v1/{fleet}/{dev}/{suffix}", json.dumps({**body, **env}).encode(), False))

    m("status", {"state": "offline" if i % 10 == 9 else "online", "reason": "birth"})
    job = f"job-{i:05d}"
    m("job", {"job": job, "status": "running"})
    m(f"jobs/{job}/progress", {"job": job, "epoch": 1, "step": 8, "loss": 0.5, "metrics": {"val_accuracy": 0.7},
                               "lr": 0.01, "samples_per_s": 900.0, "rss_mb": 80.0})
    if i % 3:
        m(f"jobs/{job}/result", {"job": job, "status": "succeeded", "promoted": True, "final": {"accuracy": 0.9},
                                 "baseline": {"accuracy": 0.6}, "duration_s": 2.5, "error": None})
        m("job", {"job": job, "status": "succeeded"})
    return out


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> FleetStore:
    store = FleetStore(tmp_path_factory.mktemp("fleet10k") / "fleet.sqlite")
    msgs = [m for i in range(N) for m in device_messages(i)]
    t0 = time.perf_counter()
    for i in range(0, len(msgs), 5000):
        store.ingest_batch(msgs[i:i + 5000])
    print(f"{N:,} devices: {len(msgs):,} messages ingested in {time.perf_counter() - t0:.1f} s")
    yield store
    store.close()


@pytest.fixture(scope="module")
def server(big):
    srv = FleetHTTPServer(big, "127.0.0.1", 0).start()
    yield srv
    srv.stop()


def fetch(url: str) -> tuple[list[dict], Any]:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read()), r.headers


def next_url(base: str, headers: Any) -> str | None:
    link = headers.get("Link")
    if link is None:
        return None
    m = re.fullmatch(r'<(/api/devices\?[^>]+)>; rel="next"', link)
    assert m, link
    return base + m.group(1)


def walk(base: str, query: str = "") -> tuple[list[tuple[str, str]], list[int], set[str]]:
    """(fleet, device) of every row, page sizes and X-Total-Count values of a walk that follows Link."""
    url, keys, sizes, totals = base + "/api/devices" + query, [], [], set()
    while url:
        rows, headers = fetch(url)
        keys += [(d["fleet"], d["device"]) for d in rows]
        sizes.append(len(rows))
        totals.add(headers["X-Total-Count"])
        url = next_url(base, headers)
    return keys, sizes, totals


def every(fleet: str | None = None) -> list[tuple[str, str]]:
    return sorted((FLEETS[i % 2], f"dev-{i:05d}") for i in range(N) if fleet in (None, FLEETS[i % 2]))


def test_api_devices_walk_visits_every_device_exactly_once(server):
    t0 = time.perf_counter()
    keys, sizes, totals = walk(server.url)
    took = time.perf_counter() - t0
    assert keys == every(), "every device exactly once, in (fleet, device) order"
    assert sizes == [API_PAGE] * (N // API_PAGE) and totals == {str(N)}
    print(f"{N:,} devices: walking /api/devices ({len(sizes)} pages of {API_PAGE}) took {took:.2f} s")

    keys, sizes, totals = walk(server.url, f"?limit={API_PAGE_MAX * 10}")   # capped
    assert keys == every() and sizes == [API_PAGE_MAX, N - API_PAGE_MAX] and totals == {str(N)}
    keys, sizes, totals = walk(server.url, "?fleet=west&limit=999")
    assert keys == every("west") and sizes == [999] * 5 + [N // 2 - 5 * 999] and totals == {str(N // 2)}


def test_dashboard_page_of_a_10k_fleet_shows_totals_and_one_page(big, server):
    pages = N // PAGE_SIZE
    timings = []
    for page in (1, pages // 2, pages):
        t0 = time.perf_counter()
        html = dashboard_page(big, page)
        timings.append((page, (time.perf_counter() - t0) * 1000, len(html)))
    print(f"{N:,} devices: dashboard HTML rendered in " + ", ".join(f"{ms:.0f} ms (page {p}, {size / 1024:.0f} KiB)"
                                                                  for p, ms, size in timings))
    with urllib.request.urlopen(server.url + f"/?page={pages}", timeout=60) as r:
        dom = parse_html(r.read().decode())
    assert dom.by_id("n-devices").text == str(N)
    assert dom.by_id("n-online").text == str(N - N // 10) and dom.by_id("n-offline").text == str(N // 10)
    assert dom.by_id("n-running").text == str(len(range(0, N, 3)))
    assert dom.by_id("acc").text == "60.0% → 90.0%" and dom.by_id("n-promoted").text == str(N - len(range(0, N, 3)))
    nav = dom.find("nav", id="pager")
    assert (nav.attrs["data-page"], nav.attrs["data-pages"]) == (str(pages), str(pages))
    assert f"devices {N - PAGE_SIZE + 1}–{N} of {N}" in nav.text
    rows = [(r.attrs["data-fleet"], r.attrs["data-device"]) for r in dom.find_all("tr", cls="device")]
    assert rows == every()[-PAGE_SIZE:], "the last page: the last PAGE_SIZE devices in (fleet, device) order"

    dom = parse_html(dashboard_fragment(big, pages + 7, device="dev-00042"))   # beyond the end: the last page
    assert dom.find("nav", id="pager").attrs["data-page"] == str(pages)
    charts = dom.by_id("charts").find_all("div", cls="device-charts")
    assert charts[0].attrs["data-device"] == "dev-00042", "the selected device is charted first, from any page"
    dom = parse_html(dashboard_fragment(big, 2))
    rows = [(r.attrs["data-fleet"], r.attrs["data-device"]) for r in dom.find_all("tr", cls="device")]
    assert rows == every()[PAGE_SIZE:2 * PAGE_SIZE]


def test_metrics_of_a_10k_fleet(big, server):
    from prometheus_client.parser import text_string_to_metric_families

    t0 = time.perf_counter()
    with urllib.request.urlopen(server.url + "/metrics", timeout=60) as r:
        text = r.read().decode()
    print(f"{N:,} devices: /metrics took {(time.perf_counter() - t0) * 1000:.0f} ms, {len(text) / 1024:.0f} KiB")
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    up = fams["ftedge_device_up"].samples
    assert len(up) == N and sum(s.value for s in up) == N - N // 10
    assert len(fams["ftedge_job_val_accuracy"].samples) == N


def test_a_device_added_during_the_walk_shifts_no_page(big, server):
    """Last in this module: it adds two devices to the module's fleet."""
    url = server.url + "/api/devices?limit=3000"
    rows, headers = fetch(url)
    seen = [(d["fleet"], d["device"]) for d in rows]
    assert seen[-1] == ("east", "dev-05998")
    # one device sorts before the cursor (the walk is past it: not shown), one after it (shown once)
    big.ingest_batch(device_messages(N, fleet="east", name="dev-00000a") + device_messages(N + 1, fleet="west"))
    while (url := next_url(server.url, headers)) is not None:
        rows, headers = fetch(url)
        seen += [(d["fleet"], d["device"]) for d in rows]
    assert headers["X-Total-Count"] == str(N + 2)
    assert seen == every() + [("west", f"dev-{N + 1:05d}")], "no device twice, none skipped"
