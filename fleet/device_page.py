"""The page of one device (``/devices/<device>?fleet=F``, refreshed from ``/devices/<device>/fragment``; its data as
JSON: ``/api/devices/<device>/personalization``), rendered on the server like the rest of the dashboard
(:mod:`.dashboard`).

Its "Personalization" section (issue 36) shows the box's policy as its latest meta reports it (the settings, the
state, why, when it may run next), its history — one row per job result, newest first, with what started the job
and why, whether it was promoted, the version, the headline gain and the gain over the model it warm-started from
(:mod:`.personalization`) — and the headline metric over the versions it promoted as an inline SVG line
(:func:`~ftedge.fleet.charts.svg_chart`). Everything shown is device text: all of it is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import time
from typing import Any
from urllib.parse import quote, unquote

from .charts import ACC_COLOR, svg_chart
from .validate import MAX_NAME, finite, unstorable


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def when(ms: Any) -> str:
    """Epoch milliseconds as ``YYYY-MM-DD HH:MM:SS UTC`` (``—`` when unknown, the number when out of range)."""
    if isinstance(ms, bool) or not isinstance(ms, int):
        return "—"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))
    except (OverflowError, ValueError, OSError):
        return str(ms)


def device_doc(store: Any, raw_device: str, fleet: str | None = None) -> dict[str, Any] | None:
    """``GET /api/devices/<device>/personalization`` (and the device page): the device ``raw_device`` (URL-quoted)
    of ``fleet`` (default: the first fleet holding one of that name) — ``fleet``, ``device``, ``state``,
    ``active_version``, ``last_seen``, ``policy`` (:func:`~ftedge.fleet.personalization.policy_of`) and
    ``history`` (newest first) — or None (404)."""
    device = unquote(raw_device)
    if not device or len(device) > MAX_NAME or unstorable(device) or (
            fleet is not None and (len(fleet) > MAX_NAME or unstorable(fleet))):
        return None   # no device has such a name (and PostgreSQL could not even compare a NUL)
    if fleet is None:
        fleets = store.device_fleets(device)
        if not fleets:
            return None
        fleet = fleets[0]
    d = store.device(fleet, device)
    if d is None:
        return None
    return {"fleet": fleet, "device": device, "state": d.get("state"), "active_version": d.get("active_version"),
            "last_seen": d.get("last_seen"), "policy": d.get("policy"),
            "history": store.personalization(fleet, device)}


def _num(v: Any, spec: str) -> str:
    f = finite(v)
    return "—" if f is None else format(f, spec)


def _value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, separators=(", ", ": "), default=str)


def _policy(p: dict[str, Any] | None) -> str:
    """The policy's state line and its settings (both from the device's latest meta)."""
    if p is None:
        return ('<p id="no-policy">no personalization policy: the box trains only when told to (<code>ftedge fleet '
                "policy --device D --set-json '{…}'</code> gives it one)</p>")
    state = p.get("state") or "unknown"
    facts = [f'next eligible <b class="next">{_e(when(p.get("next_eligible_ms")))}</b>',
             f'checked {_e(when(p.get("checked_ms")))}',
             (f'samples {_e(p.get("samples") if p.get("samples") is not None else "—")} '
              f'({_e(p.get("new_samples") if p.get("new_samples") is not None else "—")} new)'),
             f'runs in 24 h {_e(p.get("runs_24h") if p.get("runs_24h") is not None else "—")}']
    last = p.get("last_run") or {}
    if last:
        facts.append(f'last run {_e(last.get("job"))} at {_e(when(last.get("at_ms")))}')
    removed = p.get("removed") or {}
    if removed.get("samples") or removed.get("bytes"):
        facts.append(f'removed by the data caps: {_e(removed.get("samples"))} samples, {_e(removed.get("bytes"))} bytes')
    settings = "".join(f'<tr data-key="{_e(k)}"><th>{_e(k)}</th><td>{_e(_value(v))}</td></tr>'
                       for k, v in (p.get("policy") or {}).items())
    return (f'<p id="policy-state" data-state="{_e(state)}" data-next="{_e(p.get("next_eligible_ms"))}">'
            f'<span class="pstate pstate-{_e(state)}">{_e(state.replace("_", " "))}</span> · '
            f'<span class="policy-reason">{_e(p.get("reason"))}</span></p><p class="meta">{" · ".join(facts)}</p>'
            f'<table id="policy"><tbody>{settings}</tbody></table>')


def _history_row(r: dict[str, Any]) -> str:
    promoted = bool(r.get("promoted"))
    tuned = (f'{_e(r.get("label") or r.get("metric"))} {_num(r.get("untuned"), ".4g")} → {_num(r.get("tuned"), ".4g")}'
             if r.get("tuned") is not None or r.get("untuned") is not None else "—")
    return (f'<tr class="run" data-job="{_e(r.get("job"))}" data-trigger="{_e(r.get("trigger"))}" '
            f'data-promoted="{str(promoted).lower()}"><td>{_e(when(r.get("at_ms")))}</td><td>{_e(r.get("job"))}</td>'
            f'<td class="trigger">{_e(r.get("trigger"))}</td><td class="why">{_e(r.get("trigger_reason"))}</td>'
            f'<td>{_e(r.get("status"))}</td><td class="promoted">{"yes" if promoted else "no"}</td>'
            f'<td class="version">{_e(r.get("version"))}</td><td>{tuned}</td>'
            f'<td class="gain">{_num(r.get("gain"), "+.4f")}</td>'
            f'<td class="previous-gain">{_num(r.get("previous_gain"), "+.4f")}</td>'
            f'<td>{_e(r.get("warm_start"))}</td></tr>')


def _chart(history: list[dict[str, Any]]) -> str:
    """The headline metric of the promoted versions, oldest first (the newest run's metric only)."""
    metric = next((r.get("metric") for r in history if r.get("metric")), None)
    label = next((r.get("label") for r in history if r.get("metric") == metric and r.get("label")), metric)
    points = [r.get("tuned") for r in reversed(history)
              if r.get("promoted") and r.get("metric") == metric and finite(r.get("tuned")) is not None]
    return (f'<div id="versions-chart" data-metric="{_e(metric)}">'
            + svg_chart(points, f"{label or 'headline'} over versions", ACC_COLOR, width=320, unit="versions")
            + "</div>")


def personalization_section(doc: dict[str, Any]) -> str:
    """The "Personalization" section of a device's page."""
    history = doc.get("history") or []
    rows = "".join(_history_row(r) for r in history)
    table = (f'<table id="history" data-runs="{len(history)}"><thead><tr><th>time</th><th>job</th><th>trigger</th>'
             "<th>why</th><th>status</th><th>promoted</th><th>version</th><th>headline untuned → tuned</th>"
             "<th>gain</th><th>gain vs previous</th><th>warm start</th></tr></thead>"
             f"<tbody>{rows}</tbody></table>" if history else '<p id="no-history">no job result yet</p>')
    return ('<section id="personalization"><h2>Personalization</h2>' + _policy(doc.get("policy"))
            + "<h2>History</h2>" + _chart(history) + table + "</section>")


def device_fragment(doc: dict[str, Any]) -> str:
    """The live part of a device's page."""
    return (f'<section id="device" data-fleet="{_e(doc["fleet"])}" data-device="{_e(doc["device"])}" '
            f'data-state="{_e(doc.get("state"))}"><p>fleet <b>{_e(doc["fleet"])}</b> · state '
            f'<b>{_e(doc.get("state") or "—")}</b> · active version <b>{_e(doc.get("active_version") or "—")}</b> · '
            'last seen '
            f'{_e(when(doc.get("last_seen")))}</p></section>' + personalization_section(doc))


def device_html(doc: dict[str, Any]) -> str:
    """``GET /devices/<device>``: the whole page of one device, refreshed live from its ``/fragment``."""
    from .dashboard import page_shell   # the dashboard links here

    name, fleet = str(doc["device"]), str(doc["fleet"])
    src = f"/devices/{quote(name, safe='')}/fragment"
    return page_shell(f"{name} · ftedge fleet", f'<a href="/">ftedge fleet</a> › {_e(fleet)} › {_e(name)}', src,
                      device_fragment(doc))


def device_url(fleet: str, device: str) -> str:
    """The page of a device (``fleet`` in the query: a name is unique within a fleet only)."""
    return f"/devices/{quote(device, safe='')}?fleet={quote(fleet, safe='')}"
