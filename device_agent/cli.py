"""`ftedge agent run|status`: the device agent's command line (torch-free)."""

from __future__ import annotations

import argparse
import json
import logging
import sys


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="the long-running device agent (MQTT telemetry, jobs, model versions)",
                       description="Run the device agent or show its local state.",
                       epilog="examples:\n  ftedge agent run --config /etc/ftedge/agent.toml\n"
                              "  ftedge agent status --config /etc/ftedge/agent.toml --json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    agent_sub = p.add_subparsers(dest="agent_command", metavar="ACTION")
    r = agent_sub.add_parser("run", help="connect to the broker and serve commands until SIGTERM")
    r.add_argument("--config", required=True, help="agent.toml")
    r.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="overrides the config's")
    r.add_argument("--log-format", choices=["text", "json"], default="text", help="json: one object per line")
    r.set_defaults(handler=_run)
    s = agent_sub.add_parser("status", help="print the local state: active version, jobs, outbox depth")
    s.add_argument("--config", required=True, help="agent.toml")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(handler=_status)
    p.set_defaults(handler=lambda _a: (p.print_help(sys.stderr), 2)[1])


def _run(args: argparse.Namespace) -> int:
    from ftedge.device_agent.agent import Agent
    from ftedge.device_agent.config import load_config

    cfg = load_config(args.config)
    level = getattr(logging, (args.log_level or cfg.log_level).upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if args.log_format == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    ftedge_log = logging.getLogger("ftedge")  # the CLI boundary set it to WARNING with its own handler
    ftedge_log.propagate, ftedge_log.handlers[:] = True, []
    ftedge_log.setLevel(logging.NOTSET)
    return Agent(cfg).run()


def _status(args: argparse.Namespace) -> int:
    from ftedge.device_agent.config import load_config
    from ftedge.device_agent.jobs import JobStore
    from ftedge.device_agent.outbox import Outbox
    from ftedge.device_agent.versions import ModelStore

    cfg = load_config(args.config)
    jobs = JobStore(cfg.state_dir).all()
    models = ModelStore(cfg.state_dir)
    outbox = Outbox(cfg.state_dir / "outbox.sqlite", cfg.device_id, max_bytes=cfg.outbox.max_bytes,
                    max_age_s=cfg.outbox.max_age_s)
    state = {
        "device": cfg.device_id, "fleet": cfg.fleet, "active_version": (models.active() or {}).get("id"),
        "versions": [v["id"] for v in models.list()],
        "jobs": {st: [j.id for j in jobs if j.status == st] for st in ("queued", "running")},
        "last_job": jobs[-1].public() if jobs else None, "outbox": outbox.stats(),
    }
    if args.json:
        print(json.dumps(state))
        return 0
    print(f"device {cfg.fleet}/{cfg.device_id}: active version {state['active_version'] or '(none)'}, "
          f"{len(state['versions'])} version(s)")
    print(f"jobs: {len(state['jobs']['running'])} running, {len(state['jobs']['queued'])} queued; "
          f"last: {state['last_job']['job'] + ' ' + state['last_job']['status'] if jobs else '(none)'}")
    print(f"outbox: {json.dumps(state['outbox'])}")
    return 0
