"""Collector HTTP side (API, Prometheus, dashboard) and the `ftedge fleet` CLI, incl. `send` to a real agent."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
from ftedge.fleet.cli import result_line
from ftedge.fleet.dashboard import dashboard_fragment
from ftedge.fleet.http import FleetHTTPServer
from ftedge.fleet.metrics import prometheus_text
from ftedge.fleet.store import FleetStore

from ftedge.cli import main

BOOT = "b00t00000001"


def msg(device: str, suffix: str, body: dict, seq: int, fleet: str = "demo") -> tuple[str, bytes, bool]:
    env = {"v": 1, "ts": 1_700_000_000_000 + seq, "dev": device, "boot": BOOT, "seq": seq, "hist": False}
    return f"ftedge/v1/{fleet}/{device}/{suffix}", json.dumps({**body, **env}).encode(), False


@pytest.fixture()
def store(tmp_path) -> FleetStore:
    s = FleetStore(tmp_path / "fleet.sqlite")
    batch = [msg("dev-001", "status", {"state": "online", "reason": "birth"}, 1),
             msg("dev-001", "meta", {"active_version": "v0001", "models": ["v0001"]}, 2),
             msg("dev-001", "job", {"job": "j1", "status": "running"}, 3)]
    for e in range(1, 6):
        batch.append(msg("dev-001", "jobs/j1/progress", {"job": "j1", "epoch": e, "step": e * 4, "loss": 1.0 / e,
                                                         "metrics": {"val_accuracy": 0.5 + e / 20}, "lr": 0.01,
                                                         "samples_per_s": 1000.0, "rss_mb": 90.0}, 3 + e))
    batch.append(msg("dev-001", "jobs/j1/result", {"job": "j1", "status": "succeeded", "promoted": True,
                                                   "final": {"accuracy": 0.95}, "baseline": {"accuracy": 0.6},
                                                   "duration_s": 3.0, "error": None}, 9))
    batch.append(msg("dev-001", "jobs/j1/progress", {"job": "j1", "epoch": 5, "loss": 0.2}, 8))  # a duplicate seq
    batch.append(msg("dev-002", "status", {"state": "online", "reason": "birth"}, 1))
    s.ingest_batch(batch)
    return s


@pytest.fixture()
def server(store):
    srv = FleetHTTPServer(store, "127.0.0.1", 0, token="t0ken").start()
    yield srv
    srv.stop()


def get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()


def test_api_devices_lists_every_device_with_latest_state(server):
    code, ctype, body = get(server.url + "/api/devices")
    devices = {d["device"]: d for d in json.loads(body)}
    assert code == 200 and ctype.startswith("application/json")
    d = devices["dev-001"]
    for key in ("device", "fleet", "state", "last_seen", "last_seq", "job", "metrics", "active_version"):
        assert key in d, key
    assert d["state"] == "online" and d["active_version"] == "v0001" and d["last_seq"] == 9
    assert d["metrics"]["epoch"] == 5 and set(devices) == {"dev-001", "dev-002"}


def test_api_job_has_progress_series_and_result(server):
    _, _, body = get(server.url + "/api/devices/dev-001/jobs/j1")
    job = json.loads(body)
    assert [p["epoch"] for p in job["progress"]] == [1, 2, 3, 4, 5]
    assert job["result"]["status"] == "succeeded"
    with pytest.raises(urllib.error.HTTPError) as err:
        get(server.url + "/api/devices/dev-001/jobs/nope")
    assert err.value.code == 404


def test_metrics_exposition(server):
    _, ctype, text = get(server.url + "/metrics")
    assert ctype.startswith("text/plain")
    assert 'ftedge_device_up{device="dev-001",fleet="demo"} 1.0' in text
    assert 'ftedge_job_loss{device="dev-001",fleet="demo"} 0.2' in text
    assert 'ftedge_job_val_accuracy{device="dev-001",fleet="demo"} 0.75' in text
    # an agent from before the headline field: its headline is the accuracy it reports
    assert 'ftedge_job_val_headline{device="dev-001",fleet="demo",metric="accuracy"} 0.75' in text
    for name in ("ftedge_device_last_seen_timestamp_seconds", "ftedge_messages_total",
                 "ftedge_messages_duplicate_total", "ftedge_seq_gaps_total"):
        assert name in text
    assert "ftedge_messages_duplicate_total 1.0" in text
    assert "j1" not in text, "no per-job labels (bounded cardinality)"


def test_dashboard_renders_summary_table_and_charts(server):
    _, ctype, page = get(server.url + "/")
    assert ctype.startswith("text/html") and "<script" in page and "cdn" not in page.lower()
    assert 'id="n-devices">2<' in page and "60.0% → 95.0%" in page
    assert page.count("<polyline") == 2 and 'data-device="dev-001"' in page


def test_http_commands_need_a_bearer_token(server):
    req = urllib.request.Request(server.url + "/api/devices/dev-001/commands/ping", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 401
    srv = FleetHTTPServer(server.store, "127.0.0.1", 0).start()  # no token configured: commands disabled
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(srv.url + "/api/devices/dev-001/commands/ping", data=b"{}",
                                                          method="POST"), timeout=5)
        assert err.value.code == 403
    finally:
        srv.stop()


def test_fleet_status_table_and_json(store, tmp_path, capsys):
    assert main(["fleet", "status", "--db", str(tmp_path / "fleet.sqlite")]) == 0
    out = capsys.readouterr().out
    assert "dev-001" in out and "dev-002" in out and "v0001" in out
    assert "accuracy 0.750" in out, "an older agent's progress (no headline) shows its accuracy"
    assert main(["fleet", "status", "--db", str(tmp_path / "fleet.sqlite"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert main(["fleet", "status", "--db", str(tmp_path / "missing.sqlite")]) == 1


def test_fleet_send_round_trip_against_a_real_agent(tmp_path, capsys):
    from tests.helpers.agent_harness import AgentProc, Collector
    from tests.helpers.broker import Broker

    b = Broker(tmp_path / "broker").start()
    cfg = tmp_path / "agent.toml"
    (tmp_path / "data").mkdir()
    (tmp_path / "bundles").mkdir()
    cfg.write_text(f'device_id = "dev-001"\nfleet = "demo"\nstate_dir = "{tmp_path / "state"}"\n[mqtt]\n'
                   f'url = "{b.url}"\n[paths]\ndata_root = "{tmp_path / "data"}"\nbundle_root = "{tmp_path / "bundles"}"\n')
    agent = AgentProc(cfg, tmp_path / "agent.log")
    try:
        watch = Collector(b)
        watch.wait_online()
        assert main(["fleet", "send", "dev-001", "ping", "--broker", b.url, "--timeout", "10"]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["status"] == "done"
        assert main(["fleet", "send", "dev-001", "train", "--args", '{"bundle": "nope", "data": "x"}',
                     "--broker", b.url]) == 3, "rejected by the device"
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["status"] == "rejected"
        assert main(["fleet", "send", "dev-404", "ping", "--broker", b.url, "--timeout", "1"]) == 4, "timed out"
        assert "no reply" in capsys.readouterr().err
        watch.close()
    finally:
        agent.stop()
        b.stop()


def test_a_detectors_map_shows_in_metrics_dashboard_and_status(tmp_path, capsys):
    s = FleetStore(tmp_path / "fleet.sqlite")
    batch = [msg("cam-01", "status", {"state": "online", "reason": "birth"}, 1),
             msg("cam-01", "job", {"job": "j7", "status": "running"}, 2)]
    for e in range(1, 4):
        batch.append(msg("cam-01", "jobs/j7/progress", {"job": "j7", "epoch": e, "step": e * 6, "loss": 2.0 / e,
                                                        "metrics": {"val_map50": 0.2 * e, "val_map50_95": 0.1 * e},
                                                        "lr": 0.002, "samples_per_s": 50.0, "rss_mb": 300.0}, 2 + e))
    batch.append(msg("cam-01", "jobs/j7/result", {
        "job": "j7", "status": "succeeded", "promoted": True, "duration_s": 15.0, "error": None,
        "final": {"map50": 0.6, "map50_95": 0.3, "per_class": {"bag": {"ap50": 0.7, "gt": 40}}},
        "baseline": {"map50": 0.0, "map50_95": 0.0}}, 6))
    s.ingest_batch(batch)
    srv = FleetHTTPServer(s, "127.0.0.1", 0).start()
    try:
        _, _, text = get(srv.url + "/metrics")
        assert 'ftedge_job_val_map50{device="cam-01",fleet="demo"} 0.6' in text
        assert 'ftedge_job_val_headline{device="cam-01",fleet="demo",metric="map50"} 0.6' in text
        _, _, page = get(srv.url + "/")
        assert "mAP@0.5 0.0% → 60.0% (promoted)" in page and "val mAP@0.5" in page
    finally:
        srv.stop()
    assert main(["fleet", "status", "--db", str(tmp_path / "fleet.sqlite")]) == 0
    assert "mAP@0.5 0.600" in capsys.readouterr().out
    assert result_line("cam-01", "j7", s.job("demo", "cam-01", "j7")["result"]) == (
        "cam-01: job j7 succeeded — val mAP@0.5 0.000 → 0.600, promoted True, 15.0 s")


def segmentation_job(device: str, job: str, headline: dict, values: list[float], tuned: float, untuned: float,
                     start: int = 1) -> list[tuple[str, bytes, bool]]:
    """A job of a task the fleet has never heard of, as a newer agent reports it: ``task`` and ``headline`` in
    every progress message and in the result; the epoch metrics do not repeat the headline's value."""
    batch = [msg(device, "status", {"state": "online", "reason": "birth"}, start),
             msg(device, "job", {"job": job, "status": "running"}, start + 1)]
    for e, v in enumerate(values, 1):
        batch.append(msg(device, f"jobs/{job}/progress", {
            "job": job, "epoch": e, "loss": 1.0 / e, "metrics": {"val_loss": 0.5 / e}, "task": "segmentation",
            "headline": {**headline, "value": v}}, start + 1 + e))
    batch.append(msg(device, f"jobs/{job}/result", {
        "job": job, "status": "succeeded", "promoted": True, "duration_s": 4.0, "error": None, "task": "segmentation",
        "epochs_run": len(values), "final": {headline["metric"]: tuned}, "baseline": {headline["metric"]: untuned},
        "headline": {**headline, "tuned": tuned, "untuned": untuned}}, start + 2 + len(values)))
    return batch


def test_a_headline_of_any_task_shows_its_label_and_values_everywhere(tmp_path, capsys):
    """The fleet renders whatever headline the device reports: a made-up task's metric (mIoU, higher is better)
    and a lower-is-better one (MAE) reach `fleet status`, `fleet train`'s result line, the dashboard's row,
    verdict and chart, and the `ftedge_job_val_headline` gauge, without the fleet knowing either metric."""
    s = FleetStore(tmp_path / "fleet.sqlite")
    miou = {"metric": "miou", "label": "mIoU", "higher_is_better": True}
    mae = {"metric": "mae", "label": "MAE", "higher_is_better": False}
    rep = s.ingest_batch(segmentation_job("seg-01", "js", miou, [0.55, 0.7, 0.79], tuned=0.81, untuned=0.62)
                         + segmentation_job("reg-01", "jr", mae, [3.0, 2.1, 1.6], tuned=1.5, untuned=3.2))
    assert (rep["messages"], rep["malformed"]) == (12, 0)

    text = prometheus_text(s).decode()
    assert 'ftedge_job_val_headline{device="seg-01",fleet="demo",metric="miou"} 0.79' in text
    assert 'ftedge_job_val_headline{device="reg-01",fleet="demo",metric="mae"} 1.6' in text
    assert "ftedge_job_val_accuracy{" not in text and "ftedge_job_val_map50{" not in text

    frag = dashboard_fragment(s)
    assert "mIoU 62.0% → 81.0% (promoted)" in frag and "MAE 3.2 → 1.5 (promoted)" in frag
    assert 'data-title="val mIoU" data-points="3"' in frag and 'data-title="val MAE" data-points="3"' in frag
    assert 'data-title="loss" data-points="3"' in frag and "val accuracy" not in frag
    assert '<td class="headline" data-metric="miou">mIoU 79.0%</td>' in frag
    assert '<td class="headline" data-metric="mae">MAE 1.6</td>' in frag

    assert main(["fleet", "status", "--db", str(tmp_path / "fleet.sqlite")]) == 0
    out = capsys.readouterr().out
    assert "mIoU 0.790" in out and "MAE 1.600" in out
    assert result_line("seg-01", "js", s.job("demo", "seg-01", "js")["result"]) == (
        "seg-01: job js succeeded — val mIoU 0.620 → 0.810, promoted True, 4.0 s")
    s.close()


@pytest.mark.parametrize("field, value", [
    ("headline", {"metric": "miou", "label": "mIoU", "higher_is_better": True, "tuned": "x", "untuned": 0.6}),
    ("headline", "miou"),
    ("headline", ["miou"]),
    ("headline", {"label": "mIoU", "tuned": 0.8}),                  # no metric
    ("headline", {"metric": "", "tuned": 0.8}),
    ("headline", {"metric": "miou", "higher_is_better": "yes"}),
    ("headline", {"metric": "miou", "value": float("nan")}),
    ("headline", {"metric": "miou", "untuned": True}),
    ("task", 7),
    ("epochs_run", 2.5),
])
def test_a_malformed_headline_task_or_epochs_run_is_counted_malformed(tmp_path, field, value):
    s = FleetStore(tmp_path / "fleet.sqlite")
    good = {"job": "js", "status": "succeeded", "final": {"miou": 0.8}, "task": "segmentation", "epochs_run": 3,
            "headline": {"metric": "miou", "label": "mIoU", "higher_is_better": True, "tuned": 0.8, "untuned": None}}
    bad = [msg("seg-01", "jobs/js/result", {**good, field: value}, 2)]
    if field != "epochs_run":   # a result's field only
        bad.append(msg("seg-01", "jobs/js/progress", {"job": "js", "epoch": 1, field: value}, 3))
    rep = s.ingest_batch([msg("seg-01", "status", {"state": "online"}, 1), *bad])
    assert (rep["messages"], rep["malformed"]) == (1, len(bad))
    assert s.counters()["malformed_total"] == rep["malformed"]
    assert s.job("demo", "seg-01", "js") is None, "stored nowhere"
    assert s.ingest_batch([msg("seg-01", "jobs/js/result", {**good, "headline": None}, 4)])["messages"] == 1
    s.close()


# -- issue 17: /api/devices pages, the summary in SQL, per-collector /metrics ---------------------------------

def api_page(url: str) -> tuple[list[dict], Any]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read()), r.headers


def walk_devices(base: str, query: str = "") -> tuple[list[dict], int, list[str]]:
    """Every device of ``GET /api/devices{query}``, following ``Link: <…>; rel="next"``: (rows, pages, totals)."""
    url, rows, pages, totals = base + "/api/devices" + query, [], 0, []
    while url:
        page, headers = api_page(url)
        assert isinstance(page, list)
        rows += page
        pages += 1
        totals.append(headers["X-Total-Count"])
        link = re.fullmatch(r'<(/api/devices\?[^>]+)>; rel="next"', headers.get("Link") or "")
        assert link or headers.get("Link") is None, headers.get("Link")
        url = base + link.group(1) if link else None
    return rows, pages, totals


def test_api_devices_pages_follow_the_link_header(store, server):
    odd = ["dev+1", "dev 2", "dev%3", "dév-4", "dev&5", "a=b?c"]   # a topic level may hold any of these
    store.ingest_batch([msg(d, "status", {"state": "online", "reason": "birth"}, 1, fleet=f)
                        for d in odd for f in ("demo", "odd fleet")])
    every = sorted((d["fleet"], d["device"]) for d in store.devices())
    assert len(every) == 2 + 2 * len(odd) == store.device_count()

    rows, pages, totals = walk_devices(server.url)            # default page: all of a small fleet, no Link
    assert pages == 1 and [(d["fleet"], d["device"]) for d in rows] == every and totals == [str(len(every))]
    rows, pages, totals = walk_devices(server.url, "?limit=3")
    assert [(d["fleet"], d["device"]) for d in rows] == every, "every device once, in (fleet, device) order"
    assert pages == -(-len(every) // 3) and set(totals) == {str(len(every))}
    assert rows[0].keys() >= {"fleet", "device", "state", "job", "metrics", "meta", "last_seen"}
    rows, pages, totals = walk_devices(server.url, "?fleet=odd+fleet&limit=4")
    assert [d["device"] for d in rows] == sorted(odd) and pages == 2 and set(totals) == {str(len(odd))}

    page, headers = api_page(server.url + "/api/devices?limit=2&after=" + urllib.parse.quote("demo/dev 2"))
    assert [d["device"] for d in page] == ["dev%3", "dev&5"]
    assert headers["Link"] == '</api/devices?limit=2&after=demo%2Fdev%265>; rel="next"'
    assert store.devices_page(limit=2, after=("demo", "zzz")) == store.devices_page(fleet="odd fleet", limit=2)
    assert store.devices_page(fleet="demo", after=("odd fleet", "a")) == []
    assert [d["device"] for d in store.devices_page(fleet="odd fleet", after=("demo", "zzz"))] == sorted(odd)
    assert [d["device"] for d in store.devices_page(limit=2, offset=3)] == [d for _, d in every[3:5]]
    assert store.device_count("odd fleet") == len(odd) and store.device_count("nope") == 0
    assert store.device_fleets("dev+1") == ["demo", "odd fleet"] and store.device_fleets("nope") == []

    for bad in ("limit=0", "limit=-1", "limit=abc", "after=no-slash", "after=/dev", "after=demo/"):
        with pytest.raises(urllib.error.HTTPError) as err:
            get(server.url + "/api/devices?" + bad)
        assert err.value.code == 400 and "error" in json.loads(err.value.read()), bad
    page, headers = api_page(server.url + "/api/devices?limit=999999")   # capped at 5000
    assert len(page) == len(every) and "Link" not in headers


def test_fleet_summary_counts_in_sql_and_still_reads_escaped_bodies(tmp_path):
    """The summary pre-filters job and result bodies in SQL; a body that spells a word with a \\u escape, and one
    that mentions the words without meaning them, are still judged by their decoded JSON."""
    s = FleetStore(tmp_path / "fleet.sqlite")

    def raw(device: str, suffix: str, body: str, seq: int) -> tuple[str, bytes, bool]:
        env = (f'"v": 1, "ts": {1_700_000_000_000 + seq}, "dev": "{device}", "boot": "{BOOT}", "seq": {seq}, '
               '"hist": false')
        return f"ftedge/v1/demo/{device}/{suffix}", ("{" + body + ", " + env + "}").encode(), False

    s.ingest_batch([
        raw("d1", "status", '"state": "online"', 1),
        raw("d1", "job", r'"job": "j1", "status": "\u0072unning"', 2),            # running, spelled with an escape
        raw("d1", "jobs/j1/result", r'"job": "j1", "status": "succ\u0065eded", "promoted": true, '
                                    r'"baseline": {"accuracy": 0.5}, "final": {"accuracy": 0.7}', 3),
        raw("d2", "status", '"state": "offline"', 1),
        raw("d2", "job", '"job": "running", "status": "succeeded"', 2),          # mentions running: not running
        raw("d2", "jobs/running/result", '"job": "running", "status": "succeeded", "promoted": false, '
                                         '"baseline": {"accuracy": 0.1}, "final": {"accuracy": 0.2}', 3),
        raw("d3", "job", '"job": "j3", "status": "running"', 1),                 # no status: state unknown
        raw("d3", "jobs/j3/result", '"job": "j3", "status": "succeeded", "promoted": true, '
                                    '"baseline": {"accuracy": 0.6}, "final": {"accuracy": 0.9}', 2),
    ])
    assert s.fleet_summary() == {"devices": 3, "online": 1, "offline": 1, "jobs_running": 2, "promoted_devices": 2,
                                 "accuracy_before": pytest.approx(0.55), "accuracy_after": pytest.approx(0.8)}
    assert s.fleet_summary("other") == {"devices": 0, "online": 0, "offline": 0, "jobs_running": 0,
                                        "promoted_devices": 0, "accuracy_before": None, "accuracy_after": None}
    s.close()


def metric_values(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of an exposition, parsed by prometheus_client: {(name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(smp.name, tuple(sorted(smp.labels.items()))): smp.value
            for fam in text_string_to_metric_families(text) for smp in fam.samples}


def test_metrics_add_this_collectors_process_series(store):
    from ftedge.fleet.ingest import Collector

    collector = Collector(store, client_id="collector-a", host="127.0.0.1", port=1)   # never started
    collector.stats.update(received=42, processed=40, batches=3, errors=1, resyncs=2, connections=1)
    for srv in (FleetHTTPServer(store, "127.0.0.1", 0, collector=collector).start(),
                FleetHTTPServer(store, "127.0.0.1", 0, instance="collector-a",
                                stats=lambda: dict(collector.stats)).start()):
        try:
            _, ctype, text = get(srv.url + "/metrics")
        finally:
            srv.stop()
        assert ctype.startswith("text/plain")
        v = metric_values(text)
        me = (("instance", "collector-a"),)
        assert v[("ftedge_collector_received_total", me)] == 42 and v[("ftedge_collector_processed_total", me)] == 40
        assert v[("ftedge_collector_batches_total", me)] == 3 and v[("ftedge_collector_errors_total", me)] == 1
        assert v[("ftedge_collector_resyncs_total", me)] == 2 and v[("ftedge_collector_unacked_total", me)] == 0
        assert 1e6 < v[("ftedge_collector_resident_memory_bytes", me)] < 1e12
        assert 0 < v[("ftedge_collector_cpu_seconds_total", me)]
        # the fleet's series stay unlabelled by instance: every collector of one database shows the same
        assert v[("ftedge_messages_total", ())] == store.counters()["messages_total"]
        assert v[("ftedge_device_up", (("device", "dev-001"), ("fleet", "demo")))] == 1.0
        assert v[("ftedge_job_loss", (("device", "dev-001"), ("fleet", "demo")))] == 0.2
        assert not any(name.startswith("ftedge_collector") and labels != me for name, labels in v)

    plain = metric_values(get_metrics(store))
    assert not any(name.startswith("ftedge_collector") for name, _ in plain), "no collector: no process series"
    assert ("ftedge_device_up", (("device", "dev-002"), ("fleet", "demo"))) in plain


def get_metrics(store: FleetStore) -> str:
    srv = FleetHTTPServer(store, "127.0.0.1", 0).start()
    try:
        return get(srv.url + "/metrics")[2]
    finally:
        srv.stop()
