"""``--store postgresql``: per device count the SQLite single collector, then PostgreSQL with each collector count;
the first paint on the largest PostgreSQL database; the soak with the most collectors, and its memory figures."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench._common import slope_per_min
from bench.fleet_ingest import postgres
from bench.fleet_ingest.paint import first_paint
from bench.fleet_ingest.phase import run_phase
from bench.fleet_ingest.progress import print_progress


def run_store_comparison(args: argparse.Namespace, tmp: Path, out: dict[str, Any], phases: list[str]) -> None:
    """Per device count: the SQLite single-collector max phase, then one PostgreSQL max phase per collector count
    (fresh broker and database each, same publisher configuration); then ``paint`` (an idle collector on the
    largest PostgreSQL phase's database) and the ``soak`` (max collectors, the largest device count)."""
    runs: list[dict[str, Any]] = out.setdefault("runs", [])
    top_dev, top_n = max(args.device_list), max(args.collector_list)
    with postgres.server(tmp / "postgres", args.pg_durable) as pg:
        out["postgres"] = postgres.describe(pg)
        kept = None
        for devices in args.device_list:
            cfg = {"devices": devices, "connections": args.connections, "dup_every": args.dup_every,
                   "messages": max(4, args.total_messages // devices - 2)}
            if "max" not in phases:
                break
            r = run_phase(f"max-sqlite-d{devices}", tmp, cfg)
            r["phase"] = "max"
            runs.append(r)
            print_progress(r["name"], r)
            for n in args.collector_list:
                keep = devices == top_dev and n == top_n and "paint" in phases
                r = run_phase(f"max-pg{n}-d{devices}", tmp, cfg, store="postgresql", collectors=n, pg=pg,
                              keep_db=keep)
                r["phase"] = "max"
                runs.append(r)
                print_progress(r["name"], r)
                if keep:
                    kept = r["db"]
        if "paint" in phases:
            out["paint"] = first_paint(tmp, kept, top_dev, api_walk_limit=500, name="paint-pg")
            out["paint"]["phase_db"] = f"max-pg{top_n}-d{top_dev}"
            print_progress("paint", out["paint"])
        if kept:
            postgres.pg_drop(pg, kept)
        if "soak" in phases and args.soak_seconds > 0:
            cfg = {"devices": top_dev, "connections": args.connections, "dup_every": args.dup_every,
                   "rate": args.soak_rate, "seconds": args.soak_seconds}
            r = run_phase(f"soak-pg{top_n}-d{top_dev}", tmp, cfg, store="postgresql", collectors=top_n, pg=pg)
            r["phase"] = "soak"
            r["memory"] = soak_memory(r, args.soak_seconds)
            out["soak"] = r
            print_progress(r["name"], r)


def soak_memory(sk: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Per collector, over the paced load (the samples up to the generator's last paced message): VmRSS start
    (first sample), at the end of the warm-up (``min(60 s, half the soak)``), end, max and the least-squares slope
    after the warm-up, and whether it is flat (end ≤ warm × 1.1 + 5 MiB). Reported apart: the sample after the
    generator's final burst (every device's result and last job at once: 2 × devices messages as fast as the
    windows allow), which is a load spike, not growth."""
    warm_t = min(60.0, seconds / 2)
    paced_end = seconds + 0.5
    per = {}
    for cid, series in sk["rss_mib_per_collector"].items():
        vals = [(t, v) for t, v in series if v == v and t <= paced_end]
        if not vals:
            continue
        warm = next((v for t, v in vals if t >= warm_t), vals[-1][1])
        per[cid] = {"start": vals[0][1], "warm": warm, "end": vals[-1][1], "max": max(v for _, v in vals),
                    "slope_mib_per_min": slope_per_min([(t, v) for t, v in vals if t >= warm_t]),
                    "after_final_burst": series[-1][1], "flat": vals[-1][1] <= warm * 1.1 + 5}
    return {"warm_s": warm_t, "paced_end_s": paced_end, "collectors": per,
            "flat": bool(per) and all(x["flat"] for x in per.values())}
