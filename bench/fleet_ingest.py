"""Fleet collector ingest throughput, CPU and memory over a real Mosquitto on loopback (issues 6 and 17).

Reproduce (repo root, host venv; ~1.5-2 min with the defaults on an otherwise idle 2-core box):

    .venv/bin/python bench/fleet_ingest.py                       # every phase, a 60 s soak
    .venv/bin/python bench/fleet_ingest.py --soak-seconds 600    # the 10-minute soak (≈ 11.5 min in all)
    .venv/bin/python bench/fleet_ingest.py --json                # + one JSON object on the last line
    .venv/bin/python bench/fleet_ingest.py --profile max         # cProfile of the collector's threads, no report

Several collectors on PostgreSQL (issue 17; needs the PostgreSQL server package, scripts/dev.sh setup):

    .venv/bin/python bench/fleet_ingest.py --store postgresql --collectors 1,2,3 --devices 1000,10000 \
        --soak-seconds 60 --json --json-out /tmp/fleet_pg.json          # ≈ 3 min
    .venv/bin/python bench/fleet_ingest.py --store postgresql --collectors 3 --devices 10000 --phases soak \
        --soak-seconds 600                                               # the 10-minute soak alone (≈ 10.5 min)
    .venv/bin/python bench/fleet_ingest.py --store postgresql --collectors 1,3 --devices 200 \
        --total-messages 20000 --soak-seconds 20                         # a smoke test (≈ 40 s)

``--store postgresql`` runs, for each ``--devices`` count, the max phase below with the SQLite single
collector (the baseline) and then once per ``--collectors`` count N on PostgreSQL: a fresh Mosquitto, a fresh
database (``CREATE DATABASE`` on one throwaway cluster of tests/postgres.py for the whole run: loopback, trust
auth, ``fsync``/``synchronous_commit``/``full_page_writes`` off unless ``--pg-durable``), N ``ftedge fleet serve
--db postgresql://… --share-group bench --client-id bench-…-cK --http 127.0.0.1:PORT`` processes (MQTT v5 shared
subscription ``$share/bench/ftedge/v1/+/+/#``; started together, each waited for until its SUBSCRIBE is in the
broker's log), the same publisher configuration: ``--total-messages`` (default 200,000) unique messages per phase
spread over the devices (``total / devices − 2`` telemetry messages each, plus the result and the final job).
Then **paint** on the database of the largest device count with the most collectors (one idle collector of the
group on a fresh broker; first paint as below, and a walk over ``GET /api/devices?limit=500`` following
``Link: …; rel="next"`` that must return every device exactly once, in order, as many as ``X-Total-Count``),
and the **soak** with max(N) collectors and the largest device count (``--soak-rate``, ``--soak-seconds``;
each collector's VmRSS every 10 s while the paced load runs: start, after the warm-up (min(60 s, half the
soak)), end, max, and the least-squares slope after the warm-up in MiB/min; the sample after the generator's
final burst — every device's result and last job at once — is reported apart). Measured per phase: the
ingest rate (as below, from ``SUM(value)`` of the sharded ``messages_total``), CPU seconds over the same window
of the collectors (summed),
of PostgreSQL (the postmaster with its reaped children's cutime/cstime plus every live child — the collectors'
backends, checkpointer, walwriter, autovacuum — less the bench's own polling backend), of Mosquitto and of the
generator (its own process time while publishing), as µs per message and cores used (CPU s / window s); the
whole host's busy cores (/proc/stat) to spot a disturbed run; each collector's peak RSS (ru_maxrss); for
PostgreSQL the backends waiting on a lock at every poll (pg_stat_activity), pg_stat_database's commits,
rollbacks (a deadlock or serialization failure retried by a collector is one) and deadlocks, the server log's
ERROR lines of the phase (a deadlock report names both statements; the cluster lives under the bench's
temporary directory, kept with ``--keep``), the collectors' log warnings, and the share of ``messages_total``
each collector counted (how Mosquitto spread the messages).

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
  id; the bench raises its soft RLIMIT_NOFILE to the hard limit, which the generator and Mosquitto inherit,
  and Mosquitto runs with ``max_connections -1``: 10,000 devices need 10,000 descriptors in each; connections
  are opened 50 at a time, each group's CONNACKs awaited, so Mosquitto's listen backlog of 100 never overflows),
  PUBLISH QoS 1 packets encoded from byte templates, PUBACKs read and counted per connection (the
  number in flight per connection is capped by the broker's Receive Maximum from CONNACK). No paho on this
  side: the generator must cost far less CPU than the collector for the collector to be the bottleneck.
  Each device publishes the contract (DESIGN.md "MQTT"): ``status`` (retained, online/birth, seq 1),
  ``meta`` (retained, seq 2), ``job`` (retained, running, seq 3), then ``jobs/{job}/progress`` (job, epoch,
  step, loss, metrics.val_accuracy, lr, samples_per_s, rss_mb; epoch = seq so that every progress message is
  its own row), every 100th seq a retained ``job`` snapshot, and at the end ``jobs/{job}/result`` and a final
  retained ``job``. Every message carries the envelope v, ts, dev, boot, seq, hist. About every
  ``--dup-every``-th message is sent twice (same bytes, DUP flag; an outbox replay): device i repeats seq s
  when (s + i) % dup_every = 0 (the offset spreads them over short streams too), right after the original or,
  when the connection's window is full, first thing next time; the collector must drop it.

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

Correctness after each broker phase (SQLite and PostgreSQL alike; counters summed over the collectors'
shards): for every device, the database's boot row has contiguous = max_seq = the last seq published (every
seq from 1 arrived, none pending), no ``seen`` row is left (nothing beyond contiguous), ``seq_gaps_total`` = 0,
``messages_total`` = sum of last seqs (each (dev, boot, seq) counted once), ``duplicates_total`` = duplicates
sent (a redelivery would add one; the difference is reported) and the number of ``progress`` rows = progress
messages published. Reported explicitly: **lost** (published and acknowledged by the broker but not recorded:
seqs a boot row has not reached less the ``seen`` rows beyond it, plus seqs written off as counted holes and
never filled) and **double counted** (``messages_total`` beyond the unique messages recorded); both must be 0.
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
        '"machine":"aarch64","mem_mb":3900},"models":["v1","v2"],"active_version":"v2",'
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
                 "started", "final", "topics", "dup_offset", "dup_due")

    def __init__(self, name: str, conn: _Conn | None, limit: int, seed: int) -> None:
        self.name, self.conn, self.limit = name, conn, limit
        self.boot = f"b{seed:04d}{random.Random(seed).getrandbits(40):010x}"
        self.job = f"job-{name}-1"
        self.seq, self.progress, self.dups, self.last, self.done, self.started = 0, 0, 0, b"", False, 0
        self.final = 0
        self.dup_offset, self.dup_due = 0, False   # duplicate seq s when (s + dup_offset) % dup_every == 0
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


def _connacks(batch: list[_Conn], ep: Any, cfg: dict[str, Any]) -> None:
    """Read the CONNACK of each connection of ``batch`` (blocking, one by one); then non-blocking + epoll."""
    for c in batch:
        while True:
            data = c.sock.recv(4096)
            if not data:
                raise RuntimeError("the broker closed a connection before its CONNACK")
            c.rx += data
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


def publisher(cfg: dict[str, Any]) -> dict[str, Any]:
    """Simulate the fleet; returns a summary (per-device last seq, counts, timings)."""
    n_dev, n_conn = cfg["devices"], min(cfg["connections"] or cfg["devices"], cfg["devices"])
    rate, seconds, messages = cfg.get("rate") or 0, cfg.get("seconds") or 0, cfg.get("messages") or 0
    burst, dup_every = max(1, cfg.get("burst", 1)), cfg.get("dup_every", 0)
    prefix = cfg.get("prefix", "dev")
    raise_nofile()   # one socket per simulated device: 10,000 devices need more than the usual 1,024
    conns: list[_Conn] = []
    t_connect = time.monotonic()
    ep = select.epoll()
    step = 50   # connections opened before their CONNACKs are awaited: stays below the broker's listen backlog
    # (Mosquitto's is 100; a full accept queue drops SYNs and connect() retries after 1, 3, 7 … s)
    for i in range(n_conn):
        s = socket.create_connection(("127.0.0.1", cfg["port"]))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(connect_packet(f"{prefix}-pub-{i:05d}"))
        conns.append(_Conn(s, 20))
        if len(conns) % step == 0 or len(conns) == n_conn:
            _connacks(conns[len(conns) - ((len(conns) - 1) % step + 1):], ep, cfg)
    fd2conn = {c.fd: c for c in conns}
    connect_s = time.monotonic() - t_connect
    width = max(4, len(str(n_dev - 1)))
    devices = [_Device(f"{prefix}-{i:0{width}d}", conns[i % n_conn], messages, cfg.get("seed", 0) * 100000 + i)
               for i in range(n_dev)]
    for i, d in enumerate(devices):   # spread the duplicates over the devices (and over short streams)
        d.dup_offset = i % dup_every if dup_every else 0
    print(json.dumps({"event": "connected", "connect_s": connect_s, "window": conns[0].window}), flush=True)
    if cfg.get("wait_go"):
        sys.stdin.readline()
    cpu_go = time.process_time()
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
            if d.dup_due:   # the duplicate of the last message goes out before anything newer
                c.out += d.duplicate()
                d.dup_due = False
                used += 1
                dup_sent += 1
            if stage == 1:
                while used < room and d.final < 2:
                    d.final += 1
                    c.out += d.packet(now_ms, d.final)
                    used += 1
                if d.final == 2:
                    d.done = True
                    finished += 1
            else:
                k = min(room - used, burst, allowed)
                if messages:
                    k = min(k, messages - d.seq)
                for j in range(k):
                    c.out += d.packet(now_ms)
                    used += 1
                    if dup_every and (d.seq + d.dup_offset) % dup_every == 0:
                        if used < room:
                            c.out += d.duplicate()
                            used += 1
                            dup_sent += 1
                        else:   # no room in the window: first thing next time (an outbox replay)
                            d.dup_due = True
                            k = j + 1
                            break
                allowed -= k
                if messages and d.seq >= messages and not d.dup_due:
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
    cpu_end = time.process_time()
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
        "cpu_s": cpu_end - cpu_go,
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

SHARE_GROUP = "bench"


def raise_nofile() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: a socket per simulated device (the publisher) and per client (the
    broker, which inherits the bench's limit). 10,000 devices need more than the usual soft 1,024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


class Mosquitto(LocalBroker):
    """ftedge's local broker with the benchmark's configuration: no per-client queue limit (a collector that
    falls behind loses nothing at the broker), no connection limit, no per-PUBLISH logging; started at
    construction (it inherits the bench's raised RLIMIT_NOFILE: one descriptor per simulated device)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.start()

    def config_lines(self) -> list[str]:
        return [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false",
                "max_queued_messages 0", "max_connections -1", f"log_dest file {self.root}/mosquitto.log",
                "log_type error", "log_type warning", "log_type notice", "log_type subscribe",
                "connection_messages false"]


def proc_cpu_s(pid: int, reaped: bool = False) -> float:
    """utime + stime of a process (all threads), seconds; ``reaped``: plus its waited-for children's."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def host_busy_s() -> float:
    """CPU seconds the whole host spent busy so far (all CPUs; /proc/stat: everything but idle and iowait)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / TICK


def proc_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class PgCpu:
    """CPU seconds of a PostgreSQL server so far: the postmaster with its reaped children (cutime + cstime: a
    backend that exited) plus every live child (backends, checkpointer, walwriter, autovacuum, …), less the
    backends in ``exclude`` (the bench's own poller)."""

    def __init__(self, data_dir: Path, exclude: set[int] | None = None) -> None:
        self.pid = int((Path(data_dir) / "postmaster.pid").read_text().split()[0])
        self.exclude = exclude or set()

    def __call__(self) -> float:
        total = proc_cpu_s(self.pid, reaped=True)
        for pid in children(self.pid):
            if pid in self.exclude:
                continue
            try:
                total += proc_cpu_s(pid)
            except (OSError, IndexError, ValueError):
                pass   # gone meanwhile: counted in the postmaster's cutime from the next sample on
        return total

    def processes(self) -> int:
        return 1 + len(children(self.pid))


def is_pg(target: str | Path) -> bool:
    return str(target).startswith(("postgresql://", "postgres://"))


def open_db(target: str | Path) -> Any:
    """A read connection to the collector's database: SQLite (read-only) or PostgreSQL (autocommit)."""
    if is_pg(target):
        import psycopg

        return psycopg.connect(str(target), autocommit=True, connect_timeout=10)
    return sqlite3.connect(f"file:{target}?mode=ro", uri=True, timeout=5)


def committed(db: Any) -> int:
    """Unique messages committed: ``messages_total`` summed over the collectors' shards (an older schema's single
    row sums the same)."""
    try:
        row = db.execute("SELECT COALESCE(SUM(value), 0) FROM counters WHERE name = 'messages_total'").fetchone()
    except Exception:  # noqa: BLE001 - not created yet / a transient error: poll again
        return 0
    return int(row[0]) if row else 0


def lock_waiters(db: Any) -> int:
    """PostgreSQL backends of this database waiting on a lock (a row lock of another collector's transaction)."""
    try:
        return int(db.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                              "AND datname = current_database()").fetchone()[0])
    except Exception:  # noqa: BLE001
        return 0


class CollectorProc:
    """``ftedge fleet serve`` under the rusage launcher (or the bench's own profiled collector). ``db``: a SQLite
    path or a PostgreSQL URL; ``share``: the MQTT share group (several collectors on one PostgreSQL database).
    The constructor starts it; :meth:`wait_ready` waits for its SUBSCRIBE in the broker's log."""

    def __init__(self, broker: Mosquitto, db: str | Path, http_port: int, client_id: str, log: Path,
                 child: dict[str, Any] | None = None, share: str | None = None, wait: bool = True) -> None:
        self.db, self.client_id, self.http_port, self.broker = str(db), client_id, http_port, broker
        self.rec, self.log_path = log.with_name(f"{client_id}.rusage.json"), log
        log.parent.mkdir(parents=True, exist_ok=True)
        if child is None:
            cmd = [str(FTEDGE), "fleet", "serve", "--broker", f"mqtt://127.0.0.1:{broker.port}",
                   "--http", f"127.0.0.1:{http_port}", "--db", self.db, "--client-id", client_id]
            if share:
                cmd += ["--share-group", share]
        else:
            if share:
                raise ValueError("the bench's own collector child does not join share groups")
            self.http_port = 0
            cmd = [str(HOST_PY), str(THIS), "--child-collector", json.dumps(
                {**child, "port": broker.port, "db": self.db, "client_id": client_id})]
        self.sub_line = f" {client_id} 1 {'$share/' + share + '/' if share else ''}ftedge/v1/+/+/#"
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
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = self.t_spawn + timeout
        while time.time() < deadline:   # subscribed: the broker logged its SUBSCRIBE
            if any(ln.endswith(self.sub_line) for ln in self.broker.log().splitlines()):
                break
            if self.launcher.poll() is not None:
                raise RuntimeError(f"the collector exited:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        else:
            raise RuntimeError(f"the collector did not subscribe within {timeout:g} s:\n"
                               f"{self.log_path.read_text()[-3000:]}")
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

    def log_problems(self) -> list[str]:
        """Warnings/errors of the collector's log (deadlock retries, store outages, batches stored one by one)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        keys = ("WARNING", "ERROR", "Traceback", "deadlock", "retr", "serializ")
        return [ln for ln in text.splitlines() if any(k in ln for k in keys)]


def pg_database(pg: Any, name: str) -> str:
    """A fresh database on the bench's PostgreSQL server; its URL."""
    db = "bench_" + "".join(ch if ch.isalnum() else "_" for ch in name.lower())
    pg.sql(f"DROP DATABASE IF EXISTS {db}")
    pg.sql(f"CREATE DATABASE {db}")
    return pg.url.rsplit("/", 1)[0] + "/" + db


def pg_drop(pg: Any, url: str) -> None:
    try:
        pg.sql(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
    except subprocess.CalledProcessError:
        pass


def run_phase(name: str, tmp: Path, pub_cfg: dict[str, Any], rss_every: float = 10.0, timeout: float = 300.0,
              child: dict[str, Any] | None = None, keep_db: bool = False,
              during: tuple[float, Any] | None = None, store: str = "sqlite", collectors: int = 1,
              pg: Any = None) -> dict[str, Any]:
    """One broker, ``collectors`` collectors on one database (``store`` sqlite: one collector, a fresh file;
    postgresql: a fresh database on ``pg``, the collectors in share group ``bench``), one publisher; returns the
    timeline, rates, CPU (collectors, PostgreSQL, broker, publisher), RSS and the verification.
    ``during=(seconds, fn)``: call ``fn(first collector)`` in a thread that many seconds after the publisher
    started."""
    import threading

    root = tmp / name
    broker = Mosquitto(root / "broker")
    if store == "postgresql":
        target: str = pg_database(pg, name)
        share: str | None = SHARE_GROUP
        ids = [f"bench-{name}-c{i + 1}" for i in range(collectors)]
    else:
        if collectors != 1:
            raise ValueError("the SQLite store has one collector")
        target, share, ids = str(root / "fleet.sqlite"), None, [f"bench-collector-{name}"]
    colls: list[CollectorProc] = []
    pub = None
    during_out: dict[str, Any] = {}
    pg_stats: dict[str, Any] = {}
    server_log = Path(pg.root) / "server.log" if store == "postgresql" else None
    log_from = server_log.stat().st_size if server_log and server_log.exists() else 0
    try:
        for cid in ids:   # started together (an ftedge process takes ~1 s to import), then waited for
            colls.append(CollectorProc(broker, target, free_port(), cid, root / f"{cid}.log", child, share,
                                       wait=False))
        for c in colls:
            c.wait_ready()
        mosq_pid, coll_pids = broker.proc.pid, [c.pid for c in colls]
        cfg = {**pub_cfg, "port": broker.port, "wait_go": True}
        pub = subprocess.Popen([str(HOST_PY), str(THIS), "--publisher", json.dumps(cfg)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=open(root / "publisher.log", "wb"), text=True, cwd=ROOT)
        hello = json.loads(pub.stdout.readline() or "{}")
        if hello.get("event") != "connected":
            raise RuntimeError(f"publisher failed:\n{(root / 'publisher.log').read_text()[-3000:]}")
        pub_out: list[str] = []   # its summary (per-device last seqs: more than a pipe holds at 10,000 devices)
        reader = threading.Thread(target=lambda: pub_out.append(pub.stdout.read()), daemon=True)
        reader.start()
        db = open_db(target)
        if store == "postgresql":
            poller = int(db.execute("SELECT pg_backend_pid()").fetchone()[0])
            pg_cpu = PgCpu(pg.data, exclude={poller})
            pg_stats["processes_at_start"] = pg_cpu.processes()
        else:
            pg_cpu = None
        # t, committed, collectors/mosquitto/publisher CPU, PostgreSQL CPU, backends waiting on a lock, host busy
        samples: list[tuple[float, int, float, float, float, float, int, float]] = []
        rss: list[tuple[float, list[float]]] = []

        def coll_cpu() -> float:
            return sum(proc_cpu_s(p) for p in coll_pids)
        cpu0 = (coll_cpu(), proc_cpu_s(mosq_pid), proc_cpu_s(pub.pid), pg_cpu() if pg_cpu else 0.0)
        pub.stdin.write("go\n")
        pub.stdin.flush()
        t_go = time.time()
        if during is not None:
            def _during() -> None:
                time.sleep(during[0])
                try:
                    during_out.update(during[1](colls[0]))
                except Exception as exc:  # noqa: BLE001 - reported, the phase goes on
                    during_out["error"] = f"{type(exc).__name__}: {exc}"
            threading.Thread(target=_during, daemon=True).start()
        next_rss = t_go
        summary = None
        done_at = None
        while True:
            t = time.time()
            n = committed(db)
            samples.append((t, n, coll_cpu(), proc_cpu_s(mosq_pid),
                            proc_cpu_s(pub.pid) if pub.poll() is None else float("nan"),
                            pg_cpu() if pg_cpu else 0.0, lock_waiters(db) if pg_cpu else 0, host_busy_s()))
            if t >= next_rss:
                rss.append((t, [proc_rss_mib(p) for p in coll_pids]))
                next_rss += rss_every
            if summary is None and pub.poll() is not None:
                reader.join(30)
                out = "".join(pub_out).strip().splitlines()
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
        rss.append((time.time(), [proc_rss_mib(p) for p in coll_pids]))
        db.close()
        broker_log_errors = [ln for ln in broker.log().splitlines() if "rror" in ln or "arning" in ln]
        if pg_cpu:
            pg_stats["processes_at_end"] = pg_cpu.processes()
    finally:
        if pub is not None and pub.poll() is None:
            pub.kill()
        rusages = [c.stop() for c in colls]
        broker.stop()
    coll_log_problems = {c.client_id: c.log_problems() for c in colls}
    first = next((i for i, s in enumerate(samples) if s[1] > 0), None)
    last = next((i for i, s in enumerate(samples) if s[1] >= summary["unique"]), len(samples) - 1)
    if first is None:
        raise RuntimeError("nothing was committed")
    ta, na, ca, ma, _, ga, _, ha = samples[first]
    tb, nb, cb, mb, _, gb, _, hb = samples[last]
    win = tb - ta
    pub_cpu = [s for s in samples if s[4] == s[4]]
    # split at the publisher's end: all processes compete for the CPUs before, the collectors are alone after
    mid = next((i for i, s in enumerate(samples) if s[0] >= summary["t_end"]), last)
    mid = min(max(mid, first), last)
    tm, nm, cm, _, _, gm, _, _ = samples[mid]
    split = {
        "while_publishing": {"s": tm - ta, "rate": (nm - na) / (tm - ta) if tm > ta else None,
                             "collector_cores": (cm - ca) / (tm - ta) if tm > ta else None,
                             "pg_cores": (gm - ga) / (tm - ta) if tm > ta and pg_cpu else None},
        "after_publishing": {"s": tb - tm, "rate": (nb - nm) / (tb - tm) if tb > tm else None,
                             "collector_cores": (cb - cm) / (tb - tm) if tb > tm else None,
                             "pg_cores": (gb - gm) / (tb - tm) if tb > tm and pg_cpu else None},
    }
    window = samples[first:last + 1]
    publisher_cpu = summary.get("cpu_s", (pub_cpu[-1][4] - cpu0[2]) if pub_cpu else float("nan"))
    msgs = max(1, nb - na)
    nan = float("nan")
    res = {
        "name": name, "store": store, "collectors": len(colls), "devices": summary["devices"],
        "publisher": {k: v for k, v in summary.items() if k != "last_seq"},
        "committed": nb, "complete": nb >= summary["unique"],
        "first_commit_after_go_s": ta - t_go, "last_commit_after_publish_end_s": tb - summary["t_end"],
        "window_s": win, "rate": (nb - na) / win if win > 0 else nan,
        "collector_cpu_s": cb - ca, "collector_cores": (cb - ca) / win if win > 0 else nan,
        "collector_us_per_msg": 1e6 * (cb - ca) / msgs,
        "pg_cpu_s": (gb - ga) if pg_cpu else None, "pg_cores": (gb - ga) / win if pg_cpu and win > 0 else None,
        "pg_us_per_msg": 1e6 * (gb - ga) / msgs if pg_cpu else None,
        "mosquitto_cpu_s": mb - ma, "mosquitto_cores": (mb - ma) / win if win > 0 else nan,
        "publisher_cpu_s": publisher_cpu, "publisher_cores": publisher_cpu / win if win > 0 else nan,
        "host_busy_cores": (hb - ha) / win if win > 0 else nan,
        "collector_cpu_total_s": samples[-1][2] - cpu0[0],
        "split": split, "during": during_out, "t_go": t_go,
        "rss_mib": [(round(t - t_go, 1), round(v[0], 1)) for t, v in rss],
        "rss_mib_per_collector": {cid: [(round(t - t_go, 1), round(v[i], 1)) for t, v in rss]
                                  for i, cid in enumerate(ids)},
        "rusage": rusages[0] if rusages else {}, "rusages": dict(zip(ids, rusages)),
        "peak_rss_mib": [round(r.get("maxrss_kib", 0) / 1024, 1) for r in rusages],
        "broker_log_problems": broker_log_errors[:5],
        "collector_log_problems": {k: v[:5] for k, v in coll_log_problems.items() if v},
        "collector_log_problem_lines": sum(len(v) for v in coll_log_problems.values()),
        "timeline": [(round(s[0] - t_go, 3), s[1], round(s[2] - cpu0[0], 2), round(s[3] - cpu0[1], 2),
                      round(s[4] - cpu0[2], 2), round(s[5] - cpu0[3], 2), s[6])
                     for s in samples[:: max(1, len(samples) // 400)]],
    }
    if pg_cpu:
        waits = [s[6] for s in window]
        pg_stats.update({"lock_wait_polls": len(waits), "polls_with_lock_waiters": sum(1 for w in waits if w),
                         "mean_lock_waiters": sum(waits) / max(1, len(waits)), "max_lock_waiters": max(waits or [0])})
        pg_stats.update(pg_database_stats(target))
        if server_log and server_log.exists():   # the server's errors meanwhile: a deadlock report names both sides
            with open(server_log, errors="replace") as f:
                f.seek(log_from)
                lines = [ln.rstrip() for ln in f if ln.strip()]
            pg_stats["server_log_errors"] = sum(1 for ln in lines if "ERROR:" in ln)
            pg_stats["server_log"] = lines[:40]
        res["pg"] = pg_stats
    res["verify"] = verify(target, summary)
    if store == "postgresql":
        if keep_db:
            res["db"] = target
        else:
            pg_drop(pg, target)
    elif not keep_db:
        for p in root.glob("fleet.sqlite*"):
            p.unlink()
    else:
        res["db"] = target
    return res


def pg_database_stats(url: str) -> dict[str, Any]:
    """pg_stat_database of the phase's database (transactions, rollbacks: deadlock/serialization retries among
    them, deadlocks) and its size; read after the collectors exited (a backend flushes its statistics then)."""
    try:
        db = open_db(url)
        try:
            time.sleep(0.6)   # the statistics collector's flush interval (PostgreSQL ≥ 15: at most 1 s)
            row = db.execute("SELECT xact_commit, xact_rollback, deadlocks, conflicts, tup_inserted, tup_updated, "
                             "tup_deleted, blks_read, blks_hit, pg_database_size(current_database()) "
                             "FROM pg_stat_database WHERE datname = current_database()").fetchone()
        finally:
            db.close()
    except Exception as exc:  # noqa: BLE001 - reported
        return {"stats_error": f"{type(exc).__name__}: {exc}"}
    keys = ("xact_commit", "xact_rollback", "deadlocks", "conflicts", "tup_inserted", "tup_updated", "tup_deleted",
            "blks_read", "blks_hit", "db_bytes")
    return {k: int(v) for k, v in zip(keys, row)}


def verify(target: str | Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Every (dev, boot, seq) stored exactly once, zero gaps (see the module docstring). ``lost``: messages
    published (and acknowledged by the broker) but not recorded — seqs a device's boot row has not reached
    (``max(0, last − contiguous)`` less the ``seen`` rows beyond contiguous) plus seqs written off as counted holes
    and never filled; ``double_counted``: ``messages_total`` beyond the unique messages recorded."""
    db = open_db(target)
    try:
        q = db.execute
        boots = {(d, b): (int(c), int(m)) for d, b, c, m in q("SELECT device, boot, contiguous, max_seq FROM boots")}
        progress = {d: int(n) for d, n in q("SELECT device, COUNT(*) FROM progress GROUP BY device")}
        c = {k: int(v) for k, v in q("SELECT name, SUM(value) FROM counters GROUP BY name")}
        seen = q("SELECT device, boot, seq FROM seen").fetchall()
        gap_rows = int(q("SELECT COUNT(*) FROM gaps").fetchone()[0])
        unfilled = int(q("SELECT COALESCE(SUM(missing_to - missing_from + 1 - filled), 0) FROM gaps").fetchone()[0])
        n_devices = int(q("SELECT COUNT(*) FROM devices").fetchone()[0])
        results = int(q("SELECT COUNT(*) FROM results").fetchone()[0])
        try:
            per_instance = {}
            for inst, name, v in q("SELECT instance, name, value FROM counters WHERE value <> 0"):
                per_instance.setdefault(inst, {})[name] = int(v)
        except Exception:  # noqa: BLE001 - an older schema (the "before" phase): one row per counter
            if not is_pg(target):
                db.rollback()
            per_instance = {}
    finally:
        db.close()
    beyond: dict[tuple[str, str], int] = {}
    for d, b, s in seen:
        cont = boots.get((d, b), (0, 0))[0]
        if int(s) > cont:
            beyond[(d, b)] = beyond.get((d, b), 0) + 1
    bad = []
    lost = 0
    for dev, (boot, last, nprog) in summary["last_seq"].items():
        got = boots.get((dev, boot))
        if got != (last, last):
            bad.append(f"{dev}: contiguous/max_seq {got} != {last}")
        cont = got[0] if got else 0
        lost += max(0, last - cont - beyond.get((dev, boot), 0))
        if progress.get(dev, 0) != nprog:
            bad.append(f"{dev}: {progress.get(dev, 0)} progress rows != {nprog} published")
    lost += unfilled
    recorded = summary["unique"] - lost
    double = c.get("messages_total", 0) - recorded
    expect = {"messages_total": summary["unique"], "duplicates_total": summary["duplicates"],
              "seq_gaps_total": 0, "malformed_total": 0}
    for k, v in expect.items():
        if c.get(k, 0) != v:
            bad.append(f"{k} = {c.get(k, 0)}, expected {v}")
    if seen:
        bad.append(f"{len(seen)} seen rows left ({sum(beyond.values())} beyond contiguous)")
    if gap_rows:
        bad.append(f"{gap_rows} gap rows ({unfilled} seqs never filled)")
    if n_devices != summary["devices"] or results != summary["devices"]:
        bad.append(f"{n_devices} devices / {results} results, expected {summary['devices']}")
    return {"ok": not bad, "problems": bad[:10], "n_problems": len(bad), "counters": c, "devices": n_devices,
            "lost": lost, "double_counted": max(0, double), "undercounted": max(0, -double),
            "redeliveries": c.get("duplicates_total", 0) - summary["duplicates"],
            "progress_rows": sum(progress.values()), "progress_published": summary["progress"],
            "per_instance": per_instance}


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


def first_paint(tmp: Path, db: str | Path | None, devices: int, runs: int = 5, api_walk_limit: int = 0,
                name: str = "paint") -> dict[str, Any]:
    """An idle ``ftedge fleet serve`` (fresh broker) on a max phase's database: SQLite (its file) or PostgreSQL
    (its URL; the collector joins share group ``bench``); the dashboard's first paint and, with
    ``api_walk_limit``, the walk over ``/api/devices`` page by page."""
    if db is None or (not is_pg(db) and not Path(db).exists()):
        return {"skipped": "needs the max phase's database"}
    root = tmp / name
    broker = Mosquitto(root / "broker")
    port = free_port()
    coll = CollectorProc(broker, db, port, f"bench-collector-{name}", root / "collector.log",
                         share=SHARE_GROUP if is_pg(db) else None)
    try:
        conn = open_db(db)
        try:
            n = int(conn.execute("SELECT COUNT(*) FROM devices").fetchone()[0])
        finally:
            conn.close()
        out = paint_figures(f"http://127.0.0.1:{port}/", runs)
        out["devices_in_db"] = n
        out["store"] = "postgresql" if is_pg(db) else "sqlite"
        if api_walk_limit:
            out["api_walk"] = walk_devices_api(f"http://127.0.0.1:{port}", api_walk_limit, n)
        out["rss_mib_after"] = proc_rss_mib(coll.pid)
    finally:
        coll.stop()
        broker.stop()
    return out


def walk_devices_api(base: str, limit: int, expect: int) -> dict[str, Any]:
    """GET /api/devices?limit=N, then each ``Link: <…>; rel="next"`` until none: pages, time, and whether every
    device came exactly once, in (fleet, device) order, as many as ``X-Total-Count`` says."""
    import re
    import urllib.request

    url: str | None = f"{base}/api/devices?limit={limit}"
    seen: set[tuple[str, str]] = set()
    dupes = pages = 0
    ordered, totals, page_ms, sizes = True, set(), [], []
    prev: tuple[str, str] | None = None
    t0 = time.perf_counter()
    while url:
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as r:
            body = r.read()
            total, link = r.headers.get("X-Total-Count"), r.headers.get("Link")
        rows = json.loads(body)
        page_ms.append((time.perf_counter() - t) * 1000)
        sizes.append(len(body))
        pages += 1
        totals.add(total)
        for row in rows:
            key = (row["fleet"], row["device"])
            if key in seen:
                dupes += 1
            seen.add(key)
            if prev is not None and key <= prev:
                ordered = False
            prev = key
        m = re.search(r'<([^>]+)>;\s*rel="next"', link or "")
        url = base + m.group(1) if m else None
        if pages > 10 * (expect // max(1, limit) + 2):
            raise RuntimeError("/api/devices: too many pages (a Link loop?)")
    total_s = time.perf_counter() - t0
    srt = sorted(page_ms)
    return {"limit": limit, "pages": pages, "devices": len(seen), "duplicates": dupes, "ordered": ordered,
            "x_total_count": sorted(totals), "walk_ms": total_s * 1000, "first_page_ms": page_ms[0],
            "page_ms_median": srt[len(srt) // 2], "page_ms_max": srt[-1],
            "page_bytes_median": sorted(sizes)[len(sizes) // 2],
            "ok": len(seen) == expect and not dupes and ordered and totals == {str(expect)}}


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


# == --store postgresql: PostgreSQL collectors (1, 2, 3, …) against the SQLite single collector ====================

def run_store_comparison(args: argparse.Namespace, tmp: Path, out: dict[str, Any], phases: list[str]) -> None:
    """Per device count: the SQLite single-collector max phase, then one PostgreSQL max phase per collector count
    (fresh broker and database each, same publisher configuration); then ``paint`` (an idle collector on the
    largest PostgreSQL phase's database) and the ``soak`` (max collectors, the largest device count)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from postgres import PostgresServer   # tests/postgres.py: a throwaway cluster on a free loopback port

    runs: list[dict[str, Any]] = out.setdefault("runs", [])
    top_dev, top_n = max(args.device_list), max(args.collector_list)
    # under the bench's temporary directory: --keep keeps its server.log (deadlock reports) with the rest
    with PostgresServer(root=tmp / "postgres", max_connections=200, durable=args.pg_durable) as pg:
        out["postgres"] = {"version": pg.sql("SHOW server_version"), "root": str(pg.root),
                           "settings": {k: pg.sql(f"SHOW {k}") for k in (
                               "shared_buffers", "fsync", "synchronous_commit", "full_page_writes",
                               "max_connections", "deadlock_timeout")}}
        kept = None
        for devices in args.device_list:
            cfg = {"devices": devices, "connections": args.connections, "dup_every": args.dup_every,
                   "messages": max(4, args.total_messages // devices - 2)}
            if "max" not in phases:
                break
            r = run_phase(f"max-sqlite-d{devices}", tmp, cfg)
            r["phase"] = "max"
            runs.append(r)
            print_progress(r["name"], r)
            for n in args.collector_list:
                keep = devices == top_dev and n == top_n and "paint" in phases
                r = run_phase(f"max-pg{n}-d{devices}", tmp, cfg, store="postgresql", collectors=n, pg=pg,
                              keep_db=keep)
                r["phase"] = "max"
                runs.append(r)
                print_progress(r["name"], r)
                if keep:
                    kept = r["db"]
        if "paint" in phases:
            out["paint"] = first_paint(tmp, kept, top_dev, api_walk_limit=500, name="paint-pg")
            out["paint"]["phase_db"] = f"max-pg{top_n}-d{top_dev}"
            print_progress("paint", out["paint"])
        if kept:
            pg_drop(pg, kept)
        if "soak" in phases and args.soak_seconds > 0:
            cfg = {"devices": top_dev, "connections": args.connections, "dup_every": args.dup_every,
                   "rate": args.soak_rate, "seconds": args.soak_seconds}
            r = run_phase(f"soak-pg{top_n}-d{top_dev}", tmp, cfg, store="postgresql", collectors=top_n, pg=pg)
            r["phase"] = "soak"
            r["memory"] = soak_memory(r, args.soak_seconds)
            out["soak"] = r
            print_progress(r["name"], r)


def slope_mib_per_min(series: list[tuple[float, float]], t_from: float) -> float | None:
    """Least-squares slope of (s, MiB) samples from ``t_from`` on, in MiB per minute."""
    pts = [(t, v) for t, v in series if t >= t_from and v == v]
    if len(pts) < 2:
        return None
    mt, mv = sum(t for t, _ in pts) / len(pts), sum(v for _, v in pts) / len(pts)
    var = sum((t - mt) ** 2 for t, _ in pts)
    return 60 * sum((t - mt) * (v - mv) for t, v in pts) / var if var else None


def soak_memory(sk: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Per collector, over the paced load (the samples up to the generator's last paced message): VmRSS start
    (first sample), at the end of the warm-up (``min(60 s, half the soak)``), end, max and the least-squares slope
    after the warm-up, and whether it is flat (end ≤ warm × 1.1 + 5 MiB). Reported apart: the sample after the
    generator's final burst (every device's result and last job at once: 2 × devices messages as fast as the
    windows allow), which is a load spike, not growth."""
    warm_t = min(60.0, seconds / 2)
    paced_end = seconds + 0.5
    per = {}
    for cid, series in sk["rss_mib_per_collector"].items():
        vals = [(t, v) for t, v in series if v == v and t <= paced_end]
        if not vals:
            continue
        warm = next((v for t, v in vals if t >= warm_t), vals[-1][1])
        per[cid] = {"start": vals[0][1], "warm": warm, "end": vals[-1][1], "max": max(v for _, v in vals),
                    "slope_mib_per_min": slope_mib_per_min(vals, warm_t),
                    "after_final_burst": series[-1][1], "flat": vals[-1][1] <= warm * 1.1 + 5}
    return {"warm_s": warm_t, "paced_end_s": paced_end, "collectors": per,
            "flat": bool(per) and all(x["flat"] for x in per.values())}


def report_stores(out: dict[str, Any]) -> str:
    a, runs, pt, sk = out["args"], out.get("runs", []), out.get("paint"), out.get("soak")
    pgv = out.get("postgres", {})
    st = pgv.get("settings", {})
    lines = [f"#### Fleet collectors: PostgreSQL (1–{max(a['collector_list'])} collectors, one share group) vs the "
             f"SQLite single collector — loopback, Mosquitto {out.get('mosquitto', '?')}, MQTT v5 QoS 1, "
             f"PostgreSQL {pgv.get('version', '?')} (fsync {st.get('fsync', '?')}, synchronous_commit "
             f"{st.get('synchronous_commit', '?')}), {os.cpu_count()} CPUs", ""]
    base = {r["devices"]: r["rate"] for r in runs if r["store"] == "sqlite"}
    lines += ["| phase | store | collectors | devices | messages | ingest msg/s | × SQLite 1 | collector µs CPU/msg "
              "| PostgreSQL µs CPU/msg | cores used: collectors / postgres / broker / publisher "
              "| peak RSS per collector (MiB) | lost | double counted |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs + ([sk] if sk else []):
        v, b = r["verify"], base.get(r["devices"])
        lines.append(
            f"| {r.get('phase', r['name'])} | {r['store']} | {r['collectors']} | {r['devices']:,} | "
            f"{r['publisher']['unique']:,} (+{r['publisher']['duplicates']:,} dup) | {_f(r['rate'])} | "
            f"{_f(r['rate'] / b if b and r.get('phase') == 'max' else None, '.2f')} | "
            f"{_f(r['collector_us_per_msg'])} | {_f(r['pg_us_per_msg'])} | "
            f"{_f(r['collector_cores'], '.2f')} / {_f(r['pg_cores'], '.2f')} / {_f(r['mosquitto_cores'], '.2f')} / "
            f"{_f(r['publisher_cores'], '.2f')} | {', '.join(_f(x) for x in r['peak_rss_mib'])} | "
            f"{v['lost']:,} | {v['double_counted']:,} |")
    rows = []
    allr = runs + ([sk] if sk else [])
    if allr:
        clean = all(r["verify"]["lost"] == 0 and r["verify"]["double_counted"] == 0 for r in allr)
        ok = all(r["verify"]["ok"] for r in allr)
        failed = "; ".join(p for r in allr for p in r["verify"]["problems"][:2])
        rows.append(("zero lost and zero double-counted messages, every run",
                     f"{sum(r['verify']['lost'] for r in allr):,} lost, "
                     f"{sum(r['verify']['double_counted'] for r in allr):,} double counted over {len(allr)} runs "
                     f"({sum(r['committed'] for r in allr):,} messages); all checks "
                     f"{'passed' if ok else 'passed except: ' + failed}",
                     "0 / 0", _met(clean and ok)))
    n_max = max(a["collector_list"])
    for d in a["device_list"]:
        pg = {r["collectors"]: r for r in runs if r["store"] == "postgresql" and r["devices"] == d}
        if 1 in pg and n_max in pg and n_max > 1:
            r1, rn = pg[1]["rate"], pg[n_max]["rate"]
            rows.append((f"{n_max} collectors on PostgreSQL ingest at least as fast as one, {d:,} devices",
                         f"{_f(rn)} vs {_f(r1)} msg/s ({rn / r1:.2f}×); "
                         + ", ".join(f"{k}: {_f(x['rate'])}" for k, x in sorted(pg.items())),
                         "≥ 1.00×", _met(rn >= r1)))
    if pt and "fcp_cold_ms" in pt:
        rows.append((f"dashboard first paint, {pt['devices_in_db']:,} devices on PostgreSQL (idle collector)",
                     f"{pt['fcp_cold_ms']:.0f} ms cold, {pt['fcp_warm_median_ms']:.0f} ms warm (median), max "
                     f"{pt['fcp_max_ms']:.0f} ms", "< 1 s", _met(pt["fcp_max_ms"] < 1000)))
    elif pt:
        rows.append(("dashboard first paint", str(pt.get("skipped") or pt), "< 1 s", "—"))
    if pt and "api_walk" in pt:
        w = pt["api_walk"]
        rows.append((f"/api/devices paginated (limit {w['limit']}, after=FLEET/DEVICE, X-Total-Count, Link rel=next)",
                     f"{w['pages']} pages, {w['devices']:,} devices, {w['duplicates']} repeated, "
                     f"{'in order' if w['ordered'] else 'OUT OF ORDER'}, "
                     f"X-Total-Count {', '.join(w['x_total_count'])}; "
                     f"walk {w['walk_ms']:.0f} ms (page median {w['page_ms_median']:.0f} ms, max "
                     f"{w['page_ms_max']:.0f} ms)", "every device exactly once", _met(w["ok"])))
    if sk:
        mem = sk["memory"]
        desc = "; ".join(f"{cid.rsplit('-', 1)[-1]}: {x['start']:.0f} → {x['warm']:.0f} "
                         f"(at {mem['warm_s']:.0f} s) → "
                         f"{x['end']:.0f} MiB, max {x['max']:.0f}, {_f(x['slope_mib_per_min'], '+.2f')} MiB/min "
                         f"after {mem['warm_s']:.0f} s ({x['after_final_burst']:.0f} after the final burst)"
                         for cid, x in mem["collectors"].items())
        rows.append((f"memory per collector over the soak: {sk['collectors']} collectors, {sk['devices']:,} devices, "
                     f"{a['soak_rate']:,.0f} msg/s for {a['soak_seconds']:g} s", desc,
                     "flat" + (" (target: a 10-minute soak)" if a["soak_seconds"] < 600 else ""),
                     _met(mem["flat"] and sk["verify"]["ok"])))
    lines += ["", "| measure | result | target | status |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    return "\n".join(lines)


def details_stores(out: dict[str, Any]) -> str:
    a = out["args"]
    ls = ["", "What the numbers include:"]
    for r in out.get("runs", []) + ([out["soak"]] if out.get("soak") else []):
        pb, v, sp = r["publisher"], r["verify"], r["split"]
        c = v["counters"]
        line = (f"- {r['name']}: {pb['unique']:,} unique + {pb['duplicates']:,} duplicate messages from "
                f"{pb['devices']:,} devices on {pb['connections']:,} connections (connected in "
                f"{pb['connect_s']:.1f} s, "
                f"Receive Maximum {pb['window']}), published in {pb['publish_s']:.2f} s (generator "
                f"{pb.get('cpu_s', float('nan')):.1f} CPU s); first commit {r['first_commit_after_go_s']:.2f} s after "
                f"the start, last {r['last_commit_after_publish_end_s']:.2f} s after the last publish; window "
                f"{r['window_s']:.2f} s: {_f(r['rate'])} msg/s; CPU s in the window: collectors "
                f"{r['collector_cpu_s']:.1f}, PostgreSQL {_f(r['pg_cpu_s'], '.1f')}, Mosquitto "
                f"{r['mosquitto_cpu_s']:.1f}; the whole host was busy {_f(r.get('host_busy_cores'), '.2f')} of "
                f"{os.cpu_count()} cores. While publishing: {_f(sp['while_publishing']['rate'])} msg/s "
                f"(collectors {_f(sp['while_publishing']['collector_cores'], '.2f')} cores, PostgreSQL "
                f"{_f(sp['while_publishing']['pg_cores'], '.2f')}) over {sp['while_publishing']['s']:.1f} s; after: "
                f"{_f(sp['after_publishing']['rate'])} msg/s ({_f(sp['after_publishing']['collector_cores'], '.2f')} / "
                f"{_f(sp['after_publishing']['pg_cores'], '.2f')}) over {sp['after_publishing']['s']:.1f} s. "
                f"Verified: {'OK' if v['ok'] else v['problems']} (messages_total {c.get('messages_total', 0):,}, "
                f"duplicates_total {c.get('duplicates_total', 0):,} = sent {pb['duplicates']:,} "
                f"{v['redeliveries']:+,} redelivered, seq_gaps_total {c.get('seq_gaps_total', 0)}, late_fills_total "
                f"{c.get('late_fills_total', 0)}, progress rows {v['progress_rows']:,}/{v['progress_published']:,}, "
                f"{v['devices']:,} devices).")
        if len(v.get("per_instance", {})) > 1 or r["store"] == "postgresql":
            share = {k.rsplit("-", 1)[-1]: x.get("messages_total", 0) for k, x in v.get("per_instance", {}).items()}
            tot = sum(share.values()) or 1
            line += (" Share of messages_total per collector: "
                     + ", ".join(f"{k} {n:,} ({100 * n / tot:.1f}%)" for k, n in sorted(share.items())) + ".")
        g = r.get("pg")
        if g:
            line += (f" PostgreSQL: {g.get('xact_commit', '?'):,} commits, {g.get('xact_rollback', '?')} rollbacks, "
                     f"{g.get('deadlocks', '?')} deadlocks; a collector waited on a lock in "
                     f"{g['polls_with_lock_waiters']}/{g['lock_wait_polls']} polls (50 ms apart; mean "
                     f"{g['mean_lock_waiters']:.2f}, max {g['max_lock_waiters']} waiting); database "
                     f"{g.get('db_bytes', 0) / 2**20:.0f} MiB; {g.get('processes_at_start')} server processes.")
        if g and g.get("server_log_errors"):
            dl = [ln.split("ERROR:", 1)[1].strip() for ln in g["server_log"] if "ERROR:" in ln]
            line += f" PostgreSQL log: {g['server_log_errors']} ERROR lines ({'; '.join(sorted(set(dl)))[:200]})."
        if r["collector_log_problem_lines"]:
            line += (f" Collector logs: {r['collector_log_problem_lines']} warning/retry lines, e.g. "
                     f"{next(iter(r['collector_log_problems'].values()))[:2]}")
        if r["broker_log_problems"]:
            line += f" Broker log: {r['broker_log_problems']}"
        ls.append(line)
    sk = out.get("soak")
    if sk:
        for cid, series in sk["rss_mib_per_collector"].items():
            step = max(1, len(series) // 12)
            ls.append(f"- soak VmRSS of {cid} (s: MiB): " + ", ".join(f"{t:.0f}: {v:.0f}" for t, v in series[::step])
                      + f", end {series[-1][1]:.0f}")
    pt = out.get("paint")
    if pt and "loads" in pt:
        ls.append(f"- first paint: {pt['url']} on the database of {pt.get('phase_db')} ({pt['devices_in_db']:,} "
                  f"devices; one idle collector of share group bench, fresh broker; page {pt['page_bytes']:,} bytes, "
                  f"one GET {pt['server_get_ms']:.0f} ms from Python), {len(pt['loads'])} loads in one headless "
                  "Chromium (cache disabled), first-contentful-paint from navigation start: "
                  + ", ".join(f"{x['first_contentful_paint_ms']:.0f}" for x in pt["loads"])
                  + f" ms; `chromium --headless --dump-dom` whole process {pt['dump_dom_process_ms']:.0f} ms, "
                  f"{pt['dump_dom_device_rows']} device rows in its DOM.")
    elif pt:
        ls.append(f"- first paint: {pt}")
    st = out.get("postgres", {}).get("settings", {})
    ls.append(f"- One PostgreSQL {out.get('postgres', {}).get('version', '?')} server for the run "
              f"(tests/postgres.py: shared_buffers {st.get('shared_buffers')}, fsync {st.get('fsync')}, "
              f"synchronous_commit {st.get('synchronous_commit')}, full_page_writes {st.get('full_page_writes')}), a "
              "fresh database per phase; its CPU = postmaster + every child process (backends of the collectors, "
              "checkpointer, walwriter, autovacuum; exited ones through the postmaster's cutime), less the bench's "
              "own polling backend. Everything on one host over loopback (no TLS), broker + generator + collectors + "
              f"PostgreSQL sharing {os.cpu_count()} CPUs. Load average before/after: "
              f"{[round(x, 2) for x in out['loadavg_before']]} / {[round(x, 2) for x in out['loadavg_after']]}; "
              f"bench total {out['bench_s']:.0f} s.")
    cmd = (f".venv/bin/python bench/fleet_ingest.py --store postgresql --collectors "
           f"{','.join(map(str, a['collector_list']))} --devices {','.join(map(str, a['device_list']))}")
    if a["total_messages"] != 200000:
        cmd += f" --total-messages {a['total_messages']}"
    cmd += f" --soak-seconds {a['soak_seconds']:g}"
    if a["soak_rate"] != 5000:
        cmd += f" --soak-rate {a['soak_rate']:g}"
    if a.get("pg_durable"):
        cmd += " --pg-durable"
    if a["phases"] != "max,paint,soak":
        cmd += f" --phases {a['phases']}"
    ls.append(f"- Reproduce: `{cmd}`")
    return "\n".join(ls)


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
    ap.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite",
                    help="sqlite (default): the single-collector phases below; postgresql: per --devices count the "
                         "SQLite single collector, then PostgreSQL with each --collectors count; paint; soak")
    ap.add_argument("--collectors", default="1,2,3", metavar="N,…",
                    help="--store postgresql: collector counts, one max phase each (default 1,2,3)")
    ap.add_argument("--devices", default="1000", metavar="N,…",
                    help="simulated devices (default 1000); --store postgresql: a comma list, e.g. 1000,10000")
    ap.add_argument("--total-messages", type=int, default=200000, metavar="N",
                    help="--store postgresql: unique messages per max phase, spread over the devices (default "
                         "200000)")
    ap.add_argument("--pg-durable", action="store_true",
                    help="--store postgresql: fsync/synchronous_commit/full_page_writes on (default: off, as in "
                         "tests/postgres.py)")
    ap.add_argument("--json-out", type=Path, metavar="FILE", help="also write the JSON object to FILE")
    ap.add_argument("--connections", type=int, default=0, help="TCP connections (default: one per device)")
    ap.add_argument("--messages", type=int, default=200, help="max phase: messages per device (default 200)")
    ap.add_argument("--rate", type=float, default=10000, help="paced phase: offered msg/s (default 10000)")
    ap.add_argument("--seconds", type=float, default=30, help="paced phase: seconds (default 30)")
    ap.add_argument("--soak-seconds", type=float, default=60, help="soak phase seconds (default 60; 0 skips)")
    ap.add_argument("--soak-rate", type=float, default=5000, help="soak offered msg/s (default 5000)")
    ap.add_argument("--dup-every", type=int, default=97, help="send every Nth message twice (default 97; 0: never)")
    ap.add_argument("--before", default="09914b8", metavar="REF",
                    help="git revision whose fleet/ingest.py + store.py run the 'before' phase (default 09914b8)")
    ap.add_argument("--phases", default=None,
                    help="comma-separated subset of baselines,before,max,paced,soak,paint (default: all); "
                         "--store postgresql: of max,paint,soak (default: all three)")
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
    try:
        args.device_list = [int(x) for x in str(args.devices).split(",") if x.strip()]
        args.collector_list = [int(x) for x in str(args.collectors).split(",") if x.strip()]
    except ValueError:
        ap.error("--devices and --collectors take comma-separated numbers")
    if not args.device_list or min(args.device_list) < 1 or not args.collector_list or min(args.collector_list) < 1:
        ap.error("--devices and --collectors need positive numbers")
    if args.phases is None:
        args.phases = "max,paint,soak" if args.store == "postgresql" else "baselines,before,max,paced,soak,paint"
    if args.store == "sqlite":
        if len(args.device_list) > 1:
            ap.error("--store sqlite runs one device count (several: --store postgresql)")
        args.devices = args.device_list[0]
    raise_nofile()   # inherited by the publisher and Mosquitto: a socket per simulated device
    tmp = Path(tempfile.mkdtemp(prefix="fleet-ingest-"))
    phases = args.phases.split(",")
    common = {"devices": args.devices, "connections": args.connections, "dup_every": args.dup_every}
    version = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True).stdout.split("\n")[0]
    out: dict[str, Any] = {"args": vars(args), "tmp": str(tmp), "loadavg_before": os.getloadavg(),
                           "mosquitto": version.replace("mosquitto version ", "").strip()}
    t_bench = time.time()
    if args.store == "postgresql":
        try:
            run_store_comparison(args, tmp, out, phases)
        finally:
            end_run(args, out, tmp, t_bench)
        print(report_stores(out))
        print(details_stores(out))
        emit_json(args, out)
        return 0 if all(r["verify"]["ok"] for r in out.get("runs", []) + [out[k] for k in ("soak",) if k in out]) else 1
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
        end_run(args, out, tmp, t_bench)
    print(report(out))
    print(details(out))
    emit_json(args, out)
    ok = all(out[p]["verify"]["ok"] for p in ("before", "max", "paced", "soak") if p in out)
    return 0 if ok else 1


def emit_json(args: argparse.Namespace, out: dict[str, Any]) -> None:
    if args.json or args.json_out:
        text = json.dumps(out, default=str)
        if args.json:
            print(text)
        if args.json_out:
            args.json_out.write_text(text + "\n")


def end_run(args: argparse.Namespace, out: dict[str, Any], tmp: Path, t_bench: float) -> None:
    """Record the load average after and the run's length; remove the temporary directory unless --keep."""
    out["loadavg_after"] = os.getloadavg()
    out["bench_s"] = time.time() - t_bench
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


def print_progress(name: str, res: dict[str, Any]) -> None:
    keys = ("rate", "collector_cores", "pg_cores", "mosquitto_cores", "publisher_cores", "collector_us_per_msg",
            "pg_us_per_msg", "complete", "fcp_cold_ms", "fcp_warm_median_ms", "naive_rate", "batch500_rate",
            "batch5000_rate")
    print(f"[{name}] " + ", ".join(f"{k}={res[k]:.3g}" if isinstance(res[k], float) else f"{k}={res[k]}"
                                   for k in keys if k in res and res[k] is not None)
          + (f", verify={res['verify']['ok']}, lost={res['verify']['lost']}, "
             f"double={res['verify']['double_counted']}" if "verify" in res else "")
          + (f", problems={res['verify']['problems'][:3]}" if "verify" in res and not res["verify"]["ok"] else "")
          + (f", api_walk_ok={res['api_walk']['ok']}" if "api_walk" in res else ""),
          file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
