"""The simulated fleet (SYNTHETIC): N boxes of tests/helpers/rollout_sim.py on one MQTT connection, one real
Mosquitto, the collector (+ driver) in a child process; one scenario = one fresh database and collector host."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from bench._common import percentile
from bench.rollout.procs import TABLES, HostProc, db_figures

FLEET = "sim"
SHA = "ab" * 32
URL = "https://cdn.example/kws.tar.gz"      # the simulator never downloads


def make_boxes(n: int, fail: float, offline: float, regress: float, seed: int) -> dict[str, Any]:
    """``n`` boxes; each fails its deploy, is offline or regresses with the given probabilities (seeded)."""
    from tests.helpers.rollout_sim import Box

    rng = random.Random(seed)
    boxes = {}
    for i in range(n):
        boxes[f"box-{i:06d}"] = Box(fail_deploy=rng.random() < fail, offline=rng.random() < offline,
                                   regress=rng.random() < regress, before=0.6, gain=0.05 + 0.1 * rng.random())
    return boxes


def set_regress(boxes: dict[str, Any], rate: float, seed: int) -> None:
    rng = random.Random(seed)
    for box in boxes.values():
        box.regress = rng.random() < rate


def _wait(cond: Any, timeout: float, interval: float = 0.1) -> bool:
    from tests.helpers.fleet_sim import wait_for   # the tests' helper (imported late, as the simulator is)

    return wait_for(cond, timeout, interval)


def run_scenario(label: str, port: int, work: Path, boxes: dict[str, Any], spec_kw: dict[str, Any], tick_s: float,
                 timeout_s: float) -> dict[str, Any]:
    """One rollout over the simulated boxes; its figures (waves, CPU, ticks, rows)."""
    from ftedge.fleet.rollout import plan
    from ftedge.fleet.rollout.records import RolloutRecords
    from ftedge.fleet.store import FleetStore

    name = f"bench-{label}"
    db = work / f"{name}.sqlite"
    host = HostProc({"mode": "rollout", "db": str(db), "port": port, "tick_s": tick_s}, work / f"{name}.log")
    try:
        host.expect("ready", 60)
        store = FleetStore(db)
        records = RolloutRecords(store)
        keys = [(FLEET, d) for d in boxes]
        if not _wait(lambda: len(records.known_devices(FLEET)) >= len(keys), 120, 0.2):
            raise RuntimeError(f"the collector saw {len(records.known_devices(FLEET))} of {len(keys)} boxes")
        time.sleep(1.0)                          # the retained births and metas settle
        before = db_figures(db)
        spec = plan.RolloutSpec(name=name, sha256=SHA, bundle="kws", url=URL, **spec_kw).check()
        versions = {k: v for k, (_, v) in records.device_facts(keys).items()}
        cpu0, t0 = host.cpu_s(), time.time()
        records.create(spec, plan.assign_waves(spec, keys), versions)
        finished = _wait(lambda: records.get(name).finished, timeout_s)
        r = records.get(name)
        t_verdict, cpu_verdict = time.time(), host.cpu_s()
        # a halted rollout rolls its wave back: wait for every rollback's answer (an offline box's deploy stays
        # in flight: it is not waited for)
        settled = _wait(lambda: not records.members(name, states=[plan.ROLLING_BACK]), 60)
        t1, cpu1 = time.time(), host.cpu_s()
        members = records.members(name)
        waves = _waves(store, r, members, t0)
        store.close()
        stats = host.stop()
    finally:
        host.kill()
    after = db_figures(db)
    n = len(boxes)
    in_window = [(w, c) for a, w, c in zip(stats["tick_at"], stats["tick_wall_s"], stats["tick_cpu_s"]) if t0 <= a <= t1]
    walls = [w for w, _ in in_window]
    states: dict[str, int] = {}
    for m in members:
        states[m.state] = states.get(m.state, 0) + 1
    return {
        "label": label, "devices": n, "tick_s": tick_s, "state": r.state, "reason": r.reason, "finished": finished,
        "settled": settled, "wall_s": t_verdict - t0, "wall_with_rollback_s": t1 - t0,
        "collector_cpu_s": cpu1 - cpu0, "collector_cpu_to_verdict_s": cpu_verdict - cpu0,
        "collector_cpu_us_per_device": (cpu1 - cpu0) / n * 1e6,
        "sent": stats["sent"], "sent_by": stats["sent_by"], "resyncs": stats["collector_stats"].get("resyncs"),
        "waves": waves, "final_states": states,
        "ticks": {"n": len(walls), "p50_ms": percentile(walls, 50) * 1e3 if walls else None,
                  "p95_ms": percentile(walls, 95) * 1e3 if walls else None,
                  "max_ms": max(walls) * 1e3 if walls else None,
                  "cpu_s": sum(c for _, c in in_window)},
        "rows": {t: after["rows"][t] - before["rows"][t] for t in TABLES},
        "bytes": {t: after["bytes"][t] - before["bytes"][t] for t in TABLES},
        "file_bytes": after["file_bytes"]["all"] - before["file_bytes"]["all"],
        "rows_per_device": sum(after["rows"][t] - before["rows"][t] for t in TABLES) / n,
        "bytes_per_device": sum(after["bytes"][t] - before["bytes"][t] for t in TABLES) / n,
        "wave_timeout_s": spec.wave_timeout_s, "train": spec.train is not None, "min_devices": spec.min_devices,
    }


def _waves(store: Any, r: Any, members: list[Any], t0: float) -> list[dict[str, Any]]:
    """Per judged wave: devices, start → verdict seconds, start → the last answer (reply or job result) of its
    devices, and the verdict's counts. A wave starts at the previous verdict (the canary at the rollout's start)."""
    out = []
    start_ms = r.created_ms
    for v in r.verdicts:
        w = v["wave"]
        wm = [m for m in members if m.wave == w]
        last = _last_answer_ms(store, r.name, w, [m for m in wm if m.job])
        out.append({"wave": w, "devices": len(wm), "state": v["state"], "verdict_s": (v["at_ms"] - start_ms) / 1e3,
                    "last_answer_s": None if last is None else (last - start_ms) / 1e3,
                    "failed": v["failed"], "regressed": v["regressed"], "offline": v["offline"],
                    "median_gain": v.get("median_gain")})
        start_ms = v["at_ms"]
    return out


def _last_answer_ms(store: Any, name: str, wave: int, trained: list[Any]) -> int | None:
    """The newest ``replies.ts`` of the wave's deploy/train commands (their ids name the wave) and ``results.ts``
    of its jobs."""
    backend = store.backend
    with backend.read() as db:
        row = db.execute("SELECT MAX(ts) FROM replies WHERE cmd_id LIKE ? AND cmd_id NOT LIKE ?",
                         (f"ro-{name}-%-w{wave}-%", f"ro-{name}-rollback-%")).fetchone()
        best = row[0]
        for i in range(0, len(trained), 500):
            part = [(m.fleet, m.device, m.job) for m in trained[i:i + 500]]
            frag, args = backend.keys_in(("fleet", "device", "job"), part)
            got = db.execute(f"SELECT MAX(ts) FROM results WHERE {frag}", args).fetchone()[0]
            if got is not None and (best is None or got > best):
                best = got
    return None if best is None else int(best)


def run_baseline(port: int, work: Path, boxes: dict[str, Any], train: dict[str, Any] | None, timeout_s: float,
                 job_timeout_s: float) -> dict[str, Any]:
    """The old way (bench/rollout/fanout.py) over the same boxes: wall time and the collector's CPU."""
    db = work / "bench-fanout.sqlite"
    host = HostProc({"mode": "fanout", "db": str(db), "port": port, "fleet": FLEET, "devices": list(boxes),
                     "deploy_args": {"url": URL, "sha256": SHA, "name": "kws", "replace": True},
                     "train": train is not None, "train_args": {**(train or {}), "bundle": "kws"},
                     "timeout_s": timeout_s, "job_timeout_s": job_timeout_s}, work / "bench-fanout.log")
    try:
        host.expect("ready", 60)
        from ftedge.fleet.rollout.records import RolloutRecords
        from ftedge.fleet.store import FleetStore

        with FleetStore(db) as store:
            records = RolloutRecords(store)
            if not _wait(lambda: len(records.known_devices(FLEET)) >= len(boxes), 120, 0.2):
                raise RuntimeError("the baseline's collector never saw every box")
        time.sleep(1.0)
        before = db_figures(db)
        cpu0 = host.cpu_s()
        host.say("go")
        out = host.expect("fanout", timeout_s * 4 + job_timeout_s + 60)
        out["collector_cpu_s"] = host.cpu_s() - cpu0
        out["collector_cpu_us_per_device"] = out["collector_cpu_s"] / len(boxes) * 1e6
        out["resyncs"] = host.stop()["collector_stats"].get("resyncs")
    finally:
        host.kill()
    after = db_figures(db)
    out["rows"] = {t: after["rows"][t] - before["rows"][t] for t in TABLES}
    out["rows_per_device"] = sum(out["rows"].values()) / len(boxes)
    out["bytes_per_device"] = sum(after["bytes"][t] - before["bytes"][t] for t in TABLES) / len(boxes)
    out["file_bytes"] = after["file_bytes"]["all"] - before["file_bytes"]["all"]
    return out
