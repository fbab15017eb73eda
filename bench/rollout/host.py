"""The collector side, in its own process (so its CPU is /proc/PID/stat of one process): a real
:class:`~ftedge.fleet.ingest.Collector` on the SQLite file and either a :class:`~ftedge.fleet.rollout.driver.RolloutDriver`
(wired as ``ftedge fleet serve`` wires it) whose ``tick()`` is timed, or the old ``fleet train``-style fan-out.

It talks JSON lines: stdout ``{"ready": …}`` once subscribed; stdin ``go`` (fan-out mode: run the fan-out and print
its figures) and ``stop`` (print the driver's figures, stop, exit)."""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Any


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


class TimedTicks:
    """Wraps ``driver.tick``: wall and thread-CPU seconds of every tick."""

    def __init__(self, driver: Any) -> None:
        self.inner, self.at, self.wall, self.cpu = driver.tick, [], [], []
        driver.tick = self

    def __call__(self, now: int | None = None) -> bool:
        at, t, c = time.time(), time.perf_counter(), time.thread_time()
        try:
            return self.inner(now)
        finally:
            self.at.append(at)
            self.wall.append(time.perf_counter() - t)
            self.cpu.append(time.thread_time() - c)


def host(cfg: dict[str, Any]) -> int:
    """Run the collector (+ driver) described by ``cfg`` until ``stop`` arrives on stdin."""
    from ftedge.fleet.ingest import Collector, CollectorSettings
    from ftedge.fleet.rollout.driver import RolloutDriver
    from ftedge.fleet.store import FleetStore

    client_id = f"bench-collector-{uuid.uuid4().hex[:6]}"
    store = FleetStore(cfg["db"], instance=client_id)
    collector = Collector(store, CollectorSettings(host="127.0.0.1", port=int(cfg["port"])), client_id=client_id).start()
    if not collector.wait_connected(30):
        _emit({"error": "the collector could not connect and subscribe"})
        return 1
    driver = ticks = None
    sent: dict[str, int] = {}      # "VERB wW" -> commands published
    if cfg["mode"] == "rollout":
        # as `ftedge fleet serve` sends (fleet/cli.py): the command expires with the wave
        def send(f: str, d: str, v: str, a: dict[str, Any], c: str, e: int) -> Any:
            wave = c.rsplit("-w", 1)[-1].split("-", 1)[0]     # ids are ro-NAME-VERB-wW-aA
            sent[f"{v} w{wave}"] = sent.get(f"{v} w{wave}", 0) + 1
            return collector.publish_command(f, d, v, a, cmd_id=c, expiry_s=max(1, int(e / 1000 - time.time())),
                                             expires_ms=e)

        driver = RolloutDriver(store, send, holder=client_id, tick_s=float(cfg["tick_s"]))
        ticks = TimedTicks(driver)
        driver.start()
    _emit({"ready": True, "client_id": client_id})
    out: dict[str, Any] = {}
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "go" and cfg["mode"] == "fanout":
            from bench.rollout.fanout import old_way

            _emit({"fanout": old_way(collector, cfg)})
        elif cmd == "stop":
            break
    if driver is not None:
        driver.stop()
        out = {"sent": driver.sent, "sent_by": sent, "tick_at": ticks.at, "tick_wall_s": ticks.wall, "tick_cpu_s": ticks.cpu, "tick_s": driver.tick_s}
    out["collector_stats"] = dict(collector.stats)
    _emit({"stopped": out})
    collector.stop()
    store.close()
    return 0
