"""The four measurements: agent idle, telemetry overhead of a cached job (CLI vs agent job), outbox throughput and
outage replay."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from bench._common import CLK_TCK, median, proc_cpu_s, proc_status, progress
from bench.agent_bench.collector import Collector, topic_root
from bench.agent_bench.processes import AgentProc, Worker, measure, write_config

say = progress()


def bench_idle(args: argparse.Namespace, ctx: dict) -> dict:
    dev = "idle"
    cfg = write_config(ctx["work"], dev, ctx["broker"].port, ctx["data_root"], ctx["bundle_root"], ctx["keys"])
    col: Collector = ctx["collector"]
    t_start = time.monotonic()
    agent = AgentProc(ctx["py"], cfg, ctx["work"] / f"agent-{dev}.log", ctx["env"], ctx["work"])
    try:
        t_online = col.online(dev)
        say(f"  idle agent online after {t_online - t_start:.2f} s (birth + meta received); sampling {args.idle_s:g} s")
        cpu0, w0 = proc_cpu_s(agent.pid), time.monotonic()
        samples = []
        end = w0 + args.idle_s
        while (now := time.monotonic()) < end:
            time.sleep(min(1.0, end - now))
            samples.append(proc_status(agent.pid))
        cpu1, w1 = proc_cpu_s(agent.pid), time.monotonic()
        if agent.proc.poll() is not None:
            raise RuntimeError(f"the idle agent exited\n{agent.tail()}")
    finally:
        rc = agent.stop()
    cpu_pct = 100.0 * (cpu1 - cpu0) / (w1 - w0)
    rss_kib = max(s["VmRSS"] for s in samples)
    return {"window_s": round(w1 - w0, 2), "cpu_s": round(cpu1 - cpu0, 3), "cpu_percent": round(cpu_pct, 3),
            "clk_tck": CLK_TCK,
            "rss_mb": round(rss_kib * 1024 / 1e6, 1), "rss_mib": round(rss_kib / 1024, 1),
            "rss_mib_last": round(samples[-1]["VmRSS"] / 1024, 1), "hwm_mib": round(samples[-1]["VmHWM"] / 1024, 1),
            "threads": samples[-1]["Threads"], "startup_to_online_s": round(t_online - t_start, 2),
            "exit_code_on_sigterm": rc}


def bench_telemetry(args: argparse.Namespace, ctx: dict) -> dict:
    work, py, env = ctx["work"], ctx["py"], ctx["env"]
    bundle, data = ctx["bundle_root"] / "kws", ctx["data_root"] / "clips.npz"
    common = ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--mode", "cached",
              "--seed", str(args.seed), "--quiet", "--json"]
    runs: dict[str, list[dict]] = {"a": [], "a0": [], "b": []}
    for r in range(args.repeat):
        # (a) CLI, cold cache written (what the agent job does)
        m = measure([py, "-m", "ftedge", "train", str(bundle), "--data", str(data), "-o", str(work / f"run-a-{r}"),
                     "--cache-dir", str(work / f"cache-a-{r}"), *common], env, work)
        runs["a"].append(_cli_row(m))
        # (a0) CLI, --no-cache (reference)
        m = measure([py, "-m", "ftedge", "train", str(bundle), "--data", str(data), "-o", str(work / f"run-a0-{r}"),
                     "--no-cache", *common], env, work)
        runs["a0"].append(_cli_row(m))
        # (b) agent job over MQTT
        runs["b"].append(_agent_job(args, ctx, r))
        a, a0, b = runs["a"][-1], runs["a0"][-1], runs["b"][-1]
        say(f"  repeat {r + 1}/{args.repeat}: (a) duration_s {a['duration_s']:.3f} (wall {a['wall_s']:.2f}); "
            f"(a0) {a0['duration_s']:.3f}; (b) duration_s {b['duration_s']:.3f}, command->result {b['cmd_to_result_s']:.2f} s")
    med = {k: {f: round(median([x[f] for x in v]), 4) for f in v[0] if isinstance(v[0][f], (int, float))
               and not isinstance(v[0][f], bool)} for k, v in runs.items()}
    a, b = med["a"], med["b"]
    overhead = (b["duration_s"] - a["duration_s"]) / a["duration_s"]
    a_nl, b_nl = a["duration_s"] - a["load_s"], b["duration_s"] - b["load_s"]
    same = [x["final_accuracy"] for x in runs["a"] + runs["b"]]
    a_all = [x["duration_s"] for x in runs["a"]]
    noise = (max(a_all) - min(a_all)) / 2 / a["duration_s"]  # half the (a) range, relative to its median
    return {
        "runs": runs, "median": med,
        "overhead": round(overhead, 4),
        "noise_half_range_a": round(noise, 4),
        "within_noise": abs(overhead) <= noise if len(a_all) > 1 else None,
        "overhead_excluding_load": round((b_nl - a_nl) / a_nl, 4),
        "overhead_train_s": round((b["train_s"] - a["train_s"]) / a["train_s"], 4),
        "overhead_per_epoch_ms": round(1000 * (b["duration_s"] - a["duration_s"]) / args.epochs, 2),
        "cmd_to_result_vs_cli_wall": round((b["cmd_to_result_s"] - a["wall_s"]) / a["wall_s"], 4),
        "same_final_accuracy": len(set(same)) == 1,
        "final_accuracies": sorted(set(same)),
    }


def _cli_row(m: dict) -> dict:
    res = m["result"]
    if res.get("status") != "succeeded":
        raise RuntimeError(f"ftedge train did not succeed: {res.get('status')} {res.get('stop_reason')}")
    t = res.get("timings", {})
    return {"duration_s": res["duration_s"], "load_s": t.get("load_s", 0.0), "embed_s": t.get("embed_s", 0.0),
            "train_s": t.get("train_s", 0.0), "wall_s": round(m["wall_s"], 3), "cpu_s": round(m["cpu_s"], 3),
            "peak_rss_mib": round(m["rss_mib"], 1), "final_accuracy": res["metrics"].get("accuracy"),
            "cache": res.get("cache")}


def _agent_job(args: argparse.Namespace, ctx: dict, r: int) -> dict:
    work, col = ctx["work"], ctx["collector"]
    dev = f"job{r}"
    cfg = write_config(work, dev, ctx["broker"].port, ctx["data_root"], ctx["bundle_root"], ctx["keys"])
    agent = AgentProc(ctx["py"], cfg, work / f"agent-{dev}.log", ctx["env"], work)
    root = topic_root(dev)
    try:
        col.online(dev)
        cpu0 = proc_cpu_s(agent.pid)
        cmd_id, t_cmd = col.send(dev, "train", {"bundle": "kws", "data": "clips.npz", "epochs": args.epochs,
                                                "batch_size": args.batch_size, "mode": "cached", "seed": args.seed})
        t_reply, reply = col.reply(dev, cmd_id)
        if reply.get("status") != "accepted":
            raise RuntimeError(f"train command not accepted: {reply}")
        job = reply["job"]
        if not col.wait(lambda: col.of(root + f"jobs/{job}/result"), args.timeout):
            raise RuntimeError(f"no result for job {job} within {args.timeout} s\n{agent.tail()}")
        t_result, result = col.of(root + f"jobs/{job}/result")[0]
        progress_before = sum(1 for t, _ in col.of(root + f"jobs/{job}/progress") if t <= t_result)
        cpu1 = proc_cpu_s(agent.pid)
        time.sleep(1.0)  # back to idle: what the agent keeps after its first job
        after = proc_status(agent.pid)
    except BaseException:
        say(agent.tail())
        raise
    finally:
        rc = agent.stop()
    if result.get("status") != "succeeded":
        raise RuntimeError(f"agent job {job} did not succeed: {result}")
    run = json.loads((work / f"state-{dev}" / "runs" / job / "result.json").read_text())
    t = run.get("timings", {})
    return {"duration_s": result["duration_s"], "load_s": t.get("load_s", 0.0), "embed_s": t.get("embed_s", 0.0),
            "train_s": t.get("train_s", 0.0), "cmd_to_reply_s": round(t_reply - t_cmd, 3),
            "cmd_to_result_s": round(t_result - t_cmd, 3), "agent_cpu_s": round(cpu1 - cpu0, 3),
            "agent_peak_rss_mib": round(after["VmHWM"] / 1024, 1),
            "agent_rss_1s_after_job_mib": round(after["VmRSS"] / 1024, 1), "final_accuracy": result["final"].get("accuracy"),
            "progress_received_before_result": progress_before, "cache": run.get("cache"), "job": job,
            "exit_code_on_sigterm": rc}


def bench_outbox(args: argparse.Namespace, ctx: dict, scenario: str) -> dict:
    work, col, broker = ctx["work"], ctx["collector"], ctx["broker"]
    dev = "tput" if scenario == "live" else "outage"
    cfg = write_config(work, dev, broker.port, ctx["data_root"], ctx["bundle_root"], ctx["keys"])
    n = args.messages
    w = col.watch(topic_root(dev) + "jobs/bench/progress", n)
    worker = Worker(ctx["py"], ctx["env"], cfg, scenario, n, work / f"worker-{dev}.log", args.timeout)
    out: dict[str, Any] = {"messages": n}
    try:
        worker.expect("ready", 60)
        if scenario == "live":
            enq = worker.expect("enqueued", args.timeout)
            done = worker.expect("drained", args.timeout + 10)
            if not col.wait(lambda: w["t_all"] is not None, 60):
                raise RuntimeError(f"collector got {len(w['seqs'])}/{n} distinct seqs")
            t0 = enq["t0"]
            out.update({
                "rate_msg_s": round(n / (done["t_empty"] - t0), 1),
                "seconds_to_empty": round(done["t_empty"] - t0, 3),
                "enqueue_rate_msg_s": round(n / (enq["t1"] - t0), 1),
                "delivered_rate_msg_s": round(n / (w["t_all"] - t0), 1),
                "seconds_to_all_delivered": round(w["t_all"] - t0, 3),
            })
        else:
            t_stop0 = time.monotonic()
            broker.stop()
            worker.go()
            off = worker.expect("offline", 60)
            enq = worker.expect("enqueued", args.timeout)
            if enq["connected"]:
                raise RuntimeError("the agent was connected during the outage enqueue")
            offline_s = time.monotonic() - t_stop0
            t_b0 = time.monotonic()
            broker.start()
            t_listen = time.monotonic()
            done = worker.expect("drained", args.timeout + 60)
            if not col.wait(lambda: w["t_all"] is not None, 120):
                raise RuntimeError(f"collector got {len(w['seqs'])}/{n} distinct seqs after the outage")
            t_end = max(done["t_empty"], w["t_all"])
            col_reconnect = next((t for t in col.connects if t >= t_b0), None)
            out.update({
                "replay_s": round(t_end - t_b0, 3),
                "broker_start_to_listening_s": round(t_listen - t_b0, 3),
                "broker_start_to_agent_connected_s": round(done["t_conn"] - t_b0, 3),
                "agent_connected_to_outbox_empty_s": round(done["t_empty"] - done["t_conn"], 3),
                "agent_connected_to_all_delivered_s": round(w["t_all"] - done["t_conn"], 3),
                "collector_reconnected_after_s": round(col_reconnect - t_b0, 3) if col_reconnect else None,
                "drain_rate_msg_s": round(n / max(done["t_empty"] - done["t_conn"], 1e-9), 1),
                "broker_down_s": round(t_b0 - t_stop0, 3),
                "offline_enqueue_rate_msg_s": round(n / (enq["t1"] - enq["t0"]), 1),
                "agent_noticed_outage_after_s": round(off["t"] - t_stop0, 3),
                "total_down_before_restart_s": round(offline_s, 3),
            })
        out.update({
            "distinct_received": len(w["seqs"]), "received_total": w["received"],
            "duplicates": w["received"] - len(w["seqs"]), "hist_true": w["hist"],
            "agent_cpu_s": round(done["cpu_s"], 3), "body_bytes": done["body_bytes"],
            "agent_connections": done["connections"], "denied": done["denied"],
            "worker_maxrss_mib": round(done["maxrss_mib"], 1),
        })
        out["worker_exit"] = worker.finish()
    except BaseException:
        worker.kill()
        say(worker.tail())
        raise
    finally:
        if broker.proc is None:
            broker.start()
    return out
