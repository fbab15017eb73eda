"""`ftedge agent run|status|predict|add-sample`: the device agent's command line (torch-free).

``predict`` answers with the active model version (what the box's app gets through ``ActiveModel``);
``add-sample`` files a labelled sample into the ``[personalize]`` data set after checking it with the bundle's own
preprocessing (docs/app.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any


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
                              "  ftedge agent status --config /etc/ftedge/agent.toml --json\n"
                              "  ftedge agent predict --config /etc/ftedge/agent.toml clip.wav\n"
                              "  ftedge agent add-sample --config /etc/ftedge/agent.toml --label yes clip.wav",
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
    pr = agent_sub.add_parser("predict", help="predictions of the active model version for sample files",
                              description="Answer with the model the box's app gets (ActiveModel): the active "
                              "version, else the bundle's own model (--bundle, default the [personalize] bundle).",
                              epilog="examples:\n  ftedge agent predict --config /etc/ftedge/agent.toml clip.wav\n"
                                     "  ftedge agent predict --config /etc/ftedge/agent.toml --json a.png b.png",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_argument("--config", required=True, help="agent.toml")
    pr.add_argument("files", nargs="+", metavar="FILE", help="samples: .wav, .png/.jpg, .txt, .npy … as in training")
    pr.add_argument("--bundle", metavar="NAME", help="bundle folder under paths.bundle_root answering while no "
                    "version is active (default: [personalize] bundle)")
    pr.add_argument("--json", action="store_true", help="print JSON")
    pr.set_defaults(handler=_predict)
    a = agent_sub.add_parser("add-sample", help="file labelled samples into the [personalize] data set",
                             description="Check each FILE with the [personalize] bundle's own preprocessing and "
                             "copy it to DATA/<label>/<sha256[:16]><ext>; a sample that would not train is refused "
                             "with the reason (exit 1 if any was).",
                             epilog="examples:\n  ftedge agent add-sample --config /etc/ftedge/agent.toml --label yes "
                                    "rec-0001.wav rec-0002.wav\n"
                                    "  ftedge agent add-sample --config /etc/ftedge/agent.toml --label shoe --json "
                                    "photo.jpg\nthe policy: docs/personalize.md; the app contract: docs/app.md",
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--config", required=True, help="agent.toml")
    a.add_argument("--label", required=True, help="the label (one of the bundle's; a number for regression)")
    a.add_argument("files", nargs="+", metavar="FILE", help="samples: .wav, .png/.jpg, .txt, .npy … as in training")
    a.add_argument("--json", action="store_true", help="print one JSON object per file outcome (a list)")
    a.set_defaults(handler=_add_sample)
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
        "personalize": _policy_view(cfg),
    }
    if args.json:
        print(json.dumps(state))
        return 0
    print(f"device {cfg.fleet}/{cfg.device_id}: active version {state['active_version'] or '(none)'}, "
          f"{len(state['versions'])} version(s)")
    print(f"jobs: {len(state['jobs']['running'])} running, {len(state['jobs']['queued'])} queued; "
          f"last: {state['last_job']['job'] + ' ' + state['last_job']['status'] if jobs else '(none)'}")
    print(f"outbox: {json.dumps(state['outbox'])}")
    p = state["personalize"]
    if p is not None:
        last = p["last_run"]
        print(f"personalize ({p['source']}): {p['bundle']} on {p['data']}"
              + ("" if p["enabled"] else " (disabled)") + "; last policy run: "
              + (f"{last['job']} at {time.strftime('%Y-%m-%d %H:%M', time.localtime(last['at_ms'] / 1000))}"
                 if last else "none") + f"; {p['removed']['samples']} sample(s) removed by the caps")
    return 0


def _policy_view(cfg: Any) -> dict[str, Any] | None:
    """The policy in effect (the fleet's, else the config's) and what its runs left on disk; the live state (what it
    waits for) is the running agent's: its meta message, or `fleet status`."""
    from ftedge.device_agent.policy.runner import PolicyRunner

    runner = PolicyRunner(cfg.state_dir, cfg.personalize, cfg.paths.data_root, lambda *_a: "", lambda: True)
    p = runner.policy
    if p is None:
        return None
    return {"source": p.source, "bundle": p.bundle, "data": p.data, "enabled": p.enabled,
            "last_run": runner.saved["last_run"], "runs": len(runner.saved["runs"]), "removed": runner.saved["removed"]}


def _under(root: Path, rel: str, what: str) -> Path:
    """``rel`` inside ``root`` (the agent's own rule); UsageError otherwise."""
    from ftedge.device_agent.commands import _inside

    from ftedge.errors import Rejected, UsageError

    try:
        return _inside(root, rel, what)
    except Rejected as rej:
        raise UsageError(f"{what}: {rej.detail}") from None


def _predict(args: argparse.Namespace) -> int:
    from ftedge.device_agent.config import load_config
    from ftedge.runtime.active_model import ActiveModel
    from ftedge.runtime.engines.providers import full_names

    cfg = load_config(args.config)
    name = args.bundle or (cfg.personalize.bundle if cfg.personalize else None)
    bundle = _under(cfg.paths.bundle_root, name, "bundle") if name else None
    keys = list(cfg.deploy.trusted_keys) if cfg.deploy.require_signed else None
    model = ActiveModel(cfg.state_dir, bundle=bundle, providers=full_names(cfg.runtime.providers) or None,
                        trusted_keys=keys)
    results = model.predict(args.files)
    if args.json:
        print(json.dumps({"version": model.version, "task": model.task,
                          "predictions": [{"file": f, **r} for f, r in zip(args.files, results)]}))
        return 0
    print(f"version {model.version or '(none: the bundle ' + str(bundle) + ')'}")
    for f, r in zip(args.files, results):
        print(f"{f}: {r['label']} {r['score']:.3f}" if "label" in r else f"{f}: {r['value']}")
    return 0


def _add_sample(args: argparse.Namespace) -> int:
    from ftedge.bundle.loader import load_bundle
    from ftedge.bundle.tasks import task_of
    from ftedge.device_agent.config import load_config
    from ftedge.runtime.active_model import method_of
    from ftedge.runtime.data.intake import file_sample
    from ftedge.runtime.data.samples import ModelIO

    from ftedge.errors import DataError, UsageError

    cfg = load_config(args.config)
    policy = cfg.personalize
    if policy is None:
        raise UsageError(f"{args.config} has no [personalize] table: add-sample files samples into its data set "
                         "(personalize.data under paths.data_root) for its bundle (personalize.bundle); add one")
    bundle_dir = _under(cfg.paths.bundle_root, policy.bundle, "personalize.bundle")
    data_dir = _under(cfg.paths.data_root, policy.data, "personalize.data")
    bundle = load_bundle(bundle_dir, trusted_keys=list(cfg.deploy.trusted_keys) if cfg.deploy.require_signed
                         else None)
    task = task_of(bundle.manifest, str(bundle_dir))
    if method_of(task) != "predict":  # label folders are the classify package's data (classification, regression)
        raise UsageError(f"bundle {policy.bundle} is a {task.name} model: add-sample files label-folder data sets "
                         "(classification and regression bundles) only; add its samples in its own format")
    if data_dir.exists() and not data_dir.is_dir():
        raise UsageError(f"personalize.data {data_dir} is a file: add-sample needs a folder-per-label data set")
    io = ModelIO.from_manifest(bundle.manifest, bundle.path)
    outcomes: list[dict[str, Any]] = [file_sample(f, args.label, data_dir, io).to_json() for f in args.files]
    if args.json:
        print(json.dumps(outcomes))
    else:
        for o in outcomes:
            where = f" -> {o['path']}" if o["path"] else ""
            print(f"{o['file']}: {o['status']}{where}" + (f" ({o['reason']})" if o["reason"] else ""))
    refused = [o for o in outcomes if o["status"] == "refused"]
    if refused:
        print(f"error: {len(refused)} of {len(outcomes)} file(s) refused and not filed (the reasons above); "
              "fix or drop them and run add-sample again", file=sys.stderr)
        return DataError.exit_code
    return 0
