"""Each box's personalization as the fleet keeps it (issue 36): the history row a job result adds, the policy state
a meta carries, and the counters they feed. Pure: the store writes the rows (:mod:`.store`), the read model reads
them (:mod:`.views`), the device page and ``/metrics`` show them.

**History.** Every job result (of a validated body: :mod:`.validate`) adds one row per ``(fleet, device, job)``:
when (the result's envelope ``ts``), ``trigger`` (``command`` or ``policy``; a result without one — agents from
before issue 36 — was a command), ``trigger_reason``, ``status``, ``promoted``, ``version``, the headline metric
(``metric``, ``label``, ``tuned``, ``untuned``), ``gain`` (tuned − untuned signed so that higher is better, or the
result's own finite ``gain``), ``previous_gain`` (vs the active model it warm-started from) and ``warm_start``.
The newest ``HISTORY_PER_DEVICE`` rows of a device are kept (:mod:`.device_caps`); a job's row is written once
and replaced by a later result of the same job.

**Counters.** The first result of a job adds 1 to ``personalization_runs_total`` and, if promoted, to
``personalization_promotions_total``, per trigger, in the collectors' sharded counters (so they never go down when
old history rows are pruned). Runs stored before the upgrade to schema 6 are not counted.

**Policy state.** A meta's ``personalize.state.state`` is kept in the device's ``policy_state`` column ("" for a
meta without a policy), so ``ftedge_policy_devices{state}`` is one ``GROUP BY``.
"""

from __future__ import annotations

from typing import Any

from ftedge.mqtt.contract import POLICY_STATES, TRIGGERS

from . import headline
from .validate import finite

HISTORY_COLUMNS = ("job", "at_ms", "trigger", "trigger_reason", "status", "promoted", "version", "metric", "label",
                   "tuned", "untuned", "gain", "previous_gain", "warm_start")
_SQL_COLUMNS = ("job, at_ms, triggered_by, trigger_reason, status, promoted, version, metric, label, tuned, untuned,"
                " gain, previous_gain, warm_start")
NO_POLICY = ""   # devices.policy_state of a device whose latest meta has no policy
RUNS, PROMOTIONS = "personalization_runs_total", "personalization_promotions_total"   # counter names (: trigger)


def counter(name: str, trigger: str) -> str:
    """The counters-table name of ``name`` for one trigger, e.g. ``personalization_runs_total:policy``."""
    return f"{name}:{trigger}"


def _obj(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def history_row(fleet: str, device: str, job: str, at_ms: int, body: dict[str, Any]) -> tuple[Any, ...]:
    """The ``personalization`` row of a result ``body`` (validated), in ``(fleet, device, *HISTORY_COLUMNS)``
    order."""
    h = headline.of_result(body)
    gain = headline.gain(h)
    if gain is None:
        gain = finite(body.get("gain"))
    trigger = body.get("trigger") if body.get("trigger") in TRIGGERS else "command"
    return (fleet, device, job, int(at_ms), trigger, _str(body.get("trigger_reason")), _str(body.get("status")),
            1 if body.get("promoted") is True else 0, _str(body.get("version")), h.metric, h.label, h.tuned,
            h.untuned, gain, finite(body.get("previous_gain")), _str(body.get("warm_start")))


def write_history(db: Any, rows: list[tuple[Any, ...]]) -> dict[str, int]:
    """Insert or replace the history rows (inside the caller's transaction, which holds their devices); returns
    the counter deltas of the jobs seen for the first time."""
    deltas: dict[str, int] = {}
    marks = ", ".join("?" * (2 + len(HISTORY_COLUMNS)))
    for row in rows:
        new = db.execute(f"INSERT INTO personalization (fleet, device, {_SQL_COLUMNS}) VALUES ({marks})"
                         " ON CONFLICT (fleet, device, job) DO NOTHING", row).rowcount
        if new:
            trigger, promoted = row[4], row[7]
            deltas[counter(RUNS, trigger)] = deltas.get(counter(RUNS, trigger), 0) + 1
            if promoted:
                deltas[counter(PROMOTIONS, trigger)] = deltas.get(counter(PROMOTIONS, trigger), 0) + 1
        else:
            cols = [c.strip() for c in _SQL_COLUMNS.split(",")][1:]
            db.execute(f"UPDATE personalization SET {', '.join(c + ' = ?' for c in cols)}"
                       " WHERE fleet = ? AND device = ? AND job = ?", (*row[3:], *row[:3]))
    return deltas


def read_history(db: Any, fleet: str, device: str, limit: int) -> list[dict[str, Any]]:
    """A device's history rows, newest first (at most ``limit``)."""
    rows = db.execute(f"SELECT {_SQL_COLUMNS} FROM personalization WHERE fleet = ? AND device = ?"
                      " ORDER BY at_ms DESC, job DESC LIMIT ?", (fleet, device, int(limit))).fetchall()
    out = []
    for r in rows:
        item = dict(zip(HISTORY_COLUMNS, r))
        item["promoted"] = bool(item["promoted"])
        out.append(item)
    return out


def policy_state(meta: dict[str, Any]) -> str:
    """``devices.policy_state`` for a (validated) meta body: its policy's state, or ``NO_POLICY``."""
    state = _obj(_obj(meta.get("personalize")).get("state")).get("state")
    return state if state in POLICY_STATES else NO_POLICY


def policy_of(meta: Any) -> dict[str, Any] | None:
    """What ``fleet status`` and the device page show of a device's policy from its stored meta: ``state``,
    ``reason``, ``next_eligible_ms``, ``checked_ms``, ``samples``, ``new_samples``, ``runs_24h``, ``last_run``,
    ``removed`` and the ``policy`` itself; None without one. A stored meta is
    validated, but only on ingest: every value is type-checked again (rows may predate a schema)."""
    p = _obj(_obj(meta).get("personalize"))
    if not p:
        return None
    st = _obj(p.get("state"))
    out: dict[str, Any] = {"state": _str(st.get("state")), "reason": _str(st.get("reason"))}
    out.update({k: _int(st.get(k)) for k in ("next_eligible_ms", "checked_ms", "samples", "new_samples", "runs_24h")})
    out.update({k: st.get(k) if isinstance(st.get(k), dict) else None for k in ("last_run", "removed")})
    out["policy"] = p.get("policy") if isinstance(p.get("policy"), dict) else None
    return out


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None
