"""Real agents: ``--agents`` ``ftedge agent run`` processes (the device venv with this working copy, else the host
venv; bench/device_venv.py), each with its own state and bundle folders and SYNTHETIC Gaussian blobs
(tests/helpers/zoo.py ``gaussian_classes``); the tiny ``mlp`` of tests/helpers/zoo.py exported signed (the agents
trust the key) and packed with ``ftedge pack``; the collector + driver in the bench's collector host
(bench/rollout/host.py, wired as ``fleet serve`` wires them). The rollout is started by the real CLI, ``ftedge fleet
rollout start --bundle … --url … --wait``: the archive is served by a throwaway ``http.server`` (``--url``) because
``fleet serve``'s bundle store is not on this branch yet."""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench._common import ROOT, last_json
from bench.rollout.procs import TABLES, HostProc, db_figures

FLEET = "agents"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    """Serves the archive without a log line per download."""

    def log_message(self, *_args: Any) -> None:
        pass


def _prepare(work: Path, n: int) -> dict[str, Any]:
    """Data, key pair, the signed ``mlp`` bundle and its archive."""
    import numpy as np

    from bench.device_venv import child_env
    from bench.signing import keygen
    from tests.helpers.common import ZOO
    from tests.helpers.zoo import gaussian_classes

    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    x, y = gaussian_classes(seed=5)
    np.savez(data / "blobs.npz", x=x, labels=y)
    keys = keygen(work / "keys" / "bench", [sys.executable, "-m", "ftedge"], child_env())
    bundle, archive = work / "export" / "mlp", work / "www" / "mlp.tar.gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    for cmd in ([sys.executable, "-m", "ftedge", "export", f"{ZOO}:mlp", "-o", str(bundle), "--input",
                 "x:float32:1,20", "--labels", "a,b,c,d", "--lr", "0.01", "--quiet", "--force", *keys.sign_args()],
                [sys.executable, "-m", "ftedge", "pack", str(bundle), "-o", str(archive)]):
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=child_env(), check=False)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[2:4])} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return {"data": data, "keys": keys, "archive": archive}


def _config(work: Path, dev: str, port: int, data: Path, keys: Any) -> Path:
    state, bundles = work / f"state-{dev}", work / f"bundles-{dev}"
    bundles.mkdir(parents=True, exist_ok=True)
    lines = [f'device_id = "{dev}"', f'fleet = "{FLEET}"', f'state_dir = "{state}"', 'log_level = "info"',
             "[mqtt]", f'url = "mqtt://127.0.0.1:{port}"', "[paths]", f'data_root = "{data}"',
             f'bundle_root = "{bundles}"', *keys.deploy_toml()]
    cfg = work / f"agent-{dev}.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def run_agents(n: int, port: int, work: Path, epochs: int, wave_timeout_s: float) -> dict[str, Any]:
    """A rollout with training to ``n`` real agents through the CLI; per-wave times and the collector's CPU."""
    from ftedge.fleet.rollout.records import RolloutRecords
    from ftedge.fleet.store import FleetStore

    from bench.agent_bench.processes import AgentProc
    from bench.device_venv import child_env, pick_device_python
    from bench.rollout.simulated import _waves

    work.mkdir(parents=True, exist_ok=True)
    ctx = _prepare(work, n)
    handler = functools.partial(_Quiet, directory=str(ctx["archive"].parent))
    www = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=www.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{www.server_address[1]}/{ctx['archive'].name}"
    db = work / "agents.sqlite"
    host = HostProc({"mode": "rollout", "db": str(db), "port": port, "tick_s": 1.0}, work / "host.log")
    py, env, how = pick_device_python(work, child_env())
    agents: list[Any] = []
    try:
        host.expect("ready", 60)
        agents = [AgentProc(py, _config(work, f"box-{i:02d}", port, ctx["data"], ctx["keys"]), work / f"agent-{i}.log",
                            env, ROOT) for i in range(n)]
        store = FleetStore(db)
        records = RolloutRecords(store)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            facts = records.device_facts(records.known_devices(FLEET))
            if sum(s == "online" for s, _ in facts.values()) >= n:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{n} agents did not come online in 120 s:\n{agents[0].tail()}")
        time.sleep(1.0)
        before = db_figures(db)
        train = {"data": "blobs.npz", "epochs": epochs, "batch_size": 16}
        cmd = [sys.executable, "-m", "ftedge", "fleet", "rollout", "start", "--bundle", str(ctx["archive"]), "--fleet",
               FLEET, "--name", "agents", "--url", url, "--canary", "1", "--waves", "50%,100%", "--train",
               json.dumps(train), "--wave-timeout", str(wave_timeout_s), "--wait", "--json", "--db", str(db)]
        cpu0, t0 = host.cpu_s(), time.time()
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=child_env(), timeout=600, check=False)
        wall, cpu = time.time() - t0, host.cpu_s() - cpu0
        if p.returncode not in (0, 3):
            raise RuntimeError(f"rollout start exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
        doc = last_json(p.stdout)
        r = records.get("agents")
        waves = _waves(store, r, records.members("agents"), t0)
        store.close()
        stats = host.stop()
    finally:
        for a in agents:
            a.stop()
        host.kill()
        www.shutdown()
    after = db_figures(db)
    states: dict[str, int] = {}
    for m in doc["devices"]:
        states[m["state"]] = states.get(m["state"], 0) + 1
    return {"agents": n, "python": how, "epochs": epochs, "state": doc["state"], "reason": doc["reason"],
            "cli_exit": p.returncode, "wall_s": wall, "collector_cpu_s": cpu, "collector_cpu_us_per_device": cpu / n * 1e6,
            "sent": stats["sent"], "waves": waves, "final_states": states,
            "gains": doc["gains"], "rows": {t: after["rows"][t] - before["rows"][t] for t in TABLES},
            "file_bytes": after["file_bytes"]["all"] - before["file_bytes"]["all"]}
