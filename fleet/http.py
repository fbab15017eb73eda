"""The collector's HTTP side: JSON API, Prometheus ``/metrics`` and a live dashboard (server-rendered SVG).

Stdlib ``ThreadingHTTPServer`` bound to loopback by default; commands over HTTP need a bearer token (and
are disabled when none is configured; compared in constant time). Every request's ``Host`` must be an IP
address, ``localhost`` or an allowed name (else 421: a DNS-rebinding page cannot read the GET endpoints);
connections have a socket timeout and POST bodies a size cap. Each device renders on its own: one whose
stored row cannot be shown gets an error cell, the rest of the page renders. No CDN, no JavaScript
library: the page refreshes its fragment by ``fetch`` every 2 s, so it works on an offline fleet host.
"""

from __future__ import annotations

import hmac
import html
import ipaddress
import json
import logging
import math
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qs, urlencode, urlparse

log = logging.getLogger(__name__)


# -- Prometheus ------------------------------------------------------------------------------------------
COLLECTOR_STATS = (("received", "messages received from the broker"),
                   ("processed", "messages written (their batch committed or refused)"),
                   ("batches", "write transactions of received messages"),
                   ("errors", "batches or gap checks that failed"),
                   ("resyncs", "resync commands sent after counted holes"),
                   ("connections", "connections to the broker (reconnects included)"),
                   ("unacked", "messages whose acknowledgement to the broker failed"))


def process_stats() -> dict[str, float]:
    """This process's resident memory (``VmRSS`` of /proc/self/status, bytes; absent where there is no /proc)
    and CPU time (user + system, seconds)."""
    t = os.times()
    out = {"cpu_seconds": t.user + t.system}
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["resident_memory_bytes"] = float(line.split()[1]) * 1024   # "VmRSS:  1234 kB"
                    break
    except (OSError, ValueError, IndexError):
        pass
    return out


def prometheus_text(store: Any, instance: str | None = None,
                    stats: Callable[[], dict[str, Any]] | None = None) -> bytes:
    """Exposition of fleet state; one series per device at most (bounded cardinality, no job labels).

    The device gauges and ``ftedge_messages*`` counters are the fleet's (from the database, the same on every
    collector sharing it). With ``instance`` (the collector's name), this process's own figures follow,
    labelled ``instance``: ``ftedge_collector_{received,processed,batches,errors,resyncs,connections,
    unacked}_total`` from ``stats()`` (the Collector's ``stats``), ``ftedge_collector_resident_memory_bytes``
    and ``ftedge_collector_cpu_seconds_total``."""
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
            map50 = GaugeMetricFamily("ftedge_job_val_map50", "validation mAP@0.5 of the device's latest epoch "
                                      "(detectors)", labels=["fleet", "device"])
            for fleet, device, state, last_seen, metrics in store.device_gauges():   # no meta/job bodies
                lab = [str(fleet), str(device)]
                up.add_metric(lab, 1.0 if state == "online" else 0.0)
                if isinstance(last_seen, int) and not isinstance(last_seen, bool):
                    seen.add_metric(lab, last_seen / 1000.0)
                m = metrics if isinstance(metrics, dict) else {}
                inner = m.get("metrics") if isinstance(m.get("metrics"), dict) else {}
                for fam, value in ((loss, m.get("loss")), (acc, inner.get("val_accuracy")), (map50, inner.get("val_map50"))):
                    if _number(value) is not None:   # a row stored before validation may hold anything
                        fam.add_metric(lab, _number(value))
            c = store.counters()
            yield from (up, seen, loss, acc, map50)
            for name, key, doc in (("ftedge_messages", "messages_total", "device messages ingested"),
                                   ("ftedge_messages_duplicate", "duplicates_total", "duplicates dropped (dev, boot, seq)"),
                                   ("ftedge_messages_malformed", "malformed_total",
                                    "device messages refused: bad envelope, body field types or size"),
                                   ("ftedge_messages_rejected", "rejected_total",
                                    "messages of devices beyond the devices-per-fleet cap"),
                                   ("ftedge_seq_gaps", "seq_gaps_total", "holes in a device's seq after the reorder window")):
                fam = CounterMetricFamily(name, doc)
                fam.add_metric([], float(c.get(key, 0)))
                yield fam
            if instance is not None:
                yield from _collector_families(str(instance), stats)

    registry = CollectorRegistry()
    registry.register(_Fleet())
    return generate_latest(registry)


def _collector_families(instance: str, stats: Callable[[], dict[str, Any]] | None) -> Iterator[Any]:
    """The per-process series of one collector (label ``instance``)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    got = dict(stats() or {}) if stats is not None else {}
    for key, doc in COLLECTOR_STATS:
        if _number(got.get(key)) is not None:
            fam = CounterMetricFamily(f"ftedge_collector_{key}", f"{doc} (this collector process)",
                                      labels=["instance"])
            fam.add_metric([instance], _number(got[key]))
            yield fam
    proc = process_stats()
    if "resident_memory_bytes" in proc:
        fam = GaugeMetricFamily("ftedge_collector_resident_memory_bytes", "resident memory (VmRSS) of the collector "
                                "process", labels=["instance"])
        fam.add_metric([instance], proc["resident_memory_bytes"])
        yield fam
    fam = CounterMetricFamily("ftedge_collector_cpu_seconds", "CPU time (user + system) of the collector process",
                              labels=["instance"])
    fam.add_metric([instance], proc["cpu_seconds"])
    yield fam


# -- dashboard ---------------------------------------------------------------------------------------------
PAGE_SIZE = 100     # device-table rows per page: the page stays small (fast first paint) with any fleet size
MAX_CHARTS = 8      # devices charted per page (each costs one job query and ~2 KB of SVG)
LOSS_COLOR, ACC_COLOR = "#c0392b", "#2471a3"


def _number(v: Any) -> float | None:
    """``v`` as a float if it is a JSON number that a float can hold, else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        return float(v)
    except OverflowError:
        return None


def _obj(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _finite(v: Any) -> float | None:
    f = _number(v)
    return f if f is not None and math.isfinite(f) else None


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.1%}"


def svg_chart(values: list[Any], title: str, color: str, width: int = 200, height: int = 96,
              baseline: float | None = None) -> str:
    """A small line chart as inline SVG (no external library): one ``<polyline class="series">`` with one
    point per finite value (``data-points`` says how many), min/max labels, and an optional dashed
    ``baseline`` (e.g. the accuracy before personalization)."""
    pts = [f for f in (_finite(v) for v in values) if f is not None]
    esc = html.escape(title)
    head = (f'<svg class="chart" data-title="{esc}" data-points="{len(pts)}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc}">')
    if not pts:
        return head + f'<text x="8" y="16" font-size="11">{esc}: no data</text></svg>'
    left, right, top, bottom = 38, 8, 22, 16
    lo, hi = min(pts), max(pts)
    if baseline is not None:
        lo, hi = min(lo, baseline), max(hi, baseline)
    span = (hi - lo) or 1.0
    n = max(len(pts) - 1, 1)

    def y(v: float) -> float:
        return height - bottom - (v - lo) / span * (height - top - bottom)

    coords = " ".join(f"{left + i * (width - left - right) / n:.1f},{y(v):.1f}" for i, v in enumerate(pts))
    parts = [head,
             f'<text x="8" y="14" font-size="11">{esc} <tspan class="last" font-weight="bold">{pts[-1]:.4g}</tspan>'
             f'</text>',
             f'<path class="axes" d="M{left},{top}V{height - bottom}H{width - right}" stroke="#999" fill="none"/>',
             f'<text x="{left - 3}" y="{top + 4}" font-size="9" text-anchor="end">{hi:.3g}</text>',
             f'<text x="{left - 3}" y="{height - bottom}" font-size="9" text-anchor="end">{lo:.3g}</text>',
             f'<text x="{width - right}" y="{height - 4}" font-size="9" text-anchor="end">{len(pts)} epochs</text>']
    if baseline is not None:
        parts.append(f'<line class="baseline" x1="{left}" x2="{width - right}" y1="{y(baseline):.1f}" '
                     f'y2="{y(baseline):.1f}" stroke="#777" stroke-dasharray="4 3"><title>before: {baseline:.4g}'
                     "</title></line>")
    parts.append(f'<polyline class="series" fill="none" stroke="{color}" stroke-width="2" points="{coords}"/></svg>')
    return "".join(parts)


def _query(page: int, device: str | None) -> str:
    """The dashboard URL query for a table page and a charted device."""
    args: dict[str, Any] = {"page": page} if page > 1 else {}
    if device:
        args["device"] = device
    return "?" + urlencode(args) if args else "?"


def _has_job(d: dict[str, Any]) -> bool:
    return bool(_obj(d.get("job")).get("id"))


def _isolated(render: Callable[..., str], d: dict[str, Any], *args: Any, cols: int = 0) -> str:
    """``render(d, *args)``, or an error cell (``cols`` wide) / box if this device's data cannot be shown:
    one device's bad row never takes the page down."""
    try:
        return render(d, *args)
    except Exception as exc:  # noqa: BLE001 - a row stored before validation, or edited by hand
        log.warning("could not render device %r: %s", d.get("device"), exc)
        dev, fleet = html.escape(str(d.get("device"))), html.escape(str(d.get("fleet")))
        why = html.escape(f"could not render this device ({type(exc).__name__}); see the collector log")
        if cols:
            return (f'<tr class="device error" data-device="{dev}" data-fleet="{fleet}"><td>{fleet}</td>'
                    f'<td>{dev}</td><td class="error" colspan="{cols - 2}">{why}</td></tr>')
        return f'<div class="device-charts error" data-device="{dev}">{why}</div>'


def _device_row(d: dict[str, Any], page: int, now_ms: int) -> str:
    """One row of the device table; the device links to the page that charts it first."""
    job = _obj(d.get("job"))
    m = _obj(d.get("metrics"))
    loss = _finite(m.get("loss"))
    inner = _obj(m.get("metrics"))
    acc = _finite(inner.get("val_accuracy") if inner.get("val_accuracy") is not None else inner.get("val_map50"))
    state = str(d.get("state") or "unknown")
    age = "" if not d.get("last_seen") else f"{max(0, now_ms - int(d['last_seen'])) // 1000} s ago"
    dev = html.escape(d["device"])
    return (f'<tr class="device" data-device="{dev}" data-fleet="{html.escape(d["fleet"])}" '
            f'data-state="{html.escape(state)}"><td>{html.escape(d["fleet"])}</td>'
            f'<td><a href="{html.escape(_query(page, d["device"]))}">{dev}</a></td>'
            f'<td class="state state-{html.escape(state)}">{html.escape(state)}</td>'
            f'<td class="job">{html.escape(str(job.get("id") or ""))}</td>'
            f'<td class="status">{html.escape(str(job.get("status") or ""))}</td>'
            f'<td class="epoch">{html.escape(str(m.get("epoch", "")))}</td>'
            f'<td class="loss">{"" if loss is None else f"{loss:.4f}"}</td>'
            f'<td class="acc">{"" if acc is None else _pct(acc)}</td>'
            f'<td>{html.escape(str(d.get("active_version") or ""))}</td><td class="seen">{age}</td></tr>')


def _num(v: Any, spec: str) -> str:
    f = _finite(v)
    return "-" if f is None else format(f, spec)


def _tuning(t: dict[str, Any]) -> str:
    """What ``train --auto`` chose and its cross-validated estimate (a result's ``tuning``), as one line."""
    if not t:
        return ""
    epochs = t.get("epochs")
    text = (f"auto-tuned: lr {_num(t.get('lr'), '.3g')}, weight decay {_num(t.get('weight_decay'), '.3g')}, "
            f"{epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else '-'} epochs, class weight "
            f"{t.get('class_weight') if t.get('class_weight') in ('none', 'balanced') else '-'} · "
            f"cross-validated {_num(t.get('cv_score'), '.3f')} vs untuned {_num(t.get('cv_untuned'), '.3f')}, "
            f"gain {_num(t.get('cv_gain'), '+.3f')} [{_num(t.get('cv_lo'), '+.3f')}, {_num(t.get('cv_hi'), '+.3f')}]")
    return f'<p class="tuning">{html.escape(text)}</p>'


def _language_model(final: dict[str, Any], base: dict[str, Any]) -> str:
    """A causal LM's result: answer accuracy, held-out perplexity and retention of the untuned answers."""
    if not any(_finite(final.get(k)) is not None for k in ("perplexity", "retention")):
        return ""
    text = (f"language model: answer accuracy {_num(base.get('accuracy'), '.3f')} → {_num(final.get('accuracy'), '.3f')}"
            f" · held-out perplexity {_num(base.get('perplexity'), '.2f')} → {_num(final.get('perplexity'), '.2f')}"
            f" · retention {_num(final.get('retention'), '.2f')}")
    return f'<p class="llm">{html.escape(text)}</p>'


def _device_charts(store: Any, d: dict[str, Any]) -> str:
    """Loss and accuracy charts of the device's current job, with its before → after verdict once known."""
    job_id = str((d.get("job") or {}).get("id"))
    detail = store.job(d["fleet"], d["device"], job_id) or {}
    prog = [_obj(p) for p in detail.get("progress") or []]
    result = _obj(detail.get("result"))
    key, what = ("map50", "mAP@0.5") if _obj(result.get("final")).get("map50") is not None else ("accuracy", "accuracy")
    before = _finite(_obj(result.get("baseline")).get(key))
    after = _finite(_obj(result.get("final")).get(key))
    verdict = ""
    if before is not None and after is not None:
        verdict = (f' <span class="verdict" data-before="{before}" data-after="{after}">{what} {_pct(before)} → '
                   f'{_pct(after)}{" (promoted)" if result.get("promoted") else ""}</span>')
    detector = any(_obj(p.get("metrics")).get("val_map50") is not None for p in prog)
    dev = html.escape(d["device"])
    return (f'<div class="device-charts" data-device="{dev}" data-job="{html.escape(job_id)}" '
            f'data-status="{html.escape(str(detail.get("status") or ""))}"><h3>{dev} · {html.escape(job_id)} · '
            f'{html.escape(str(detail.get("status") or ""))}{verdict}</h3>'
            + _tuning(_obj(result.get("tuning")))
            + _language_model(_obj(result.get("final")), _obj(result.get("baseline")))
            + svg_chart([p.get("loss") for p in prog], "loss", LOSS_COLOR)
            + (svg_chart([_obj(p.get("metrics")).get("val_perplexity") for p in prog], "val perplexity", ACC_COLOR)
               if any(_obj(p.get("metrics")).get("val_perplexity") is not None for p in prog) else
               svg_chart([_obj(p.get("metrics")).get("val_map50") for p in prog], "val mAP@0.5", ACC_COLOR,
                         baseline=before) if detector else
               svg_chart([_obj(p.get("metrics")).get("val_accuracy") for p in prog], "val accuracy", ACC_COLOR,
                         baseline=before))
            + "</div>")


def dashboard_fragment(store: Any, page: int = 1, device: str | None = None, now_ms: int | None = None) -> str:
    """The live part of the dashboard: fleet summary, one page of the device table (``PAGE_SIZE`` rows) and
    loss/accuracy charts for at most ``MAX_CHARTS`` devices — the selected ``device`` first, then devices of
    this page with a running job, then the others of this page that have a job. Only this page's device rows
    are read (``devices_page``; the summary is counted in SQL, see ``fleet_summary``), so its size and cost
    hardly grow with the fleet."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    s = store.fleet_summary()
    total = int(s.get("devices") or 0)
    pages = max(1, math.ceil(total / PAGE_SIZE))
    page = min(max(1, page), pages)
    shown = store.devices_page(limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE) if total else []
    focus = _focus(store, device)
    key = lambda d: (d.get("fleet"), d.get("device"))  # noqa: E731
    with_job = [d for d in shown if _has_job(d) and key(d) not in {key(f) for f in focus}]
    running = [d for d in with_job if _obj(d.get("job")).get("status") == "running"]
    charted = focus + running + [d for d in with_job if d not in running]
    before, after = s.get("accuracy_before"), s.get("accuracy_after")
    first, last = (page - 1) * PAGE_SIZE + 1 if shown else 0, (page - 1) * PAGE_SIZE + len(shown)
    nav = [f'devices <b>{first}–{last}</b> of <b>{total}</b>' if total
           else "no devices yet: waiting for the first message from the fleet"]
    if page > 1:
        nav.append(f'<a rel="prev" href="{html.escape(_query(page - 1, device))}">‹ prev</a>')
    if page < pages:
        nav.append(f'<a rel="next" href="{html.escape(_query(page + 1, device))}">next ›</a>')
    if device:
        nav.append(f'charts: <b>{html.escape(device)}</b> first · <a href="{html.escape(_query(page, None))}">'
                   "clear</a>")
    return (
        f'<section id="summary" data-devices="{s.get("devices", 0)}" data-online="{s.get("online", 0)}" '
        f'data-offline="{s.get("offline", 0)}" data-running="{s.get("jobs_running", 0)}" '
        f'data-promoted="{s.get("promoted_devices", 0)}" data-acc-before="{"" if before is None else before}" '
        f'data-acc-after="{"" if after is None else after}">'
        f'<span>devices <b id="n-devices">{s.get("devices", 0)}</b></span> '
        f'<span>online <b id="n-online">{s.get("online", 0)}</b></span> '
        f'<span>offline <b id="n-offline">{s.get("offline", 0)}</b></span> '
        f'<span>jobs running <b id="n-running">{s.get("jobs_running", 0)}</b></span> '
        f'<span>accuracy before → after personalization <b id="acc">{_pct(before)} → {_pct(after)}</b> '
        f'(<span id="n-promoted">{s.get("promoted_devices", 0)}</span> promoted)</span></section>'
        f'<section id="charts" data-charted="{min(len(charted), MAX_CHARTS)}" data-with-job="{len(charted)}">'
        + "".join(_isolated(lambda dv: _device_charts(store, dv), d) for d in charted[:MAX_CHARTS]) + "</section>"
        f'<nav id="pager" data-page="{page}" data-pages="{pages}">' + " · ".join(nav) + "</nav>"
        '<table id="devices"><thead><tr><th>fleet</th><th>device</th><th>state</th><th>job</th><th>status</th>'
        '<th>epoch</th><th>loss</th><th>val acc</th><th>active version</th><th>last seen</th></tr></thead><tbody>'
        + "".join(_isolated(_device_row, d, page, now_ms, cols=10) for d in shown) + "</tbody></table>")


def _focus(store: Any, device: str | None) -> list[dict[str, Any]]:
    """The selected device (of the first fleet, by name, that holds one with a job) as a one-item list, or []."""
    if not device:
        return []
    for fleet in store.device_fleets(device):
        d = store.device(fleet, device)
        if d is not None and _has_job(d):
            return [d]
    return []


def _page_args(query: str) -> tuple[int, str | None]:
    """``page`` and ``device`` from a query string (bad values fall back to page 1, no device)."""
    q = parse_qs(query)
    raw = (q.get("page") or ["1"])[0]
    page = int(raw) if raw.isdigit() and len(raw) < 7 else 1
    return page, (q.get("device") or [None])[0] or None


PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>ftedge fleet</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<style>body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;font-size:.9em}
td,th{padding:.15em .6em;border-bottom:1px solid #e5e5e5;text-align:left}.state-online{color:#1e8449}
.state-offline{color:#a93226}#summary>span{margin-right:1.6em}#pager{margin:.8em 0}
#charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(425px,1fr));gap:.6em;margin:.8em 0}
.device-charts{padding:.4em .5em;border:1px solid #eee}
.device-charts h3{font-size:.95em;margin:.2em 0}.verdict{display:block;font-weight:normal;color:#555;font-size:.85em}
#live.stale #summary::after{content:"collector unreachable: showing the last data";color:#a93226}</style>
</head><body><h1>ftedge fleet</h1><div id="live" data-refreshes="0">%s</div>
<script>(() => {
  const live = document.getElementById('live');
  let busy = false, n = 0;
  setInterval(async () => {          // live refresh: re-render the server-side fragment every 2 s
    if (busy) return;
    busy = true;
    try {
      const r = await fetch('/fragment' + location.search, {cache: 'no-store'});
      if (!r.ok) throw new Error(r.status);
      live.innerHTML = await r.text();
      live.dataset.refreshes = ++n;
      live.classList.remove('stale');
    } catch (e) { live.classList.add('stale'); } finally { busy = false; }
  }, 2000);
})();</script></body></html>"""


def dashboard_page(store: Any, page: int = 1, device: str | None = None) -> str:
    """The whole ``/`` page: server-rendered (paints without waiting for any script), then live."""
    return PAGE % dashboard_fragment(store, page, device)


# -- server --------------------------------------------------------------------------------------------------
MAX_BODY = 64 * 1024   # bytes of a POST body (command args)
TIMEOUT_S = 30.0       # socket timeout per read/write of a connection
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
    if raw_limit and (not raw_limit.isdigit() or int(raw_limit) < 1):
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


class FleetHTTPServer:
    """The HTTP side. ``token``: bearer token enabling POST commands (None: commands disabled);
    ``allowed_hosts``: host names (besides IP literals and ``localhost``) the ``Host`` header may carry, e.g.
    the DNS name the dashboard is opened under; ``timeout_s``: socket timeout of every connection.

    ``/metrics`` adds this collector process's series (label ``instance``) given ``collector`` (a
    :class:`~ftedge.fleet.ingest.Collector`: its ``instance`` or ``settings.client_id`` names it, its ``stats``
    are counted) or ``instance`` with an optional ``stats`` callable returning such a dict."""

    def __init__(self, store: Any, host: str = "127.0.0.1", port: int = 8080, token: str | None = None,
                 send: Callable[[str, str, str, dict], dict] | None = None,
                 allowed_hosts: Iterable[str] = (), timeout_s: float = TIMEOUT_S, collector: Any = None,
                 instance: str | None = None, stats: Callable[[], dict[str, Any]] | None = None) -> None:
        self.store, self._token, self.send = store, token, send
        if collector is not None:
            instance = instance or getattr(collector, "instance", None) or collector.settings.client_id
            stats = stats or (lambda: collector.stats)
        self.instance, self.stats = instance, stats
        names = {h.strip().lower().rstrip(".") for h in allowed_hosts if h.strip()}
        if host and not host.replace(".", "").isdigit() and ":" not in host and host not in ("0.0.0.0", ""):
            names.add(host.lower())            # bound to a name: that name is fine too
        self.allowed_hosts = frozenset(names)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = timeout_s   # StreamRequestHandler sets it on the socket: an idle client is dropped

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

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                if not self._host_ok():
                    return
                url = urlparse(self.path)
                parts = [p for p in url.path.split("/") if p]
                try:
                    if url.path == "/":
                        self._reply(200, dashboard_page(outer.store, *_page_args(url.query)).encode(),
                                    "text/html; charset=utf-8")
                    elif url.path == "/fragment":
                        self._reply(200, dashboard_fragment(outer.store, *_page_args(url.query)).encode(),
                                    "text/html; charset=utf-8")
                    elif url.path == "/metrics":
                        from prometheus_client import CONTENT_TYPE_LATEST

                        self._reply(200, prometheus_text(outer.store, outer.instance, outer.stats),
                                    CONTENT_TYPE_LATEST)
                    elif parts == ["api", "devices"]:
                        try:
                            rows, headers = devices_api(outer.store, url.query)
                        except ValueError as exc:
                            return self._json(400, {"error": str(exc)})
                        self._json(200, rows, headers)
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
                if not self._host_ok():
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

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
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
