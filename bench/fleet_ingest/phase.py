"""One phase: a fresh broker, the collector(s) on one database, the load generator; the timeline of committed
messages and CPU seconds, the rates, RSS and the verification."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from bench._common import HOST_PY, ROOT, cpu_times, proc_cpu_s
from bench.fleet_ingest.collector import SHARE_GROUP, CollectorProc, Mosquitto, proc_rss_mib
from bench.fleet_ingest.database import committed, lock_waiters, open_db, verify
from bench.fleet_ingest.postgres import PgCpu, pg_database, pg_database_stats, pg_drop
from ftedge.fleet.local_broker import free_port


def host_busy_s() -> float:
    """CPU seconds the whole host spent busy so far (all CPUs; /proc/stat: everything but idle and iowait)."""
    return cpu_times()[0]


def run_phase(name: str, tmp: Path, pub_cfg: dict[str, Any], rss_every: float = 10.0, timeout: float = 300.0,
              child: dict[str, Any] | None = None, keep_db: bool = False,
              during: tuple[float, Any] | None = None, store: str = "sqlite", collectors: int = 1,
              pg: Any = None) -> dict[str, Any]:
    """One broker, ``collectors`` collectors on one database (``store`` sqlite: one collector, a fresh file;
    postgresql: a fresh database on ``pg``, the collectors in share group ``SHARE_GROUP``, random per run), one
    publisher; returns the timeline, rates, CPU (collectors, PostgreSQL, broker, publisher), RSS and the verification.
    ``during=(seconds, fn)``: call ``fn(first collector)`` in a thread that many seconds after the publisher
    started."""
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
        pub = subprocess.Popen([str(HOST_PY), "-m", "bench.fleet_ingest", "--publisher", json.dumps(cfg)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(root / "publisher.log", "wb"),
                               text=True, cwd=ROOT)
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
