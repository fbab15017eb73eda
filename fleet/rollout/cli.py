"""``ftedge fleet rollout start|status|list|pause|resume|abort``: staged rollouts in the fleet database.

The verbs write and read the collector's database (``--db``, SQLite or PostgreSQL); the running ``fleet serve``
drives what they start (:mod:`.driver`). ``start`` publishes the archive into the collector's bundle folder
(content-addressed, served as ``/bundles/<sha256>.tar.gz``) unless ``--url`` names where devices fetch it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ftedge.errors import EXIT_ERROR, EXIT_OK, EXIT_REJECTED, EXIT_TIMEOUT, FtedgeError, RolloutError, UsageError

from . import plan
from .plan import RolloutSpec
from .records import RolloutRecords

DB_HELP = "SQLite file (default fleet.sqlite) or postgresql://USER@HOST[:PORT]/DB: the collector's --db"
EXAMPLES = """examples:
  ftedge fleet rollout start --bundle kws-v2.tar.gz --fleet demo --canary 1 --waves 50%,100% \\
      --train '{"data": "user", "epochs": 30}' --max-regressions 20% --wait
  ftedge fleet rollout status kws-v2
  ftedge fleet rollout abort kws-v2 --rollback
exit codes (start --wait): 0 done, 3 halted by a threshold, 4 not finished before --timeout, 1 aborted."""


def default_bundle_dir(db: str) -> Path:
    """The bundle folder beside a SQLite database (``fleet.sqlite`` → ``fleet.sqlite.bundles``); PostgreSQL
    needs ``--bundle-dir`` (a folder every collector of the group reads)."""
    from ftedge.fleet.store_backend import is_postgres_url

    if is_postgres_url(db):
        raise UsageError("with a PostgreSQL --db give --bundle-dir: a folder every collector of the group reads "
                         "(or --url, an object store or CDN the devices download from)")
    return Path(f"{db}.bundles")


def register(fs: argparse._SubParsersAction, default_db: str) -> None:
    p = fs.add_parser("rollout", help="staged rollouts of a bundle (and a training campaign) over the fleet",
                      description="Roll a bundle out in waves — a canary first — with failure and regression "
                                  "thresholds that halt it and roll the wave back. The running `fleet serve` drives "
                                  "it; these verbs start, show and steer it through the database.",
                      epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    rs = p.add_subparsers(dest="rollout_command", metavar="VERB")
    s = rs.add_parser("start", help="start a rollout", epilog=EXAMPLES,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--bundle", required=True, type=Path, metavar="ARCHIVE.tar.gz", help="the `ftedge pack` archive")
    s.add_argument("--name", help="rollout name (default: the bundle's name and the start of its sha256)")
    who = s.add_mutually_exclusive_group(required=True)
    who.add_argument("--devices", metavar="A,B,…", help="these devices (ids, or FLEET/ID when ids repeat)")
    who.add_argument("--fleet", help="every device of this fleet the collector knows")
    who.add_argument("--all", action="store_true", help="every device the collector knows")
    canary = s.add_mutually_exclusive_group()
    canary.add_argument("--canary", default="1", metavar="N|P%", help="canary devices: a number or a share (default 1)")
    canary.add_argument("--canary-devices", metavar="A,B,…", help="these devices are the canary")
    s.add_argument("--waves", default="100%", metavar="P%,…",
                   help="after the canary, the share of the remaining devices reached by the end of each wave "
                        "(default 100%%: one wave), e.g. 10%%,50%%,100%%")
    s.add_argument("--max-failures", default="10%", metavar="P%",
                   help="halt when more of a wave's devices than this fail (default 10%%)")
    s.add_argument("--min-devices", type=int, default=10, metavar="N",
                   help="halt a running wave early only once this many of its devices have an outcome (default "
                        "10); a finished wave is judged on all of them")
    s.add_argument("--wave-timeout", type=float, default=3600.0, metavar="S",
                   help="seconds a wave may take; devices without an outcome then are offline or failed (default 3600)")
    s.add_argument("--train", metavar="JSON", help="train on each device's own data after the deploy, e.g. "
                   "'{\"data\": \"user\", \"epochs\": 30}' (the train options of `fleet train`; bundle is set)")
    s.add_argument("--min-gain", type=float, default=0.0, metavar="G",
                   help="with --train: the wave's median gain (after - before of the headline metric) must be at "
                        "least this (default 0)")
    s.add_argument("--max-regressions", default="25%", metavar="P%",
                   help="with --train: halt when more of a wave's devices than this are not promoted or fail "
                        "(default 25%%)")
    s.add_argument("--no-rollback", action="store_true", help="on a halt, leave the wave's devices as they are")
    s.add_argument("--url", help="devices download the archive from here (an object store or CDN) instead of "
                                 "from the collector")
    s.add_argument("--bundle-dir", type=Path, help="the collector's bundle folder (default: beside a SQLite --db)")
    s.add_argument("--wait", action="store_true", help="follow the rollout until it is done, halted or aborted")
    s.add_argument("--timeout", type=float, default=86400.0, help="seconds --wait waits (default 86400)")
    s.add_argument("--json", action="store_true", help="print the final status as JSON")
    s.add_argument("--db", default=default_db, metavar="PATH|URL", help=DB_HELP)
    s.set_defaults(handler=_start)
    st = rs.add_parser("status", help="waves and devices of a rollout (default: the newest)")
    st.add_argument("name", nargs="?", metavar="NAME")
    st.add_argument("--json", action="store_true", help="print JSON (scripts)")
    st.add_argument("--db", default=default_db, metavar="PATH|URL", help=DB_HELP)
    st.set_defaults(handler=_status)
    ls = rs.add_parser("list", help="every rollout, newest last")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument("--db", default=default_db, metavar="PATH|URL", help=DB_HELP)
    ls.set_defaults(handler=_list)
    for verb, what in (("pause", "send no new commands (those in flight finish)"),
                       ("resume", "go on (the wave's timeout counts from now)"),
                       ("abort", "stop for good")):
        v = rs.add_parser(verb, help=what)
        v.add_argument("name", metavar="NAME")
        if verb == "abort":
            v.add_argument("--rollback", action="store_true",
                           help="also roll back every device the rollout reached (previous bundle and model)")
        v.add_argument("--db", default=default_db, metavar="PATH|URL", help=DB_HELP)
        v.set_defaults(handler=_steer, verb=verb)
    p.set_defaults(handler=lambda _a: (p.print_help(sys.stderr), 2)[1])


def _store(db: str):  # noqa: ANN202
    from ftedge.fleet.store import FleetStore
    from ftedge.fleet.store_backend import is_postgres_url

    if not is_postgres_url(db) and not Path(db).exists():
        raise FtedgeError(f"{db} does not exist: run `ftedge fleet serve --db {db}` first (it drives rollouts)")
    return FleetStore(db)


def _devices(records: RolloutRecords, args: argparse.Namespace) -> list[tuple[str, str]]:
    known = records.known_devices(args.fleet)
    if args.devices is None:
        if not known:
            raise RolloutError("the collector knows no device" + (f" in fleet {args.fleet!r}" if args.fleet else "")
                               + ": devices appear once their agents have connected to the broker")
        return known
    by_id: dict[str, list[tuple[str, str]]] = {}
    for k in known:
        by_id.setdefault(k[1], []).append(k)
    out: list[tuple[str, str]] = []
    for item in (d.strip() for d in args.devices.split(",")):
        if not item:
            continue
        if "/" in item:
            key = tuple(item.split("/", 1))
            if key not in set(known):
                raise RolloutError(f"--devices: {item} is not a device the collector knows")
            out.append(key)  # type: ignore[arg-type]
            continue
        hits = by_id.get(item, [])
        if not hits:
            raise RolloutError(f"--devices: {item!r} is not a device the collector knows (it appears once its agent "
                               "has connected); `ftedge fleet status` lists them")
        if len(hits) > 1:
            raise UsageError(f"--devices: {item!r} is in fleets {', '.join(f for f, _ in hits)}: write FLEET/{item}")
        out.append(hits[0])
    if not out or len(set(out)) != len(out):
        raise UsageError(f"--devices {args.devices!r}: give distinct device ids separated by commas")
    return out


def _start(args: argparse.Namespace) -> int:
    train = None
    if args.train is not None:
        try:
            train = json.loads(args.train)
        except ValueError as exc:
            raise UsageError(f"--train is not JSON: {exc}") from None
    if not args.canary_devices and not args.canary.strip().endswith("%") and not args.canary.strip().isdigit():
        raise UsageError(f"--canary {args.canary!r}: give a number of devices or a share like 5%")
    options = dict(
        name=args.name, url=args.url, canary=args.canary,
        canary_devices=[d.strip() for d in (args.canary_devices or "").split(",") if d.strip()],
        waves=plan.parse_waves(args.waves), max_failures=plan.parse_share(args.max_failures, "--max-failures"),
        min_devices=args.min_devices, wave_timeout_s=args.wave_timeout, train=train, min_gain=args.min_gain,
        max_regressions=plan.parse_share(args.max_regressions, "--max-regressions"), rollback=not args.no_rollback)
    with _store(args.db) as store:
        records = RolloutRecords(store)
        spec = launch(store, args.bundle, _devices(records, args), args.bundle_dir or (
            None if args.url else default_bundle_dir(args.db)), **options)
        if not args.wait:
            return EXIT_OK
        return _follow(records, spec.name, args.timeout, args.json)


def launch(store: Any, archive: Path, devices: list[tuple[str, str]], bundle_dir: Path | None,
           say: Any = None, **options: Any) -> RolloutSpec:
    """Start a rollout of ``archive`` to ``devices`` (``(fleet, device)`` keys the store knows): read its
    manifest, publish it into ``bundle_dir`` (unless ``options["url"]``), assign the waves, record it. The
    running collector's driver takes it from there. ``options`` are :class:`RolloutSpec` fields."""
    from ftedge.bundle.archive import read_archive_manifest
    from ftedge.bundle.hashing import sha256_file

    say = say or (lambda m: print(m, file=sys.stderr))
    archive = Path(archive)
    if not archive.is_file():
        raise UsageError(f"--bundle {archive}: no such file; give the .tar.gz `ftedge pack` wrote")
    manifest = read_archive_manifest(archive)
    bundle_name = str(manifest.get("name") or "")
    if not bundle_name:
        raise RolloutError(f"{archive}: its manifest has no name, which devices install it under; re-export it")
    if "signature" not in manifest:
        say(f"warning: {archive} is not signed: devices that require signed bundles (the default) refuse it")
    train = options.get("train")
    if train is not None:
        if not isinstance(train, dict) or "data" not in train:
            raise UsageError("--train must be a JSON object with at least \"data\" (the folder under each device's "
                             "data_root), e.g. '{\"data\": \"user\", \"epochs\": 30}'")
        options["train"] = {k: v for k, v in train.items() if k != "bundle"}
    sha = sha256_file(archive)
    spec = RolloutSpec(**{**options, "name": options.get("name") or f"{bundle_name}-{sha[:8]}", "sha256": sha,
                          "bundle": bundle_name}).check()
    if spec.canary_devices:
        missing = [d for d in spec.canary_devices if not any(d in (k[1], f"{k[0]}/{k[1]}") for k in devices)]
        if missing:
            raise UsageError(f"--canary-devices {', '.join(missing)}: not among the rollout's devices")
    records = RolloutRecords(store)
    if spec.url is None:
        from ftedge.fleet.bundle_store import BundleStore

        if bundle_dir is None:
            raise UsageError("give --bundle-dir (the collector's bundle folder) or --url")
        BundleStore(bundle_dir).publish(archive)
    waves = plan.assign_waves(spec, devices)
    versions = {k: v for k, (_, v) in records.device_facts(devices).items()}
    records.create(spec, waves, versions)
    say(f"rollout {spec.name}: {spec.bundle} (sha256 {sha[:12]}…) to {len(devices)} device(s) in "
        f"{len(set(waves.values()))} wave(s), canary {sum(w == 0 for w in waves.values())}; `fleet serve` drives it")
    return spec


def _follow(records: RolloutRecords, name: str, timeout: float, as_json: bool) -> int:
    deadline = time.monotonic() + timeout
    shown = 0
    while True:
        r = records.get(name)
        for v in r.verdicts[shown:]:
            print(v.get("line", ""), flush=True)
        shown = len(r.verdicts)
        if r.finished:
            break
        if time.monotonic() > deadline:
            print(f"rollout {name} is still {r.state} after {timeout:g} s (it goes on: `fleet rollout status "
                  f"{name}`)", file=sys.stderr)
            return EXIT_TIMEOUT
        time.sleep(0.5)
    doc = describe(records, name)
    print(json.dumps(doc) if as_json else render(doc), flush=True)
    return {plan.DONE: EXIT_OK, plan.HALTED: EXIT_REJECTED}.get(r.state, EXIT_ERROR)


def describe(records: RolloutRecords, name: str) -> dict[str, Any]:
    """A rollout as ``status --json`` prints it (the dashboard and /api read the same)."""
    r = records.get(name)
    members = records.members(name)
    waves: list[dict[str, Any]] = []
    for w in sorted({m.wave for m in members}):
        states: dict[str, int] = {}
        for m in members:
            if m.wave == w:
                states[m.state] = states.get(m.state, 0) + 1
        verdict = next((v for v in reversed(r.verdicts) if v.get("wave") == w), None)
        waves.append({"wave": w, "label": "canary" if w == 0 else f"wave {w}", "devices": sum(states.values()),
                      "states": states, "verdict": verdict})
    gains = [m.gain for m in members if m.gain is not None]
    return {"name": r.name, "state": r.state, "reason": r.reason, "wave": r.wave, "waves": r.waves,
            "bundle": r.spec.bundle, "sha256": r.spec.sha256, "url": r.spec.url, "train": r.spec.train,
            "thresholds": {"max_failures": r.spec.max_failures, "min_devices": r.spec.min_devices,
                           "wave_timeout_s": r.spec.wave_timeout_s, "min_gain": r.spec.min_gain,
                           "max_regressions": r.spec.max_regressions, "rollback": r.spec.rollback},
            "created_ms": r.created_ms, "updated_ms": r.updated_ms, "wave_list": waves, "gains": gains,
            "devices": [m.public() for m in members]}


def _num(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def render(doc: dict[str, Any]) -> str:
    """``status``'s table: the rollout, each wave's verdict, then one line per device."""
    lines = [f"rollout {doc['name']}: {doc['state']}" + (f" — {doc['reason']}" if doc.get("reason") else ""),
             f"  bundle {doc['bundle']} sha256 {doc['sha256'][:12]}…"
             + (f", training {json.dumps(doc['train'])}" if doc.get("train") else "")]
    for w in doc["wave_list"]:
        states = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(w["states"].items()))
        verdict = (w["verdict"] or {}).get("state", "running" if w["wave"] == doc["wave"] and doc["state"] in
                                           (plan.RUNNING, plan.PAUSED) else "-")
        lines.append(f"  {w['label']:8s} {w['devices']:5d} device(s): {states}   [{verdict}]")
    lines.append(f"  {'fleet':10s} {'device':16s} {'wave':>4s} {'state':13s} {'before':>7s} {'after':>7s} "
                 f"{'gain':>7s}  why")
    for m in doc["devices"]:
        lines.append(f"  {m['fleet']:10s} {m['device']:16s} {m['wave']:4d} {m['state'].replace('_', ' '):13s} "
                     f"{_num(m['before']):>7s} {_num(m['after']):>7s} {_num(m['gain'], '+.3f'):>7s}  "
                     f"{m.get('reason') or ''}")
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> int:
    with _store(args.db) as store:
        records = RolloutRecords(store)
        name = args.name
        if name is None:
            every = records.all()
            if not every:
                raise RolloutError("no rollout yet: start one with `ftedge fleet rollout start`")
            name = every[-1].name
        doc = describe(records, name)
    print(json.dumps(doc) if args.json else render(doc))
    return EXIT_OK


def listing(records: RolloutRecords) -> list[dict[str, Any]]:
    """Every rollout, oldest first, as ``list --json`` prints it (``GET /api/rollouts`` serves the same)."""
    counts = records.counts()
    rows = []
    for r in records.all():
        n = sum(c for (name, _, _), c in counts.items() if name == r.name)
        rows.append({"name": r.name, "state": r.state, "bundle": r.spec.bundle, "wave": r.wave, "waves": r.waves,
                     "devices": n, "reason": r.reason, "created_ms": r.created_ms})
    return rows


def _list(args: argparse.Namespace) -> int:
    with _store(args.db) as store:
        rows = listing(RolloutRecords(store))
    if args.json:
        print(json.dumps(rows))
        return EXIT_OK
    print(f"{'name':30s} {'state':8s} {'bundle':16s} {'wave':>6s} {'devices':>8s}  why")
    for row in rows:
        print(f"{row['name']:30s} {row['state']:8s} {row['bundle']:16s} {row['wave']:>3d}/{row['waves']:<2d} "
              f"{row['devices']:8d}  {row['reason'] or ''}")
    return EXIT_OK


def _steer(args: argparse.Namespace) -> int:
    with _store(args.db) as store:
        records = RolloutRecords(store)
        if args.verb == "pause":
            r = records.set_state(args.name, plan.PAUSED, allowed=[plan.RUNNING])
        elif args.verb == "resume":
            r = records.set_state(args.name, plan.RUNNING, allowed=[plan.PAUSED], restart_wave=True)
        else:
            current = records.get(args.name)
            if current.finished and not (args.rollback and current.state in (plan.DONE, plan.HALTED)):
                raise RolloutError(f"rollout {args.name} is {current.state} already")
            r = records.set_state(args.name, plan.ABORTED,
                                  reason="aborted by the operator" + ("; rolling back" if args.rollback else ""),
                                  undo_from=0 if args.rollback else None)
    print(f"rollout {r.name} is {r.state}", file=sys.stderr)
    return EXIT_OK
