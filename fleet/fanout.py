"""Fan one command out to many devices and follow the jobs it starts (``ftedge fleet train``).

Commands leave together (one publish each, QoS 1, ResponseTopic/CorrelationData like ``send``); replies
and job telemetry are read back from the collector's :class:`~ftedge.fleet.store.FleetStore`, so this works
on the long-running ``serve`` collector (the demo) and on a short-lived one (the CLI).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .ingest import Collector

_FINAL = ("succeeded", "failed", "cancelled")


@dataclass
class DeviceRun:
    """One device's part of a fan-out: the command's reply and, once known, its job's result."""

    fleet: str
    device: str
    cmd_id: str
    reply: dict[str, Any] | None = None
    job: str | None = None
    epochs: int = 0                      # the newest epoch reported so far
    last: dict[str, Any] = field(default_factory=dict)   # latest progress body
    result: dict[str, Any] | None = None
    error: str | None = None             # no reply / rejected / gave up waiting

    @property
    def done(self) -> bool:
        return self.error is not None or self.result is not None or (self.reply is not None and self.job is None)

    @property
    def failure(self) -> str | None:
        """Why the device failed: ``rejected`` (it answered rejected/error), ``timeout`` (no reply, or no result
        in time), ``failed`` (its job did not succeed), or None."""
        if self.reply is not None and self.reply.get("status") in ("rejected", "error"):
            return "rejected"
        if self.error is not None or self.reply is None:
            return "timeout"
        return None if self.ok else "failed"

    @property
    def ok(self) -> bool:
        if self.error is not None or self.reply is None or self.reply.get("status") in ("rejected", "error"):
            return False
        return self.result is None or self.result.get("status") == "succeeded"

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def fan_out(collector: Collector, fleet: str, devices: list[str], verb: str, args: dict[str, Any],
            timeout: float = 10.0) -> list[DeviceRun]:
    """Publish ``verb`` to every device at once and collect each reply (``accepted`` + ``job`` for train).

    Devices that do not answer within ``timeout`` seconds get ``error`` set; nothing raises for them.
    """
    if not collector.subscribed.wait(timeout):
        raise TimeoutError(collector.not_connected(timeout))
    runs = [DeviceRun(fleet, d, collector.publish_command(fleet, d, verb, args, expiry_s=max(1, int(timeout))))
            for d in devices]
    deadline = time.monotonic() + timeout
    pending = list(runs)
    while pending:
        for run in list(pending):
            reply = collector.store.reply(run.cmd_id, run.fleet, run.device)
            if reply is not None:
                run.reply, run.job = reply, reply.get("job")
                if reply.get("status") in ("rejected", "error"):
                    run.error = f"{reply.get('status')}: {reply.get('code')}: {reply.get('detail')}"
                pending.remove(run)
        if pending and time.monotonic() > deadline:
            for run in pending:
                run.error = f"no reply within {timeout:g} s; is {run.fleet}/{run.device} online?"
            break
        if pending:
            time.sleep(0.05)
    return runs


def follow(collector: Collector, runs: list[DeviceRun], timeout: float,
           on_update: Callable[[DeviceRun], None] | None = None) -> list[DeviceRun]:
    """Wait until every started job has a result (or ``timeout`` seconds pass), calling ``on_update``
    whenever a device reports a new epoch or its result."""
    deadline = time.monotonic() + timeout
    while True:
        waiting = [r for r in runs if not r.done]
        for run in waiting:
            job = collector.store.job(run.fleet, run.device, run.job or "", limit=1)   # the newest epoch only
            if job is None:
                continue
            last = job["progress"][-1] if job["progress"] else None
            epoch = last.get("epoch") if last is not None else 0
            epoch = epoch if isinstance(epoch, int) else 0
            changed = epoch != run.epochs
            run.epochs = epoch
            run.last = last if last is not None else run.last
            if job["result"] is not None and job["result"].get("status") in _FINAL:
                run.result, changed = job["result"], True
            if changed and on_update is not None:
                on_update(run)
        if all(r.done for r in runs):
            return runs
        if time.monotonic() > deadline:
            for run in runs:
                if not run.done:
                    run.error = f"job {run.job} had no result within {timeout:g} s (last epoch {run.epochs})"
            return runs
        time.sleep(0.1)
