"""The load generator (``--publisher``): ONE process simulating the fleet with raw MQTT v5 over TCP, one
connection per simulated device, PUBLISH QoS 1 from byte templates, PUBACKs counted (no paho: it must cost far less
CPU than the collector)."""

from __future__ import annotations

import json
import random
import resource
import select
import socket
import struct
import sys
import time
from typing import Any

from bench.fleet_ingest.mqtt_packets import connack_receive_maximum, connect_packet, mqtt_str, read_packets, varint

FLEET = "bench"


def raise_nofile() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: a socket per simulated device (the publisher) and per client (the
    broker, which inherits the bench's limit). 10,000 devices need more than the usual soft 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


# the contract's messages (docs/mqtt.md), with the envelope v, ts, dev, boot, seq, hist
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


class Connection:
    """One TCP connection to the broker: its PUBACK window, packets in flight, send and receive buffers."""

    __slots__ = ("sock", "fd", "inflight", "window", "out", "rx", "pid", "acked", "errors", "dirty")

    def __init__(self, sock: socket.socket, window: int) -> None:
        self.sock, self.fd, self.window = sock, sock.fileno(), window
        self.inflight, self.out, self.rx, self.pid, self.acked, self.errors = 0, bytearray(), bytearray(), 0, 0, 0
        self.dirty = False


class Device:
    """One simulated device: its boot, job and seq, and the next contract message as a QoS 1 PUBLISH."""

    __slots__ = ("name", "conn", "boot", "job", "seq", "limit", "prefix", "progress", "dups", "last", "done",
                 "started", "final", "topics", "dup_offset", "dup_due")

    def __init__(self, name: str, conn: Connection | None, limit: int, seed: int) -> None:
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


def _connacks(batch: list[Connection], ep: Any, cfg: dict[str, Any]) -> None:
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
    conns: list[Connection] = []
    t_connect = time.monotonic()
    ep = select.epoll()
    step = 50   # connections opened before their CONNACKs are awaited: stays below the broker's listen backlog
    # (Mosquitto's is 100; a full accept queue drops SYNs and connect() retries after 1, 3, 7 … s)
    for i in range(n_conn):
        s = socket.create_connection(("127.0.0.1", cfg["port"]))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(connect_packet(f"{prefix}-pub-{i:05d}"))
        conns.append(Connection(s, 20))
        if len(conns) % step == 0 or len(conns) == n_conn:
            _connacks(conns[len(conns) - ((len(conns) - 1) % step + 1):], ep, cfg)
    fd2conn = {c.fd: c for c in conns}
    connect_s = time.monotonic() - t_connect
    width = max(4, len(str(n_dev - 1)))
    devices = [Device(f"{prefix}-{i:0{width}d}", conns[i % n_conn], messages, cfg.get("seed", 0) * 100000 + i)
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
    dirty: list[Connection] = []
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
