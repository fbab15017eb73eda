"""The collector's HTTP side: JSON API, Prometheus ``/metrics`` and a live dashboard (server-rendered SVG).

Stdlib ``ThreadingHTTPServer`` bound to loopback by default; commands over HTTP need a bearer token (and
are disabled when none is configured). No CDN, no JavaScript library: the page refreshes its fragment by
``fetch`` every 2 s, so it works on an offline fleet host.
"""

from __future__ import annotations

import html
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

log = logging.getLogger(__name__)


# -- Prometheus ------------------------------------------------------------------------------------------
def prometheus_text(store: Any) -> bytes:
    """Exposition of fleet state; one series per device at most (bounded cardinality, no job labels)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Fleet:
        def collect(self):  # noqa: ANN202 - prometheus_client protocol
            up = GaugeMetricFamily("ftedge_device_up", "1 if the device's last status is online", labels=["fleet", "device"])
            seen = GaugeMetricFamily("ftedge_device_last_seen_timestamp_seconds", "last message from the device",
                                     labels=["fleet", "device"])
            loss = GaugeMetricFamily("ftedge_job_loss", "training loss of the device's latest epoch", labels=["fleet", "device"])
            acc = GaugeMetricFamily("ftedge_job_val_accuracy", "validation accuracy of the device's latest epoch",
                                    labels=["fleet", "device"])
            for d in store.devices():
                lab = [d["fleet"], d["device"]]
                up.add_metric(lab, 1.0 if d.get("state") == "online" else 0.0)
                if d.get("last_seen"):
                    seen.add_metric(lab, d["last_seen"] / 1000.0)
                m = d.get("metrics") or {}
                if m.get("loss") is not None:
                    loss.add_metric(lab, float(m["loss"]))
                val = (m.get("metrics") or {}).get("val_accuracy")
                if val is not None:
                    acc.add_metric(lab, float(val))
            c = store.counters()
            yield from (up, seen, loss, acc)
            for name, key, doc in (("ftedge_messages", "messages_total", "device messages ingested"),
                                   ("ftedge_messages_duplicate", "duplicates_total", "duplicates dropped (dev, boot, seq)"),
                                   ("ftedge_seq_gaps", "seq_gaps_total", "holes in a device's seq after the reorder window")):
                fam = CounterMetricFamily(name, doc)
                fam.add_metric([], float(c.get(key, 0)))
                yield fam

    registry = CollectorRegistry()
    registry.register(_Fleet())
    return generate_latest(registry)


# -- dashboard ---------------------------------------------------------------------------------------------
def svg_chart(values: list[float], title: str, color: str, width: int = 280, height: int = 90) -> str:
    """A small line chart as inline SVG (no external library)."""
    pts = [v for v in values if v is not None]
    if not pts:
        return f'<svg class="chart" width="{width}" height="{height}"><text x="8" y="20">{html.escape(title)}: no data</text></svg>'
    lo, hi = min(pts), max(pts)
    span = (hi - lo) or 1.0
    n = max(len(pts) - 1, 1)
    coords = " ".join(f"{8 + i * (width - 16) / n:.1f},{height - 8 - (v - lo) / span * (height - 30):.1f}"
                      for i, v in enumerate(pts))
    return (f'<svg class="chart" data-title="{html.escape(title)}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}"><text x="8" y="14" font-size="11">{html.escape(title)} '
            f'{pts[-1]:.4g} (min {lo:.3g}, max {hi:.3g})</text>'
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coords}"/></svg>')


def dashboard_fragment(store: Any) -> str:
    s = store.fleet_summary()
    before, after = s.get("accuracy_before"), s.get("accuracy_after")
    fmt = (lambda v: "—" if v is None else f"{v:.1%}")
    rows, charts = [], []
    for d in store.devices():
        job = d.get("job") or {}
        m = d.get("metrics") or {}
        val = (m.get("metrics") or {}).get("val_accuracy")
        loss_txt = "" if m.get("loss") is None else f"{m['loss']:.4f}"
        rows.append(
            f'<tr class="device" data-device="{html.escape(d["device"])}"><td>{html.escape(d["fleet"])}</td>'
            f'<td>{html.escape(d["device"])}</td><td class="state-{html.escape(str(d.get("state")))}">'
            f'{html.escape(str(d.get("state")))}</td><td>{html.escape(str(job.get("id") or ""))}</td>'
            f'<td>{html.escape(str(job.get("status") or ""))}</td><td>{m.get("epoch", "")}</td>'
            f'<td>{loss_txt}</td><td>{fmt(val)}</td>'
            f'<td>{html.escape(str(d.get("active_version") or ""))}</td></tr>')
        if job.get("id"):
            detail = store.job(d["fleet"], d["device"], job["id"]) or {}
            prog = detail.get("progress") or []
            charts.append(
                f'<div class="device-charts" data-device="{html.escape(d["device"])}"><h3>{html.escape(d["device"])} · '
                f'{html.escape(job["id"])}</h3>'
                + svg_chart([p.get("loss") for p in prog], "loss", "#c0392b")
                + svg_chart([(p.get("metrics") or {}).get("val_accuracy") for p in prog], "val accuracy", "#2471a3")
                + "</div>")
    return (
        f'<section id="summary"><span>devices <b id="n-devices">{s.get("devices", 0)}</b></span> '
        f'<span>online <b id="n-online">{s.get("online", 0)}</b></span> '
        f'<span>jobs running <b id="n-running">{s.get("jobs_running", 0)}</b></span> '
        f'<span>accuracy before → after personalization <b id="acc">{fmt(before)} → {fmt(after)}</b></span></section>'
        '<table id="devices"><tr><th>fleet</th><th>device</th><th>state</th><th>job</th><th>status</th><th>epoch</th>'
        '<th>loss</th><th>val acc</th><th>active version</th></tr>' + "".join(rows) + "</table>"
        '<section id="charts">' + "".join(charts) + "</section>")


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>ftedge fleet</title>
<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{padding:.2em .6em;
border-bottom:1px solid #ddd}.state-online{color:#1e8449}.state-offline{color:#a93226}#summary span{margin-right:2em}
.device-charts{display:inline-block;margin:.5em;padding:.5em;border:1px solid #eee}</style></head>
<body><h1>ftedge fleet</h1><div id="live">%s</div>
<script>setInterval(async()=>{try{const r=await fetch('/fragment');if(r.ok)document.getElementById('live').innerHTML=
await r.text();}catch(e){}},2000);</script></body></html>"""


# -- server --------------------------------------------------------------------------------------------------
class FleetHTTPServer:
    def __init__(self, store: Any, host: str = "127.0.0.1", port: int = 8080, token: str | None = None,
                 send: Callable[[str, str, str, dict], dict] | None = None) -> None:
        self.store, self.token, self.send = store, token, send
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("http: " + fmt, *args)

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, code: int, obj: Any) -> None:
                self._reply(code, json.dumps(obj).encode(), "application/json")

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                url = urlparse(self.path)
                parts = [p for p in url.path.split("/") if p]
                try:
                    if url.path == "/":
                        self._reply(200, (PAGE % dashboard_fragment(outer.store)).encode(), "text/html; charset=utf-8")
                    elif url.path == "/fragment":
                        self._reply(200, dashboard_fragment(outer.store).encode(), "text/html; charset=utf-8")
                    elif url.path == "/metrics":
                        from prometheus_client import CONTENT_TYPE_LATEST

                        self._reply(200, prometheus_text(outer.store), CONTENT_TYPE_LATEST)
                    elif parts == ["api", "devices"]:
                        self._json(200, outer.store.devices())
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
                url = urlparse(self.path)
                parts = [p for p in url.path.split("/") if p]
                if not (len(parts) == 5 and parts[:2] == ["api", "devices"] and parts[3] == "commands"):
                    return self._json(404, {"error": f"no route {url.path}"})
                if not outer.token:
                    return self._json(403, {"error": "commands over HTTP are disabled: start the collector with --token"})
                if self.headers.get("Authorization") != f"Bearer {outer.token}":
                    return self._json(401, {"error": "missing or wrong bearer token"})
                if outer.send is None:
                    return self._json(503, {"error": "this server has no MQTT connection to send commands"})
                length = int(self.headers.get("Content-Length") or 0)
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

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="ftedge-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def _fleet_of(self, device: str) -> str | None:
        for d in self.store.devices():
            if d["device"] == device:
                return d["fleet"]
        return None

    def start(self) -> "FleetHTTPServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
