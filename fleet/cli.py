"""`ftedge fleet serve|status|send|train|policy`: the fleet collector's command line (torch-free)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from ftedge.errors import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_TIMEOUT,
    BrokerUnreachableError,
    DeviceRejectedError,
    FtedgeError,
    ReplyTimeoutError,
    UsageError,
)
from ftedge.mqtt.contract import POLICY_VERB, BrokerSettings, redact_url

from ftedge.fleet import share_group

DEFAULT_DB = Path("fleet.sqlite")
TOKEN_ENV = "FTEDGE_FLEET_TOKEN"


def _broker(url: str) -> tuple[str, int, bool]:
    """``--broker URL`` as (host, port, tls); a bad URL is a UsageError (exit 2) naming --broker.

    As always, credentials, a path or a query in the URL are accepted and ignored (use --username and
    --password-file).
    """
    try:
        b = BrokerSettings.from_url(url, allow_path=True)
    except UsageError as exc:
        raise UsageError(f"--broker: {exc}") from None
    return b.host, b.port, b.tls


def _mqtt_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--broker", required=required, metavar="URL", help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--username", help="MQTT username")
    p.add_argument("--password-file", type=Path, help="file holding the MQTT password")
    p.add_argument("--ca-file", help="CA certificate (mqtts)")
    p.add_argument("--cert-file", help="client certificate (mutual TLS)")
    p.add_argument("--key-file", help="client key (mutual TLS)")
    p.add_argument("--client-id", default=None, help="MQTT client id (default ftedge-fleet-<host>)")


def _collector(args: argparse.Namespace, share: str | None = None, **extra):  # noqa: ANN202
    import socket

    from ftedge.fleet.ingest import Collector
    from ftedge.fleet.store import FleetStore

    host, port, tls = _broker(args.broker)
    password = args.password_file.read_text().rstrip("\r\n") if args.password_file else None
    db = str(getattr(args, "db", None) or DEFAULT_DB)
    client_id = args.client_id or f"ftedge-fleet-{socket.gethostname()}"
    store = FleetStore(db, max_devices_per_fleet=getattr(args, "max_devices_per_fleet", None) or 100_000,
                       instance=client_id)
    return Collector(store, host=host, port=port, tls=tls, username=args.username, password=password,
                     ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file,
                     share=share, client_id=client_id, **extra), store


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fleet", help="fleet collector: ingest telemetry, serve API/metrics/dashboard, send commands",
                       description="Collect the fleet's MQTT telemetry into SQLite and serve it; send commands.",
                       epilog="examples:\n  ftedge fleet serve --broker mqtt://127.0.0.1:1883 --http 127.0.0.1:8080 "
                              "--db fleet.sqlite\n  ftedge fleet serve --broker mqtt://broker:1883 --db postgresql://ftedge@db/fleet "
                              "--share-group \"$(cat share-group)\" --client-id collector-1 --http 0.0.0.0:8080   (one of several)\n"
                              "  ftedge fleet status --db fleet.sqlite\n"
                              "  ftedge fleet send dev-001 ping --broker mqtt://127.0.0.1:1883",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    fs = p.add_subparsers(dest="fleet_command", metavar="ACTION")
    s = fs.add_parser("serve", help="ingest telemetry and serve /api, /metrics and the dashboard until Ctrl-C")
    _mqtt_args(s)
    s.add_argument("--http", default="127.0.0.1:8080", metavar="HOST:PORT", help="HTTP bind (default loopback:8080)")
    s.add_argument("--db", default=str(DEFAULT_DB), metavar="PATH|URL",
                   help="SQLite file (default fleet.sqlite; one collector) or postgresql://USER@HOST[:PORT]/DB "
                        "(shared by every collector of a --share-group)")
    s.add_argument("--share-group", "--share", dest="share", metavar="NAME",
                   help="subscribe through $share/NAME/ftedge/v1/+/+/#: the broker spreads the fleet over the "
                        "collectors of the group (give each its own --client-id; use one PostgreSQL --db). NAME is "
                        "a secret (a device that knows it takes a share of the telemetry): make it with "
                        "`ftedge fleet share-group`; example names and names under 16 letters/digits are refused")
    s.add_argument("--token-file", type=Path, metavar="FILE",
                   help=f"file holding the bearer token that enables POST /api/devices/{{id}}/commands/{{verb}} "
                        f"(or set {TOKEN_ENV}); without one, commands over HTTP are disabled")
    s.add_argument("--token", help=f"the token on the command line (visible to every local user in ps: "
                                   f"prefer --token-file or {TOKEN_ENV})")
    s.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a host name the dashboard is opened under (Host header); IP addresses and localhost "
                        "are always allowed, other names get 421 (DNS-rebinding protection); repeatable")
    s.add_argument("--max-devices-per-fleet", type=int, default=100_000, metavar="N",
                   help="devices per fleet at most (default 100000); messages of further devices are rejected")
    s.add_argument("--public-url", metavar="URL",
                   help="the collector's HTTP address as devices reach it, for the bundle URLs of rollouts "
                        "(default http://HOST:PORT of --http; give it when --http binds 0.0.0.0 or sits behind a proxy)")
    s.add_argument("--bundle-dir", type=Path, metavar="DIR",
                   help="the folder of published rollout bundles, served as /bundles/<sha256>.tar.gz (default: "
                        "beside a SQLite --db; collectors sharing PostgreSQL need one folder they all read)")
    s.add_argument("--url-key-file", type=Path, metavar="FILE",
                   help="the key that signs bundle download URLs (default DIR/.url-key in --bundle-dir, created "
                        "0600 on first use; collectors of a group need the same key)")
    s.add_argument("--no-rollouts", action="store_true",
                   help="do not drive rollouts from this collector (another one of the group does)")
    s.set_defaults(handler=_serve)
    st = fs.add_parser("status", help="a table of devices from the collector's database")
    st.add_argument("--db", default=str(DEFAULT_DB), metavar="PATH|URL",
                    help="SQLite file (default fleet.sqlite) or postgresql://USER@HOST[:PORT]/DB")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(handler=_status)
    se = fs.add_parser("send", help="send one command and print the reply (MQTT v5 request/response)",
                       epilog="exit codes: 0 done/accepted, 3 rejected by the device (or it answered error), "
                              "4 no reply before --timeout, 5 broker unreachable, 2 bad arguments.")
    se.add_argument("device", metavar="DEVICE")
    se.add_argument("verb", metavar="VERB", help="ping, status, resync, train, cancel, rollback, deploy, ask, policy")
    se.add_argument("--args", default="{}", metavar="JSON", help="command args as a JSON object")
    se.add_argument("--fleet", default="demo", help="fleet name (default demo)")
    se.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply (default 10)")
    se.add_argument("--db", type=Path, default=None, help=argparse.SUPPRESS)
    _mqtt_args(se)
    se.set_defaults(handler=_send)
    tr = fs.add_parser("train", help="start a train job on several devices at once and (with --wait) follow them",
                       description="Send `train` to every device in --devices; each resolves --bundle and --data "
                                   "under its own bundle_root/data_root (the data never leaves the box).",
                       epilog="example:\n  ftedge fleet train --devices box-1,box-2 --bundle kws --data user "
                              "--epochs 30 --wait --broker mqtt://127.0.0.1:1883\n"
                              "exit codes: 0 every device ok, 3 a device rejected the job, 4 a device did not answer "
                              "(or, with --wait, had no result before --job-timeout), 1 a job failed, "
                              "5 broker unreachable.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("--devices", required=True, metavar="A,B,…", help="comma-separated device ids")
    tr.add_argument("--bundle", required=True, help="bundle name under each device's bundle_root")
    tr.add_argument("--data", required=True, help="data folder/file under each device's data_root")
    tr.add_argument("--fleet", default="demo", help="fleet name (default demo)")
    for flag, typ, what in (("--epochs", int, "epochs"), ("--batch-size", int, "batch size"),
                            ("--lr", float, "learning rate"), ("--seed", int, "seed"),
                            ("--patience", int, "early-stopping patience"),
                            ("--max-seconds", float, "time budget per job")):
        tr.add_argument(flag, type=typ, help=f"{what} (default: the bundle's / the agent's)")
    tr.add_argument("--mode", choices=("auto", "cached", "full"), help="training mode (default auto)")
    tr.add_argument("--option", action="append", default=[], metavar="KEY=JSON",
                    help="any train option by its agent key, value as JSON (repeatable), e.g. --option flip=false "
                    "--option eval_data='\"val.jsonl\"'; every option, its bounds and which tasks take it: "
                    "docs/train-options.md (the device validates them)")
    tr.add_argument("--wait", action="store_true", help="follow the jobs until every device reports its result")
    tr.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each reply (default 10)")
    tr.add_argument("--job-timeout", type=float, default=3600.0, help="seconds to wait for results with --wait")
    tr.add_argument("--json", action="store_true", help="print one JSON object per device")
    _mqtt_args(tr)
    tr.set_defaults(handler=_train)
    po = fs.add_parser("policy", help="show, set, clear or check a device's personalization policy",
                       description="Without an action, show the device's policy and its state: from the device itself "
                                   "with --broker (the `policy` verb), else from the collector's --db (its latest "
                                   "meta). --set/--set-json/--clear/--check send the `policy` verb and print the "
                                   "reply: the device validates a new policy (every problem is listed), keeps it "
                                   "across restarts (STATE/policy.json) and uses it instead of its agent.toml's "
                                   "[personalize]; --clear goes back to that one; --check evaluates it now.",
                       epilog="examples:\n  ftedge fleet policy --device box-1 --db fleet.sqlite\n"
                              "  ftedge fleet policy --device box-1 --set-json '{\"bundle\": \"kws\", \"data\": "
                              "\"user\", \"window\": \"01:00-05:00\"}' --broker mqtt://127.0.0.1:1883\n"
                              "  ftedge fleet policy --device box-1 --clear --broker mqtt://127.0.0.1:1883\n"
                              "settings: docs/personalize.md. exit codes: 0 ok, 3 rejected by the device, "
                              "4 no reply before --timeout, 5 broker unreachable, 2 bad arguments.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    po.add_argument("--device", required=True, metavar="DEVICE", help="the device id")
    po.add_argument("--fleet", default=None, help="fleet name (default demo; with --db: the first fleet that has "
                                                  "the device)")
    what = po.add_mutually_exclusive_group()
    what.add_argument("--set", dest="set_file", type=Path, metavar="FILE.json",
                      help="replace the device's policy with the JSON object in FILE")
    what.add_argument("--set-json", metavar="JSON", help="replace the device's policy with this JSON object")
    what.add_argument("--clear", action="store_true", help="drop the fleet's policy: back to the agent.toml one")
    what.add_argument("--check", action="store_true", help="evaluate the policy now (it may start a run)")
    po.add_argument("--db", default=None, metavar="PATH|URL",
                    help="read the policy from this collector database (default fleet.sqlite) when no --broker")
    po.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply (default 10)")
    po.add_argument("--json", action="store_true", help="print JSON (the reply, or the stored policy and state)")
    _mqtt_args(po, required=False)
    po.set_defaults(handler=_policy)
    sg = fs.add_parser("share-group", help="print a fresh random --share-group name (a secret of the fleet)",
                       description="Print a random MQTT share-group name for `serve --share-group`. Give every "
                                   "collector of the fleet the same one and keep it from devices: a broker user that "
                                   "knows it can join the group and take a share of the fleet's telemetry.",
                       epilog="example:\n  ftedge fleet share-group > /etc/ftedge/share-group",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    sg.set_defaults(handler=_share_group)
    ac = fs.add_parser("acl", help="print the Mosquitto ACL that pins every device to its fleet and subtree",
                       description="One broker user per device (username = device id): it may write only its "
                                   "own telemetry and read only its own commands, in its own fleet; collector "
                                   "users read everything and write commands. Regenerate when devices are added.",
                       epilog="examples:\n  ftedge fleet acl --fleet demo --devices box-1,box-2 > /etc/mosquitto/ftedge.acl"
                              "\n  ftedge fleet acl --from devices.txt   # lines of 'FLEET DEVICE'",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ac.add_argument("--fleet", help="the fleet of --devices")
    ac.add_argument("--devices", metavar="A,B,…", help="comma-separated device ids (MQTT usernames)")
    ac.add_argument("--from", dest="from_file", type=Path, metavar="FILE", help="a file of 'FLEET DEVICE' lines")
    ac.add_argument("--collector", action="append", metavar="USER",
                    help="MQTT username of a collector (default collector); repeatable")
    ac.add_argument("-o", "--output", type=Path, help="write the file here instead of stdout")
    ac.set_defaults(handler=_acl)
    from ftedge.fleet.rollout.cli import register as register_rollout

    register_rollout(fs, str(DEFAULT_DB))
    p.set_defaults(handler=lambda _a: (p.print_help(sys.stderr), 2)[1])


def _serve(args: argparse.Namespace) -> int:
    from ftedge.fleet.http import FleetHTTPServer

    host, _, port = args.http.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--http {args.http!r}: use HOST:PORT, e.g. 127.0.0.1:8080")
    token = _http_token(args)
    if args.max_devices_per_fleet < 1:
        raise UsageError("--max-devices-per-fleet must be at least 1")
    if args.share is not None:
        share_group.check(args.share)
    from ftedge.fleet.rollout.cli import default_bundle_dir
    from ftedge.fleet.rollout.host import RolloutHost

    bundle_dir = args.bundle_dir or (None if args.db.startswith(("postgresql:", "postgres:"))
                                     else default_bundle_dir(args.db))
    collector, store = _collector(args, share=args.share)
    rollouts = RolloutHost(store, collector, bundle_dir, args.url_key_file)
    collector.start()
    server = FleetHTTPServer(store, host, int(port), token=token, allowed_hosts=args.allow_host, collector=collector,
                             send=lambda f, d, v, a: collector.send(f, d, v, a, timeout=10.0),
                             bundles=rollouts.bundles, url_key=rollouts.key).start()
    public = (args.public_url or server.url).rstrip("/")
    if not args.public_url and host in ("0.0.0.0", "::", "[::]"):
        import socket

        public = f"http://{socket.getfqdn()}:{port}"   # a wildcard address is no address for a device to fetch from
        print(f"warning: bundle URLs name {public}: give --public-url if devices reach this collector otherwise",
              file=sys.stderr)
    if not args.no_rollouts:
        rollouts.start(public)
    print(f"collecting from {redact_url(args.broker)} into {store.backend}; dashboard {server.url}/"
          + (f"; bundles from {bundle_dir} at {public}/bundles/" if bundle_dir is not None else ""), file=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    rollouts.stop()
    server.stop()
    collector.stop()
    return 0


def _share_group(_args: argparse.Namespace) -> int:
    print(share_group.generate())
    return EXIT_OK


def _http_token(args: argparse.Namespace) -> str | None:
    """The HTTP bearer token from --token-file, FTEDGE_FLEET_TOKEN or --token (one of them at most)."""
    sources = [name for name, given in (("--token-file", args.token_file), (TOKEN_ENV, os.environ.get(TOKEN_ENV)),
                                        ("--token", args.token)) if given]
    if len(sources) > 1:
        raise UsageError(f"the HTTP token is given by {' and '.join(sources)}: use exactly one of them")
    if args.token_file:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise UsageError(f"--token-file {args.token_file}: {exc}") from exc
        if not token:
            raise UsageError(f"--token-file {args.token_file} is empty: write the token into it "
                             "(e.g. `openssl rand -hex 32 > FILE`)")
        return token
    token = os.environ.get(TOKEN_ENV) or args.token
    return token.strip() if token else None


def _acl(args: argparse.Namespace) -> int:
    from ftedge.fleet.acl import read_device_list, render_acl

    if args.from_file and (args.devices or args.fleet):
        raise UsageError("give either --from FILE or --fleet with --devices, not both")
    if args.from_file:
        pairs = read_device_list(args.from_file)
    elif args.fleet and args.devices:
        pairs = [(args.fleet, d.strip()) for d in args.devices.split(",") if d.strip()]
    else:
        raise UsageError("name the devices: --fleet FLEET --devices A,B,… or --from FILE ('FLEET DEVICE' lines)")
    text = render_acl(pairs, args.collector or ["collector"])
    if args.output:
        args.output.write_text(text)
        print(f"wrote {args.output} ({len(pairs)} devices); reload Mosquitto (SIGHUP) to apply it", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _fmt(value: object, spec: str) -> str:
    """``value`` formatted with ``spec`` if it is a number, else ``-`` (rows stored before validation)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    try:
        return format(value, spec)
    except (ValueError, OverflowError):
        return "-"


def _status(args: argparse.Namespace) -> int:
    from ftedge.fleet import headline
    from ftedge.fleet.store import FleetStore
    from ftedge.fleet.store_backend import is_postgres_url

    if not is_postgres_url(args.db) and not Path(args.db).exists():
        raise FtedgeError(f"{args.db} does not exist: run `ftedge fleet serve --db {args.db}` first")
    with FleetStore(args.db) as store:
        devices = store.devices()
    if args.json:
        print(json.dumps(devices))
        return 0
    print(f"{'fleet':10s} {'device':14s} {'state':8s} {'job':28s} {'status':10s} {'epoch':>5s} {'loss':>8s} "
          f"{'validation':>20s} {'version':8s} {'msgs':>8s} {'gaps':>5s} {'policy':16s}")   # headline metric, e.g.
    # "accuracy 0.917"; msgs/gaps: the device's unique messages and counted seq holes (which box loses telemetry);
    # policy: its personalization policy's state (a line below says why and when it may run next)
    obj = lambda v: v if isinstance(v, dict) else {}  # noqa: E731
    for d in devices:
        try:
            job, m = obj(d.get("job")), obj(d.get("metrics"))
            h = headline.of_progress(m)
            val = "-" if h.value is None else f"{h.label[:12]} {_fmt(h.value, '.3f')}"
            print(f"{d['fleet']:10s} {d['device']:14s} {str(d.get('state')):8s} {str(job.get('id') or '-'):28s} "
                  f"{str(job.get('status') or '-'):10s} {str(m.get('epoch', '-')):>5s} "
                  f"{_fmt(m.get('loss'), '.4f'):>8s} {val:>20s} "
                  f"{str(d.get('active_version') or '-'):8s} {_fmt(d.get('messages'), 'd'):>8s} "
                  f"{_fmt(d.get('seq_gaps'), 'd'):>5s} {str(obj(d.get('policy')).get('state') or '-'):16s}")
            if d.get("policy"):
                print(f"  {d['device']} policy: {policy_line(d['policy'])}")
        except Exception as exc:  # noqa: BLE001 - one bad row must not hide the others
            print(f"{str(d.get('fleet')):10s} {str(d.get('device')):14s} (cannot show this device: {exc})")
    return 0


def policy_line(p: dict) -> str:
    """A policy state in one line: "waiting_window: outside 01:00-05:00; next eligible 2026-12-08 01:00:00 UTC"."""
    from ftedge.fleet.device_page import when

    line = f"{p.get('state') or 'unknown'}: {p.get('reason') or '-'}"
    if p.get("next_eligible_ms") is not None:
        line += f"; next eligible {when(p.get('next_eligible_ms'))}"
    if p.get("runs_24h") is not None:
        line += f"; {p.get('runs_24h')} run(s) in 24 h"
    return line


def _policy_args(args: argparse.Namespace) -> dict | None:
    """The `policy` verb's args of the action given, or None (only show)."""
    from ftedge.fleet.validate import MAX_PAYLOAD

    if args.clear:
        return {"clear": True}
    if args.check:
        return {"check": True}
    if args.set_file is None and args.set_json is None:
        return None
    where = f"--set {args.set_file}" if args.set_file is not None else "--set-json"
    try:
        text = args.set_file.read_text(encoding="utf-8") if args.set_file is not None else args.set_json
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{where}: cannot read it ({exc}); give a JSON file of policy settings") from None
    if len(text.encode()) > MAX_PAYLOAD // 2:
        raise UsageError(f"{where}: {len(text.encode())} bytes; a policy fits in {MAX_PAYLOAD // 2} bytes")
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{where} is not JSON ({exc}); write an object such as "
                         '{"bundle": "kws", "data": "user"}') from None
    if not isinstance(doc, dict):
        raise UsageError(f"{where} must be a JSON object of policy settings (bundle, data, window, …), "
                         f"not {type(doc).__name__}")
    return {"set": doc}


def _print_policy(device: str, policy: object, state: object) -> None:
    """The policy and its state, readable: one state line, then the settings."""
    from ftedge.fleet.personalization import policy_of

    p = policy_of({"personalize": {"policy": policy, "state": state}}) or {}
    if not isinstance(state, dict) and not isinstance(policy, dict):
        print(f"{device}: no personalization policy")
        return
    print(f"{device}: {policy_line(p)}")
    if isinstance(policy, dict):
        print("  " + " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in policy.items()))
    else:
        print("  no policy")


def _policy(args: argparse.Namespace) -> int:
    verb_args = _policy_args(args)
    if args.broker is None:
        if verb_args is not None:
            raise UsageError("--set, --set-json, --clear and --check send the `policy` verb: give --broker URL")
        return _policy_from_db(args)
    if args.db is not None:
        raise UsageError("give either --broker (ask the device) or --db (its latest meta), not both")
    args.fleet = args.fleet or "demo"
    reply = _ask_one(args, POLICY_VERB, verb_args or {})
    if reply.get("status") in ("rejected", "error"):
        if args.json:
            print(json.dumps(reply))
        raise DeviceRejectedError(f"{args.fleet}/{args.device} {reply.get('status')} the policy command "
                                  f"({reply.get('code')}): {reply.get('detail')}")
    if args.json:
        print(json.dumps(reply))
    else:
        _print_policy(args.device, reply.get("policy"), reply.get("state"))
    return EXIT_OK


def _policy_from_db(args: argparse.Namespace) -> int:
    from ftedge.fleet.store import FleetStore
    from ftedge.fleet.store_backend import is_postgres_url

    db = str(args.db or DEFAULT_DB)
    if not is_postgres_url(db) and not Path(db).exists():
        raise FtedgeError(f"{db} does not exist: run `ftedge fleet serve --db {db}` first, or ask the device "
                          "with --broker URL")
    with FleetStore(db) as store:
        fleets = [args.fleet] if args.fleet else store.device_fleets(args.device)
        d = store.device(fleets[0], args.device) if fleets else None
    if d is None:
        raise FtedgeError(f"no device {args.device!r}{' in fleet ' + repr(args.fleet) if args.fleet else ''} in "
                          f"{db}: `ftedge fleet status --db {db}` lists the devices")
    meta = d.get("meta") if isinstance(d.get("meta"), dict) else {}
    pers = meta.get("personalize") if isinstance(meta.get("personalize"), dict) else {}
    if args.json:
        print(json.dumps({"fleet": d["fleet"], "device": d["device"], "policy": pers.get("policy"),
                          "state": pers.get("state")}))
    else:
        _print_policy(args.device, pers.get("policy"), pers.get("state"))
    return EXIT_OK


def _oneshot(args: argparse.Namespace, listen: bool = False):  # noqa: ANN202
    """A short-lived collector with an in-memory store (replies and, with ``listen``, the devices' progress):
    its own client id, no lingering session, nothing written to disk."""
    import uuid

    logging.getLogger("ftedge").setLevel(logging.WARNING)
    args.client_id = args.client_id or f"ftedge-send-{uuid.uuid4().hex[:8]}"  # never steal `serve`'s session
    args.db = ":memory:"
    collector, _ = _collector(args, listen=listen, session_expiry=0, detect_gaps=False)
    return collector.start()


def _train(args: argparse.Namespace) -> int:
    from ftedge.fleet.fanout import fan_out, follow

    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if not devices or len(set(devices)) != len(devices):
        raise UsageError(f"--devices {args.devices!r}: give distinct device ids separated by commas")
    job_args: dict = {"bundle": args.bundle, "data": args.data}
    for key in ("epochs", "batch_size", "lr", "seed", "patience", "max_seconds", "mode"):
        if getattr(args, key) is not None:
            job_args[key] = getattr(args, key)
    for item in args.option:
        key, sep, text = item.partition("=")
        try:
            if not sep or not key:
                raise ValueError("no KEY=")
            job_args[key] = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"--option {item!r}: give KEY=VALUE with VALUE as JSON, e.g. flip=false ({exc})") from None

    def show(run) -> None:  # noqa: ANN001
        if args.json:
            return
        if run.result is not None:
            print(result_line(run.device, run.job, run.result), flush=True)
        elif run.last:
            print(f"{run.device}: epoch {run.last.get('epoch')} loss {run.last.get('loss')}", flush=True)

    collector = _oneshot(args, listen=args.wait)
    try:
        runs = fan_out(collector, args.fleet, devices, "train", job_args, timeout=args.timeout)
        for run in runs:
            if not args.json:
                print(f"{run.device}: " + (run.error or f"accepted, job {run.job}"), flush=True)
        if args.wait:
            follow(collector, [r for r in runs if r.error is None], args.job_timeout, show)
    except TimeoutError as exc:
        raise _unreachable(collector, exc) from exc
    finally:
        collector.stop()
        collector.store.close()
    if args.json:
        for run in runs:
            print(json.dumps(run.row()))
    failed = [r for r in runs if not r.ok]
    if failed and not args.json:
        print(f"{len(failed)} of {len(runs)} devices failed: {', '.join(r.device for r in failed)}", file=sys.stderr)
    return _fan_out_code({r.failure for r in failed})


def result_line(device: str, job: str | None, r: dict) -> str:
    """``fleet train --wait``'s line for a device's result: its headline metric (label, before → after)."""
    from ftedge.fleet import headline

    h = headline.of_result(r)
    line = (f"{device}: job {job} {r.get('status')} — val {h.label} {_fmt(h.untuned, '.3f')} → "
            f"{_fmt(h.tuned, '.3f')}, promoted {r.get('promoted')}, {_fmt(r.get('duration_s'), '.1f')} s")
    if r.get("error"):
        line += f"; error: {r['error']}"
    return line


def _fan_out_code(failures: set[str | None]) -> int:
    """The exit code of a fan-out: 3 if any device rejected it, else 4 if any timed out, else 1 if a job failed."""
    if not failures:
        return EXIT_OK
    if "rejected" in failures:
        return EXIT_REJECTED
    return EXIT_TIMEOUT if "timeout" in failures else EXIT_ERROR


def _unreachable(collector, exc: Exception) -> FtedgeError:  # noqa: ANN001
    if collector.refused:
        return BrokerUnreachableError(
            f"{exc}; check --username/--password-file, the client certificate and the broker's ACL")
    return BrokerUnreachableError(f"{exc}; check --broker and that the broker is running")


def _ask_one(args: argparse.Namespace, verb: str, cmd_args: dict) -> dict:
    """Send one command to ``args.device`` through a one-shot collector and return its reply (the broker
    unreachable and no reply in time raise their own errors: the CLI's exit codes)."""
    collector = _oneshot(args)
    try:
        return collector.send(args.fleet, args.device, verb, cmd_args, timeout=args.timeout)
    except TimeoutError as exc:
        if not collector.subscribed.is_set():
            raise _unreachable(collector, exc) from exc
        raise ReplyTimeoutError(f"{exc}") from exc
    finally:
        collector.stop()
        collector.store.close()


def _send(args: argparse.Namespace) -> int:
    try:
        cmd_args = json.loads(args.args)
    except ValueError as exc:
        raise UsageError(f"--args is not JSON: {exc}") from exc
    if not isinstance(cmd_args, dict):
        raise UsageError("--args must be a JSON object")
    reply = _ask_one(args, args.verb, cmd_args)
    print(json.dumps(reply))
    return EXIT_REJECTED if reply.get("status") in ("rejected", "error") else EXIT_OK
