"""The README's main command, `ftedge demo`: a fleet of three boxes, a real Mosquitto, the collector."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from ftedge.cli import main


def _listening(url: str) -> bool:
    host, port = url.split("//", 1)[1].rstrip("/").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
        return True
    except OSError:
        return False


def _processes_under(path: Path) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pid.isdigit() and str(path) in cmd:
            found.append(f"{pid}: {cmd}")
    return found


def test_demo_fleet_personalizes_three_accents_then_ctrl_c_stops_everything(tmp_path):
    """SYNTHETIC speech of three unseen accents, one per box; each box's new model must beat the untuned
    one on its 200 held-out clips; the dashboard and API show the fleet; Ctrl-C stops every process."""
    work = tmp_path / "demo"   # given relative, as the README's default is
    proc = subprocess.Popen([sys.executable, "-m", "ftedge", "demo", "--workdir", "demo", "--serve", "--json",
                             "--quiet", "--http", "127.0.0.1:0"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(600, proc.kill)
    watchdog.start()
    try:
        line = ""
        while not line.startswith("{"):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, f"demo exited {proc.poll()}: {proc.stderr.read()[-3000:]}"
        result = json.loads(line)
        assert result["data"].startswith("synthetic speech")
        assert result["parity_max_abs_diff"] <= 1e-4
        assert [b["voice"] for b in result["boxes"]] == ["es", "it", "fr"]
        for box in result["boxes"]:
            assert box["train_files"] == 50 and box["test_clips"] == 200, box
            assert box["job_status"] == "succeeded" and box["promoted"] and box["version"] == "v0001", box
            assert box["epochs_reported"] >= 1, box
            assert box["accuracy_after"] > box["accuracy_before"] and box["accuracy_after"] >= 0.95, box
        fleet = result["fleet"]
        assert fleet["devices"] == fleet["online"] == fleet["promoted_devices"] == 3
        assert fleet["accuracy_after"] > fleet["accuracy_before"]

        # while it serves: the dashboard and the API show the three boxes with their results
        page = urllib.request.urlopen(result["dashboard"], timeout=10).read().decode()
        assert all(f"box-{i}" in page for i in (1, 2, 3))
        devices = json.loads(urllib.request.urlopen(result["dashboard"] + "api/devices", timeout=10).read())
        assert sorted(d["device"] for d in devices) == ["box-1", "box-2", "box-3"]
        # the second act: kws 2 rolled out (canary first), trained and promoted on every box: its second version
        rollout = result["rollout"]
        assert rollout["state"] == "done", rollout
        assert [v.split(":")[0] for v in rollout["verdicts"]] == ["canary", "wave 1"], rollout
        assert {d: m["state"] for d, m in rollout["devices"].items()} == {f"box-{i}": "promoted" for i in (1, 2, 3)}
        assert rollout["devices"]["box-1"]["wave"] == 0 and all(m["gain"] > 0 for m in rollout["devices"].values())
        assert all(d["state"] == "online" and d["active_version"] == "v0002" for d in devices)
        assert _processes_under(work), "the boxes and the broker run while the demo serves"

        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, proc.stderr.read()[-3000:]
        assert "stopped the boxes, the collector and the broker" in proc.stderr.read()
        assert not _listening(result["broker"]) and not _listening(result["dashboard"])
        assert _processes_under(work) == []
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()


def test_demo_without_mosquitto_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    from ftedge.fleet import local_broker

    which, access = local_broker.shutil.which, local_broker.os.access
    monkeypatch.setattr(local_broker.shutil, "which", lambda name: None if name == "mosquitto" else which(name))
    monkeypatch.setattr(local_broker.os, "access", lambda p, m: "mosquitto" not in str(p) and access(p, m))
    assert main(["demo", "--workdir", str(tmp_path / "demo"), "--no-serve", "--quiet"]) == 1
    assert "apt-get install mosquitto" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists(), "nothing is written before the checks pass"


def test_demo_policy_mode_boxes_train_by_themselves(tmp_path):
    """`ftedge demo --policy`: no fleet train is sent; each box's [personalize] policy starts its run when the user's
    SYNTHETIC recordings arrive, and the new model beats the untuned one on the held-out clips."""
    proc = subprocess.run([sys.executable, "-m", "ftedge", "demo", "--workdir", str(tmp_path / "demo"), "--no-serve",
                           "--json", "--quiet", "--policy", "--http", "127.0.0.1:0"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["trigger"] == "policy"
    for box in result["boxes"]:
        assert box["trigger"] == "policy" and box["job_status"] == "succeeded" and box["promoted"], box
        assert box["accuracy_after"] > box["accuracy_before"], box
    for i in (1, 2, 3):   # the box's own log says why it started
        log = (tmp_path / "demo" / "boxes" / f"box-{i}" / "agent.log").read_text(errors="replace")
        assert "policy: queued job" in log and "50 new samples (≥ 50)" in log
