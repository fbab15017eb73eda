"""Fleet collector ingest throughput, CPU and memory over a real Mosquitto on loopback (issue 6).

Reproduce (repo root, host venv; ~1.5-2 min with the defaults on an otherwise idle 2-core box):

    .venv/bin/python bench/fleet_ingest.py                       # every phase, a 60 s soak
    .venv/bin/python bench/fleet_ingest.py --soak-seconds 600    # the 10-minute soak (≈ 11.5 min in all)
    .venv/bin/python bench/fleet_ingest.py --json                # + one JSON object on the last line
    .venv/bin/python bench/fleet_ingest.py --profile max         # cProfile of the collector's threads, no report

What runs where (all on one host, sharing its CPUs):
- **Mosquitto** (``/usr/sbin/mosquitto``), a fresh broker per phase on a free loopback port, persistence off,
  ``max_queued_messages 0`` (no limit: a collector that falls behind must not lose messages at the broker in
  a throughput test; the default 1000 would drop QoS 1 messages beyond 1000 queued for the collector) and
  logging of errors/warnings/notices/subscriptions only (``log_type all`` logs every PUBLISH and costs more
  than the collector).
- **The collector**: the real ``ftedge fleet serve --broker … --db … --http …`` (paho-mqtt client, writer
  thread, ``FleetStore.ingest_batch``, SQLite WAL) in its own process, started by bench/proc_launcher.py.
  Its CPU time is utime+stime of /proc/PID/stat (all threads), its memory VmRSS of /proc/PID/status.
- **The load generator**: ONE separate process (``--publisher``) simulating the fleet with raw MQTT v5 over
  TCP: by default one connection per simulated device (``--devices`` connections, each with its own client
  id), PUBLISH QoS 1 packets encoded from byte templates, PUBACKs read and counted per connection (the
  number in flight per connection is capped by the broker's Receive Maximum from CONNACK). No paho on this
  side: the generator must cost far less CPU than the collector for the collector to be the bottleneck.
  Each device publishes the contract (DESIGN.md "MQTT"): ``status`` (retained, online/birth, seq 1),
  ``meta`` (retained, seq 2), ``job`` (retained, running, seq 3), then ``jobs/{job}/progress`` (job, epoch,
  step, loss, metrics.val_accuracy, lr, samples_per_s, rss_mb; epoch = seq so that every progress message is
  its own row), every 100th seq a retained ``job`` snapshot, and at the end ``jobs/{job}/result`` and a final
  retained ``job``. Every message carries the envelope v, ts, dev, boot, seq, hist. Every ``--dup-every``-th
  message of a device is sent twice (same bytes, DUP flag; an outbox replay): the collector must drop it.

Phases (one fresh broker + collector + database each):
- **baselines** (a child process, no broker): the same kind of messages fed straight into
  ``FleetStore.ingest_batch`` (a) one transaction per message — the naive collector — and (b) in batches
  of 500 (the collector writer's batch size): the storage layer alone.
- **before**: the max phase with the collector code of an older revision (``--before``, default 09914b8:
  stock paho receive path, PUBACK on receipt, batches of ≤ 500 per 100 ms), loaded from ``git show`` into
  the same kind of child process; same broker, generator and verification.
- **max**: every device publishes ``--messages`` messages as fast as its connection's PUBACK window allows.
  Ingest rate = unique messages committed (``messages_total`` of the collector's database, polled every
  50 ms by a read-only connection) between the first poll that saw a commit and the first poll that saw the
  last one, divided by that wall time. The collector's CPU over the same window gives "cores used".
- **paced**: a fixed offered load (``--rate``, default 10,000 msg/s) for ``--seconds``; reported: achieved
  ingest rate, the commit lag after the last publish, collector CPU per second. Half-way through, the
  dashboard's first paint is measured as in **paint** (the dashboard under ingest load).
- **soak**: ``--soak-rate`` (default 5,000 msg/s) for ``--soak-seconds``; collector VmRSS sampled every 10 s
  (start = first sample after the first commit, end, max).
- **paint**: ``ftedge fleet serve`` on the max phase's database (1,000 devices, each with a job, ~200
  progress rows and a result), idle; tests/browser.py's ``first_paint`` loads ``/`` five times in one
  headless Chromium (cache disabled) and reads the Performance API's ``first-contentful-paint`` (from
  navigation start; the first load has a cold renderer). Also timed: the whole ``chromium --headless
  --dump-dom URL`` process (browser start-up included).

Correctness after each broker phase: for every device, the database's boot row has contiguous = max_seq =
the last seq published (every seq from 1 arrived, none pending), no ``seen`` row is left (nothing beyond
contiguous), ``seq_gaps_total`` = 0, ``messages_total`` = sum of last seqs (each (dev, boot, seq) counted
once), ``duplicates_total`` = duplicates sent (+ the retained replays, none here: fresh broker) and the
number of ``progress`` rows = progress messages published.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

THIS = Path(__file__).resolve()
ROOT = THIS.parents[1]
HOST_PY = ROOT / ".venv" / "bin" / "python"
FTEDGE = ROOT / ".venv" / "bin" / "ftedge"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium") or "")
                 if p and Path(p).exists()), None)
FLEET = "bench"
TICK = os.sysconf("SC_CLK_TCK")


# == MQTT v5 wire format (only what the generator needs) ======================================================

def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_str(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def connect_packet(client_id: str, keepalive: int = 60) -> bytes:
    # clean start, no Will (the benchmark measures telemetry), no properties (session expires at disconnect)
    var = mqtt_str(b"MQTT") + bytes([5, 0x02]) + struct.pack(">H", keepalive) + b"\x00"
    body = var + mqtt_str(client_id.encode())
    return b"\x10" + varint(len(body)) + body


def read_packets(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete packets at the front of ``buf`` (consumed): (first byte, body)."""
    out, pos, n = [], 0, len(buf)
    while pos + 2 <= n:
        mult, length, i = 1, 0, pos + 1
        while True:
            if i >= n:
                del buf[:pos]
                return out
            b = buf[i]
            length += (b & 0x7F) * mult
            mult <<= 7
            i += 1
            if not b & 0x80:
                break
        if i + length > n:
            break
        out.append((buf[pos], bytes(buf[i:i + length])))
        pos = i + length
    del buf[:pos]
    return out


def connack_receive_maximum(body: bytes) -> tuple[int, int]:
    """(reason code, Receive Maximum) of a v5 CONNACK body."""
    reason = body[1]
    props, i = body[2:], 0
    plen, mult = 0, 1
    while True:
        b = props[i]
        plen += (b & 0x7F) * mult
        mult <<= 7
        i += 1
        if not b & 0x80:
            break
    end, rmax = i + plen, 65535
    sizes = {0x11: 4, 0x12: None, 0x13: 2, 0x15: None, 0x16: None, 0x17: 1, 0x19: 1, 0x1A: None, 0x1C: None,
             0x1F: None, 0x21: 2, 0x22: 2, 0x24: 1, 0x25: 1, 0x26: None, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1}
    while i < end:
        pid = props[i]
        i += 1
        if pid == 0x21:
            rmax = struct.unpack(">H", props[i:i + 2])[0]
        size = sizes.get(pid)
        if size is None:   # a string / binary (2-byte length); user property: two strings
            count = 2 if pid == 0x26 else 1
            for _ in range(count):
                i += 2 + struct.unpack(">H", props[i:i + 2])[0]
        else:
            i += size
    return reason, rmax


# == the load generator (--publisher) ==========================================================================

PROGRESS = ('{"job":"%s","epoch":%d,"step":%d,"loss":%.4f,"metrics":{"val_accuracy":%.4f},"lr":0.01,'
            '"samples_per_s":%.1f,"rss_mb":%.1f,"v":1,"ts":%d,"dev":"%s","boot":"%s","seq":%d,"hist":false}')
JOB = ('{"job":"%s","status":"%s","epoch":%d,"kind":"train","started_ts":%d,'
       '"v":1,"ts":%d,"dev":"%s","boot":"%s","seq":%d,"hist":false}')
STATUS = '{"state":"online","reason":"birth","v":1,"ts":%d,"dev":"%s","boot":"%s","seq":%d,"hist":false}'
META = ('{"agent":"0.1.0","ort":"1.19.2","providers":["CPUExecutionProvider"],"hardware":{"cpus":4,'
        '"machine":"aarch64","mem_mb":3900},"models":{"kws":["v1","v2"]},"active_version":"v2",'
        '"v":1,"ts":%d,"dev":"%s","boot":"%s","seq":%d,"hist":false}')
RESULT = ('{"job":"%s","status":"succeeded","final":{"accuracy":%.4f,"loss":0.31},"baseline":{"accuracy":%.4f,'
          '"loss":0.92},"promoted":true,"duration_s":%.1f,"error":null,"v":1,"ts":%d,"dev":"%s","boot":"%s",'
          '"seq":%d,"hist":false}')


class _Conn:
    __slots__ = ("sock", "fd", "inflight", "window", "out", "rx", "pid", "acked", "errors", "dirty")

    def __init__(self, sock: socket.socket, window: int) -> None:
        self.sock, self.fd, self.window = sock, sock.fileno(), window
        self.inflight, self.out, self.rx, self.pid, self.acked, self.errors = 0, bytearray(), bytearray(), 0, 0, 0
        self.dirty = False


class _Device:
    __slots__ = ("name", "conn", "boot", "job", "seq", "limit", "prefix", "progress", "dups", "last", "done",
                 "started", "final", "topics")

    def __init__(self, name: str, conn: _Conn | None, limit: int, seed: int) -> None:
        self.name, self.conn, self.limit = name, conn, limit
        self.boot = f"b{seed:04d}{random.Random(seed).getrandbits(40):010x}"
        self.job = f"job-{name}-1"
        self.seq, self.progress, self.dups, self.last, self.done, self.started = 0, 0, 0, b"", False, 0
        self.final = 0
        base = f"ftedge/v1/{FLEET}/{name}/"
        self.topics = {k: base + k for k in ("status", "meta", "job")}
        self.topics["progress"] = f"{base}jobs/{self.job}/progress"
        self.topics["result"] = f"{base}jobs/{self.job}/result"
        self.prefix = {k: mqtt_str(t.encode()) for k, t in self.topics.items()}

    def message(self, now_ms: int, final: int = 0) -> tuple[str, str, int]:
        """The next message: (kind, payload, retain); final 1: the result, 2: the last job snapshot."""
        self.seq += 1
        s, n, b = self.seq, self.name, self.boot
        if final == 1:
            return "result", RESULT % (self.job, 0.9 + (s % 7) / 100, 0.6 + (s % 5) / 100, s / 10, now_ms, n, b,
                                       s), 0
        if final == 2:
            return "job", JOB % (self.job, "succeeded", s, self.started, now_ms, n, b, s), 1
        if s == 1:
            self.started = now_ms
            return "status", STATUS % (now_ms, n, b, s), 1
        if s == 2:
            return "meta", META % (now_ms, n, b, s), 1
        if s == 3 or s % 100 == 0:
            return "job", JOB % (self.job, "running", s, self.started, now_ms, n, b, s), 1
        self.progress += 1
        loss = 2.0 / (1.0 + s / 50.0)
        return "progress", PROGRESS % (self.job, s, s * 32, loss, 1.0 - loss / 2.5, 2000.0 + (s % 97),
                                       84.0 + (s % 13) / 10, now_ms, n, b, s), 0

    def packet(self, now_ms: int, final: int = 0) -> bytes:
        """The next message as a PUBLISH (QoS 1) on this device's connection."""
        kind, payload, retain = self.message(now_ms, final)
        return self._frame(self.prefix[kind], payload.encode(), retain)

    def _frame(self, topic: bytes, payload: bytes, retain: int, dup: int = 0) -> bytes:
        c = self.conn
        c.pid = c.pid % 65535 + 1
        body_len = len(topic) + 3 + len(payload)   # topic, packet id (2), properties length (1: none)
        pkt = (bytes([0x32 | retain | dup]) + varint(body_len) + topic + struct.pack(">H", c.pid) + b"\x00"
               + payload)
        self.last = pkt
        return pkt

    def duplicate(self) -> bytes:
        """The last message again (DUP flag, new packet id: the broker treats it as a new PUBLISH)."""
        c = self.conn
        c.pid = c.pid % 65535 + 1
        self.dups += 1
        pkt = self.last
        hdr_len = 1
        while pkt[hdr_len] & 0x80:
            hdr_len += 1
        hdr_len += 1
        tlen = struct.unpack(">H", pkt[hdr_len:hdr_len + 2])[0]
        at = hdr_len + 2 + tlen
        return bytes([pkt[0] | 0x08]) + pkt[1:at] + struct.pack(">H", c.pid) + pkt[at + 2:]


def publisher(cfg: dict[str, Any]) -> dict[str, Any]:
    """Simulate the fleet; returns a summary (per-device last seq, counts, timings)."""
    n_dev, n_conn = cfg["devices"], min(cfg["connections"] or cfg["devices"], cfg["devices"])
    rate, seconds, messages = cfg.get("rate") or 0, cfg.get("seconds") or 0, cfg.get("messages") or 0
    burst, dup_every = max(1, cfg.get("burst", 1)), cfg.get("dup_every", 0)
    prefix = cfg.get("prefix", "dev")
    conns: list[_Conn] = []
    t_connect = time.monotonic()
    ep = select.epoll()
    for i in range(n_conn):
        s = socket.create_connection(("127.0.0.1", cfg["port"]))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(connect_packet(f"{prefix}-pub-{i:05d}"))
        conns.append(_Conn(s, 20))
    for c in conns:   # CONNACKs (blocking reads, one by one)
        while True:
            c.rx += c.sock.recv(4096)
            pkts = read_packets(c.rx)
            if pkts:
                (first, body), = pkts
                if first != 0x20:
                    raise RuntimeError(f"expected CONNACK, got packet type {first >> 4}")
                reason, rmax = connack_receive_maximum(body)
                if reason:
                    raise RuntimeError(f"broker refused the connection: reason {reason:#x}")
                c.window = min(rmax, cfg.get("window") or rmax)
                break
        c.sock.setblocking(False)
        ep.register(c.fd, select.EPOLLIN)
    fd2conn = {c.fd: c for c in conns}
    connect_s = time.monotonic() - t_connect
    devices = [_Device(f"{prefix}-{i:04d}", conns[i % n_conn], messages, cfg.get("seed", 0) * 100000 + i)
               for i in range(n_dev)]
    print(json.dumps({"event": "connected", "connect_s": connect_s, "window": conns[0].window}), flush=True)
    if cfg.get("wait_go"):
        sys.stdin.readline()
    t0 = time.monotonic()
    t0_wall = time.time()
    sent = dup_sent = 0
    cursor = finished = 0
    stage = 0                  # 0 telemetry, 1 result + last job, 2 everything sent: wait for the PUBACKs
    dirty: list[_Conn] = []
    loops = 0
    while True:
        now = time.monotonic()
        now_ms = int((t0_wall + (now - t0)) * 1000)
        if stage == 0 and ((seconds and now - t0 >= seconds) or (messages and finished == n_dev)):
            stage, finished = 1, 0
            for d in devices:
                d.done = False
        if stage == 0:
            allowed = int(rate * (now - t0)) - sent if rate else 1 << 30
        else:
            allowed = 1 << 30 if stage == 1 else 0
        tried = 0
        while allowed > 0 and tried < n_dev:
            d = devices[cursor]
            cursor += 1
            if cursor == n_dev:
                cursor = 0
            c = d.conn
            room = c.window - c.inflight
            if room <= 0 or d.done:
                tried += 1
                continue
            tried = used = 0
            if stage == 1:
                while used < room and d.final < 2:
                    d.final += 1
                    c.out += d.packet(now_ms, d.final)
                    used += 1
                if d.final == 2:
                    d.done = True
                    finished += 1
            else:
                k = min(room, burst, allowed)
                if messages:
                    k = min(k, messages - d.seq)
                for _ in range(k):
                    c.out += d.packet(now_ms)
                    used += 1
                    if dup_every and d.seq % dup_every == 0 and used < room:
                        c.out += d.duplicate()
                        used += 1
                        dup_sent += 1
                allowed -= k
                if messages and d.seq >= messages:
                    d.done = True
                    finished += 1
            c.inflight += used
            sent += used
            if not c.dirty:
                c.dirty = True
                dirty.append(c)
        if stage == 1 and finished == n_dev:
            stage = 2
        if dirty:
            keep = []
            for c in dirty:
                try:
                    del c.out[:c.sock.send(c.out)]
                except BlockingIOError:
                    pass
                if c.out:
                    keep.append(c)
                else:
                    c.dirty = False
            dirty = keep
        if stage == 2 and not dirty and not any(c.inflight for c in conns):
            break
        timeout = 0 if (allowed > 0 and stage < 2 and not rate) else 0.002
        for fd, _ in ep.poll(timeout):
            c = fd2conn[fd]
            try:
                data = c.sock.recv(262144)
            except BlockingIOError:
                continue
            if not data:
                raise RuntimeError("the broker closed a device connection")
            c.rx += data
            for first, body in read_packets(c.rx):
                if first & 0xF0 == 0x40:
                    c.inflight -= 1
                    c.acked += 1
                    if len(body) > 2 and body[2] >= 0x80:
                        c.errors += 1
                elif first & 0xF0 == 0xE0:
                    raise RuntimeError(f"the broker disconnected a device: {body!r}")
        loops += 1
    t_end = time.monotonic()
    for c in conns:
        try:
            c.sock.setblocking(True)
            c.sock.sendall(b"\xe0\x00")
            c.sock.close()
        except OSError:
            pass
    return {
        "event": "done", "devices": n_dev, "connections": n_conn, "window": conns[0].window,
        "sent": sent, "unique": sum(d.seq for d in devices), "duplicates": dup_sent,
        "progress": sum(d.progress for d in devices), "acked": sum(c.acked for c in conns),
        "puback_errors": sum(c.errors for c in conns), "connect_s": connect_s,
        "t_start": t0_wall, "publish_s": t_end - t0, "t_end": t0_wall + (t_end - t0), "loops": loops,
        "last_seq": {d.name: [d.boot, d.seq, d.progress] for d in devices},
    }


# == baselines: the storage layer alone (no broker) =========================================================

def run_baselines(tmp: Path, devices: int) -> dict[str, Any]:
    cfg = {"dir": str(tmp / "baselines"), "devices": devices, "messages": 40, "dup_every": 13,
           "batch_sizes": [500, 5000]}
    proc = subprocess.run([str(HOST_PY), str(THIS), "--baselines-child", json.dumps(cfg)], capture_output=True,
                          text=True, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"baselines failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def baselines(cfg: dict[str, Any]) -> dict[str, Any]:
    """(a) one ingest_batch (one transaction) per message; (b) batches of each of ``batch_sizes``; the same
    messages each time (round-robin over the devices, every ``dup_every``-th sent twice), a fresh database."""
    sys.path.insert(0, str(ROOT / "src"))
    from ftedge.fleet.store import FleetStore

    d = Path(cfg["dir"])
    d.mkdir(parents=True, exist_ok=True)
    devs = [_Device(f"dev-{i:04d}", None, 0, i) for i in range(cfg["devices"])]
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


# == the collector as a child of this bench: profiled (--profile) or from another revision (the "before" phase)

def child_collector(cfg: dict[str, Any]) -> int:
    import threading

    if cfg.get("src"):   # load ftedge.fleet.{ingest,store} from an exported older revision
        import ftedge.fleet
        ftedge.fleet.__path__[:] = [cfg["src"]]
    if cfg.get("profile"):
        import cProfile

        out = Path(cfg["profile"])
        out.mkdir(parents=True, exist_ok=True)
        orig_run = threading.Thread.run

        def run(self: threading.Thread) -> None:
            pr = cProfile.Profile()
            pr.enable()
            try:
                orig_run(self)
            finally:
                pr.disable()
                pr.dump_stats(str(out / f"{self.name.replace('/', '_')}.prof"))

        threading.Thread.run = run  # type: ignore[method-assign]
    from ftedge.fleet.ingest import Collector
    from ftedge.fleet.store import FleetStore

    store = FleetStore(cfg["db"])
    coll = Collector(store, host="127.0.0.1", port=cfg["port"], client_id=cfg["client_id"]).start()
    print(f"collector from {Path(sys.modules[Collector.__module__].__file__).parent}", file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    coll.stop()
    store.close()
    return 0


# == the harness ===============================================================================================

from proc_launcher import LAUNCHER  # noqa: E402  (bench/ is sys.path[0] when run as a script)

from ftedge.fleet.local_broker import LocalBroker, free_port  # noqa: E402


class Mosquitto(LocalBroker):
    """ftedge's local broker with the benchmark's configuration: no per-client queue limit (a collector that
    falls behind loses nothing at the broker) and no per-PUBLISH logging; started at construction."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.start()

    def config_lines(self) -> list[str]:
        return [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false",
                "max_queued_messages 0", f"log_dest file {self.root}/mosquitto.log", "log_type error",
                "log_type warning", "log_type notice", "log_type subscribe", "connection_messages false"]


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class CollectorProc:
    """``ftedge fleet serve`` under the rusage launcher (or the bench's own profiled collector)."""

    def __init__(self, broker: Mosquitto, db: Path, http_port: int, client_id: str, log: Path,
                 child: dict[str, Any] | None = None) -> None:
        self.db, self.client_id, self.rec, self.http_port = db, client_id, db.with_suffix(".rusage.json"), http_port
        if child is None:
            cmd = [str(FTEDGE), "fleet", "serve", "--broker", f"mqtt://127.0.0.1:{broker.port}",
                   "--http", f"127.0.0.1:{http_port}", "--db", str(db), "--client-id", client_id]
        else:
            self.http_port = 0
            cmd = [str(HOST_PY), str(THIS), "--child-collector", json.dumps(
                {**child, "port": broker.port, "db": str(db), "client_id": client_id})]
        self._log = open(log, "ab")
        self.launcher = subprocess.Popen([str(HOST_PY), "-I", "-S", "-c", LAUNCHER, str(self.rec), *cmd],
                                         stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.time() + 20
        self.pid = 0
        while time.time() < deadline and not self.pid:
            kids = children(self.launcher.pid)
            self.pid = kids[0] if kids else 0
            time.sleep(0.01)
        if not self.pid:
            raise RuntimeError("the collector process did not start")
        self.t_spawn = time.time()
        while time.time() < deadline:   # subscribed: the broker logged its SUBSCRIBE
            if f"{client_id} 1 ftedge/v1/+/+/#" in broker.log():
                break
            if self.launcher.poll() is not None:
                raise RuntimeError(f"the collector exited:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        else:
            raise RuntimeError(f"the collector did not subscribe within 20 s:\n{log.read_text()[-3000:]}")
        self.t_ready = time.time()

    def stop(self) -> dict[str, Any]:
        if self.launcher.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.launcher.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.launcher.wait()
        self._log.close()
        return json.loads(self.rec.read_text()) if self.rec.exists() else {}


def committed(db: sqlite3.Connection) -> int:
    try:
        row = db.execute("SELECT value FROM counters WHERE name = 'messages_total'").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


def run_phase(name: str, tmp: Path, pub_cfg: dict[str, Any], rss_every: float = 10.0, timeout: float = 120.0,
              child: dict[str, Any] | None = None, keep_db: bool = False,
              during: tuple[float, Any] | None = None) -> dict[str, Any]:
    """One broker, one collector, one publisher; returns the timeline, rates, CPU, RSS and the verification.
    ``during=(seconds, fn)``: call ``fn(collector)`` in a thread that many seconds after the publisher started."""
    import threading

    root = tmp / name
    broker = Mosquitto(root / "broker")
    db_path = root / "fleet.sqlite"
    coll = CollectorProc(broker, db_path, free_port(), f"bench-collector-{name}", root / "collector.log", child)
    pub = None
    during_out: dict[str, Any] = {}
    try:
        mosq_pid, coll_pid = broker.proc.pid, coll.pid
        cfg = {**pub_cfg, "port": broker.port, "wait_go": True}
        pub = subprocess.Popen([str(HOST_PY), str(THIS), "--publisher", json.dumps(cfg)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=open(root / "publisher.log", "wb"), text=True, cwd=ROOT)
        hello = json.loads(pub.stdout.readline() or "{}")
        if hello.get("event") != "connected":
            raise RuntimeError(f"publisher failed:\n{(root / 'publisher.log').read_text()[-3000:]}")
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        samples: list[tuple[float, int, float, float, float]] = []   # t, committed, collector/mosq/pub CPU
        rss: list[tuple[float, float]] = []
        cpu0 = (proc_cpu_s(coll_pid), proc_cpu_s(mosq_pid), proc_cpu_s(pub.pid))
        pub.stdin.write("go\n")
        pub.stdin.flush()
        t_go = time.time()
        if during is not None:
            def _during() -> None:
                time.sleep(during[0])
                try:
                    during_out.update(during[1](coll))
                except Exception as exc:  # noqa: BLE001 - reported, the phase goes on
                    during_out["error"] = f"{type(exc).__name__}: {exc}"
            threading.Thread(target=_during, daemon=True).start()
        next_rss = t_go
        summary = None
        done_at = None
        while True:
            t = time.time()
            n = committed(db)
            samples.append((t, n, proc_cpu_s(coll_pid), proc_cpu_s(mosq_pid),
                            proc_cpu_s(pub.pid) if pub.poll() is None else float("nan")))
            if t >= next_rss:
                rss.append((t, proc_rss_mib(coll_pid)))
                next_rss += rss_every
            if summary is None and pub.poll() is not None:
                out = pub.stdout.read().strip().splitlines()
                if pub.returncode != 0 or not out:
                    raise RuntimeError(f"publisher exited {pub.returncode}:\n"
                                       f"{(root / 'publisher.log').read_text()[-3000:]}")
                summary = json.loads(out[-1])
                done_at = t
            if summary is not None and n >= summary["unique"]:
                break
            if summary is not None and t - done_at > timeout:
                break   # reported as not all committed
            if t - t_go > timeout + (pub_cfg.get("seconds") or 0) * 2 + 600 and summary is None:
                raise RuntimeError("the publisher did not finish")
            time.sleep(0.05)
        rss.append((time.time(), proc_rss_mib(coll_pid)))
        db.close()
        broker_log_errors = [ln for ln in broker.log().splitlines() if "rror" in ln or "arning" in ln]
    finally:
        if pub is not None and pub.poll() is None:
            pub.kill()
        rusage = coll.stop()
        broker.stop()
    first = next((i for i, s in enumerate(samples) if s[1] > 0), None)
    last = next((i for i, s in enumerate(samples) if s[1] >= summary["unique"]), len(samples) - 1)
    if first is None:
        raise RuntimeError("nothing was committed")
    ta, na, ca, ma, _ = samples[first]
    tb, nb, cb, mb, _ = samples[last]
    pub_cpu = [s for s in samples if s[4] == s[4]]
    # split at the publisher's end: all three processes compete for the CPUs before, the collector is alone after
    mid = next((i for i, s in enumerate(samples) if s[0] >= summary["t_end"]), last)
    mid = min(max(mid, first), last)
    tm, nm, cm, _, _ = samples[mid]
    split = {
        "while_publishing": {"s": tm - ta, "rate": (nm - na) / (tm - ta) if tm > ta else None,
                             "collector_cores": (cm - ca) / (tm - ta) if tm > ta else None},
        "after_publishing": {"s": tb - tm, "rate": (nb - nm) / (tb - tm) if tb > tm else None,
                             "collector_cores": (cb - cm) / (tb - tm) if tb > tm else None},
    }
    res = {
        "name": name, "publisher": {k: v for k, v in summary.items() if k != "last_seq"},
        "committed": nb, "complete": nb >= summary["unique"],
        "first_commit_after_go_s": ta - t_go, "last_commit_after_publish_end_s": tb - summary["t_end"],
        "window_s": tb - ta, "rate": (nb - na) / (tb - ta) if tb > ta else float("nan"),
        "collector_cpu_s": cb - ca, "collector_cores": (cb - ca) / (tb - ta) if tb > ta else float("nan"),
        "mosquitto_cores": (mb - ma) / (tb - ta) if tb > ta else float("nan"),
        "publisher_cpu_s": (pub_cpu[-1][4] - cpu0[2]) if pub_cpu else float("nan"),
        "collector_cpu_total_s": samples[-1][2] - cpu0[0],
        "split": split, "during": during_out, "t_go": t_go,
        "rss_mib": [(round(t - t_go, 1), round(v, 1)) for t, v in rss], "rusage": rusage,
        "broker_log_problems": broker_log_errors[:5],
        "timeline": [(round(s[0] - t_go, 3), s[1], round(s[2] - cpu0[0], 2), round(s[3] - cpu0[1], 2),
                      round(s[4] - cpu0[2], 2)) for s in samples[:: max(1, len(samples) // 400)]],
    }
    res["verify"] = verify(db_path, summary)
    if not keep_db:
        for p in root.glob("fleet.sqlite*"):
            p.unlink()
    else:
        res["db"] = str(db_path)
    return res


def verify(db_path: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Every (dev, boot, seq) stored exactly once, zero gaps (see the module docstring)."""
    db = sqlite3.connect(db_path)
    boots = {(d, b): (c, m) for d, b, c, m in db.execute("SELECT device, boot, contiguous, max_seq FROM boots")}
    progress = dict(db.execute("SELECT device, COUNT(*) FROM progress GROUP BY device"))
    c = dict(db.execute("SELECT name, value FROM counters"))
    seen_rows = db.execute("SELECT COUNT(*) FROM seen").fetchone()[0]
    gap_rows = db.execute("SELECT COUNT(*) FROM gaps").fetchone()[0]
    n_devices = db.execute("SELECT COUNT(*) FROM devices").fetchone()[0]
    results = db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    db.close()
    bad = []
    for dev, (boot, last, nprog) in summary["last_seq"].items():
        if boots.get((dev, boot)) != (last, last):
            bad.append(f"{dev}: contiguous/max_seq {boots.get((dev, boot))} != {last}")
        if progress.get(dev, 0) != nprog:
            bad.append(f"{dev}: {progress.get(dev, 0)} progress rows != {nprog} published")
    expect = {"messages_total": summary["unique"], "duplicates_total": summary["duplicates"],
              "seq_gaps_total": 0, "malformed_total": 0}
    for k, v in expect.items():
        if c.get(k) != v:
            bad.append(f"{k} = {c.get(k)}, expected {v}")
    if seen_rows or gap_rows:
        bad.append(f"{seen_rows} seen rows, {gap_rows} gap rows left")
    if n_devices != summary["devices"] or results != summary["devices"]:
        bad.append(f"{n_devices} devices / {results} results, expected {summary['devices']}")
    return {"ok": not bad, "problems": bad[:10], "n_problems": len(bad), "counters": c, "devices": n_devices}


# == dashboard first paint ======================================================================================

def _browser_module() -> Any:
    sys.path.insert(0, str(ROOT / "tests"))
    import browser  # tests/browser.py: headless Chromium over the DevTools pipe (stdlib only)

    return browser


def _wait_http(url: str, timeout: float = 20.0) -> float:
    """Seconds until ``url`` answers 200 (then the time of one more GET: the server's page time)."""
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                r.read()
            break
        except OSError:
            if time.time() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:g} s") from None
            time.sleep(0.1)
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        body = r.read()
    return time.perf_counter() - t, len(body)


def paint_figures(url: str, runs: int = 5) -> dict[str, Any]:
    """Performance-API figures of ``runs`` loads in one headless Chromium (tests/browser.py first_paint) and the
    whole-process time of ``chromium --headless --dump-dom URL`` (browser start included)."""
    br = _browser_module()
    if br.find_chromium() is None:
        return {"skipped": "no chromium (apt-get install chromium)"}
    get_s, page_bytes = _wait_http(url)
    loads = br.first_paint(url, runs=runs)
    t = time.perf_counter()
    dom = br.dump_dom(url, budget_ms=1)
    dump_s = time.perf_counter() - t
    fcp = [x["first_contentful_paint_ms"] for x in loads]
    warm = sorted(fcp[1:]) or fcp
    return {"url": url, "server_get_ms": get_s * 1000, "page_bytes": page_bytes, "loads": loads,
            "fcp_cold_ms": fcp[0], "fcp_warm_median_ms": warm[len(warm) // 2], "fcp_max_ms": max(fcp),
            "dump_dom_process_ms": dump_s * 1000, "dump_dom_device_rows": dom.count('class="device"'),
            "chromium": br.find_chromium()}


def first_paint(tmp: Path, db: Path | None, devices: int, runs: int = 5) -> dict[str, Any]:
    """``ftedge fleet serve`` on the max phase's database (1,000 devices with jobs, curves and results)."""
    if db is None or not db.exists():
        return {"skipped": "needs the max phase's database"}
    root = tmp / "paint"
    broker = Mosquitto(root / "broker")
    port = free_port()
    coll = CollectorProc(broker, db, port, "bench-collector-paint", root / "collector.log")
    try:
        n = sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute("SELECT COUNT(*) FROM devices").fetchone()[0]
        out = paint_figures(f"http://127.0.0.1:{port}/", runs)
        out["devices_in_db"] = n
        out["rss_mib_after"] = proc_rss_mib(coll.pid)
    finally:
        coll.stop()
        broker.stop()
    return out


def paint_during(runs: int = 5) -> Any:
    def fn(coll: CollectorProc) -> dict[str, Any]:
        if not coll.http_port:
            return {"skipped": "no HTTP server in this collector"}
        return paint_figures(f"http://127.0.0.1:{coll.http_port}/", runs)
    return fn


# == the "before" collector (an older revision, same harness) ===================================================

def export_revision(ref: str, tmp: Path) -> Path:
    """``git show REF:fleet/{__init__,ingest,store}.py`` into a directory loadable as ``ftedge.fleet``."""
    d = tmp / f"fleet-{ref.replace('/', '_')}"
    d.mkdir(parents=True, exist_ok=True)
    for name in ("__init__.py", "ingest.py", "store.py"):
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:fleet/{name}"], capture_output=True,
                              text=True, check=True).stdout
        (d / name).write_text(text)
    return d


# == the report ==================================================================================================

def _f(x: Any, spec: str = ",.0f") -> str:
    return "—" if x is None or x != x else format(x, spec)


def report(out: dict[str, Any]) -> str:
    a = out["args"]
    lines = [f"#### Fleet collector ingest on loopback (Mosquitto {out.get('mosquitto', '?')}, MQTT v5, QoS 1): "
             f"{os.cpu_count()} CPUs, {a['devices']:,} simulated devices"]
    rows = []
    m, p, sk, pt, b = (out.get(k) for k in ("max", "paced", "soak", "paint", "baselines"))
    if m:
        rows.append(("1", f"ingest, as fast as possible ({m['publisher']['unique']:,} messages, "
                          f"{m['publisher']['connections']:,} connections)",
                     f"{_f(m['rate'])} msg/s committed; collector {m['collector_cores']:.2f} cores",
                     "≥ 10,000 msg/s on one core", _met(m['rate'] >= 10000 and m['collector_cores'] <= 1.0
                                                       and m['verify']['ok'])))
    if p:
        rows.append(("1b", f"offered {a['rate']:,.0f} msg/s for {a['seconds']:g} s",
                     f"{_f(p['rate'])} msg/s committed, last commit {p['last_commit_after_publish_end_s']:.2f} s "
                     f"after the last publish; collector {p['collector_cores']:.2f} cores",
                     "keeps up on one core", _met(p['complete'] and p['collector_cores'] <= 1.0
                                                  and p['last_commit_after_publish_end_s'] < 2
                                                  and p['verify']['ok'])))
    if sk:
        r = sk["rss_mib"]
        warm = next((v for t, v in r if t >= 60), r[-1][1])
        rows.append(("2", f"soak: {a['soak_rate']:,.0f} msg/s for {a['soak_seconds']:g} s "
                          f"({sk['publisher']['unique']:,} messages)",
                     f"collector VmRSS start {r[0][1]:.0f} MiB, at 60 s {warm:.0f}, end {r[-1][1]:.0f}, "
                     f"max {max(v for _, v in r):.0f} MiB", "memory flat",
                     _met(r[-1][1] <= warm * 1.1 + 5 and sk['verify']['ok'])))
    if pt and "fcp_cold_ms" in pt:
        rows.append(("3", f"dashboard first contentful paint, {pt['devices_in_db']:,} devices (idle collector)",
                     f"{pt['fcp_cold_ms']:.0f} ms cold, {pt['fcp_warm_median_ms']:.0f} ms warm (median)",
                     "< 1 s", _met(pt['fcp_max_ms'] < 1000)))
    if p and "fcp_cold_ms" in p.get("during", {}):
        d = p["during"]
        rows.append(("3b", f"the same during the paced ingest ({a['rate']:,.0f} msg/s)",
                     f"{d['fcp_cold_ms']:.0f} ms cold, {d['fcp_warm_median_ms']:.0f} ms warm, max "
                     f"{d['fcp_max_ms']:.0f} ms", "< 1 s", _met(d['fcp_max_ms'] < 1000)))
    lines += ["", "| # | measure | result | target | status |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    if b or m or out.get("before"):
        lines += ["", "Same run, same kind of messages (1,000 devices round-robin, the contract's topics), "
                      "unique messages committed per second:", "",
                  (f"| path | msg/s | × naive | ÷ batches of {b['batch_sizes'][-1]:,} |" if b
                   else "| path | msg/s | | |"),
                  "|---|---|---|---|"]
        base = b["naive_rate"] if b else None
        top = b[f"batch{b['batch_sizes'][-1]}_rate"] if b else None

        def row(name: str, rate: float | None) -> None:
            lines.append(f"| {name} | {_f(rate)} | {_f(rate / base if base and rate else None, '.1f')}× | "
                         f"{_f(rate / top if top and rate else None, '.2f')} |")
        if b:
            row("naive: `FleetStore.ingest_batch` per message (one transaction each), no broker", b["naive_rate"])
            for size in b["batch_sizes"]:
                row(f"`FleetStore.ingest_batch`, batches of {size:,}, no broker", b[f"batch{size}_rate"])
        bf = out.get("before")
        if bf:
            row(f"end to end, collector of {bf['ref']} (stock paho receive path, ack on receipt, batches ≤ 500)",
                bf["rate"])
        if m:
            row("end to end through Mosquitto, this collector (max phase)", m["rate"])
    return "\n".join(lines)


def details(out: dict[str, Any]) -> str:
    """What the numbers include: per phase, the raw figures behind the table."""
    a = out["args"]
    ls = ["", "What the numbers include:"]
    for name in ("before", "max", "paced", "soak"):
        r = out.get(name)
        if not r:
            continue
        pb, v, sp = r["publisher"], r["verify"], r["split"]
        c = v["counters"]
        ls.append(
            f"- {name}{' (' + r['ref'] + ')' if name == 'before' else ''}: {pb['unique']:,} unique messages + "
            f"{pb['duplicates']:,} duplicates from {pb['devices']:,} devices on {pb['connections']:,} connections "
            f"(broker Receive Maximum {pb['window']} per connection), published in {pb['publish_s']:.2f} s "
            f"(generator CPU {r['publisher_cpu_s']:.1f} s); first commit {r['first_commit_after_go_s']:.2f} s after "
            f"the start, last {r['last_commit_after_publish_end_s']:.2f} s after the last publish; window "
            f"{r['window_s']:.2f} s: {_f(r['rate'])} msg/s, collector {r['collector_cpu_s']:.1f} CPU s = "
            f"{r['collector_cores']:.2f} cores ({1e6 * r['collector_cpu_s'] / max(1, r['committed']):.0f} µs per "
            f"message), Mosquitto {r['mosquitto_cores']:.2f} cores. While the generator ran: "
            f"{_f(sp['while_publishing']['rate'])} msg/s at {_f(sp['while_publishing']['collector_cores'], '.2f')} "
            f"collector cores over {sp['while_publishing']['s']:.1f} s; after: "
            f"{_f(sp['after_publishing']['rate'])} msg/s at {_f(sp['after_publishing']['collector_cores'], '.2f')} "
            f"cores over {sp['after_publishing']['s']:.1f} s. Collector peak RSS (ru_maxrss) "
            f"{r['rusage'].get('maxrss_kib', 0) / 1024:.0f} MiB. Verified: {'OK' if v['ok'] else v['problems']} "
            f"(messages_total {c.get('messages_total'):,}, duplicates_total {c.get('duplicates_total'):,}, "
            f"seq_gaps_total {c.get('seq_gaps_total')}, {v['devices']:,} devices)."
            + (f" Broker log: {r['broker_log_problems']}" if r["broker_log_problems"] else ""))
    sk = out.get("soak")
    if sk:
        series = sk["rss_mib"]
        step = max(1, len(series) // 12)
        ls.append("- soak VmRSS (s: MiB): " + ", ".join(f"{t:.0f}: {v:.0f}" for t, v in series[::step])
                  + f", end {series[-1][1]:.0f}")
    b = out.get("baselines")
    if b:
        ls.append(f"- baselines: {b['unique']:,} unique + {b['duplicates']:,} duplicate messages "
                  f"({b['devices']:,} devices × {b['unique'] // b['devices']} each, round-robin) into a fresh "
                  f"database each: " + "; ".join(
                      f"{'one transaction per message' if k == 'naive' else 'batches of ' + k[5:]}: "
                      f"{b[k + '_s']:.2f} s wall, {b[k + '_cpu_s']:.2f} CPU s"
                      for k in ("naive", *(f"batch{x}" for x in b["batch_sizes"]))))
    for label, pt in (("idle", out.get("paint")), ("during the paced phase", (out.get("paced") or {}).get("during"))):
        if not pt:
            continue
        if "loads" not in pt:
            ls.append(f"- first paint {label}: {pt}")
            continue
        ls.append(f"- first paint {label}: {pt['url']} ({pt['page_bytes']:,} bytes, one GET "
                  f"{pt['server_get_ms']:.0f} ms"
                  f" from Python), {len(pt['loads'])} loads in one headless Chromium (cache disabled), "
                  "first-contentful-paint from navigation start: "
                  + ", ".join(f"{x['first_contentful_paint_ms']:.0f}" for x in pt["loads"])
                  + " ms; DOMContentLoaded " + ", ".join(f"{x['dom_content_loaded_ms']:.0f}" for x in pt["loads"])
                  + f" ms; `chromium --headless --dump-dom` whole process (browser start included) "
                  f"{pt['dump_dom_process_ms']:.0f} ms, {pt['dump_dom_device_rows']} device rows in its DOM.")
    ls.append(f"- Everything on one host over loopback (no TLS), broker + generator + collector sharing "
              f"{os.cpu_count()} CPUs. Load average before/after: {[round(x, 2) for x in out['loadavg_before']]} / "
              f"{[round(x, 2) for x in out['loadavg_after']]}; bench total {out['bench_s']:.0f} s.")
    cmd = ".venv/bin/python bench/fleet_ingest.py"
    if a["soak_seconds"] != 60:
        cmd += f" --soak-seconds {a['soak_seconds']:g}"
    if a["phases"] != "baselines,before,max,paced,soak,paint":
        cmd += f" --phases {a['phases']}"
    ls.append(f"- Reproduce: `{cmd}`")
    return "\n".join(ls)


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--publisher", help=argparse.SUPPRESS)
    ap.add_argument("--child-collector", help=argparse.SUPPRESS)
    ap.add_argument("--baselines-child", help=argparse.SUPPRESS)
    ap.add_argument("--devices", type=int, default=1000, help="simulated devices (default 1000)")
    ap.add_argument("--connections", type=int, default=0, help="TCP connections (default: one per device)")
    ap.add_argument("--messages", type=int, default=200, help="max phase: messages per device (default 200)")
    ap.add_argument("--rate", type=float, default=10000, help="paced phase: offered msg/s (default 10000)")
    ap.add_argument("--seconds", type=float, default=30, help="paced phase: seconds (default 30)")
    ap.add_argument("--soak-seconds", type=float, default=60, help="soak phase seconds (default 60; 0 skips)")
    ap.add_argument("--soak-rate", type=float, default=5000, help="soak offered msg/s (default 5000)")
    ap.add_argument("--dup-every", type=int, default=97, help="send every Nth message twice (default 97; 0: never)")
    ap.add_argument("--before", default="09914b8", metavar="REF",
                    help="git revision whose fleet/ingest.py + store.py run the 'before' phase (default 09914b8)")
    ap.add_argument("--phases", default="baselines,before,max,paced,soak,paint",
                    help="comma-separated subset of baselines,before,max,paced,soak,paint (default: all)")
    ap.add_argument("--profile", metavar="PHASE", choices=("max", "paced"),
                    help="run PHASE with a cProfile'd collector and print the profiles of its threads")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    if args.publisher:
        print(json.dumps(publisher(json.loads(args.publisher))), flush=True)
        return 0
    if args.child_collector:
        return child_collector(json.loads(args.child_collector))
    if args.baselines_child:
        print(json.dumps(baselines(json.loads(args.baselines_child))), flush=True)
        return 0
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.devices + 256)), hard))
    tmp = Path(tempfile.mkdtemp(prefix="fleet-ingest-"))
    phases = args.phases.split(",")
    common = {"devices": args.devices, "connections": args.connections, "dup_every": args.dup_every}
    version = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True).stdout.split("\n")[0]
    out: dict[str, Any] = {"args": vars(args), "tmp": str(tmp), "loadavg_before": os.getloadavg(),
                           "mosquitto": version.replace("mosquitto version ", "").strip()}
    t_bench = time.time()
    try:
        if args.profile:
            cfg = ({**common, "messages": args.messages} if args.profile == "max"
                   else {**common, "rate": args.rate, "seconds": args.seconds})
            res = run_phase(args.profile, tmp, cfg, child={"profile": str(tmp / "profile")})
            print(json.dumps({k: v for k, v in res.items() if k != "timeline"}, default=str))
            import pstats
            for p in sorted((tmp / "profile").glob("*.prof")):
                print(f"\n===== {p.name}")
                pstats.Stats(str(p)).sort_stats("tottime").print_stats(30)
            return 0
        if "baselines" in phases:
            out["baselines"] = run_baselines(tmp, args.devices)
            print_progress("baselines", out["baselines"])
        if "before" in phases:
            src = export_revision(args.before, tmp)
            out["before"] = run_phase("before", tmp, {**common, "messages": args.messages},
                                      child={"src": str(src)})
            out["before"]["ref"] = args.before
            print_progress("before", out["before"])
        if "max" in phases:
            out["max"] = run_phase("max", tmp, {**common, "messages": args.messages}, keep_db=True)
            print_progress("max", out["max"])
        if "paced" in phases:
            during = (args.seconds / 2, paint_during()) if "paint" in phases else None
            out["paced"] = run_phase("paced", tmp, {**common, "rate": args.rate, "seconds": args.seconds},
                                     during=during)
            print_progress("paced", out["paced"])
        if "soak" in phases and args.soak_seconds > 0:
            out["soak"] = run_phase("soak", tmp, {**common, "rate": args.soak_rate, "seconds": args.soak_seconds})
            print_progress("soak", out["soak"])
        if "paint" in phases:
            out["paint"] = first_paint(tmp, Path(out["max"]["db"]) if "max" in out else None, args.devices)
            print_progress("paint", out["paint"])
    finally:
        out["loadavg_after"] = os.getloadavg()
        out["bench_s"] = time.time() - t_bench
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(report(out))
    print(details(out))
    if args.json:
        print(json.dumps(out, default=str))
    ok = all(out[p]["verify"]["ok"] for p in ("before", "max", "paced", "soak") if p in out)
    return 0 if ok else 1


def print_progress(name: str, res: dict[str, Any]) -> None:
    keys = ("rate", "collector_cores", "mosquitto_cores", "complete", "fcp_cold_ms", "fcp_warm_median_ms",
            "naive_rate", "batch500_rate", "batch5000_rate")
    print(f"[{name}] " + ", ".join(f"{k}={res[k]:.3g}" if isinstance(res[k], float) else f"{k}={res[k]}"
                                   for k in keys if k in res)
          + (f", verify={res['verify']['ok']}" if "verify" in res else ""), file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
