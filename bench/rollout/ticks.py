"""The driver's tick against wave size, without a broker: one rollout whose single wave holds N devices of a
SQLite fleet database, a driver whose ``send`` only counts, and the ticks of a wave's life timed in this thread
(wall and ``time.thread_time``): **send** (N pending → N deploys written), **wait** (N in flight, no reply yet:
what every tick of a running wave costs), **resolve** (N replies arrived → N deployed, the wave judged). The
records' methods are timed too (where a tick's time goes)."""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

WAIT_TICKS = 5


class _Timed:
    """Accumulates the wall seconds of calls to one bound method."""

    def __init__(self, totals: dict[str, float], name: str, fn: Any) -> None:
        self.totals, self.name, self.fn = totals, name, fn

    def __call__(self, *a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return self.fn(*a, **kw)
        finally:
            self.totals[self.name] += time.perf_counter() - t


def _tick(driver: Any, parts: dict[str, float]) -> dict[str, Any]:
    parts.clear()
    t, c = time.perf_counter(), time.thread_time()
    driver.tick()
    return {"wall_s": time.perf_counter() - t, "cpu_s": time.thread_time() - c, "parts_s": dict(parts)}


def tick_cost(n: int, work: Path, repeats: int = 1) -> dict[str, Any]:
    """The kinds of tick for a wave of ``n`` devices; with ``repeats`` > 1, the run whose wait tick is the median
    (the box is shared: single ticks of small waves are noisy)."""
    runs = sorted((_one(n, work / f"r{i}") for i in range(repeats)), key=lambda r: r["wait"]["wall_s"])
    return {**runs[len(runs) // 2], "repeats": repeats}


def _one(n: int, work: Path) -> dict[str, Any]:
    from ftedge.fleet.rollout import plan
    from ftedge.fleet.rollout.driver import RolloutDriver
    from ftedge.fleet.rollout.records import RolloutRecords, now_ms
    from ftedge.fleet.store import FleetStore

    work.mkdir(parents=True, exist_ok=True)
    db = work / f"ticks-{n}.sqlite"
    store = FleetStore(db)
    try:
        keys = [("sim", f"box-{i:06d}") for i in range(n)]
        with store.backend.write() as w:
            w.executemany("INSERT INTO devices (fleet, device, state, active_version) VALUES (?, ?, 'online', 'v0001')",
                          keys)
        spec = plan.RolloutSpec(name="ticks", sha256="ab" * 32, bundle="kws", url="https://cdn.example/kws.tar.gz",
                                canary="0", wave_timeout_s=3600).check()
        records = RolloutRecords(store)
        t = time.perf_counter()
        records.create(spec, plan.assign_waves(spec, keys), {k: "v0001" for k in keys})
        create_s = time.perf_counter() - t
        sent = [0]

        def send(*_a: Any) -> None:
            sent[0] += 1

        driver = RolloutDriver(store, send, holder="bench-ticks", tick_s=1.0)
        parts: dict[str, float] = defaultdict(float)
        for name in ("members", "replies", "results", "device_facts", "save", "counts", "all", "acquire"):
            setattr(driver.records, name, _Timed(parts, name, getattr(driver.records, name)))
        first = _tick(driver, parts)
        waits = [_tick(driver, parts) for _ in range(WAIT_TICKS)]
        now = now_ms()
        with store.backend.write() as w:
            w.executemany("INSERT INTO replies (fleet, device, cmd_id, body_json, ts) VALUES (?, ?, ?, ?, ?)",
                          [(f, d, "ro-ticks-deploy-w1-a0", json.dumps({"cmd_id": "ro-ticks-deploy-w1-a0",
                           "status": "done", "code": "deployed", "replaced": "kws.replaced-1"}), now) for f, d in keys])
        resolve = _tick(driver, parts)
        state = records.get("ticks").state
        after = _tick(driver, parts)          # a done rollout with nothing in flight
    finally:
        store.close()
    mid = sorted(waits, key=lambda x: x["wall_s"])[len(waits) // 2]
    return {"devices": n, "create_s": create_s, "sent": sent[0], "state": state,
            "send": first, "wait": {**mid, "wall_s": statistics.median(w["wall_s"] for w in waits),
                                    "cpu_s": statistics.median(w["cpu_s"] for w in waits)},
            "resolve": resolve, "done": after}
