"""Watching a rollout: ``/metrics``, ``/api/rollouts``, the dashboard's Rollouts section and the page of one
rollout, on rollouts a real driver ran against a real Mosquitto and collector with simulated boxes (SYNTHETIC
results, tests/helpers/rollout_sim.py) — as tests/fleet/test_rollout_driver.py drives them.

One module-scoped fleet runs three rollouts at once (the tests only read it): ``r-bad`` whose canary fails
with a detail holding HTML, ``r-good`` that trains in three waves (one box regresses, within the threshold)
and ``r-wait`` whose only box is offline, so it stays running.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
import uuid

import pytest
from ftedge.fleet.charts import histogram_bins
from ftedge.fleet.http import FleetHTTPServer
from ftedge.fleet.ingest import Collector, CollectorSettings
from ftedge.fleet.metrics import ROLLOUT_WINDOW_S, rollout_families
from ftedge.fleet.rollout import plan
from ftedge.fleet.rollout.cli import describe
from ftedge.fleet.rollout.driver import RolloutDriver
from ftedge.fleet.rollout.records import RolloutRecords
from ftedge.fleet.store import FleetStore
from prometheus_client.parser import text_string_to_metric_families

from tests.fleet.test_fleet_dashboard import artifact_dir
from tests.helpers import browser
from tests.helpers.broker import Broker
from tests.helpers.browser import parse_html
from tests.helpers.fleet_sim import wait_for
from tests.helpers.rollout_sim import Box, FleetSim
from tests.helpers.services import require

pytestmark = pytest.mark.needs("mosquitto")
SHA = "ab" * 32
FLEET = "sim"
EVIL = '<script>alert("pwned")</script> & a key nobody trusts'
GAINS = {"b0": 0.031, "b1": 0.052, "b2": 0.074, "b3": 0.118, "b4": 0.133, "b5": 0.207}
REGRESS = ("b6", 0.043)     # trains worse: not promoted, gain -0.043


def _spec(name: str, **kw) -> plan.RolloutSpec:
    return plan.RolloutSpec(name=name, sha256=SHA, bundle="kws", url="https://cdn.example/kws.tar.gz", **kw).check()


def _start(records: RolloutRecords, spec: plan.RolloutSpec, devices: list[str]) -> None:
    """What `fleet rollout start` does once it has the archive."""
    keys = [(FLEET, d) for d in devices]
    assert wait_for(lambda: set(records.known_devices(FLEET)) >= set(keys), 10), "the collector never saw the boxes"
    versions = {k: v for k, (_, v) in records.device_facts(keys).items()}
    records.create(spec, plan.assign_waves(spec, keys), versions)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """The three rollouts, driven to their end (r-wait stays running); the driver and the HTTP server keep
    running while the module's tests read them."""
    require("mosquitto")
    tmp = tmp_path_factory.mktemp("rollout-observability")
    mq = Broker(tmp / "broker").start()
    store = FleetStore(tmp / "fleet.sqlite")
    collector = Collector(store, CollectorSettings(host="127.0.0.1", port=mq.port),
                          client_id=f"collector-{uuid.uuid4().hex[:6]}", gap_check_s=0.1).start()
    assert collector.wait_connected(10), "collector could not connect and subscribe"
    boxes = {"x0": Box(fail_deploy=True, fail_detail=EVIL), **{f"x{i}": Box() for i in range(1, 4)},
             **{d: Box(before=0.5, gain=g) for d, g in GAINS.items()},
             REGRESS[0]: Box(before=0.5, gain=REGRESS[1], regress=True), "z0": Box(offline=True)}
    sim = FleetSim(mq.port, FLEET, boxes)
    records = RolloutRecords(store)
    _start(records, _spec("r-bad", canary_devices=["x0"]), ["x0", "x1", "x2", "x3"])
    _start(records, _spec("r-good", canary_devices=["b0"], waves=plan.parse_waves("50%,100%"),
                          train={"data": "user"}, max_regressions=0.5), [*GAINS, REGRESS[0]])
    _start(records, _spec("r-wait"), ["z0"])
    driver = RolloutDriver(store, lambda f, dev, v, a, c, e: collector.publish_command(
        f, dev, v, a, cmd_id=c, expiry_s=60, expires_ms=e), holder="c1", tick_s=0.05).start()
    http = FleetHTTPServer(store, "127.0.0.1", 0).start()
    try:
        assert wait_for(lambda: records.get("r-bad").finished and records.get("r-good").finished, 30), \
            [(m.rollout, m.device, m.state, m.reason) for m in records.members("r-good")]
        assert wait_for(lambda: records.members("r-wait")[0].state == plan.DEPLOYING, 10)
        yield store, records, http
    finally:
        http.stop()
        driver.stop()
        sim.close()
        collector.stop()
        store.close()
        mq.stop()


def _get(http: FleetHTTPServer, path: str, host: str | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(http.url + path, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def _series(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Parsed exposition: family → {sorted label pairs: value}."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _by_rollout(series: dict[tuple[tuple[str, str], ...], float], name: str) -> dict[str, float]:
    return {dict(k)["state"]: v for k, v in series.items() if dict(k)["rollout"] == name}


def test_the_rollouts_ran_as_the_scenario_says(fleet):
    _, records, _ = fleet
    bad, good = records.get("r-bad"), records.get("r-good")
    assert bad.state == plan.HALTED and "canary" in bad.reason, bad.reason
    assert good.state == plan.DONE and [v["state"] for v in good.verdicts] == ["passed"] * 3, good.verdicts
    x0 = next(m for m in records.members("r-bad") if m.device == "x0")
    assert x0.state == plan.FAILED and EVIL in x0.reason


def test_metrics_count_devices_per_state_and_show_wave_state_and_leader(fleet):
    store, records, http = fleet
    code, ctype, body = _get(http, "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    m = _series(body.decode())
    devices = m["ftedge_rollout_devices"]
    for name in ("r-bad", "r-good", "r-wait"):   # every state has a series, 0 when no device is in it
        assert set(_by_rollout(devices, name)) == set(plan.DEVICE_STATES), name
    expected = {"r-bad": {plan.FAILED: 1, plan.PENDING: 3},
                "r-good": {plan.PROMOTED: len(GAINS), plan.NOT_PROMOTED: 1},
                "r-wait": {plan.DEPLOYING: 1}}
    for name, want in expected.items():
        assert _by_rollout(devices, name) == {s: float(want.get(s, 0)) for s in plan.DEVICE_STATES}, name
    waves = {dict(k)["rollout"]: v for k, v in m["ftedge_rollout_wave"].items()}
    assert waves == {"r-bad": 0.0, "r-good": float(records.get("r-good").wave), "r-wait": 0.0}
    assert records.get("r-good").wave == 2
    states = m["ftedge_rollout_state"]
    for name, current in (("r-bad", plan.HALTED), ("r-good", plan.DONE), ("r-wait", plan.RUNNING)):
        assert _by_rollout(states, name) == {s: float(s == current) for s in plan.ROLLOUT_STATES}, name
    assert m["ftedge_rollout_leader"] == {(("holder", "c1"),): 1.0}
    # a day later the finished rollouts have left /metrics, the running one stays, and a lease nobody renewed
    # reads 0
    later = int(time.time() * 1000) + (ROLLOUT_WINDOW_S + 3600) * 1000
    fams = {f.name: f for f in rollout_families(store, now_ms=later)}
    assert {s.labels["rollout"] for s in fams["ftedge_rollout_wave"].samples} == {"r-wait"}
    assert {s.labels["rollout"] for s in fams["ftedge_rollout_devices"].samples} == {"r-wait"}
    assert [(s.labels, s.value) for s in fams["ftedge_rollout_leader"].samples] == [({"holder": "c1"}, 0.0)]


def test_api_serves_the_documents_the_cli_prints(fleet, capsys):
    from ftedge.cli import main

    store, records, http = fleet
    code, ctype, body = _get(http, "/api/rollouts")
    assert code == 200 and ctype == "application/json"
    assert main(["fleet", "rollout", "list", "--json", "--db", str(store.path)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert json.loads(body) == listed and [r["name"] for r in listed] == ["r-bad", "r-good", "r-wait"]
    for name in ("r-bad", "r-good"):
        code, _, body = _get(http, f"/api/rollouts/{name}")
        assert code == 200 and json.loads(body) == json.loads(json.dumps(describe(records, name)))
        assert main(["fleet", "rollout", "status", name, "--json", "--db", str(store.path)]) == 0
        assert json.loads(body) == json.loads(capsys.readouterr().out)
    for missing in ("nope", "r-bad%2Fx", "..", "%3Cscript%3E"):
        code, ctype, body = _get(http, f"/api/rollouts/{missing}")
        assert code == 404 and ctype == "application/json" and "no rollout named" in json.loads(body)["error"]
    code, _, _ = _get(http, "/api/rollouts", host="evil.example")
    assert code == 421, "the Host check applies to the rollout routes too"


def test_rollout_page_shows_waves_verdicts_gains_and_escaped_reasons(fleet):
    _, records, http = fleet
    code, ctype, raw = _get(http, "/rollouts/r-bad")
    assert code == 200 and ctype.startswith("text/html")
    text = raw.decode()
    assert '<script>alert("pwned")' not in text and "&lt;script&gt;alert(&quot;pwned&quot;)" in text
    dom = parse_html(text)
    x0 = dom.by_id("problems").find("tr", cls="problem", data_device="x0")
    assert x0.attrs["data-state"] == plan.FAILED and EVIL in x0.find("td", cls="why").text
    bar = dom.find("div", cls="wave-bar")
    assert [s.attrs["data-status"] for s in bar.find_all("span", cls="wave-seg")] == ["halted", "pending"]
    assert [li.text for li in dom.by_id("verdicts").find_all("li")] == [records.get("r-bad").verdicts[0]["line"]]

    doc = describe(records, "r-good")
    dom = parse_html(_get(http, "/rollouts/r-good")[2].decode())
    segs = dom.find("div", cls="wave-bar").find_all("span", cls="wave-seg")
    assert [(int(s.attrs["data-wave"]), s.attrs["data-status"], int(s.attrs["data-devices"])) for s in segs] == \
        [(w["wave"], "passed", w["devices"]) for w in doc["wave_list"]] and len(segs) == 3
    rows = {r.attrs["data-wave"]: r for r in dom.by_id("wave-states").find_all("tr", cls="wave")}
    for w in doc["wave_list"]:
        cells = {td.attrs["data-state"]: int(td.text) for td in rows[str(w["wave"])].find_all("td")
                 if "data-state" in td.attrs}
        assert {s: n for s, n in cells.items() if n} == w["states"]
    assert len(dom.by_id("verdicts").find_all("li")) == 3
    # the histogram: one bar per bin, each bar counting the gains inside its range
    gains = [*GAINS.values(), -REGRESS[1]]
    assert sorted(doc["gains"]) == pytest.approx(sorted(gains))
    bars = dom.by_id("gains").find_all("rect", cls="bar")
    assert len(bars) == len(histogram_bins(doc["gains"])) == math.ceil(math.sqrt(len(gains)))
    for i, bar in enumerate(bars):
        lo, hi = float(bar.attrs["data-lo"]), float(bar.attrs["data-hi"])
        inside = [g for g in doc["gains"] if lo <= g < hi or (i == len(bars) - 1 and g == hi)]
        assert int(bar.attrs["data-count"]) == len(inside), (lo, hi, doc["gains"])
    assert sum(int(b.attrs["data-count"]) for b in bars) == len(gains)
    b6 = dom.by_id("problems").find("tr", cls="problem", data_device=REGRESS[0])
    assert b6.attrs["data-state"] == plan.NOT_PROMOTED and "did not beat" in b6.find("td", cls="why").text

    assert _get(http, "/rollouts/nope")[0] == 404
    frag = _get(http, "/rollouts/r-good/fragment")
    assert frag[0] == 200 and parse_html(frag[2].decode()).by_id("rollout").attrs["data-state"] == plan.DONE


def test_dashboard_lists_every_rollout_with_its_progress(fleet):
    _, records, http = fleet
    dom = parse_html(_get(http, "/")[2].decode())
    rows = {r.attrs["data-rollout"]: r for r in dom.by_id("rollout-table").find_all("tr", cls="rollout")}
    assert list(rows) == ["r-wait", "r-good", "r-bad"], "running first, then the newest"
    for name, row in rows.items():
        assert row.find("a").attrs["href"] == f"/rollouts/{name}"
        assert row.attrs["data-state"] == records.get(name).state
    assert rows["r-good"].find(cls="wave-pos").text == "wave 3/3"
    assert rows["r-bad"].find(cls="wave-pos").text == "wave 1/2"
    assert {s.attrs["data-state"]: int(s.attrs["data-count"]) for s in rows["r-bad"].find_all("span", cls="ds")} == \
        {plan.PENDING: 3, plan.FAILED: 1}
    assert rows["r-bad"].find("td", cls="reason").text == records.get("r-bad").reason


@pytest.mark.needs("chromium")
def test_rollout_page_renders_in_chromium_without_console_errors(fleet):
    """The page in a real browser: no console error, one visible segment per wave, the live refresh runs, and
    nothing is fetched from anywhere but the collector (the page works offline)."""
    _, records, http = fleet
    browser.require_chromium()
    with browser.Browser() as b:
        b.call("Runtime.enable")
        b.call("Log.enable")
        for name in ("r-good", "r-bad"):
            b.goto(f"{http.url}/rollouts/{name}")
            b.wait_for("document.getElementById('live').dataset.refreshes >= 1", timeout=8)
            print(f"rollout page screenshot: {b.screenshot(artifact_dir() / f'fleet-rollout-{name}.png')}")
            widths = b.evaluate("[...document.querySelectorAll('.wave-bar .wave-seg')]"
                                ".map(s => s.getBoundingClientRect().width)")
            assert len(widths) == len(describe(records, name)["wave_list"]) and all(w > 0 for w in widths), widths
            assert b.evaluate("document.querySelectorAll('#gains svg rect.bar').length") == \
                len(histogram_bins(describe(records, name)["gains"]))
        assert b.evaluate("document.getElementById('live').classList.contains('stale')") is False
        b.goto(http.url + "/")
        assert b.evaluate("document.querySelectorAll('#rollout-table tr.rollout').length") == 3
        b.screenshot(artifact_dir() / "fleet-dashboard-rollouts.png")
        assert b.console_errors() == []
        urls = {e["params"]["request"]["url"] for e in b.events("Network.requestWillBeSent")}
        assert urls and all(u.startswith((http.url + "/", "data:")) for u in urls), urls


@pytest.mark.needs("postgres")
def test_metrics_dashboard_and_api_read_rollouts_on_postgresql():
    """The new read queries (finished-in-the-window, dashboard order, counts of some rollouts) on PostgreSQL:
    rollouts written as `fleet rollout start` writes them, read by /metrics, the dashboard and the API."""
    from ftedge.fleet.dashboard import dashboard_page
    from ftedge.fleet.rollout_page import rollout_doc, rollouts_list

    from tests.helpers.postgres import PostgresServer

    with PostgresServer() as pg:
        store = FleetStore(pg.url)
        try:
            records = RolloutRecords(store)
            records.create(_spec("pg-old"), {(FLEET, "d0"): 0, (FLEET, "d1"): 1, (FLEET, "d2"): 1}, {})
            records.set_state("pg-old", plan.HALTED, reason="canary: <b>bad</b>")
            records.create(_spec("pg-run"), {(FLEET, "d3"): 0}, {})
            now = int(time.time() * 1000)
            fams = {f.name: f for f in rollout_families(store, now_ms=now)}
            pending = {s.labels["rollout"]: s.value for s in fams["ftedge_rollout_devices"].samples
                       if s.labels["state"] == plan.PENDING}
            assert pending == {"pg-old": 3.0, "pg-run": 1.0}
            later = {f.name: f for f in rollout_families(store, now_ms=now + (ROLLOUT_WINDOW_S + 60) * 1000)}
            assert {s.labels["rollout"] for s in later["ftedge_rollout_state"].samples} == {"pg-run"}
            assert later["ftedge_rollout_leader"].samples == []   # no collector ever drove them
            dom = parse_html(dashboard_page(store))
            rows = dom.by_id("rollout-table").find_all("tr", cls="rollout")
            assert [r.attrs["data-rollout"] for r in rows] == ["pg-run", "pg-old"]
            assert rows[1].find("td", cls="reason").text == "canary: <b>bad</b>"
            assert [r["name"] for r in rollouts_list(store)] == ["pg-old", "pg-run"]
            assert rollout_doc(store, "pg-old") == describe(records, "pg-old") and rollout_doc(store, "nope") is None
        finally:
            store.close()
