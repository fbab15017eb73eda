"""Soak under faults: one real agent, repeated training jobs, a broker restart every 30 s, a bad command every second.

Reproduce (repo root, host venv; --minutes of wall time plus ~1 minute of set-up and drain):

    .venv/bin/python -m bench.soak                  # 10 minutes, Markdown report on stdout
    .venv/bin/python -m bench.soak --minutes 2 --json   # + one JSON line of figures at the end

What runs. This process starts Mosquitto (tests/helpers/broker.py's Broker: loopback, persistence on, so queued QoS 1
messages survive its restarts), exports a small mlp bundle with `.venv/bin/ftedge export` into a temp dir,
writes a SYNTHETIC Gaussian-blob dataset and runs the agent as its own process (`ftedge agent run`) with the
device venv (`.venv-device/bin/python` + a PYTHONPATH symlink tree of this working copy, bench/device_venv.py,
as bench/agent_bench does; the host venv if that is missing). One MQTT v5 client here is both the commander and the recording
subscriber (persistent session: clean_start=False, session expiry 1 h, QoS 1 on `ftedge/v1/soak/#`).

Faults, for --minutes:
- every --restart-every s the broker is stopped (SIGTERM) and started again --down-s later (same port);
- every --bad-every s one bad command, in rotation: malformed JSON, unknown verb, wrong-typed args, hostile
  paths (train bundle `../../etc`, cancel job `../../x`), a deploy of `file:///etc/passwd`, an oversized
  payload under the agent's mqtt.max_packet_size (200 KiB) and one over it (300 KiB);
- a train job (epochs 3; the bundle is signed and the agent trusts only that key) is sent whenever the previous one has its result, so jobs run back to back.

Commands are published only while this client is connected. Each carries CorrelationData = its own id, which
the agent echoes in the reply body (`correlation`), so even a malformed one (no cmd_id) is matched.

Checks, after the faults stop and the agent's last job finished (drain: broker up, no new faults):
- **no seq hole**: per agent boot, the distinct seqs (> 0) of every D->H message are exactly 1..max.
- **no lost result**: every train command answered `accepted` (a job id) has exactly one `jobs/{job}/result`
  (distinct by (boot, seq): a replayed duplicate is not a second result), and every result says succeeded.
- **every bad command answered**: *must be answered* = every bad command the broker acknowledged (PUBACK, so
  it is stored for the agent's persistent session) whose payload fits the agent's mqtt.max_packet_size. A
  command whose PUBACK never came (the broker went down in between) and the over-limit payloads (the broker
  must drop them for that client) are reported but not required.
- **RSS**: VmRSS of the agent every --rss-every s; first/last/max, and the least-squares slope in MiB/min
  after a warm-up (the first 20 % of the run, at most 2 minutes). "Flat" = slope under 1 MiB/min.
ALL DATA IS SYNTHETIC.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench._common import ROOT, md_table, rss_mib, slope_per_min
from bench.device_venv import child_env, pick_device_python
from bench.signing import KeyPair, keygen
from tests.helpers.broker import Broker
from tests.helpers.common import ZOO

FLEET, DEV = "soak", "soak-001"
TOPIC = f"ftedge/v1/{FLEET}/{DEV}/"
REPLY_TOPIC = TOPIC + "cmdres/soak-host"
MAX_PACKET = 256 * 1024  # the agent's default mqtt.max_packet_size (device_agent/config.py)


def say(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Recorder:
    """The commander and the recording subscriber: one persistent MQTT v5 session."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[float, str, dict]] = []
        self.by_corr: dict[str, list[dict]] = {}
        self.sent: dict[str, dict[str, Any]] = {}       # corr -> {kind, verb, size, t, mid, acked}
        self.mids: dict[int, str] = {}
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-recorder", protocol=mqtt.MQTTv5)
        c.on_connect = lambda cl, *_: cl.subscribe(f"ftedge/v1/{FLEET}/#", qos=1)
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.reconnect_delay_set(0.2, 1)
        c.max_inflight_messages_set(100)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect_async("127.0.0.1", port, clean_start=False, properties=props)
        c.loop_start()
        self.client = c

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = {"raw": msg.payload[:200].decode(errors="replace")}
        if not isinstance(body, dict):
            body = {"raw": body}
        with self.lock:
            self.messages.append((time.time(), msg.topic, body))
            if msg.topic.startswith(TOPIC + "cmdres/") and isinstance(body.get("correlation"), str):
                try:
                    corr = bytes.fromhex(body["correlation"]).decode()
                except ValueError:
                    corr = body["correlation"]
                self.by_corr.setdefault(corr, []).append(body)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self.lock:
            corr = self.mids.pop(mid, None)
            if corr is not None and not getattr(reason_code, "is_failure", False):
                self.sent[corr]["acked"] = True

    def connected(self) -> bool:
        return self.client.is_connected()

    def send(self, kind: str, verb: str, payload: bytes, corr: str) -> bool:
        """Publish one command (QoS 1) if connected; False if not connected (nothing sent)."""
        if not self.connected():
            return False
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = REPLY_TOPIC
        props.CorrelationData = corr.encode()
        with self.lock:
            info = self.client.publish(TOPIC + f"cmd/{verb}", payload, qos=1, properties=props)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return False
            self.sent.setdefault(corr, {"kind": kind, "verb": verb, "size": len(payload), "t": time.time(),
                                        "acked": False, "sends": 0})
            self.sent[corr]["sends"] += 1
            self.mids[info.mid] = corr
        return True

    def replies(self, corr: str) -> list[dict]:
        with self.lock:
            return list(self.by_corr.get(corr, []))

    def of(self, suffix_prefix: str) -> list[dict]:
        with self.lock:
            return [b for _, t, b in self.messages if t.startswith(TOPIC + suffix_prefix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def bad_commands() -> list[tuple[str, str, Any]]:
    """(kind, verb, payload-or-body) in rotation; a dict body gets its cmd_id filled in."""
    pad = "x" * (200 * 1024)
    over = "y" * (300 * 1024)
    return [
        ("malformed_json", "train", b'{"cmd_id": "broken", "args": {'),
        ("unknown_verb", "frobnicate", {"args": {}}),
        ("bad_args", "train", {"args": {"bundle": "mlp", "data": "blobs.npz", "epochs": "ten"}}),
        ("hostile_path_train", "train", {"args": {"bundle": "../../etc", "data": "blobs.npz"}}),
        ("hostile_path_cancel", "cancel", {"args": {"job": "../../state/replies"}}),
        ("hostile_deploy", "deploy", {"args": {"url": "file:///etc/passwd", "sha256": "0" * 64}}),
        ("oversized", "train", {"args": {"bundle": "mlp", "data": "blobs.npz", "pad": pad}}),
        ("over_packet_limit", "train", {"args": {"bundle": "mlp", "data": "blobs.npz", "pad": over}}),
    ]


def setup(work: Path) -> tuple[Path, Path, KeyPair]:
    """The signed mlp bundle (`ftedge keygen` + `ftedge export --sign-key`, bench/signing.py), SYNTHETIC Gaussian
    blobs, and the key pair (the agent config trusts its public key)."""
    bundles, data = work / "bundles", work / "data"
    data.mkdir(parents=True)
    cli = str(ROOT / ".venv" / "bin" / "ftedge")
    say("exporting the mlp bundle with `ftedge export`, signed by a key from `ftedge keygen` …")
    keys = keygen(work / "keys" / "soak", [cli])
    subprocess.run([cli, "export", f"{ZOO}:mlp", "-o", str(bundles / "mlp"), "--input",
                    "x:float32:1,20", "--labels", "a,b,c,d", "--lr", "0.01", "--quiet", *keys.sign_args()],
                   check=True, cwd=ROOT)
    rng = np.random.default_rng(5)
    y = np.repeat(np.arange(4), 100)
    x = (rng.standard_normal((400, 20)) + 1.5 * np.eye(4, 20)[y] * 2).astype(np.float32)
    np.savez(data / "blobs.npz", x=x, labels=y)
    return bundles, data, keys


def write_config(work: Path, port: int, data: Path, bundles: Path, keys: KeyPair) -> Path:
    cfg = work / "agent.toml"
    cfg.write_text("\n".join([
        f'device_id = "{DEV}"', f'fleet = "{FLEET}"', f'state_dir = "{work / "state"}"', 'log_level = "info"',
        "[mqtt]", f'url = "mqtt://127.0.0.1:{port}"', "will_delay = 1", "keepalive = 5",
        "[paths]", f'data_root = "{data}"', f'bundle_root = "{bundles}"', *keys.deploy_toml()]) + "\n")
    return cfg


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="ftedge-soak-"))
    bundles, data, keys = setup(work)
    broker = Broker(work / "broker").start()
    cfg = write_config(work, broker.port, data, bundles, keys)
    py, env, how = pick_device_python(work, child_env())
    say(f"agent interpreter: {how}")
    log = open(work / "agent.log", "ab")
    agent = subprocess.Popen([py, "-m", "ftedge", "agent", "run", "--config", str(cfg)], cwd=work, env=env,
                             stdout=subprocess.DEVNULL, stderr=log)
    rec = Recorder(broker.port)
    figures: dict[str, Any] = {"agent_python": how, "minutes": args.minutes}
    rss: list[tuple[float, float]] = []
    restarts = 0
    bads = bad_commands()
    jobs: dict[str, dict[str, Any]] = {}   # train corr -> {job, t}
    current: str | None = None
    try:
        deadline = time.time() + 60
        while not any(b.get("reason") == "birth" for b in rec.of("status")):
            if time.time() > deadline or agent.poll() is not None:
                raise SystemExit(f"the agent never came online; see {work / 'agent.log'}")
            time.sleep(0.1)
        t0 = time.time()
        end = t0 + args.minutes * 60
        next_restart, next_bad, next_rss, i = t0 + args.restart_every, t0, t0, 0
        while time.time() < end:
            now = time.time()
            if agent.poll() is not None:
                raise SystemExit(f"the agent exited with {agent.returncode}; see {work / 'agent.log'}")
            if now >= next_rss:
                r = rss_mib(agent.pid)
                if r is not None:
                    rss.append((now - t0, r))
                next_rss += args.rss_every
            if now >= next_restart:
                broker.stop()
                time.sleep(args.down_s)
                broker.start()
                restarts += 1
                next_restart = time.time() + args.restart_every
                continue
            if now >= next_bad:
                kind, verb, body = bads[i % len(bads)]
                corr = f"bad-{i:05d}-{kind}"
                payload = body if isinstance(body, bytes) else json.dumps({"cmd_id": corr, **body}).encode()
                if rec.send(kind, verb, payload, corr):
                    i += 1
                next_bad += args.bad_every
            current = _drive_jobs(rec, jobs, current)
            time.sleep(0.05)
        say(f"faults stopped after {restarts} broker restarts and {i} bad commands; draining …")
        drain_end = time.time() + args.drain_s
        while time.time() < drain_end:
            current = _drive_jobs(rec, jobs, current, submit=False)
            if current is None:
                break
            time.sleep(0.2)
        corr = "final-ping"
        rec.send("ping", "ping", json.dumps({"cmd_id": corr, "args": {}}).encode(), corr)
        wait_until(lambda: rec.replies(corr), 60)
        time.sleep(5)   # the last messages of the outbox
        r = rss_mib(agent.pid)
        if r is not None:
            rss.append((time.time() - t0, r))
        figures.update(restarts=restarts, bad_sent=i)
        figures.update(check(rec, jobs, rss, args))
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        rec.close()
        broker.stop()
        log.close()
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return figures


def wait_until(cond: Any, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.1)
    return False


def _drive_jobs(rec: Recorder, jobs: dict[str, dict[str, Any]], current: str | None, submit: bool = True) -> str | None:
    """Keep one train job in flight: resend its command if the broker never acknowledged it (same cmd_id:
    idempotent), note its job id, and start the next once its result arrived. Returns the corr in flight."""
    if current is not None:
        info = jobs[current]
        if info.get("job") is None:
            for r in rec.replies(current):
                if r.get("status") == "accepted" and r.get("job"):
                    info["job"] = r["job"]
                elif r.get("status") in ("rejected", "error"):
                    info["refused"] = r
                    return None
            sent = rec.sent.get(current, {})
            if info.get("job") is None and not sent.get("acked") and time.time() - info["t"] > 10:
                rec.send("train", "train", info["payload"], current)
                info["t"] = time.time()
            return current
        if any(b.get("job") == info["job"] for b in rec.of(f"jobs/{info['job']}/result")):
            current = None
        else:
            return current
    if not submit:
        return None
    corr = f"train-{len(jobs):04d}"
    payload = json.dumps({"cmd_id": corr, "args": {"bundle": "mlp", "data": "blobs.npz", "epochs": 3}}).encode()
    if rec.send("train", "train", payload, corr):
        jobs[corr] = {"job": None, "t": time.time(), "payload": payload}
        return corr
    return None


def check(rec: Recorder, jobs: dict[str, dict[str, Any]], rss: list[tuple[float, float]],
          args: argparse.Namespace) -> dict[str, Any]:
    with rec.lock:
        msgs = list(rec.messages)
        sent = dict(rec.sent)
    seqs: dict[str, set[int]] = {}
    results: dict[str, set[tuple[str, int]]] = {}
    for _, topic, b in msgs:
        if topic.startswith(TOPIC) and "/cmd/" not in topic and isinstance(b.get("seq"), int) and b["seq"] > 0:
            seqs.setdefault(str(b.get("boot")), set()).add(b["seq"])
            if topic.endswith("/result"):
                results.setdefault(topic.split("/")[-2], set()).add((str(b.get("boot")), b["seq"]))
    holes = {boot: sorted(set(range(1, max(s) + 1)) - s)[:10] for boot, s in seqs.items()
             if s != set(range(1, max(s) + 1))}
    accepted = {c: j["job"] for c, j in jobs.items() if j.get("job")}
    lost = sorted(j for j in accepted.values() if len(results.get(j, ())) == 0)
    statuses: dict[str, int] = {}
    done: set[tuple[str, int]] = set()
    for _, topic, b in msgs:
        key = (str(b.get("boot")), b.get("seq"))
        if topic.startswith(TOPIC + "jobs/") and topic.endswith("/result") and key not in done:
            done.add(key)
            statuses[str(b.get("status"))] = statuses.get(str(b.get("status")), 0) + 1
    doubled = sorted(j for j in accepted.values() if len(results.get(j, ())) > 1)
    bad = {c: s for c, s in sent.items() if c.startswith("bad-")}
    must = {c for c, s in bad.items() if s["acked"] and s["size"] <= MAX_PACKET - 1024}
    unanswered = sorted(c for c in must if not rec.replies(c))
    kinds: dict[str, dict[str, int]] = {}
    for c, s in bad.items():
        k = kinds.setdefault(s["kind"], {"sent": 0, "acked": 0, "answered": 0})
        k["sent"] += 1
        k["acked"] += bool(s["acked"])
        k["answered"] += bool(rec.replies(c))
    warm = min(120.0, 0.2 * args.minutes * 60)
    after = [s for s in rss if s[0] >= warm]
    slope = slope_per_min(after, min_points=3)
    per_min = [round(max(v for t, v in rss if m * 60 <= t < (m + 1) * 60), 1)
               for m in range(int(rss[-1][0] // 60) + 1) if any(m * 60 <= t < (m + 1) * 60 for t, v in rss)] if rss else []
    return {
        "boots": len(seqs), "messages": sum(len(s) for s in seqs.values()), "seq_holes": holes,
        "jobs_accepted": len(accepted), "jobs_refused": sum(1 for j in jobs.values() if j.get("refused")),
        "results_lost": lost, "results_doubled": doubled, "result_statuses": statuses,
        "bad_must_answer": len(must), "bad_unanswered": unanswered[:20], "bad_unanswered_count": len(unanswered),
        "bad_by_kind": kinds,
        "rss_first_mib": round(rss[0][1], 1) if rss else None, "rss_last_mib": round(rss[-1][1], 1) if rss else None,
        "rss_max_mib": round(max(v for _, v in rss), 1) if rss else None,
        "rss_slope_mib_per_min": None if slope is None else round(slope, 3), "rss_warmup_s": warm,
        "rss_per_minute_max_mib": per_min,
        "ok": (not holes and not lost and not doubled and not unanswered and slope is not None and slope < 1.0
               and set(statuses) <= {"succeeded"}),
    }


def report(f: dict[str, Any]) -> str:
    lines = [f"## Soak under faults ({f['minutes']:g} min)", "",
             f"- agent: {f['agent_python']}",
             f"- broker restarts: {f['restarts']}; bad commands sent: {f['bad_sent']}; agent boots seen: {f['boots']}; "
             f"distinct D->H messages: {f['messages']}",
             f"- seq holes: {f['seq_holes'] or 'none'}",
             f"- train jobs accepted: {f['jobs_accepted']} (refused {f['jobs_refused']}); results lost: "
             f"{len(f['results_lost'])}; duplicated: {len(f['results_doubled'])}; result statuses: {f['result_statuses']}",
             f"- bad commands that must be answered: {f['bad_must_answer']}; unanswered: {f['bad_unanswered_count']}",
             "", *md_table(("kind", "sent", "acked by broker", "answered"),
                           [(k, v["sent"], v["acked"], v["answered"]) for k, v in sorted(f["bad_by_kind"].items())])]
    lines += ["", f"- RSS (MiB): first {f['rss_first_mib']}, last {f['rss_last_mib']}, max {f['rss_max_mib']}; "
              f"slope after {f['rss_warmup_s']:g} s warm-up {f['rss_slope_mib_per_min']} MiB/min",
              f"- RSS per minute (max, MiB): {f['rss_per_minute_max_mib']}",
              f"- verdict: {'PASS' if f['ok'] else 'FAIL'}"]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--restart-every", type=float, default=30, help="seconds between broker restarts")
    p.add_argument("--down-s", type=float, default=2, help="seconds the broker stays down")
    p.add_argument("--bad-every", type=float, default=1, help="seconds between bad commands")
    p.add_argument("--rss-every", type=float, default=5, help="seconds between RSS samples")
    p.add_argument("--drain-s", type=float, default=180, help="most seconds to wait for the last job")
    p.add_argument("--keep", action="store_true", help="keep the work folder (agent log, state)")
    p.add_argument("--json", action="store_true", help="end with one JSON line of figures")
    args = p.parse_args()
    figures = run(args)
    print(report(figures))
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
