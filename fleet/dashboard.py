"""The live dashboard (``GET /`` and ``GET /fragment``): fleet summary, one page of the device table and the
charts of the devices with a job, rendered on the server.

Each device renders on its own: one whose stored row cannot be shown gets an error cell, the rest of the page
renders. The page refreshes its fragment by ``fetch`` every 2 s; no CDN, no JavaScript library. A job's
metric, its label and its values come from the device's messages (:mod:`~ftedge.fleet.headline`).
"""

from __future__ import annotations

import html
import logging
import math
import re
import time
from typing import Any, Callable
from urllib.parse import parse_qs, urlencode

from . import headline
from .charts import ACC_COLOR, LOSS_COLOR, svg_chart
from .device_page import device_url
from .rollout_page import rollouts_section
from .validate import finite

log = logging.getLogger(__name__)

PAGE_SIZE = 100     # device-table rows per page: the page stays small (fast first paint) with any fleet size
MAX_CHARTS = 8      # devices charted per page (each costs one job query and ~2 KB of SVG)


def _obj(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.1%}"


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
    loss = finite(m.get("loss"))
    h = headline.of_progress(m)
    shown = "" if h.value is None else f"{h.label} {h.show(h.value)}"
    state = str(d.get("state") or "unknown")
    age = "" if not d.get("last_seen") else f"{max(0, now_ms - int(d['last_seen'])) // 1000} s ago"
    dev = html.escape(d["device"])
    return (f'<tr class="device" data-device="{dev}" data-fleet="{html.escape(d["fleet"])}" '
            f'data-state="{html.escape(state)}"><td>{html.escape(d["fleet"])}</td>'
            f'<td><a href="{html.escape(_query(page, d["device"]))}">{dev}</a> '
            f'<a class="page" href="{html.escape(device_url(d["fleet"], d["device"]))}" title="its page">›</a></td>'
            f'<td class="state state-{html.escape(state)}">{html.escape(state)}</td>'
            f'<td class="job">{html.escape(str(job.get("id") or ""))}</td>'
            f'<td class="status">{html.escape(str(job.get("status") or ""))}</td>'
            f'<td class="epoch">{html.escape(str(m.get("epoch", "")))}</td>'
            f'<td class="loss">{"" if loss is None else f"{loss:.4f}"}</td>'
            f'<td class="headline" data-metric="{html.escape(h.metric)}">{html.escape(shown)}</td>'
            f'<td>{html.escape(str(d.get("active_version") or ""))}</td><td class="seen">{age}</td></tr>')


def _num(v: Any, spec: str) -> str:
    f = finite(v)
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
    if not any(finite(final.get(k)) is not None for k in ("perplexity", "retention")):
        return ""
    text = (f"language model: answer accuracy {_num(base.get('accuracy'), '.3f')} → {_num(final.get('accuracy'), '.3f')}"
            f" · held-out perplexity {_num(base.get('perplexity'), '.2f')} → {_num(final.get('perplexity'), '.2f')}"
            f" · retention {_num(final.get('retention'), '.2f')}")
    return f'<p class="llm">{html.escape(text)}</p>'


def _device_charts(store: Any, d: dict[str, Any]) -> str:
    """Loss and headline-metric charts of the device's current job, with its before → after verdict once known
    (the metric, its label and the values as the device reports them: :mod:`~ftedge.fleet.headline`)."""
    job_id = str((d.get("job") or {}).get("id"))
    detail = store.job(d["fleet"], d["device"], job_id) or {}
    prog = [_obj(p) for p in detail.get("progress") or []]
    result = _obj(detail.get("result"))
    outcome = headline.of_result(result)
    before, after = outcome.untuned, outcome.tuned
    verdict = ""
    if before is not None and after is not None:
        verdict = (f' <span class="verdict" data-metric="{html.escape(outcome.metric)}" data-before="{before}" '
                   f'data-after="{after}">{html.escape(outcome.label)} {outcome.show(before)} → '
                   f'{outcome.show(after)}{" (promoted)" if result.get("promoted") else ""}</span>')
    charted = headline.of_job(prog, result)
    dev = html.escape(d["device"])
    return (f'<div class="device-charts" data-device="{dev}" data-job="{html.escape(job_id)}" '
            f'data-status="{html.escape(str(detail.get("status") or ""))}"><h3>{dev} · {html.escape(job_id)} · '
            f'{html.escape(str(detail.get("status") or ""))}{verdict}</h3>'
            + _tuning(_obj(result.get("tuning")))
            + _language_model(_obj(result.get("final")), _obj(result.get("baseline")))
            + svg_chart([p.get("loss") for p in prog], "loss", LOSS_COLOR)
            + svg_chart(headline.series(prog, charted.metric), f"val {charted.label}", ACC_COLOR,
                        baseline=before if outcome.metric == charted.metric else None)
            + "</div>")


def dashboard_fragment(store: Any, page: int = 1, device: str | None = None, now_ms: int | None = None) -> str:
    """The live part of the dashboard: fleet summary, one page of the device table (``PAGE_SIZE`` rows) and
    loss/headline-metric charts for at most ``MAX_CHARTS`` devices — the selected ``device`` first, then devices of
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
        + rollouts_section(store) +
        f'<section id="charts" data-charted="{min(len(charted), MAX_CHARTS)}" data-with-job="{len(charted)}">'
        + "".join(_isolated(lambda dv: _device_charts(store, dv), d) for d in charted[:MAX_CHARTS]) + "</section>"
        f'<nav id="pager" data-page="{page}" data-pages="{pages}">' + " · ".join(nav) + "</nav>"
        '<table id="devices"><thead><tr><th>fleet</th><th>device</th><th>state</th><th>job</th><th>status</th>'
        '<th>epoch</th><th>loss</th><th>validation</th><th>active version</th><th>last seen</th></tr></thead>'
        '<tbody>'
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


def page_args(query: str) -> tuple[int, str | None]:
    """``page`` and ``device`` from a query string (bad values fall back to page 1, no device)."""
    q = parse_qs(query)
    raw = (q.get("page") or ["1"])[0]
    # isascii: str.isdigit() is also true of "²" and other digits int() refuses (that was a 500)
    page = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 7 else 1
    return page, (q.get("device") or [None])[0] or None


PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>@TITLE@</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<style>body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;font-size:.9em}
td,th{padding:.15em .6em;border-bottom:1px solid #e5e5e5;text-align:left}.state-online{color:#1e8449}
.state-offline{color:#a93226}#summary>span{margin-right:1.6em}#pager{margin:.8em 0}
#charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(425px,1fr));gap:.6em;margin:.8em 0}
.device-charts{padding:.4em .5em;border:1px solid #eee}
.device-charts h3{font-size:.95em;margin:.2em 0}.verdict{display:block;font-weight:normal;color:#555;font-size:.85em}
h1 a{color:inherit;text-decoration:none}h2{font-size:1.05em;margin:1em 0 .4em}
.wave-bar{display:flex;gap:2px;min-width:12em;max-width:40em;height:1.15em;margin:.3em 0}
.wave-seg{min-width:3.2em;padding:0 .3em;font-size:.75em;line-height:1.55em;color:#fff;text-align:center;
overflow:hidden;white-space:nowrap;border-radius:2px}.wave-pos{font-size:.8em;color:#555}
.v-passed{background:#1e8449}.v-halted{background:#a93226}.v-running{background:#2471a3}
.v-paused{background:#b9770e}.v-aborted{background:#616a6b}.v-pending{background:#d5d8dc;color:#333}
.rstate-done,.v-text-passed{color:#1e8449}.rstate-halted,.rstate-aborted,.v-text-halted,.reason{color:#a93226}
.rstate-running{color:#2471a3}.ds{white-space:nowrap}.meta{color:#555;font-size:.9em}
#rollouts td.progress{min-width:16em}#problems td.why{max-width:48em}
#live.stale #summary::after,#live.stale #rollout::before{content:"collector unreachable: showing the last data";
color:#a93226}</style>
</head><body><h1>@HEADING@</h1><div id="live" data-refreshes="0" data-src="@SRC@">@FRAGMENT@</div>
<script>(() => {
  const live = document.getElementById('live');
  let busy = false, n = 0;
  setInterval(async () => {          // live refresh: re-render the server-side fragment every 2 s
    if (busy) return;
    busy = true;
    try {
      const r = await fetch(live.dataset.src + location.search, {cache: 'no-store'});
      if (!r.ok) throw new Error(r.status);
      live.innerHTML = await r.text();
      live.dataset.refreshes = ++n;
      live.classList.remove('stale');
    } catch (e) { live.classList.add('stale'); } finally { busy = false; }
  }, 2000);
})();</script></body></html>"""


def page_shell(title: str, heading: str, src: str, fragment: str) -> str:
    """A whole dashboard page: ``fragment`` server-rendered (it paints without waiting for any script), then
    re-rendered every 2 s from ``src`` (a same-origin path). ``heading`` is HTML; the others are escaped."""
    parts = {"TITLE": html.escape(title), "HEADING": heading, "SRC": html.escape(src), "FRAGMENT": fragment}
    # one pass: a fragment holding "@SRC@" (device text) is never substituted again
    return re.sub(r"@(TITLE|HEADING|SRC|FRAGMENT)@", lambda m: parts[m.group(1)], PAGE)


def dashboard_page(store: Any, page: int = 1, device: str | None = None) -> str:
    """The whole ``/`` page: server-rendered (paints without waiting for any script), then live."""
    return page_shell("ftedge fleet", "ftedge fleet", "/fragment", dashboard_fragment(store, page, device))

