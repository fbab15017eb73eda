"""The outbox worker (``--worker outbox``, device interpreter): a real ``Agent`` built from a config, messages pushed
through ``agent.publish`` while its pump drains them; JSON event lines on stdout."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _wait(cond: Callable[[], bool], timeout: float, what: str, poll: float = 0.005) -> float:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"worker: timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)
    return time.monotonic()


def worker_outbox(args: argparse.Namespace) -> int:
    """Connect, then publish --messages progress messages (after the broker went away, for ``outage``)."""
    import logging

    from ftedge.device_agent.agent import Agent
    from ftedge.device_agent.config import load_config

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    agent = Agent(load_config(args.config))
    agent.start()
    _wait(lambda: agent.link.connected.is_set() and agent.outbox.depth() == 0, 60, "connection + birth/meta acked")
    _emit({"event": "ready", "t": time.monotonic()})
    if args.scenario == "outage":
        sys.stdin.readline()  # the bench has stopped the broker
        t_off = _wait(lambda: not agent.link.connected.is_set(), 60, "the agent to notice the broker is gone")
        _emit({"event": "offline", "t": t_off})
    n = args.messages
    template = {"job": "bench", "epoch": 0, "step": 0, "loss": 0.123456789,
                "metrics": {"val_loss": 0.2345678, "val_accuracy": 0.9375, "val_macro_f1": 0.93456},
                "lr": 0.00987654321, "samples_per_s": 12345.6, "rss_mb": 123.4, "pad": "x" * 40}
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    for i in range(n):
        agent.publish("progress", "jobs/bench/progress", {**template, "epoch": i, "step": i * 26})
    t1 = time.monotonic()
    _emit({"event": "enqueued", "t0": t0, "t1": t1, "depth": agent.outbox.depth(),
           "connected": agent.link.connected.is_set()})
    t_conn = t0 if agent.link.connected.is_set() else None
    while agent.outbox.depth() > 0:
        if t_conn is None and agent.link.connected.is_set():
            t_conn = time.monotonic()
        if time.monotonic() - t1 > args.timeout:
            raise SystemExit(f"worker: outbox still holds {agent.outbox.depth()} message(s) after {args.timeout} s")
        time.sleep(0.005)
    t_empty = time.monotonic()
    if t_conn is None:
        t_conn = t_empty
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    sample_body = len(json.dumps({**template, "v": 1, "ts": int(time.time() * 1000), "dev": agent.cfg.device_id,
                                  "boot": agent.boot, "seq": n, "hist": False}, separators=(",", ":")))
    _emit({"event": "drained", "t_conn": t_conn, "t_empty": t_empty, "cpu_s": cpu, "body_bytes": sample_body,
           "connections": agent.connections, "denied": agent.denied, "boot": agent.boot,
           "maxrss_mib": ru1.ru_maxrss / 1024})
    agent.shutdown()
    return 0
