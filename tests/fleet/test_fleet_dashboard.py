"""The fleet dashboard in a real headless browser (Debian ``chromium``): summary, device table and SVG charts
rendered from a collector store, the live refresh, a screenshot kept as a test artifact, and a 1,000-device
fleet that stays one small page.

Artifacts (screenshots) go to ``$FTEDGE_TEST_ARTIFACTS`` (default ``test-artifacts/`` in the repository).
Under CI a missing browser fails these tests; elsewhere they skip with the install hint.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers import browser
import pytest
from ftedge.fleet.charts import ACC_COLOR, LOSS_COLOR
from ftedge.fleet.dashboard import MAX_CHARTS, PAGE_SIZE, dashboard_page
from ftedge.fleet.http import FleetHTTPServer
from ftedge.fleet.store import FleetStore

from tests.helpers.browser import Node, parse_html
from tests.helpers.common import ROOT

FLEET = "demo"
T0 = 1_700_000_000_000


def artifact_dir() -> Path:
    d = Path(os.environ.get("FTEDGE_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


class Box:
    """One simulated edge box publishing the MQTT contract (envelope with ``boot`` and ``seq`` 1, 2, …)."""

    def __init__(self, device: str, boot: str = "b00t00000001", fleet: str = FLEET) -> None:
        self.device, self.boot, self.fleet, self.seq = device, boot, fleet, 0

    def msg(self, suffix: str, body: dict[str, Any], seq: int | None = None) -> tuple[str, bytes, bool]:
        if seq is None:
            self.seq += 1
            seq = self.seq
        env = {"v": 1, "ts": T0 + seq, "dev": self.device, "boot": self.boot, "seq": seq, "hist": False}
        return f"ftedge/v1/{self.fleet}/{self.device}/{suffix}", json.dumps({**body, **env}).encode(), False

    def online(self) -> list[tuple[str, bytes, bool]]:
        return [self.msg("status", {"state": "online", "reason": "birth"}),
                self.msg("meta", {"active_version": "v0001", "models": ["v0001"], "agent": "test"})]

    def will(self) -> tuple[str, bytes, bool]:
        """The Last Will (seq 0, written when the agent started) as the broker publishes it."""
        return self.msg("status", {"state": "offline", "reason": "lwt", "will": True}, seq=0)

    def progress(self, job: str, epoch: int) -> tuple[str, bytes, bool]:
        return self.msg(f"jobs/{job}/progress", {
            "job": job, "epoch": epoch, "step": epoch * 8, "loss": round(1.2 / (1 + epoch), 4),
            "metrics": {"val_accuracy": round(min(0.99, 0.5 + 0.04 * epoch), 4)}, "lr": 0.01,
            "samples_per_s": 900.0, "rss_mb": 80.0})

    def train(self, job: str, epochs: int, result: tuple[float, float] | None = None) -> list[tuple[str, bytes, bool]]:
        """``job`` running, ``epochs`` progress messages, then (with ``result`` = before, after) succeeded."""
        out = [self.msg("job", {"job": job, "status": "running"})]
        out += [self.progress(job, e) for e in range(1, epochs + 1)]
        if result is not None:
            before, after = result
            out.append(self.msg(f"jobs/{job}/result", {
                "job": job, "status": "succeeded", "promoted": True, "final": {"accuracy": after},
                "baseline": {"accuracy": before}, "duration_s": 2.5, "error": None}))
            out.append(self.msg("job", {"job": job, "status": "succeeded"}))
        return out


def fleet_messages(n_devices: int, epochs: int, running_every: int = 3) -> list[tuple[str, bytes, bool]]:
    """A simulated fleet: ``n_devices`` boxes online, each with one job of ``epochs`` progress points; every
    ``running_every``-th job still running, the others succeeded and promoted (before 0.6, after 0.9)."""
    out: list[tuple[str, bytes, bool]] = []
    for i in range(n_devices):
        box = Box(f"dev-{i:04d}")
        out += box.online()
        out += box.train(f"job-{i:04d}", epochs, None if i % running_every == 0 else (0.6, 0.9))
    return out


# Three boxes personalizing plus one idle box, as `ftedge demo` shows them.
EPOCHS = {"dev-a": 4, "dev-b": 6, "dev-c": 3}


@pytest.fixture()
def fleet(tmp_path: Path) -> tuple[FleetStore, dict[str, Box]]:
    store = FleetStore(tmp_path / "fleet.sqlite")
    boxes = {name: Box(name) for name in ("dev-a", "dev-b", "dev-c", "dev-d")}
    batch = [m for b in boxes.values() for m in b.online()]
    batch += boxes["dev-a"].train("ja", EPOCHS["dev-a"])                        # still running
    trained_b = boxes["dev-b"].train("jb", EPOCHS["dev-b"], result=(0.55, 0.90))  # personalized
    batch += trained_b
    batch += boxes["dev-c"].train("jc", EPOCHS["dev-c"], result=(0.60, 0.80))
    batch.append(trained_b[3])                                                 # a duplicate (same boot, seq)
    batch.append(boxes["dev-c"].will())                                        # dev-c lost power
    store.ingest_batch(batch)
    assert store.counters()["duplicates_total"] == 1
    yield store, boxes
    store.close()


@pytest.fixture()
def server(fleet):
    srv = FleetHTTPServer(fleet[0], "127.0.0.1", 0).start()
    yield srv
    srv.stop()


def chart_points(node: Node, title: str) -> int:
    """Points of the chart's polyline (0 when the chart says "no data")."""
    svg = node.find("svg", cls="chart", data_title=title)
    lines = svg.find_all("polyline", cls="series")
    if not lines:
        return 0
    points = lines[0].attrs["points"].split()
    assert int(svg.attrs["data-points"]) == len(points)
    for p in points:  # every point is inside the chart
        x, y = (float(v) for v in p.split(","))
        assert 0 <= x <= float(svg.attrs["width"]) and 0 <= y <= float(svg.attrs["height"])
    return len(points)


def assert_dashboard(dom: Node, epochs: dict[str, int]) -> None:
    """The four-box fleet of the ``fleet`` fixture, with ``epochs`` progress points per training box."""
    assert dom.by_id("n-devices").text == "4"
    assert dom.by_id("n-online").text == "3" and dom.by_id("n-offline").text == "1"
    assert dom.by_id("n-running").text == "1"
    assert dom.by_id("acc").text == "57.5% → 85.0%"  # means over dev-b and dev-c: (0.55+0.60)/2 → (0.90+0.80)/2
    assert dom.by_id("n-promoted").text == "2"

    rows = {r.attrs["data-device"]: r for r in dom.by_id("devices").find_all("tr", cls="device")}
    assert list(rows) == ["dev-a", "dev-b", "dev-c", "dev-d"], "one row per device, in order"
    states = {d: r.find("td", cls="state").text for d, r in rows.items()}
    assert states == {"dev-a": "online", "dev-b": "online", "dev-c": "offline", "dev-d": "online"}
    assert {d: r.find("td", cls="status").text for d, r in rows.items()} == {
        "dev-a": "running", "dev-b": "succeeded", "dev-c": "succeeded", "dev-d": ""}
    assert {d: r.find("td", cls="epoch").text for d, r in rows.items() if d in epochs} == {
        d: str(n) for d, n in epochs.items()}
    # no headline in these (older agents') messages: the latest epoch's val_accuracy, labelled
    assert {d: r.find("td", cls="headline").text for d, r in rows.items() if d in epochs} == {
        d: f"accuracy {min(0.99, 0.5 + 0.04 * n):.1%}" for d, n in epochs.items()}

    charts = {c.attrs["data-device"]: c for c in dom.by_id("charts").find_all("div", cls="device-charts")}
    assert set(charts) == set(epochs), "charts for every device with a job, none for the idle one"
    for device, n in epochs.items():
        assert chart_points(charts[device], "loss") == n, device
        assert chart_points(charts[device], "val accuracy") == n, device
    assert charts["dev-b"].find(cls="verdict").text.startswith("accuracy 55.0% → 90.0%")
    assert charts["dev-b"].find_all("line", cls="baseline"), "the accuracy chart shows the before line"
    assert not charts["dev-a"].find_all(cls="verdict"), "no verdict while running"


def test_dashboard_renders_in_headless_chromium(server):
    """Load `/` in Chromium with enough virtual time for the 2 s live refresh to run; assert on the DOM
    the browser built, then keep a screenshot and check it shows the charts' colours."""
    browser.require_chromium()
    dom = parse_html(browser.dump_dom(server.url + "/", budget_ms=5000))
    live = dom.by_id("live")
    assert int(live.attrs["data-refreshes"]) >= 1, "the live refresh (fetch /fragment) ran in the browser"
    assert "stale" not in live.attrs.get("class", "")
    assert_dashboard(dom, EPOCHS)

    shot = browser.screenshot(server.url + "/", artifact_dir() / "fleet-dashboard.png", size=(1400, 1000))
    print(f"dashboard screenshot: {shot}")
    info = browser.png_info(shot)
    assert (info["width"], info["height"]) == (1400, 1000) and info["bytes"] > 10_000
    px = info["pixels"]
    loss_px = browser.count_colour(px, tuple(int(LOSS_COLOR[i:i + 2], 16) for i in (1, 3, 5)))
    acc_px = browser.count_colour(px, tuple(int(ACC_COLOR[i:i + 2], 16) for i in (1, 3, 5)))
    white = browser.count_colour(px, (255, 255, 255), 4)
    assert loss_px > 300 and acc_px > 300, f"chart lines drawn: {loss_px} loss px, {acc_px} accuracy px"
    assert 0.5 * px.shape[0] * px.shape[1] < white < px.shape[0] * px.shape[1], "a page, not a blank or flat image"


def test_dashboard_updates_live_in_the_browser(server, fleet):
    """With the page open, new progress and a new device reach the DOM by the 2 s refresh (real time)."""
    browser.require_chromium()
    store, boxes = fleet
    with browser.Browser() as b:
        b.goto(server.url + "/")
        paint = b.evaluate(browser.PAINT_JS)
        print(f"4 devices: first contentful paint {paint['first_contentful_paint_ms']:.0f} ms, "
              f"{paint['html_bytes']} bytes of HTML, {paint['dom_nodes']} elements")
        dom = parse_html(b.html())
        assert_dashboard(dom, EPOCHS)
        assert dom.by_id("live").attrs["data-refreshes"] == "0", "first paint is server-rendered, no script needed"

        store.ingest_batch([boxes["dev-a"].progress("ja", 5), boxes["dev-a"].progress("ja", 6),
                            *Box("dev-e").online()])
        t0 = time.monotonic()
        b.wait_for("document.querySelector('tr.device[data-device=\"dev-a\"] td.epoch').textContent === '6'",
                   timeout=8)
        print(f"new epoch on screen {time.monotonic() - t0:.2f} s after ingest")
        dom = parse_html(b.html())
        assert int(dom.by_id("live").attrs["data-refreshes"]) >= 1
        assert dom.by_id("n-devices").text == "5" and dom.by_id("n-online").text == "4"
        charts = dom.find("div", cls="device-charts", data_device="dev-a")
        assert chart_points(charts, "loss") == 6 and chart_points(charts, "val accuracy") == 6
        b.screenshot(artifact_dir() / "fleet-dashboard-live.png")

        # A device's link charts it first, and the refresh keeps the selection (the query string).
        b.goto(server.url + "/?device=dev-c")
        b.wait_for("document.getElementById('live').dataset.refreshes >= 1", timeout=8)
        first = b.evaluate("document.querySelector('#charts .device-charts').dataset.device")
        assert first == "dev-c"


def test_dashboard_with_1000_devices_is_one_small_page(tmp_path):
    """1,000 devices × 20 epochs: `/` renders one table page and a bounded number of charts, so its size does
    not grow with the fleet; Chromium paints it (figures printed, not asserted: the benchmark owns them)."""
    store = FleetStore(tmp_path / "fleet.sqlite")
    msgs = fleet_messages(1000, 20)
    for i in range(0, len(msgs), 5000):
        store.ingest_batch(msgs[i:i + 5000])
    t0 = time.perf_counter()
    page = dashboard_page(store)
    render_ms = (time.perf_counter() - t0) * 1000
    dom = parse_html(page)
    assert dom.by_id("n-devices").text == "1000"
    assert dom.by_id("n-running").text == str(len(range(0, 1000, 3)))
    assert dom.by_id("acc").text == "60.0% → 90.0%"
    assert len(dom.find_all("tr", cls="device")) == PAGE_SIZE
    charts = dom.find_all("div", cls="device-charts")
    assert len(charts) == MAX_CHARTS and all(chart_points(c, "loss") == 20 for c in charts)
    assert len(page) < 150_000, f"/ is {len(page)} bytes"
    print(f"1,000 devices: / is {len(page) / 1024:.0f} KiB, rendered in {render_ms:.0f} ms (server side)")

    srv = FleetHTTPServer(store, "127.0.0.1", 0).start()
    try:
        browser.require_chromium()
        last = parse_html(browser.dump_dom(srv.url + "/?page=10", budget_ms=2500))
        rows = last.find_all("tr", cls="device")
        assert rows[0].attrs["data-device"] == "dev-0900" and rows[-1].attrs["data-device"] == "dev-0999"
        assert last.find("nav", id="pager").attrs["data-pages"] == "10"
        assert int(last.by_id("live").attrs["data-refreshes"]) >= 1, "the refresh keeps the page (query string)"
        assert last.find("tr", cls="device").attrs["data-device"] == "dev-0900"
        shot = browser.screenshot(srv.url + "/", artifact_dir() / "fleet-dashboard-1000.png")
        print(f"1,000-device dashboard screenshot: {shot}")
        figures = browser.first_paint(srv.url + "/", runs=3)
        for f in figures:
            print("1,000 devices first paint: " + ", ".join(f"{k} {v:.0f}" for k, v in f.items() if v is not None))
        (artifact_dir() / "fleet-dashboard-1000-paint.json").write_text(json.dumps(figures, indent=1))
        assert all(f["first_contentful_paint_ms"] > 0 for f in figures)
    finally:
        srv.stop()
        store.close()


def test_dashboard_escapes_device_names_and_survives_bad_queries(tmp_path):
    """A topic level may hold any character: device names are escaped (no markup injection through MQTT), and
    odd query strings fall back to page 1 / the last page."""
    store = FleetStore(tmp_path / "fleet.sqlite")
    evil = Box('<img src=x onerror="alert(1)">')
    store.ingest_batch([*evil.online(), *evil.train("<i>job&\x27", 2)])
    srv = FleetHTTPServer(store, "127.0.0.1", 0).start()
    try:
        for query in ("", "?page=abc", "?page=999999999", "?page=-1&device=%3Cscript%3E", "?device=" + urllib.parse.quote(evil.device)):
            with urllib.request.urlopen(srv.url + "/" + query, timeout=10) as r:
                page = r.read().decode()
            assert r.status == 200 and "<img" not in page and "<i>job" not in page and page.count("<script") == 1
            dom = parse_html(page)
            assert dom.find("tr", cls="device").attrs["data-device"] == evil.device
            assert dom.find("nav", id="pager").attrs["data-page"] == "1"
            assert chart_points(dom.find("div", cls="device-charts"), "loss") == 2
    finally:
        srv.stop()
        store.close()


def test_dashboard_shows_what_auto_tuning_chose_and_its_cv_estimate(tmp_path):
    """A result from `train --auto` carries `tuning`: its settings and cross-validated gain are shown, escaped,
    and a malformed `tuning` object shows dashes instead of breaking the page."""
    store = FleetStore(tmp_path / "fleet.sqlite")
    box, odd = Box("dev-auto"), Box("dev-odd")
    batch = [*box.online(), *box.train("ja", 3), *odd.online(), *odd.train("jo", 2)]
    batch.append(box.msg("jobs/ja/result", {
        "job": "ja", "status": "succeeded", "promoted": True, "final": {"accuracy": 0.9, "split": "cv"},
        "baseline": {"accuracy": 0.5, "split": "cv"}, "tuning": {
            "lr": 0.0321, "weight_decay": 0.01, "epochs": 17, "class_weight": "balanced", "trials": 42,
            "cv_score": 0.9, "cv_untuned": 0.5, "cv_gain": 0.4, "cv_lo": 0.31, "cv_hi": 0.48}}))
    batch.append(odd.msg("jobs/jo/result", {"job": "jo", "status": "succeeded", "tuning": {
        "lr": "<b>", "epochs": True, "class_weight": "<script>", "cv_gain": "x"}}))
    store.ingest_batch(batch)
    page = dashboard_page(store)
    dom = parse_html(page)
    charts = {c.attrs["data-device"]: c for c in dom.by_id("charts").find_all("div", cls="device-charts")}
    text = charts["dev-auto"].find("p", cls="tuning").text
    assert text.startswith("auto-tuned: lr 0.0321, weight decay 0.01, 17 epochs, class weight balanced")
    assert "cross-validated 0.900 vs untuned 0.500, gain +0.400 [+0.310, +0.480]" in text
    odd_text = charts["dev-odd"].find("p", cls="tuning").text
    assert "lr -" in odd_text and "- epochs" in odd_text and "class weight -" in odd_text
    assert page.count("<script") == 1
    store.close()


def test_dashboard_shows_a_language_models_accuracy_perplexity_and_retention(tmp_path):
    """A causal-LM job reports val perplexity per epoch and answer accuracy / perplexity / retention at the end:
    the chart plots perplexity (there is no val accuracy), the summary line shows the three, escaped."""
    store = FleetStore(tmp_path / "fleet.sqlite")
    box = Box("dev-llm")
    batch = [*box.online(), *box.train("jl", 0)]
    for epoch, ppl in enumerate((9.5, 3.1, 1.4), 1):
        batch.append(box.msg("jobs/jl/progress", {"job": "jl", "epoch": epoch, "loss": 1.0 / epoch,
                                                  "metrics": {"val_loss": 0.1, "val_perplexity": ppl}}))
    batch.append(box.msg("jobs/jl/result", {
        "job": "jl", "status": "succeeded", "promoted": True,
        "final": {"accuracy": 0.92, "perplexity": 1.4, "retention": 0.95, "token_f1": 0.8},
        "baseline": {"accuracy": 0.04, "perplexity": 21.0}}))
    store.ingest_batch(batch)
    dom = parse_html(dashboard_page(store))
    chart = {c.attrs["data-device"]: c for c in dom.by_id("charts").find_all("div", cls="device-charts")}["dev-llm"]
    line = chart.find("p", cls="llm").text
    assert line == ("language model: answer accuracy 0.040 → 0.920 · held-out perplexity 21.00 → 1.40 · "
                    "retention 0.95")
    assert "val perplexity" in str(chart) and "val accuracy" not in str(chart)
    # an agent from before the headline field: its result is judged by answer accuracy, as before
    assert chart.find(cls="verdict").text == "accuracy 4.0% → 92.0% (promoted)"
    assert not chart.find_all("line", cls="baseline"), "no accuracy baseline on the perplexity chart"
    from ftedge.fleet.validate import body_problem

    assert "final" in (body_problem("result", {"job": "j", "final": {"perplexity": "low"}}) or "")
    assert body_problem("result", {"job": "j", "final": {"perplexity": 1.4, "retention": None}}) is None
    store.close()
