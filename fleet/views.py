"""Read models of the fleet store: the device list, jobs, gaps, summaries and command replies the HTTP API,
the dashboard and ``ftedge fleet status`` show. Reads only; every write is in :mod:`ftedge.fleet.store`."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import Any

from ftedge.mqtt.contract import POLICY_STATES, TRIGGERS

from . import personalization
from .schema import COUNTERS
from .validate import number

JOB_PAGE_EPOCHS = 200   # progress rows (epochs) of one job page, FleetReadModel.job's default
_DEVICE_COLUMNS = ("fleet, device, state, reason, last_seen_ms, boot, last_seq, meta_json, job_json, metrics_json,"
                   " active_version, status_ts, marks_json")
# What the read side shows of a device: its row plus its per-device counts (issue 33: which box loses telemetry).
_VIEW_COLUMNS = _DEVICE_COLUMNS + ", messages_total, seq_gaps_total, late_fills_total"


class FleetReadModel:
    """The queries of :class:`~ftedge.fleet.store.FleetStore`, which provides :meth:`_reading`."""

    reorder_window_s: float

    def _reading(self) -> AbstractContextManager[Any]:
        """A connection to read from (SQL with ``?`` placeholders, portable between SQLite and PostgreSQL)."""
        raise NotImplementedError

    def devices(self, fleet: str | None = None) -> list[dict[str, Any]]:
        """Every device (optionally of one fleet), sorted by fleet and device id."""
        sql = f"SELECT {_VIEW_COLUMNS} FROM devices"
        args: tuple = ()
        if fleet is not None:
            sql, args = sql + " WHERE fleet = ?", (fleet,)
        with self._reading() as db:
            rows = db.execute(sql + " ORDER BY fleet, device", args).fetchall()
        return [_device_view(r) for r in rows]

    def devices_page(self, fleet: str | None = None, limit: int = 500, after: tuple[str, str] | None = None,
                     offset: int = 0) -> list[dict[str, Any]]:
        """At most ``limit`` devices (optionally of one ``fleet``) in ``(fleet, device)`` order: those after
        ``after`` — the ``(fleet, device)`` of the previous page's last row (keyset pagination: stable while
        devices are added, and each page is one index range) — skipping ``offset`` more (numbered pages, as the
        dashboard's)."""
        where, args = _keyset(fleet, after)
        with self._reading() as db:
            rows = db.execute(f"SELECT {_VIEW_COLUMNS} FROM devices{where} ORDER BY fleet, device LIMIT ? OFFSET ?",
                              (*args, max(0, int(limit)), max(0, int(offset)))).fetchall()
        return [_device_view(r) for r in rows]

    def device_count(self, fleet: str | None = None) -> int:
        """How many devices (of one ``fleet``) the store holds."""
        sql, args = "SELECT COUNT(*) FROM devices", ()
        if fleet is not None:
            sql, args = sql + " WHERE fleet = ?", (fleet,)
        with self._reading() as db:
            return int(db.execute(sql, args).fetchone()[0])

    def device_fleets(self, device: str) -> list[str]:
        """The fleets that hold a device named ``device`` (a name is unique within a fleet only), sorted."""
        with self._reading() as db:
            rows = db.execute("SELECT fleet FROM devices WHERE device = ? ORDER BY fleet", (device,)).fetchall()
        return [f for (f,) in rows]

    def device_gauges(self, fleet: str | None = None) -> list[tuple[Any, ...]]:
        """What ``/metrics`` shows per device, reading only its columns: ``(fleet, device, state, last_seen,
        latest progress body or None, messages, seq_gaps, late_fills)`` in ``(fleet, device)`` order."""
        sql = ("SELECT fleet, device, state, last_seen_ms, metrics_json, messages_total, seq_gaps_total,"
               " late_fills_total FROM devices")
        args: tuple = ()
        if fleet is not None:
            sql, args = sql + " WHERE fleet = ?", (fleet,)
        with self._reading() as db:
            rows = db.execute(sql + " ORDER BY fleet, device", args).fetchall()
        return [(f, d, state, seen, _stored_object(m, "metrics", []), *counts) for f, d, state, seen, m, *counts in rows]

    def device(self, fleet: str, device: str) -> dict[str, Any] | None:
        with self._reading() as db:
            row = db.execute(f"SELECT {_VIEW_COLUMNS} FROM devices WHERE fleet = ? AND device = ?",
                                   (fleet, device)).fetchone()
        return None if row is None else _device_view(row)

    def job(self, fleet: str, device: str, job: str, limit: int = JOB_PAGE_EPOCHS,
            before_epoch: int | None = None) -> dict[str, Any] | None:
        """``progress`` (bodies in epoch order: the newest ``limit`` epochs, those below ``before_epoch`` if
        given), ``next_before`` (the ``before_epoch`` of the page of older epochs, None if there is none),
        ``result`` (body or None), ``status``; None if unknown. One page is one index range: the dashboard reads
        it every 2 s for each charted device, whatever a device sent."""
        limit = max(1, int(limit))
        cond, args = "", [fleet, device, job]
        if before_epoch is not None:
            cond, args = " AND epoch < ?", [*args, int(before_epoch)]
        with self._reading() as db:
            page = db.execute(f"SELECT epoch, body_json FROM progress WHERE fleet = ? AND device = ? AND job = ?{cond}"
                              " ORDER BY epoch DESC LIMIT ?", (*args, limit + 1)).fetchall()
            row = db.execute("SELECT body_json FROM results WHERE fleet = ? AND device = ? AND job = ?",
                                   (fleet, device, job)).fetchone()
            snap = db.execute("SELECT job_json FROM devices WHERE fleet = ? AND device = ?",
                                    (fleet, device)).fetchone()
        next_before = page[limit - 1][0] if len(page) > limit else None
        progress = [_stored_object(b, "progress", []) for _, b in reversed(page[:limit])]
        progress = [p for p in progress if p is not None]
        result = _stored_object(row[0], "result", []) if row else None
        snapshot = _stored_object(snap[0], "job", []) if snap else None
        if snapshot is not None and snapshot.get("job") != job:
            snapshot = None
        if not progress and result is None and snapshot is None:
            return None
        status = (result or {}).get("status") or (snapshot or {}).get("status") or "running"
        return {"fleet": fleet, "device": device, "job": job, "status": status, "progress": progress,
                "next_before": next_before, "result": result, "snapshot": snapshot}

    def jobs(self, fleet: str | None = None, device: str | None = None) -> list[dict[str, Any]]:
        """Known jobs: ``fleet``, ``device``, ``job``, ``epochs`` (progress rows), ``last_ts``, ``status``
        (from the result, or None while no result arrived)."""
        where, args = [], []
        for col, val in (("fleet", fleet), ("device", device)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        cond = (" WHERE " + " AND ".join(where)) if where else ""
        with self._reading() as db:
            rows = db.execute(
                f"SELECT fleet, device, job, SUM(epochs), MAX(ts), MAX(result) FROM ("
                f" SELECT fleet, device, job, COUNT(*) AS epochs, MAX(ts) AS ts, NULL AS result FROM progress{cond}"
                "  GROUP BY fleet, device, job"
                f" UNION ALL SELECT fleet, device, job, 0, ts, body_json FROM results{cond})"
                " AS j GROUP BY fleet, device, job ORDER BY MAX(ts)", args * 2).fetchall()
        return [{"fleet": f, "device": d, "job": j, "epochs": int(n or 0), "last_ts": ts,
                 "status": (_stored_object(r, "result", []) or {}).get("status") if r else None}
                for f, d, j, n, ts, r in rows]

    def personalization(self, fleet: str, device: str,
                        limit: int | None = None) -> list[dict[str, Any]]:
        """A device's personalization history, newest first: one dict per job result (``HISTORY_COLUMNS`` of
        :mod:`.personalization`), at most ``limit`` (default: every row kept)."""
        limit = getattr(self, "max_history_per_device", 200) if limit is None else limit
        with self._reading() as db:
            return personalization.read_history(db, fleet, device, max(1, int(limit)))

    def personalization_totals(self) -> dict[str, dict[str, int]]:
        """Fleet-wide ``{"runs": {trigger: n}, "promotions": {trigger: n}}`` (every trigger, 0 included)."""
        names = [personalization.counter(k, t) for k in (personalization.RUNS, personalization.PROMOTIONS)
                 for t in TRIGGERS]
        with self._reading() as db:
            got = dict(db.execute(f"SELECT name, SUM(value) FROM counters WHERE name IN ({', '.join('?' * len(names))})"
                                  " GROUP BY name", names).fetchall())
        return {key: {t: int(got.get(personalization.counter(name, t)) or 0) for t in TRIGGERS}
                for key, name in (("runs", personalization.RUNS), ("promotions", personalization.PROMOTIONS))}

    def policy_states(self) -> dict[str, int]:
        """Devices per policy state (their latest meta's ``personalize.state.state``; every state, 0 included;
        devices without a policy are not counted)."""
        with self._reading() as db:
            rows = dict(db.execute("SELECT policy_state, COUNT(*) FROM devices WHERE policy_state IS NOT NULL"
                                   " GROUP BY policy_state").fetchall())
        return {st: int(rows.get(st, 0)) for st in POLICY_STATES}

    def counters(self) -> dict[str, int]:
        with self._reading() as db:
            rows = dict(db.execute("SELECT name, SUM(value) FROM counters GROUP BY name").fetchall())
        return {k: int(rows.get(k, 0)) for k in COUNTERS}

    def gaps(self, fleet: str | None = None, device: str | None = None, open_only: bool = False) -> list[dict]:
        """Counted holes: ``fleet, device, boot, missing_from, missing_to, ts, filled, filled_ts``."""
        where, args = [], []
        for col, val in (("fleet", fleet), ("device", device)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if open_only:
            where.append("filled_ts IS NULL")
        cond = (" WHERE " + " AND ".join(where)) if where else ""
        with self._reading() as db:
            rows = db.execute("SELECT fleet, device, boot, missing_from, missing_to, ts, filled, filled_ts"
                                    f" FROM gaps{cond} ORDER BY id", args).fetchall()
        keys = ("fleet", "device", "boot", "missing_from", "missing_to", "ts", "filled", "filled_ts")
        return [dict(zip(keys, r)) for r in rows]

    def fleet_summary(self, fleet: str | None = None) -> dict[str, Any]:
        """``devices``, ``online``, ``offline``, ``jobs_running``, and over the devices whose latest
        succeeded-and-promoted result reports ``baseline.accuracy`` and ``final.accuracy``:
        ``promoted_devices``, ``accuracy_before``, ``accuracy_after`` (means; None when no such device).

        Counts by state are SQL; only the job bodies and results that can matter are decoded: a ``LIKE``
        pre-filter keeps those that mention ``running`` (jobs) or ``succeeded``, ``promoted`` and ``accuracy``
        (results), plus any body holding a ``\\u`` escape (which could spell those words); the decoded body
        decides, as before."""
        cond, args = ("", ()) if fleet is None else (" WHERE fleet = ?", (fleet,))
        also = " AND" if cond else " WHERE"
        with self._reading() as db:
            states = db.execute(f"SELECT state, COUNT(*) FROM devices{cond} GROUP BY state", args).fetchall()
            jobs = db.execute(f"SELECT job_json FROM devices{cond}{also}"
                              " (job_json LIKE ? OR job_json LIKE ? ESCAPE '!')",
                              (*args, "%running%", _ESCAPED)).fetchall()
            rows = db.execute(
                f"SELECT fleet, device, body_json FROM results{cond}{also} ((body_json LIKE ? AND body_json LIKE ?"
                " AND body_json LIKE ?) OR body_json LIKE ? ESCAPE '!') ORDER BY ts, job",
                (*args, "%succeeded%", "%promoted%", "%accuracy%", _ESCAPED)).fetchall()
        by_state = {s: int(n) for s, n in states}
        running = 0
        for (text,) in jobs:
            body = _stored_object(text, "job", [])
            running += body is not None and body.get("status") == "running"
        latest: dict[tuple[str, str], tuple[float, float]] = {}
        for f, d, text in rows:
            body = _stored_object(text, "result", [])
            if body is None or body.get("status") != "succeeded" or not body.get("promoted"):
                continue
            base, final = body.get("baseline"), body.get("final")
            if not isinstance(base, dict) or not isinstance(final, dict):
                continue   # stored before bodies were validated (see validate.py)
            before, after = number(base.get("accuracy")), number(final.get("accuracy"))
            if before is not None and after is not None:
                latest[(f, d)] = (before, after)   # ordered by ts: the newest wins
        n = len(latest)
        before = sum(b for b, _ in latest.values()) / n if n else None
        after = sum(a for _, a in latest.values()) / n if n else None
        return {
            "devices": sum(by_state.values()),
            "online": by_state.get("online", 0),
            "offline": by_state.get("offline", 0),
            "jobs_running": running,
            "promoted_devices": n,
            "accuracy_before": before,
            "accuracy_after": after,
        }

    def reply(self, cmd_id: str, fleet: str | None = None, device: str | None = None) -> dict[str, Any] | None:
        """The ``cmdres`` body (as published) that ``fleet``/``device`` sent for ``cmd_id``, or None.

        Pass the device the command was sent to: a reply with the same ``cmd_id`` from any other device is
        not its answer. Without them, the newest reply from any device (diagnostics only)."""
        sql, args = "SELECT body_json FROM replies WHERE cmd_id = ?", [cmd_id]
        for col, val in (("fleet", fleet), ("device", device)):
            if val is not None:
                sql += f" AND {col} = ?"
                args.append(val)
        with self._reading() as db:
            row = db.execute(sql + " ORDER BY ts DESC LIMIT 1", args).fetchone()
        return json.loads(row[0]) if row else None


_ESCAPED = "%\\u%"   # LIKE pattern (with ESCAPE '!', the backslash is literal): a JSON text with a \u escape


def _keyset(fleet: str | None, after: tuple[str, str] | None) -> tuple[str, tuple]:
    """The WHERE clause of the devices of ``fleet`` after ``after``, as one index range of the ``(fleet, device)``
    key (row values: SQLite 3.15+, PostgreSQL). The database compares (its collation orders the pages)."""
    if after is None:
        return ("", ()) if fleet is None else (" WHERE fleet = ?", (fleet,))
    a_fleet, a_device = str(after[0]), str(after[1])
    if fleet is None:
        return " WHERE (fleet, device) > (?, ?)", (a_fleet, a_device)
    if a_fleet == fleet:
        return " WHERE fleet = ? AND device > ?", (fleet, a_device)
    return " WHERE fleet = ? AND (fleet, device) > (?, ?)", (fleet, a_fleet, a_device)   # a cursor of another fleet


def _device_view(row: tuple) -> dict[str, Any]:
    """A devices row as the API shows it; a stored body that does not decode to an object shows as None
    (with ``error`` set) instead of failing the whole device list."""
    (fleet, device, state, reason, last_seen, boot, last_seq, meta, job, metrics, active, status_ts, _marks,
     messages, gaps, late) = row
    errors: list[str] = []
    job_view = None
    body = _stored_object(job, "job", errors)
    if body is not None:
        job_view = {"id": body.get("job"), "status": body.get("status"),
                    **{k: v for k, v in body.items() if k not in ("job", "status")}}
    view = {
        "fleet": fleet, "device": device, "state": state, "reason": reason, "last_seen": last_seen,
        "last_seq": last_seq, "boot": boot, "job": job_view, "metrics": _stored_object(metrics, "metrics", errors),
        "active_version": active, "meta": _stored_object(meta, "meta", errors), "status_ts": status_ts,
        # per-device counts: unique messages, counted seq holes, late arrivals into counted holes
        "messages": messages, "seq_gaps": gaps, "late_fills": late,
    }
    # its personalization policy's state (issue 36), from the meta: None without one
    view["policy"] = personalization.policy_of(view["meta"])
    if errors:
        view["error"] = "; ".join(errors)
    return view


def _stored_object(text: str | None, what: str, errors: list[str]) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        errors.append(f"the stored {what} is not a JSON object")
        return None
    return value
