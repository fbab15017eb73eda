"""`ftedge demo`: a fleet of three voice-command boxes adapts to three users' accents, on this machine.

1. Synthesize each user's recordings: SYNTHETIC speech from espeak-ng, one held-out accent per box (voices
   the shipped base model never heard) — ``--shots`` clips per command word to train on, 20 more to test.
2. `ftedge export` the shipped keyword-spotting model (``examples/kws``: raw waveform in, log-mel in the
   graph, pretrained on six other accents), checked against PyTorch; install the bundle on every box.
3. Start a local Mosquitto, the fleet collector with its dashboard, and three device agents (each with its
   own state dir, data and bundle folders; torch-free ``.venv-device`` interpreter when present).
4. `ftedge fleet train` fans one job out; each box trains on its own clips (they never leave it) and
   reports progress and its result over MQTT; the collector turns that into the fleet table. With ``--policy`` no
   one sends a job: each box runs its own ``[personalize]`` policy, and starts training by itself when the user's
   recordings arrive (docs/personalize.md).
5. Check each box's new model on its held-out clips against the untuned model.
6. Release a new signed bundle (a rebuild of the shipped model) and roll it out from the collector: a canary box
   deploys and trains it first; the others follow only if the canary's model beats its untuned baseline.
The dashboard stays up until Ctrl-C when run from a terminal (``--serve``/``--no-serve`` to choose).
Needs the examples folder of the repository (examples/demo, examples/kws), ``apt-get install espeak-ng mosquitto``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ftedge.errors import FtedgeError

HERE = Path(__file__).resolve().parent          # examples/demo
REPO = HERE.parents[1]                           # the checkout (examples/kws is read from it)
FLEET = "demo"
DEFAULT_VOICES = ("es", "it", "fr")     # zero-shot 0.85, 0.86, 0.91 for the shipped model (BENCHMARKS.md)
JOB = {"bundle": "kws", "data": "train", "epochs": 30, "lr": 0.01, "batch_size": 16}


def _module(path: Path, name: str):  # noqa: ANN202
    if not path.is_file():
        raise FtedgeError(f"{path} is missing: `ftedge demo` needs the examples folder of the ftedge repository "
                          "(a checkout, or FTEDGE_EXAMPLES=/path/to/examples)")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _split(raw: Path, dst: Path, shots: int, words: list[str]) -> tuple[Path, Path]:
    for word in words:
        for f in sorted((raw / word).glob("*.wav")):
            part = "train" if int(f.stem.rsplit("_", 1)[1]) < shots else "test"
            (dst / part / word).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst / part / word / f.name)
    return dst / "train", dst / "test"


class _Box:
    """One simulated edge box: an agent process with its own config, state, data and bundles."""

    def __init__(self, root: Path, name: str, voice: str) -> None:
        self.root, self.name, self.voice = root, name, voice
        self.data, self.bundles, self.state = root / "data", root / "bundles", root / "state"
        self.proc: subprocess.Popen | None = None

    def start(self, broker_url: str, trusted_key: Path, policy: str = "") -> None:
        from ftedge.fleet.local_broker import die_with_parent

        config = self.root / "agent.toml"
        config.write_text(f'device_id = "{self.name}"\nfleet = "{FLEET}"\nstate_dir = "{self.state}"\n'
                          f'[mqtt]\nurl = "{broker_url}"\nwill_delay = 2\n'
                          f'[paths]\ndata_root = "{self.data}"\nbundle_root = "{self.bundles}"\n'
                          f'[deploy]\ntrusted_keys = ["{trusted_key}"]\n'  # boxes train only signed bundles
                          + policy)
        device_py = REPO / ".venv-device" / "bin" / "python"
        python = str(device_py) if device_py.exists() else sys.executable
        with open(self.root / "agent.log", "ab") as log:
            self.proc = subprocess.Popen([python, "-m", "ftedge", "agent", "run", "--config", str(config)],
                                         stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                         start_new_session=True, preexec_fn=die_with_parent)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()   # SIGTERM: the agent publishes offline/shutdown and exits
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise FtedgeError(f"{what} within {timeout:g} s")
        time.sleep(0.1)


def _bind(http: str) -> tuple[str, int]:
    from ftedge.fleet.local_broker import free_port

    host, _, port = http.rpartition(":")
    if not host or not port.isdigit():
        raise FtedgeError(f"--http {http!r}: use HOST:PORT, e.g. 127.0.0.1:8080")
    import socket

    try:   # a busy default port is not worth failing the demo for: take a free one instead
        with socket.socket() as s:
            s.bind((host, int(port)))
    except OSError:
        return host, free_port()
    return host, int(port)


def _table(rows: list[dict[str, Any]]) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    lines = [f"{'box':6s} {'accent':8s} {'state':8s} {'job':10s} {'version':8s} {'val acc (box)':>16s} "
             f"{'held-out acc':>16s}"]
    for r in rows:
        lines.append(f"{r['device']:6s} {r['voice']:8s} {str(r['state']):8s} {str(r['job_status']):10s} "
                     f"{str(r['version'] or '-'):8s} "
                     f"{pct(r['val_accuracy_before']) + ' → ' + pct(r['val_accuracy_after']):>16s} "
                     f"{pct(r['accuracy_before']) + ' → ' + pct(r['accuracy_after']):>16s}")
    return "\n".join(lines)


def _policy_table(shots: int, words: int, seed: int) -> str:
    """The boxes' ``[personalize]`` in --policy mode: train on ``data/train`` once the user's recordings are there
    (max_load is high: the demo's three boxes, collector and broker share this machine)."""
    options = ", ".join(f"{k} = {json.dumps(v)}" for k, v in {**JOB, "seed": seed}.items()
                        if k not in ("bundle", "data"))
    return (f'[personalize]\nbundle = "{JOB["bundle"]}"\ndata = "{JOB["data"]}"\nmin_new_samples = {shots * words}\n'
            f"min_interval_h = 0\nmax_load = 64\ncheck_interval_s = 2\noptions = {{ {options} }}\n")


def _policy_runs(store: Any, boxes: list[_Box], timeout: float) -> list[Any]:
    """The job each box's policy started (seen by the collector), as runs ``follow`` can watch."""
    from ftedge.fleet.fanout import DeviceRun

    runs: dict[str, Any] = {}

    def started() -> bool:
        for box in boxes:
            jobs = store.jobs(FLEET, box.name)
            if jobs and box.name not in runs:
                job = jobs[0]["job"]   # no command was sent: the box's own start stands for the accepted reply
                runs[box.name] = DeviceRun(FLEET, box.name, "policy", job=job,
                                           reply={"status": "accepted", "job": job, "trigger": "policy"})
        return len(runs) == len(boxes)

    _wait(started, timeout, "the boxes' policies did not start their runs")
    return [runs[b.name] for b in boxes]


def run_demo(workdir: Path, voices: tuple[str, ...] = DEFAULT_VOICES, shots: int = 5, seed: int = 0,
             say: Callable[[str], None] = print, http: str = "127.0.0.1:8080", serve: bool = False,
             ready: Callable[[dict[str, Any]], None] | None = None, policy: bool = False) -> dict[str, Any]:
    """Run the fleet story; returns per-box and fleet-wide figures. ``serve`` keeps everything running
    (dashboard up) until Ctrl-C / SIGTERM; ``ready`` is called with the result before that wait. ``policy``: the
    boxes start their runs themselves (``[personalize]``) when the recordings arrive, instead of `fleet train`."""
    from ftedge.export import ExportOptions, export_bundle
    from ftedge.fleet.fanout import fan_out, follow
    from ftedge.fleet.http import FleetHTTPServer
    from ftedge.fleet.ingest import Collector
    from ftedge.fleet.local_broker import LocalBroker, find_mosquitto
    from ftedge.fleet.rollout.host import RolloutHost
    from ftedge.fleet.store import FleetStore
    from ftedge.runtime.tasks.classify.evaluate import evaluate
    from ftedge.bundle.signing import generate_keypair
    from ftedge.bundle.manifest import parse_input_spec

    t0 = time.perf_counter()
    workdir = Path(workdir).resolve()   # agents run with their box folder as cwd: no relative paths
    maker = _module(HERE / "make_kws_dataset.py", "make_kws_dataset")
    kws = _module(REPO / "examples" / "kws" / "model.py", "kws_model")
    if shutil.which("espeak-ng") is None:
        raise FtedgeError("espeak-ng is not installed: sudo apt-get install espeak-ng (scripts/dev.sh demo does)")
    find_mosquitto()
    if len(set(voices)) != len(voices) or not voices:
        raise FtedgeError(f"--voices {','.join(voices)!r}: give distinct espeak-ng voices, one per box")
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    boxes = [_Box(workdir / "boxes" / f"box-{i + 1}", f"box-{i + 1}", v) for i, v in enumerate(voices)]

    say(f"1/7 synthesizing each user's recordings: SYNTHETIC speech, voices {', '.join(voices)} "
        "(unseen by the base model)")
    for box in boxes:
        quiet = io.StringIO()   # the dataset tool's own report; its dataset.json keeps the details
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            maker.make_dataset(workdir / "raw" / box.voice, [box.voice], kws.WORDS, shots + 20, seed)
        _split(workdir / "raw" / box.voice, box.data, shots, kws.WORDS)
        say(f"    {box.name}: {(shots + 20) * len(kws.WORDS)} clips of voice '{box.voice}' in {box.data}")

    say("2/7 ftedge export of the shipped keyword model (waveform in, log-mel in the graph), parity-checked")
    bundle = workdir / "kws-bundle"
    # The release key signs the bundle; each box trusts only its public half (SECURITY.md).
    keys = workdir / "keys"
    keys.mkdir(exist_ok=True)
    private_key, public_key = keys / "release.key.pem", keys / "release.pub.pem"
    if not (private_key.is_file() and public_key.is_file()):  # a re-run keeps the demo's key
        private_key.unlink(missing_ok=True)
        public_key.unlink(missing_ok=True)
        generate_keypair(keys / "release")
    manifest = export_bundle(ExportOptions(
        model=f"{REPO / 'examples' / 'kws' / 'model.py'}:build_model", output=bundle,
        inputs=[parse_input_spec("waveform:float32:1,16000")], head="classifier", labels=kws.WORDS,
        keep_head=True, name="kws", force=True), sign_key=private_key)
    for box in boxes:
        shutil.copytree(bundle, box.bundles / JOB["bundle"])

    broker = LocalBroker(workdir / "broker")
    store = FleetStore(workdir / "fleet.sqlite")
    collector = server = rollouts = None
    act2 = _module(HERE / "second_act.py", "demo_second_act")
    try:
        broker.start()
        collector = Collector(store, host="127.0.0.1", port=broker.port, client_id="ftedge-demo-collector").start()
        host, port = _bind(http)
        rollouts = RolloutHost(store, collector, workdir / "fleet-bundles", tick_s=0.25)
        server = FleetHTTPServer(store, host, port,
                                 send=lambda f, d, v, a: collector.send(f, d, v, a, timeout=10.0),
                                 bundles=rollouts.bundles, url_key=rollouts.key).start()
        rollouts.start(server.url)
        say(f"3/7 Mosquitto on {broker.url}, collector + dashboard on {server.url}/, "
            f"starting {len(boxes)} boxes")
        recordings = {}
        for box in boxes:
            if policy:  # the recordings arrive after the box is up: its policy sees them as new data
                recordings[box.name] = box.root / "recordings"
                shutil.move(box.data / JOB["data"], recordings[box.name])
            box.start(broker.url, public_key, _policy_table(shots, len(kws.WORDS), seed) if policy else "")
        names = {b.name for b in boxes}

        def online() -> bool:
            for box in boxes:
                if box.proc is not None and box.proc.poll() is not None:
                    log = (box.root / "agent.log").read_text(errors="replace").strip().splitlines()[-3:]
                    raise FtedgeError(f"{box.name}'s agent exited ({box.proc.returncode}): " + " | ".join(log))
            return {d["device"] for d in store.devices(FLEET) if d["state"] == "online"} >= names

        _wait(online, 90, f"the boxes did not come online (see {workdir / 'boxes'}/*/agent.log)")

        if policy:
            say(f"4/7 each user records {shots} clips per word; each box's own policy ([personalize]) starts "
                "training by itself when they arrive (no fleet command), on clips that never leave it")
            for box in boxes:
                shutil.copytree(recordings[box.name], box.data / JOB["data"])
            runs = _policy_runs(store, boxes, 120)
        else:
            say(f"4/7 ftedge fleet train --devices {','.join(sorted(names))} --bundle kws --data train: "
                f"{shots} clips per word on each box, which never leave it")
            runs = fan_out(collector, FLEET, [b.name for b in boxes], "train", {**JOB, "seed": seed}, timeout=30)
        bad = [r for r in runs if r.error]
        if bad:
            raise FtedgeError("boxes refused the job: " + "; ".join(f"{r.device}: {r.error}" for r in bad))

        def progress(run) -> None:  # noqa: ANN001
            if run.result is not None:
                r = run.result
                took = r.get("duration_s")
                say(f"    {run.device}: {r['status']}, promoted {r['promoted']}"
                    + (f", {took:.1f} s" if isinstance(took, (int, float)) else f" ({r.get('error') or 'no duration'})"))
            elif run.epochs % 10 == 0:
                say(f"    {run.device}: epoch {run.epochs}, loss {run.last.get('loss', float('nan')):.4f}")

        follow(collector, runs, 600, progress)
        failed = [r for r in runs if not r.ok]
        if failed:
            raise FtedgeError("training failed on " + ", ".join(f"{r.device} ({r.error or r.result})" for r in failed)
                              + f"; see {workdir / 'boxes'}/*/agent.log")
        collector.flush()

        say("5/7 held-out check: each box's active model vs the untuned bundle on its user's other clips")
        from ftedge.device_agent.versions import ModelStore

        rows = []
        devices = {d["device"]: d for d in store.devices(FLEET)}
        for box, run in zip(boxes, runs):
            before = evaluate(bundle, box.data / "test")
            active = ModelStore(box.state).active()
            after = evaluate(ModelStore(box.state).path(active["id"]).parent, box.data / "test") if active else before
            res, dev = run.result or {}, devices.get(box.name, {})
            rows.append({
                "device": box.name, "voice": box.voice, "state": dev.get("state"), "job": run.job,
                "job_status": res.get("status"), "promoted": bool(res.get("promoted")),
                "trigger": res.get("trigger"),
                "version": (active or {}).get("id"), "train_files": shots * len(kws.WORDS),
                "test_clips": before["samples"], "epochs_reported": run.epochs,
                "val_accuracy_before": (res.get("baseline") or {}).get("accuracy"),
                "val_accuracy_after": (res.get("final") or {}).get("accuracy"),
                "accuracy_before": round(before["accuracy"], 4), "accuracy_after": round(after["accuracy"], 4),
            })
        say("6/7 release kws 2: a rebuild of the shipped model, signed by the release key, packed for the fleet")
        bundle2 = workdir / "kws-2"
        export_bundle(ExportOptions(
            model=f"{REPO / 'examples' / 'kws' / 'model.py'}:build_model", output=bundle2,
            inputs=[parse_input_spec("waveform:float32:1,16000")], head="classifier", labels=kws.WORDS,
            keep_head=True, name="kws", force=True), sign_key=private_key)
        say(f"7/7 ftedge fleet rollout start --bundle kws-2.tar.gz --canary-devices {boxes[0].name} --train …: the "
            "collector serves it; the canary deploys and trains first, the others follow if its model improved")
        rollout = act2.roll_out(rollouts, bundle2, workdir / "kws-2.tar.gz", [(FLEET, b.name) for b in boxes],
                                boxes[0].name, {**{k: v for k, v in JOB.items() if k != "bundle"}, "seed": seed},
                                say)
        summary = store.fleet_summary(FLEET)
        result = {
            "data": "synthetic speech (espeak-ng)", "shots": shots, "boxes": rows, "fleet": summary,
            "trigger": "policy" if policy else "command",
            "dashboard": server.url + "/", "broker": broker.url,
            "parity_max_abs_diff": max(manifest["parity"]["max_abs_diff"].values()),
            "rollout": {"name": rollout["name"], "state": rollout["state"], "reason": rollout["reason"],
                        "verdicts": [(w["verdict"] or {}).get("line") for w in rollout["wave_list"]],
                        "devices": {m["device"]: {k: m[k] for k in ("wave", "state", "before", "after", "gain")}
                                    for m in rollout["devices"]}},
            "seconds": round(time.perf_counter() - t0, 1),
        }
        (workdir / "demo-result.json").write_text(json.dumps(result, indent=2))
        say("")
        say(_table(rows))
        say(f"fleet: {summary['online']}/{summary['devices']} online, {summary['promoted_devices']} promoted; "
            f"held-out accuracy (mean over boxes) "
            f"{sum(r['accuracy_before'] for r in rows) / len(rows):.1%} → "
            f"{sum(r['accuracy_after'] for r in rows) / len(rows):.1%}; {result['seconds']} s in all")
        say(f"rollout {rollout['name']}: {rollout['state']}" + (f" ({rollout['reason']})" if rollout["reason"] else ""))
        say(f"dashboard: {server.url}/   (also `ftedge fleet status --db {workdir / 'fleet.sqlite'}`, "
            f"`ftedge fleet rollout status --db {workdir / 'fleet.sqlite'}`)")
        if ready is not None:
            ready(result)
        if serve:
            say("serving the dashboard; press Ctrl-C to stop the boxes, collector and broker")
            _serve_until_signal()
        return result
    finally:
        if rollouts is not None:
            rollouts.stop()
        for box in boxes:
            box.stop()
        if server is not None:
            server.stop()
        if collector is not None:
            collector.stop()
        store.close()
        broker.stop()


def _serve_until_signal() -> None:
    """Block until Ctrl-C or SIGTERM. Handles SIGINT itself too: a demo started in the background by a
    non-interactive shell inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    import signal

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="a fleet of three boxes personalizes the shipped keyword model to three accents, end to end",
        description=__doc__,
        epilog="example:\n  ftedge demo --workdir /tmp/ftedge-demo            # then open the dashboard URL\n"
               "  ftedge demo --no-serve --json --quiet             # for scripts: figures, then exit",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--voices", default=",".join(DEFAULT_VOICES),
                   help=f"espeak-ng voice per box, comma-separated (default {','.join(DEFAULT_VOICES)}; "
                        "none is a training accent)")
    p.add_argument("--shots", type=int, default=5, help="recordings per command word to train on (default 5)")
    p.add_argument("--workdir", type=Path, default=Path("ftedge-demo"), help="where to write data, boxes and db")
    p.add_argument("--seed", type=int, default=0, help="seed for data and training (default 0)")
    p.add_argument("--http", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="dashboard address (default 127.0.0.1:8080; a free port if that one is busy)")
    serve = p.add_mutually_exclusive_group()
    serve.add_argument("--serve", dest="serve", action="store_true", default=None,
                       help="keep the dashboard up until Ctrl-C (default when run from a terminal)")
    serve.add_argument("--no-serve", dest="serve", action="store_false", help="stop everything after the table")
    p.add_argument("--policy", action="store_true",
                   help="the boxes train by themselves ([personalize] policy) when the recordings arrive, instead of "
                        "a `fleet train` command")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise FtedgeError("the demo exports a PyTorch model first: pip install 'ftedge[export]'") from exc
    say = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr if args.json else sys.stdout,
                                                                flush=True))
    serve = args.serve if args.serve is not None else (sys.stdin.isatty() and sys.stdout.isatty())
    voices = tuple(v.strip() for v in args.voices.split(",") if v.strip())

    def ready(result: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(result), flush=True)

    try:
        result = run_demo(args.workdir, voices, args.shots, args.seed, say, args.http, serve, ready, args.policy)
    except KeyboardInterrupt:
        print("interrupted: stopped the boxes, the collector and the broker", file=sys.stderr)
        return 130
    if serve:
        print("stopped the boxes, the collector and the broker", file=sys.stderr)
    ok = all(r["job_status"] == "succeeded" and r["accuracy_after"] >= r["accuracy_before"] for r in result["boxes"])
    ok = ok and result["rollout"]["state"] == "done"
    return 0 if ok else 1

