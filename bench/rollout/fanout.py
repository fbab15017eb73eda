"""The baseline: the same fleet done the old way, ``ftedge fleet train``-style (fleet/fanout.py): ``deploy`` to every
box at once, wait for the deploys to finish, ``train`` to every box that installed it, follow the jobs. No waves,
no gates, no rollback. Runs in the collector's process (bench/rollout/host.py)."""

from __future__ import annotations

import time
from typing import Any

_FINAL = ("done", "error", "rejected")


def old_way(collector: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Figures of one fan-out: wall seconds per step, commands sent, outcomes."""
    from ftedge.fleet.fanout import fan_out, follow

    fleet, devices, timeout = cfg["fleet"], list(cfg["devices"]), float(cfg["timeout_s"])
    t0 = time.perf_counter()
    runs = fan_out(collector, fleet, devices, "deploy", cfg["deploy_args"], timeout=timeout)
    t_replies = time.perf_counter()
    # fan_out returns at the first reply (a deploy's `accepted`): wait for each deploy's final one
    answered = [r for r in runs if r.reply is not None]
    final: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(final) < len(answered) and time.monotonic() < deadline:
        for r in answered:
            if r.device not in final:
                rep = r.reply if r.error is not None else collector.store.reply(r.cmd_id, r.fleet, r.device)
                if rep is not None and rep.get("status") in _FINAL:
                    final[r.device] = rep
        time.sleep(0.05)
    deployed = [d for d, rep in final.items() if rep.get("status") == "done"]
    t_deployed = time.perf_counter()
    trains = fan_out(collector, fleet, deployed, "train", cfg["train_args"], timeout=timeout) if cfg["train"] else []
    follow(collector, trains, timeout=float(cfg["job_timeout_s"]))
    t_end = time.perf_counter()
    promoted = sum(bool(r.result and r.result.get("promoted")) for r in trains)
    return {"wall_s": t_end - t0, "deploy_first_replies_s": t_replies - t0, "deploy_done_s": t_deployed - t0,
            "train_s": t_end - t_deployed, "sent": len(runs) + len(trains), "devices": len(devices),
            "deployed": len(deployed), "deploy_failed": sum(rep.get("status") != "done" for rep in final.values()),
            "no_answer": len(runs) - len(answered), "promoted": promoted,
            "not_promoted": sum(bool(r.result) and not r.result.get("promoted") for r in trains)}
