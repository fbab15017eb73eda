"""The baselines: the same kind of messages fed straight into ``FleetStore.ingest_batch`` (no broker), one
transaction per message (the naive collector) and in batches: the storage layer alone, in a child process."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from bench._common import HOST_PY, ROOT
from bench.fleet_ingest.publisher import Device


def run_baselines(tmp: Path, devices: int) -> dict[str, Any]:
    """The baselines in a child process (``--baselines-child``); its figures."""
    cfg = {"dir": str(tmp / "baselines"), "devices": devices, "messages": 40, "dup_every": 13,
           "batch_sizes": [500, 5000]}
    proc = subprocess.run([str(HOST_PY), "-m", "bench.fleet_ingest", "--baselines-child", json.dumps(cfg)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"baselines failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def baselines(cfg: dict[str, Any]) -> dict[str, Any]:
    """(a) one ingest_batch (one transaction) per message; (b) batches of each of ``batch_sizes``; the same
    messages each time (round-robin over the devices, every ``dup_every``-th sent twice), a fresh database."""
    from ftedge.fleet.store import FleetStore  # here, not at the top: the "before" child swaps ftedge.fleet

    d = Path(cfg["dir"])
    d.mkdir(parents=True, exist_ok=True)
    devs = [Device(f"dev-{i:04d}", None, 0, i) for i in range(cfg["devices"])]
    now_ms = int(time.time() * 1000)
    msgs: list[tuple[str, bytes, bool]] = []
    dups = 0
    for k in range(cfg["messages"] + 2):
        for dv in devs:
            kind, payload, retain = dv.message(now_ms, max(0, k - cfg["messages"] + 1))
            m = (dv.topics[kind], payload.encode(), bool(retain))
            msgs.append(m)
            if cfg["dup_every"] and dv.seq % cfg["dup_every"] == 0:
                msgs.append(m)
                dups += 1
    unique = sum(dv.seq for dv in devs)
    out: dict[str, Any] = {"messages": len(msgs), "unique": unique, "duplicates": dups, "devices": len(devs),
                           "batch_sizes": cfg["batch_sizes"]}
    for name, size in (("naive", 1), *((f"batch{b}", b) for b in cfg["batch_sizes"])):
        store = FleetStore(d / f"{name}.sqlite")
        t = time.perf_counter()
        c0 = time.process_time()
        for i in range(0, len(msgs), size):
            store.ingest_batch(msgs[i:i + size])
        wall, cpu = time.perf_counter() - t, time.process_time() - c0
        c = store.counters()
        store.close()
        assert c["messages_total"] == unique and c["duplicates_total"] == dups, c
        out[f"{name}_s"], out[f"{name}_cpu_s"], out[f"{name}_rate"] = wall, cpu, unique / wall
    return out
