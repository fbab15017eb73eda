"""Rollouts on the dashboard: the "Rollouts" section of the main page and the page of one rollout
(``/rollouts/<name>``), rendered on the server like the rest of the dashboard (:mod:`.dashboard`).

The page shows the document ``fleet rollout status --json`` prints and ``/api/rollouts/<name>`` serves
(:func:`~ftedge.fleet.rollout.cli.describe`): the waves as a segmented progress bar (one segment per wave with
devices, coloured by its verdict), devices by state per wave, the gains' distribution as an inline SVG
histogram (:func:`~ftedge.fleet.charts.svg_histogram`), each wave's verdict line, and every device that failed,
was not promoted, is offline or was rolled back, with its reason. Reasons are device text: everything is
HTML-escaped.
"""

from __future__ import annotations

import html
import json
import logging
from typing import Any
from urllib.parse import quote, unquote

from ftedge.errors import RolloutError

from .charts import svg_histogram
from .rollout import plan
from .rollout.cli import describe, listing
from .rollout.records import Rollout, RolloutRecords

log = logging.getLogger(__name__)

MAX_ROLLOUT_ROWS = 10     # rollouts on the main page: those not finished first, then the newest
MAX_PROBLEM_ROWS = 500    # devices in a rollout page's problem table (the rest: `fleet rollout status`)
PROBLEM_STATES = (plan.FAILED, plan.NOT_PROMOTED, plan.OFFLINE, plan.ROLLING_BACK, plan.ROLLED_BACK)
WAVE_STATUSES = ("passed", "halted", "running", "paused", "aborted", "pending")   # the bar's segment classes


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def wave_status(state: str, current: int, wave: int, verdict: dict[str, Any] | None) -> str:
    """A wave's segment: its verdict (passed / halted) once judged, else ``running`` / ``paused`` / ``aborted``
    for the wave the rollout is at, and ``pending`` for the waves after it."""
    if verdict and verdict.get("state") in ("passed", "halted"):
        return str(verdict["state"])
    if wave == current and state in (plan.RUNNING, plan.PAUSED, plan.ABORTED):
        return {plan.RUNNING: "running", plan.PAUSED: "paused", plan.ABORTED: "aborted"}[state]
    return "pending"


def _states_text(states: dict[str, int]) -> str:
    """``{"promoted": 3, "failed": 1}`` → "3 promoted · 1 failed" (in the order of ``plan.DEVICE_STATES``)."""
    order = [s for s in plan.DEVICE_STATES if states.get(s)] + sorted(s for s in states if s not in
                                                                        plan.DEVICE_STATES and states[s])
    return ", ".join(f'<span class="ds ds-{_e(s)}" data-state="{_e(s)}" data-count="{states[s]}">{states[s]} '
                      f'{_e(s.replace("_", " "))}</span>' for s in order)


def wave_bar(state: str, current: int, waves: list[dict[str, Any]]) -> str:
    """The segmented progress bar: one segment per wave (``waves``: ``wave``, ``label``, ``devices``,
    ``verdict``), as wide as its share of the devices (at least a label's width)."""
    segs = []
    for w in waves:
        status = wave_status(state, current, int(w["wave"]), w.get("verdict"))
        line = (w.get("verdict") or {}).get("line") or f"{w['label']}: {status}, {w['devices']} device(s)"
        segs.append(f'<span class="wave-seg v-{status}" data-wave="{int(w["wave"])}" data-status="{status}" '
                    f'data-devices="{int(w["devices"])}" style="flex-grow:{max(1, int(w["devices"]))}" '
                    f'title="{_e(line)}">{_e(w["label"])}</span>')
    return f'<div class="wave-bar" data-segments="{len(segs)}">' + "".join(segs) + "</div>"


def _position(current: int, waves: list[int]) -> str:
    """"i/n": the wave being driven among the waves that have devices."""
    i = waves.index(current) + 1 if current in waves else sum(w < current for w in waves)
    return f"{i}/{len(waves)}"


# -- the documents of /api/rollouts (the CLI's) --------------------------------------------------------------------

def rollout_doc(store: Any, raw_name: str) -> dict[str, Any] | None:
    """``GET /api/rollouts/<name>`` (and the rollout page): the rollout ``raw_name`` (URL-quoted) as
    ``fleet rollout status --json`` prints it, or None (404) when there is no such rollout. A name no rollout
    can have (:data:`~ftedge.fleet.rollout.plan.NAME_RE`: never a NUL, a slash or markup) is not looked up."""
    name = unquote(raw_name)
    if not plan.NAME_RE.fullmatch(name):
        return None
    try:
        return describe(RolloutRecords(store), name)
    except RolloutError:
        return None


def rollouts_list(store: Any) -> list[dict[str, Any]]:
    """``GET /api/rollouts``: every rollout, as ``fleet rollout list --json`` prints them."""
    return listing(RolloutRecords(store))


# -- the main page's section ---------------------------------------------------------------------------------------

def _rollout_row(r: Rollout, counts: dict[tuple[str, int, str], int]) -> str:
    by_wave: dict[int, dict[str, int]] = {}
    for (name, w, s), n in counts.items():
        if name == r.name:
            by_wave.setdefault(w, {})[s] = by_wave.get(w, {}).get(s, 0) + n
    totals: dict[str, int] = {}
    for states in by_wave.values():
        for s, n in states.items():
            totals[s] = totals.get(s, 0) + n
    waves = [{"wave": w, "label": "canary" if w == 0 else f"wave {w}", "devices": sum(by_wave[w].values()),
              "verdict": next((v for v in reversed(r.verdicts) if v.get("wave") == w), None)}
             for w in sorted(by_wave)]
    name = _e(r.name)
    return (f'<tr class="rollout" data-rollout="{name}" data-state="{_e(r.state)}">'
            f'<td><a href="/rollouts/{_e(quote(r.name, safe=""))}">{name}</a></td>'
            f'<td class="rstate rstate-{_e(r.state)}">{_e(r.state)}</td><td>{_e(r.spec.bundle)}</td>'
            f'<td class="progress">{wave_bar(r.state, r.wave, waves)}'
            f'<span class="wave-pos">wave {_position(r.wave, sorted(by_wave))}</span></td>'
            f'<td class="states">{_states_text(totals)}</td><td class="reason">{_e(r.reason)}</td></tr>')


def rollouts_section(store: Any) -> str:
    """The main page's "Rollouts": one row per rollout (at most ``MAX_ROLLOUT_ROWS``: those not finished first,
    then the newest), two queries whatever the number of devices. Unreadable rollout tables cost this section
    only."""
    try:
        records = RolloutRecords(store)
        shown = records.shown(MAX_ROLLOUT_ROWS)
        counts = records.counts_of([r.name for r in shown]) if shown else {}
    except Exception as exc:  # noqa: BLE001 - the fleet's page must render without the rollouts
        log.warning("dashboard: could not read the rollouts: %s", exc)
        return (f'<section id="rollouts" class="error">could not read the rollouts ({_e(type(exc).__name__)}); '
                "see the collector log</section>")
    if not shown:
        return ('<section id="rollouts" data-rollouts="0"><h2>Rollouts</h2><p class="none">none yet: '
                "<code>ftedge fleet rollout start</code></p></section>")
    return (f'<section id="rollouts" data-rollouts="{len(shown)}"><h2>Rollouts</h2><table id="rollout-table">'
            "<thead><tr><th>rollout</th><th>state</th><th>bundle</th><th>waves</th><th>devices</th><th>why</th>"
            "</tr></thead><tbody>" + "".join(_rollout_row(r, counts) for r in shown) + "</tbody></table></section>")


# -- the page of one rollout ---------------------------------------------------------------------------------------

def _num(v: Any, spec: str) -> str:
    return "" if v is None else format(v, spec)


def _wave_table(doc: dict[str, Any]) -> str:
    waves = doc["wave_list"]
    states = [s for s in plan.DEVICE_STATES if any(w["states"].get(s) for w in waves)]
    states += sorted({s for w in waves for s in w["states"]} - set(states))
    head = "".join(f"<th>{_e(s.replace('_', ' '))}</th>" for s in states)
    rows = []
    for w in waves:
        status = wave_status(doc["state"], doc["wave"], w["wave"], w.get("verdict"))
        cells = "".join(f'<td data-state="{_e(s)}">{w["states"].get(s, 0)}</td>' for s in states)
        rows.append(f'<tr class="wave" data-wave="{int(w["wave"])}" data-status="{status}"><td>{_e(w["label"])}</td>'
                    f'<td class="v-text-{status}">{status}</td><td>{int(w["devices"])}</td>{cells}</tr>')
    return (f'<table id="wave-states"><thead><tr><th>wave</th><th>verdict</th><th>devices</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _problems(doc: dict[str, Any]) -> str:
    bad = [m for m in doc["devices"] if m["state"] in PROBLEM_STATES]
    rows = [f'<tr class="problem" data-device="{_e(m["device"])}" data-fleet="{_e(m["fleet"])}" '
            f'data-state="{_e(m["state"])}"><td>{_e(m["fleet"])}</td><td>{_e(m["device"])}</td>'
            f'<td>{int(m["wave"])}</td><td>{_e(m["state"].replace("_", " "))}</td>'
            f'<td>{_num(m.get("gain"), "+.4f")}</td><td class="why">{_e(m.get("reason"))}</td></tr>'
            for m in bad[:MAX_PROBLEM_ROWS]]
    more = (f'<p class="more">{len(bad) - MAX_PROBLEM_ROWS} more: <code>ftedge fleet rollout status '
            f'{_e(doc["name"])}</code></p>' if len(bad) > MAX_PROBLEM_ROWS else "")
    if not bad:
        return '<p id="no-problems">no device failed, regressed, went offline or was rolled back</p>'
    return (f'<table id="problems" data-problems="{len(bad)}"><thead><tr><th>fleet</th><th>device</th><th>wave</th>'
            f'<th>state</th><th>gain</th><th>why</th></tr></thead><tbody>{"".join(rows)}</tbody></table>{more}')


def rollout_fragment(doc: dict[str, Any]) -> str:
    """The live part of a rollout's page, from :func:`~ftedge.fleet.rollout.cli.describe`'s document."""
    th = doc["thresholds"]
    meta = [f"bundle <b>{_e(doc['bundle'])}</b> (sha256 {_e(doc['sha256'][:12])}…)",
            f"max failures {th['max_failures']:.0%} (early once {int(th['min_devices'])} device(s) have an outcome)",
            f"wave timeout {th['wave_timeout_s']:g} s", "rollback on halt" if th["rollback"] else "no rollback"]
    if doc.get("train") is not None:
        meta += [f"training {_e(_json(doc['train']))}", f"min gain {th['min_gain']:+g}",
                 f"max regressions {th['max_regressions']:.0%}"]
    gains = doc["gains"]
    verdicts = [w for w in doc["wave_list"] if w.get("verdict")]
    return (f'<section id="rollout" data-name="{_e(doc["name"])}" data-state="{_e(doc["state"])}" '
            f'data-wave="{int(doc["wave"])}"><p><span class="rstate rstate-{_e(doc["state"])}" id="rollout-state">'
            f'{_e(doc["state"])}</span>' + (f' <span class="reason">{_e(doc["reason"])}</span>' if doc.get("reason")
                                            else "")
            + f'</p><p class="meta">{" · ".join(meta)}</p>'
            + wave_bar(doc["state"], doc["wave"], doc["wave_list"])
            + '<ol id="verdicts">' + "".join(f'<li data-wave="{int(w["wave"])}">{_e(w["verdict"].get("line"))}</li>'
                                             for w in verdicts) + "</ol>"
            + "<h2>Devices by state</h2>" + _wave_table(doc)
            + f'<h2>Gains</h2><div id="gains" data-gains="{len(gains)}">'
            + svg_histogram(gains, "gain (after − before)", mark=th["min_gain"] if doc.get("train") else None,
                            mark_label="--min-gain")
            + "</div><h2>Failed, not promoted, offline, rolled back</h2>" + _problems(doc) + "</section>")


def _json(v: Any) -> str:
    return json.dumps(v, separators=(", ", ": "))


def rollout_html(doc: dict[str, Any]) -> str:
    """``GET /rollouts/<name>``: the whole page of one rollout (``doc``: :func:`rollout_doc`), refreshed live
    from ``/rollouts/<name>/fragment``."""
    from .dashboard import page_shell   # the dashboard imports this module for its Rollouts section

    name = str(doc["name"])
    return page_shell(f"rollout {name} · ftedge fleet", f'<a href="/">ftedge fleet</a> › rollout {_e(name)}',
                      f"/rollouts/{quote(name, safe='')}/fragment", rollout_fragment(doc))
