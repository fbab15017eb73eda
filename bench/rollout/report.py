"""The report: Markdown tables of one run's JSON (what BENCHMARKS.md §5.4 quotes)."""

from __future__ import annotations

from typing import Any

from bench._common import dash, fmt, md_table


def _ratio(a: Any, b: Any) -> str:
    return "—" if a is None or not b else f"{a / b:.2f}×"


def _states(d: dict[str, int]) -> str:
    return ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(d.items(), key=lambda x: -x[1]))


def _waves(r: dict[str, Any], sent: dict[str, int] | None) -> list[str]:
    rows = []
    for w in r["waves"]:
        label = "canary" if w["wave"] == 0 else f"wave {w['wave']}"
        cmds = "—" if sent is None else "/".join(str(sent.get(f"{v} w{w['wave']}", 0))
                                                 for v in ("deploy", "train", "rollback"))
        rows.append([label, w["devices"], w["state"], fmt(w["verdict_s"], ".2f"), fmt(w["last_answer_s"], ".2f"),
                     cmds, w["failed"], w["regressed"], w["offline"], fmt(w["median_gain"], "+.3f")])
    return md_table(["wave", "devices", "verdict", "start → verdict s", "start → last answer s",
                     "deploy/train/rollback sent", "failed", "not promoted", "offline", "median gain"], rows)


def lines(res: dict[str, Any]) -> list[str]:
    s = res["settings"]
    out = [f"## Staged rollouts: {s['devices']:,} simulated boxes (SYNTHETIC), canary {s['canary']:.0%}, waves "
           f"{','.join(f'{w:.0%}' for w in s['waves'])}, --train; fail {s['fail_rate']:.1%}, offline "
           f"{s['offline_rate']:.1%}, regress {s['regress_rate']:.0%}; --max-failures {s['max_failures']:.0%} "
           f"--min-devices {s['min_devices']} --max-regressions {s['max_regressions']:.0%} --wave-timeout "
           f"{s['wave_timeout_s']:g} s; {res['machine']['cpus']} CPUs", ""]
    base = res.get("baseline")
    scen = [(k, res[k]) for k in ("sim", "sim_fast", "halt") if k in res]
    for key, r in scen:
        out += [f"### {key}: driver tick {r['tick_s']:g} s — {r['state']}" + (f" ({r['reason']})" if r["reason"] else ""),
                "", *_waves(r, r["sent_by"]), ""]
    if scen or base:
        rows = []
        for key, r in scen:
            rows.append([f"rollout, tick {r['tick_s']:g} s" + (" (breach)" if key == "halt" else ""),
                         fmt(r["wall_s"], ".1f") + ("" if key != "halt" else f" (+ rollback {r['wall_with_rollback_s'] - r['wall_s']:.1f})"),
                         _ratio(r["wall_s"], base and base["wall_s"]), fmt(r["collector_cpu_s"], ".2f"),
                         dash(r["collector_cpu_us_per_device"]),
                         _ratio(r["collector_cpu_s"], base and base["collector_cpu_s"]), r["sent"],
                         f"{fmt(r['ticks']['p50_ms'], '.1f')} / {fmt(r['ticks']['p95_ms'], '.1f')} "
                         f"({r['ticks']['n']} ticks, {r['ticks']['cpu_s']:.2f} s CPU)",
                         fmt(r["rows_per_device"], ".2f"), dash(r["bytes_per_device"]), _states(r["final_states"])])
        if base:
            rows.append(["fan-out deploy + train (old way)", fmt(base["wall_s"], ".1f"), "1.00×",
                         fmt(base["collector_cpu_s"], ".2f"), dash(base["collector_cpu_us_per_device"]), "1.00×",
                         base["sent"], "—", fmt(base["rows_per_device"], ".2f"), dash(base["bytes_per_device"]),
                         f"{base['promoted']} promoted, {base['not_promoted']} not promoted, {base['deploy_failed']} "
                         f"deploy failed, {base['no_answer']} no answer"])
        out += md_table(["run", "wall s", "× baseline", "collector CPU s", "µs/device", "CPU × baseline",
                         "commands", "tick p50 / p95 ms", "rows/device", "bytes/device", "devices end"], rows)
        if "simulator_cpu_s" in res:
            out.append(f"\nSimulator + bench process CPU over all scenarios: {res['simulator_cpu_s']:.1f} s.")
        out.append("")
    if res.get("ticks"):
        rows = [[f"{t['devices']:,}", fmt(t["send"]["wall_s"] * 1e3, ",.1f"), fmt(t["wait"]["wall_s"] * 1e3, ",.1f"),
                 fmt(t["resolve"]["wall_s"] * 1e3, ",.1f"), fmt(t["done"]["wall_s"] * 1e3, ",.1f"),
                 ", ".join(f"{k} {v * 1e3:,.0f}" for k, v in sorted(t["wait"]["parts_s"].items(), key=lambda x: -x[1])
                           if v >= 0.0005),
                 ", ".join(f"{k} {v * 1e3:,.0f}" for k, v in sorted(t["resolve"]["parts_s"].items(), key=lambda x: -x[1])
                           if v >= 0.0005)] for t in res["ticks"]]
        out += ["### Driver tick vs wave size (one wave of N devices, no broker; ms wall)", "",
                *md_table(["wave devices", "send tick", "wait tick", "resolve tick", "tick of the done rollout",
                           "wait tick: where (ms)", "resolve tick: where (ms)"], rows), ""]
    a = res.get("agents")
    if a:
        out += [f"### {a['agents']} real agents ({a['python']}), mlp bundle, {a['epochs']} epochs on SYNTHETIC blobs: "
                f"{a['state']} in {a['wall_s']:.1f} s (CLI `rollout start --wait`), collector CPU {a['collector_cpu_s']:.2f} s "
                f"({a['collector_cpu_us_per_device']:,.0f} µs/device), {a['sent']} commands, "
                f"{sum(a['rows'].values()) / a['agents']:.1f} rows/device; {_states(a['final_states'])}", "",
                *_waves(a, None), ""]
    c = res.get("capacity")
    if c:
        rows = [["canary" if p["wave"] == 0 else f"wave {p['wave']}", f"{p['devices']:,}", f"{p['send_tick_s']:.2f}",
                 f"{p['wait_tick_s']:.2f}", f"{p['resolve_tick_s']:.2f}", f"{p['busy']:.0%}"] for p in c["per_wave"]]
        out += [f"### Model: {c['devices']:,} boxes (measured wave sizes {', '.join(f'{n:,}' for n in c['measured_sizes'])})",
                "", *md_table(["wave", "devices", "send tick s", "wait tick s", "resolve tick s",
                               f"driver busy while waiting (tick {c['tick_s']:g} s)"], rows), "",
                f"Collector CPU, linear in devices: {c['collector_cpu_s_linear']:,.0f} s; driver send/resolve ticks "
                f"{c['driver_step_cpu_s']:,.0f} s; rows {c['rows']:,.0f} ({c['rows_per_device']:.2f}/device), "
                f"{c['bytes'] / 2**20:,.0f} MiB ({c['bytes_per_device']:,.0f} B/device); a done rollout's tick "
                f"{c['done_tick_s_last_wave']:.2f} s, every tick, for good.", ""]
    out.append(f"Bench wall time {res.get('bench_wall_s', 0):.0f} s; the whole box's busy cores over the run "
               f"{res.get('host_busy_cores', 0):.2f} of {res['machine']['cpus']}.")
    return out
