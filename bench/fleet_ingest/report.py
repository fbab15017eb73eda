"""The Markdown reports: the single-collector phases (table + details) and the PostgreSQL store comparison
(table + details). Each takes the run's JSON object."""

from __future__ import annotations

import os
from typing import Any

from bench._common import dash, md_row, md_table


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def report(out: dict[str, Any]) -> str:
    a = out["args"]
    lines = [f"#### Fleet collector ingest on loopback (Mosquitto {out.get('mosquitto', '?')}, MQTT v5, QoS 1): "
             f"{os.cpu_count()} CPUs, {a['devices']:,} simulated devices"]
    rows = []
    m, p, sk, pt, b = (out.get(k) for k in ("max", "paced", "soak", "paint", "baselines"))
    if m:
        rows.append(("1", f"ingest, as fast as possible ({m['publisher']['unique']:,} messages, "
                          f"{m['publisher']['connections']:,} connections)",
                     f"{dash(m['rate'])} msg/s committed; collector {m['collector_cores']:.2f} cores",
                     "≥ 10,000 msg/s on one core", _met(m['rate'] >= 10000 and m['collector_cores'] <= 1.0
                                                       and m['verify']['ok'])))
    if p:
        rows.append(("1b", f"offered {a['rate']:,.0f} msg/s for {a['seconds']:g} s",
                     f"{dash(p['rate'])} msg/s committed, last commit {p['last_commit_after_publish_end_s']:.2f} s "
                     f"after the last publish; collector {p['collector_cores']:.2f} cores",
                     "keeps up on one core", _met(p['complete'] and p['collector_cores'] <= 1.0
                                                  and p['last_commit_after_publish_end_s'] < 2
                                                  and p['verify']['ok'])))
    if sk:
        r = sk["rss_mib"]
        warm = next((v for t, v in r if t >= 60), r[-1][1])
        rows.append(("2", f"soak: {a['soak_rate']:,.0f} msg/s for {a['soak_seconds']:g} s "
                          f"({sk['publisher']['unique']:,} messages)",
                     f"collector VmRSS start {r[0][1]:.0f} MiB, at 60 s {warm:.0f}, end {r[-1][1]:.0f}, "
                     f"max {max(v for _, v in r):.0f} MiB", "memory flat",
                     _met(r[-1][1] <= warm * 1.1 + 5 and sk['verify']['ok'])))
    if pt and "fcp_cold_ms" in pt:
        rows.append(("3", f"dashboard first contentful paint, {pt['devices_in_db']:,} devices (idle collector)",
                     f"{pt['fcp_cold_ms']:.0f} ms cold, {pt['fcp_warm_median_ms']:.0f} ms warm (median)",
                     "< 1 s", _met(pt['fcp_max_ms'] < 1000)))
    if p and "fcp_cold_ms" in p.get("during", {}):
        d = p["during"]
        rows.append(("3b", f"the same during the paced ingest ({a['rate']:,.0f} msg/s)",
                     f"{d['fcp_cold_ms']:.0f} ms cold, {d['fcp_warm_median_ms']:.0f} ms warm, max "
                     f"{d['fcp_max_ms']:.0f} ms", "< 1 s", _met(d['fcp_max_ms'] < 1000)))
    lines += ["", *md_table(("#", "measure", "result", "target", "status"), rows)]
    if b or m or out.get("before"):
        lines += ["", "Same run, same kind of messages (1,000 devices round-robin, the contract's topics), "
                      "unique messages committed per second:", "",
                  *md_table(("path", "msg/s", "× naive", f"÷ batches of {b['batch_sizes'][-1]:,}") if b
                            else ("path", "msg/s", "", ""))]
        base = b["naive_rate"] if b else None
        top = b[f"batch{b['batch_sizes'][-1]}_rate"] if b else None

        def row(name: str, rate: float | None) -> None:
            lines.append(md_row((name, dash(rate), f"{dash(rate / base if base and rate else None, '.1f')}×",
                                 dash(rate / top if top and rate else None, ".2f"))))
        if b:
            row("naive: `FleetStore.ingest_batch` per message (one transaction each), no broker", b["naive_rate"])
            for size in b["batch_sizes"]:
                row(f"`FleetStore.ingest_batch`, batches of {size:,}, no broker", b[f"batch{size}_rate"])
        bf = out.get("before")
        if bf:
            row(f"end to end, collector of {bf['ref']} (stock paho receive path, ack on receipt, batches ≤ 500)",
                bf["rate"])
        if m:
            row("end to end through Mosquitto, this collector (max phase)", m["rate"])
    return "\n".join(lines)


def details(out: dict[str, Any]) -> str:
    """What the numbers include: per phase, the raw figures behind the table."""
    a = out["args"]
    ls = ["", "What the numbers include:"]
    for name in ("before", "max", "paced", "soak"):
        r = out.get(name)
        if not r:
            continue
        pb, v, sp = r["publisher"], r["verify"], r["split"]
        c = v["counters"]
        ls.append(
            f"- {name}{' (' + r['ref'] + ')' if name == 'before' else ''}: {pb['unique']:,} unique messages + "
            f"{pb['duplicates']:,} duplicates from {pb['devices']:,} devices on {pb['connections']:,} connections "
            f"(broker Receive Maximum {pb['window']} per connection), published in {pb['publish_s']:.2f} s "
            f"(generator CPU {r['publisher_cpu_s']:.1f} s); first commit {r['first_commit_after_go_s']:.2f} s after "
            f"the start, last {r['last_commit_after_publish_end_s']:.2f} s after the last publish; window "
            f"{r['window_s']:.2f} s: {dash(r['rate'])} msg/s, collector {r['collector_cpu_s']:.1f} CPU s = "
            f"{r['collector_cores']:.2f} cores ({1e6 * r['collector_cpu_s'] / max(1, r['committed']):.0f} µs per "
            f"message), Mosquitto {r['mosquitto_cores']:.2f} cores. While the generator ran: "
            f"{dash(sp['while_publishing']['rate'])} msg/s at {dash(sp['while_publishing']['collector_cores'], '.2f')} "
            f"collector cores over {sp['while_publishing']['s']:.1f} s; after: "
            f"{dash(sp['after_publishing']['rate'])} msg/s at {dash(sp['after_publishing']['collector_cores'], '.2f')} "
            f"cores over {sp['after_publishing']['s']:.1f} s. Collector peak RSS (ru_maxrss) "
            f"{r['rusage'].get('maxrss_kib', 0) / 1024:.0f} MiB. Verified: {'OK' if v['ok'] else v['problems']} "
            f"(messages_total {c.get('messages_total'):,}, duplicates_total {c.get('duplicates_total'):,}, "
            f"seq_gaps_total {c.get('seq_gaps_total')}, {v['devices']:,} devices)."
            + (f" Broker log: {r['broker_log_problems']}" if r["broker_log_problems"] else ""))
    sk = out.get("soak")
    if sk:
        series = sk["rss_mib"]
        step = max(1, len(series) // 12)
        ls.append("- soak VmRSS (s: MiB): " + ", ".join(f"{t:.0f}: {v:.0f}" for t, v in series[::step])
                  + f", end {series[-1][1]:.0f}")
    b = out.get("baselines")
    if b:
        ls.append(f"- baselines: {b['unique']:,} unique + {b['duplicates']:,} duplicate messages "
                  f"({b['devices']:,} devices × {b['unique'] // b['devices']} each, round-robin) into a fresh "
                  f"database each: " + "; ".join(
                      f"{'one transaction per message' if k == 'naive' else 'batches of ' + k[5:]}: "
                      f"{b[k + '_s']:.2f} s wall, {b[k + '_cpu_s']:.2f} CPU s"
                      for k in ("naive", *(f"batch{x}" for x in b["batch_sizes"]))))
    for label, pt in (("idle", out.get("paint")), ("during the paced phase", (out.get("paced") or {}).get("during"))):
        if not pt:
            continue
        if "loads" not in pt:
            ls.append(f"- first paint {label}: {pt}")
            continue
        ls.append(f"- first paint {label}: {pt['url']} ({pt['page_bytes']:,} bytes, one GET "
                  f"{pt['server_get_ms']:.0f} ms"
                  f" from Python), {len(pt['loads'])} loads in one headless Chromium (cache disabled), "
                  "first-contentful-paint from navigation start: "
                  + ", ".join(f"{x['first_contentful_paint_ms']:.0f}" for x in pt["loads"])
                  + " ms; DOMContentLoaded " + ", ".join(f"{x['dom_content_loaded_ms']:.0f}" for x in pt["loads"])
                  + f" ms; `chromium --headless --dump-dom` whole process (browser start included) "
                  f"{pt['dump_dom_process_ms']:.0f} ms, {pt['dump_dom_device_rows']} device rows in its DOM.")
    ls.append(f"- Everything on one host over loopback (no TLS), broker + generator + collector sharing "
              f"{os.cpu_count()} CPUs. Load average before/after: {[round(x, 2) for x in out['loadavg_before']]} / "
              f"{[round(x, 2) for x in out['loadavg_after']]}; bench total {out['bench_s']:.0f} s.")
    cmd = ".venv/bin/python -m bench.fleet_ingest"
    if a["soak_seconds"] != 60:
        cmd += f" --soak-seconds {a['soak_seconds']:g}"
    if a["phases"] != "baselines,before,max,paced,soak,paint":
        cmd += f" --phases {a['phases']}"
    ls.append(f"- Reproduce: `{cmd}`")
    return "\n".join(ls)


STORE_COLUMNS = ("phase", "store", "collectors", "devices", "messages", "ingest msg/s", "× SQLite 1",
                 "collector µs CPU/msg", "PostgreSQL µs CPU/msg",
                 "cores used: collectors / postgres / broker / publisher", "peak RSS per collector (MiB)", "lost",
                 "double counted")


def _store_row(r: dict[str, Any], b: float | None) -> list[str]:
    """One phase of the store comparison (``b``: the SQLite single collector's rate at the same device count)."""
    v = r["verify"]
    return [r.get("phase", r["name"]), r["store"], r["collectors"], f"{r['devices']:,}",
            f"{r['publisher']['unique']:,} (+{r['publisher']['duplicates']:,} dup)", dash(r["rate"]),
            dash(r["rate"] / b if b and r.get("phase") == "max" else None, ".2f"),
            dash(r["collector_us_per_msg"]), dash(r["pg_us_per_msg"]),
            f"{dash(r['collector_cores'], '.2f')} / {dash(r['pg_cores'], '.2f')} / "
            f"{dash(r['mosquitto_cores'], '.2f')} / {dash(r['publisher_cores'], '.2f')}",
            ", ".join(dash(x) for x in r["peak_rss_mib"]), f"{v['lost']:,}", f"{v['double_counted']:,}"]


def report_stores(out: dict[str, Any]) -> str:
    a, runs, pt, sk = out["args"], out.get("runs", []), out.get("paint"), out.get("soak")
    pgv = out.get("postgres", {})
    st = pgv.get("settings", {})
    lines = [f"#### Fleet collectors: PostgreSQL (1–{max(a['collector_list'])} collectors, one share group) vs the "
             f"SQLite single collector — loopback, Mosquitto {out.get('mosquitto', '?')}, MQTT v5 QoS 1, "
             f"PostgreSQL {pgv.get('version', '?')} (fsync {st.get('fsync', '?')}, synchronous_commit "
             f"{st.get('synchronous_commit', '?')}), {os.cpu_count()} CPUs", ""]
    base = {r["devices"]: r["rate"] for r in runs if r["store"] == "sqlite"}
    lines += md_table(STORE_COLUMNS, [_store_row(r, base.get(r["devices"])) for r in runs + ([sk] if sk else [])])
    rows = []
    allr = runs + ([sk] if sk else [])
    if allr:
        clean = all(r["verify"]["lost"] == 0 and r["verify"]["double_counted"] == 0 for r in allr)
        ok = all(r["verify"]["ok"] for r in allr)
        failed = "; ".join(p for r in allr for p in r["verify"]["problems"][:2])
        rows.append(("zero lost and zero double-counted messages, every run",
                     f"{sum(r['verify']['lost'] for r in allr):,} lost, "
                     f"{sum(r['verify']['double_counted'] for r in allr):,} double counted over {len(allr)} runs "
                     f"({sum(r['committed'] for r in allr):,} messages); all checks "
                     f"{'passed' if ok else 'passed except: ' + failed}",
                     "0 / 0", _met(clean and ok)))
    n_max = max(a["collector_list"])
    for d in a["device_list"]:
        pg = {r["collectors"]: r for r in runs if r["store"] == "postgresql" and r["devices"] == d}
        if 1 in pg and n_max in pg and n_max > 1:
            r1, rn = pg[1]["rate"], pg[n_max]["rate"]
            rows.append((f"{n_max} collectors on PostgreSQL ingest at least as fast as one, {d:,} devices",
                         f"{dash(rn)} vs {dash(r1)} msg/s ({rn / r1:.2f}×); "
                         + ", ".join(f"{k}: {dash(x['rate'])}" for k, x in sorted(pg.items())),
                         "≥ 1.00×", _met(rn >= r1)))
    if pt and "fcp_cold_ms" in pt:
        rows.append((f"dashboard first paint, {pt['devices_in_db']:,} devices on PostgreSQL (idle collector)",
                     f"{pt['fcp_cold_ms']:.0f} ms cold, {pt['fcp_warm_median_ms']:.0f} ms warm (median), max "
                     f"{pt['fcp_max_ms']:.0f} ms", "< 1 s", _met(pt["fcp_max_ms"] < 1000)))
    elif pt:
        rows.append(("dashboard first paint", str(pt.get("skipped") or pt), "< 1 s", "—"))
    if pt and "api_walk" in pt:
        w = pt["api_walk"]
        rows.append((f"/api/devices paginated (limit {w['limit']}, after=FLEET/DEVICE, X-Total-Count, Link rel=next)",
                     f"{w['pages']} pages, {w['devices']:,} devices, {w['duplicates']} repeated, "
                     f"{'in order' if w['ordered'] else 'OUT OF ORDER'}, "
                     f"X-Total-Count {', '.join(w['x_total_count'])}; "
                     f"walk {w['walk_ms']:.0f} ms (page median {w['page_ms_median']:.0f} ms, max "
                     f"{w['page_ms_max']:.0f} ms)", "every device exactly once", _met(w["ok"])))
    if sk:
        mem = sk["memory"]
        desc = "; ".join(f"{cid.rsplit('-', 1)[-1]}: {x['start']:.0f} → {x['warm']:.0f} "
                         f"(at {mem['warm_s']:.0f} s) → "
                         f"{x['end']:.0f} MiB, max {x['max']:.0f}, {dash(x['slope_mib_per_min'], '+.2f')} MiB/min "
                         f"after {mem['warm_s']:.0f} s ({x['after_final_burst']:.0f} after the final burst)"
                         for cid, x in mem["collectors"].items())
        rows.append((f"memory per collector over the soak: {sk['collectors']} collectors, {sk['devices']:,} devices, "
                     f"{a['soak_rate']:,.0f} msg/s for {a['soak_seconds']:g} s", desc,
                     "flat" + (" (target: a 10-minute soak)" if a["soak_seconds"] < 600 else ""),
                     _met(mem["flat"] and sk["verify"]["ok"])))
    lines += ["", *md_table(("measure", "result", "target", "status"), rows)]
    return "\n".join(lines)


def details_stores(out: dict[str, Any]) -> str:
    a = out["args"]
    ls = ["", "What the numbers include:"]
    for r in out.get("runs", []) + ([out["soak"]] if out.get("soak") else []):
        pb, v, sp = r["publisher"], r["verify"], r["split"]
        c = v["counters"]
        line = (f"- {r['name']}: {pb['unique']:,} unique + {pb['duplicates']:,} duplicate messages from "
                f"{pb['devices']:,} devices on {pb['connections']:,} connections (connected in "
                f"{pb['connect_s']:.1f} s, "
                f"Receive Maximum {pb['window']}), published in {pb['publish_s']:.2f} s (generator "
                f"{pb.get('cpu_s', float('nan')):.1f} CPU s); first commit {r['first_commit_after_go_s']:.2f} s after "
                f"the start, last {r['last_commit_after_publish_end_s']:.2f} s after the last publish; window "
                f"{r['window_s']:.2f} s: {dash(r['rate'])} msg/s; CPU s in the window: collectors "
                f"{r['collector_cpu_s']:.1f}, PostgreSQL {dash(r['pg_cpu_s'], '.1f')}, Mosquitto "
                f"{r['mosquitto_cpu_s']:.1f}; the whole host was busy {dash(r.get('host_busy_cores'), '.2f')} of "
                f"{os.cpu_count()} cores. While publishing: {dash(sp['while_publishing']['rate'])} msg/s "
                f"(collectors {dash(sp['while_publishing']['collector_cores'], '.2f')} cores, PostgreSQL "
                f"{dash(sp['while_publishing']['pg_cores'], '.2f')}) over {sp['while_publishing']['s']:.1f} s; after: "
                f"{dash(sp['after_publishing']['rate'])} msg/s "
                f"({dash(sp['after_publishing']['collector_cores'], '.2f')} / "
                f"{dash(sp['after_publishing']['pg_cores'], '.2f')}) over {sp['after_publishing']['s']:.1f} s. "
                f"Verified: {'OK' if v['ok'] else v['problems']} (messages_total {c.get('messages_total', 0):,}, "
                f"duplicates_total {c.get('duplicates_total', 0):,} = sent {pb['duplicates']:,} "
                f"{v['redeliveries']:+,} redelivered, seq_gaps_total {c.get('seq_gaps_total', 0)}, late_fills_total "
                f"{c.get('late_fills_total', 0)}, progress rows {v['progress_rows']:,}/{v['progress_published']:,}, "
                f"{v['devices']:,} devices).")
        if len(v.get("per_instance", {})) > 1 or r["store"] == "postgresql":
            share = {k.rsplit("-", 1)[-1]: x.get("messages_total", 0) for k, x in v.get("per_instance", {}).items()}
            tot = sum(share.values()) or 1
            line += (" Share of messages_total per collector: "
                     + ", ".join(f"{k} {n:,} ({100 * n / tot:.1f}%)" for k, n in sorted(share.items())) + ".")
        g = r.get("pg")
        if g:
            line += (f" PostgreSQL: {g.get('xact_commit', '?'):,} commits, {g.get('xact_rollback', '?')} rollbacks, "
                     f"{g.get('deadlocks', '?')} deadlocks; a collector waited on a lock in "
                     f"{g['polls_with_lock_waiters']}/{g['lock_wait_polls']} polls (50 ms apart; mean "
                     f"{g['mean_lock_waiters']:.2f}, max {g['max_lock_waiters']} waiting); database "
                     f"{g.get('db_bytes', 0) / 2**20:.0f} MiB; {g.get('processes_at_start')} server processes.")
        if g and g.get("server_log_errors"):
            dl = [ln.split("ERROR:", 1)[1].strip() for ln in g["server_log"] if "ERROR:" in ln]
            line += f" PostgreSQL log: {g['server_log_errors']} ERROR lines ({'; '.join(sorted(set(dl)))[:200]})."
        if r["collector_log_problem_lines"]:
            line += (f" Collector logs: {r['collector_log_problem_lines']} warning/retry lines, e.g. "
                     f"{next(iter(r['collector_log_problems'].values()))[:2]}")
        if r["broker_log_problems"]:
            line += f" Broker log: {r['broker_log_problems']}"
        ls.append(line)
    sk = out.get("soak")
    if sk:
        for cid, series in sk["rss_mib_per_collector"].items():
            step = max(1, len(series) // 12)
            ls.append(f"- soak VmRSS of {cid} (s: MiB): " + ", ".join(f"{t:.0f}: {v:.0f}" for t, v in series[::step])
                      + f", end {series[-1][1]:.0f}")
    pt = out.get("paint")
    if pt and "loads" in pt:
        ls.append(f"- first paint: {pt['url']} on the database of {pt.get('phase_db')} ({pt['devices_in_db']:,} "
                  f"devices; one idle collector of share group bench, fresh broker; page {pt['page_bytes']:,} bytes, "
                  f"one GET {pt['server_get_ms']:.0f} ms from Python), {len(pt['loads'])} loads in one headless "
                  "Chromium (cache disabled), first-contentful-paint from navigation start: "
                  + ", ".join(f"{x['first_contentful_paint_ms']:.0f}" for x in pt["loads"])
                  + f" ms; `chromium --headless --dump-dom` whole process {pt['dump_dom_process_ms']:.0f} ms, "
                  f"{pt['dump_dom_device_rows']} device rows in its DOM.")
    elif pt:
        ls.append(f"- first paint: {pt}")
    st = out.get("postgres", {}).get("settings", {})
    ls.append(f"- One PostgreSQL {out.get('postgres', {}).get('version', '?')} server for the run "
              f"(tests/helpers/postgres.py: shared_buffers {st.get('shared_buffers')}, fsync {st.get('fsync')}, "
              f"synchronous_commit {st.get('synchronous_commit')}, full_page_writes {st.get('full_page_writes')}), a "
              "fresh database per phase; its CPU = postmaster + every child process (backends of the collectors, "
              "checkpointer, walwriter, autovacuum; exited ones through the postmaster's cutime), less the bench's "
              "own polling backend. Everything on one host over loopback (no TLS), broker + generator + collectors + "
              f"PostgreSQL sharing {os.cpu_count()} CPUs. Load average before/after: "
              f"{[round(x, 2) for x in out['loadavg_before']]} / {[round(x, 2) for x in out['loadavg_after']]}; "
              f"bench total {out['bench_s']:.0f} s.")
    cmd = (f".venv/bin/python -m bench.fleet_ingest --store postgresql --collectors "
           f"{','.join(map(str, a['collector_list']))} --devices {','.join(map(str, a['device_list']))}")
    if a["total_messages"] != 200000:
        cmd += f" --total-messages {a['total_messages']}"
    cmd += f" --soak-seconds {a['soak_seconds']:g}"
    if a["soak_rate"] != 5000:
        cmd += f" --soak-rate {a['soak_rate']:g}"
    if a.get("pg_durable"):
        cmd += " --pg-durable"
    if a["phases"] != "max,paint,soak":
        cmd += f" --phases {a['phases']}"
    ls.append(f"- Reproduce: `{cmd}`")
    return "\n".join(ls)
