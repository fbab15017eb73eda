"""Rollouts end to end: real agents (the torch-free device venv in CI) over a real Mosquitto, real `ftedge fleet
serve` processes (SQLite and PostgreSQL) serving the bundle, and the `ftedge fleet rollout` CLI. Data SYNTHETIC
(tests/helpers/zoo.py gaussian classes; "noise" boxes hold labels drawn at random)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ftedge.cli import main
from ftedge.fleet.local_broker import free_port
from ftedge.fleet.rollout.records import RolloutRecords
from ftedge.fleet.share_group import generate
from ftedge.fleet.store import FleetStore

from tests.helpers.agent_harness import AgentProc
from tests.helpers.common import ROOT, ZOO, export
from tests.helpers.fleet_sim import wait_for
from tests.helpers.zoo import gaussian_classes

pytestmark = pytest.mark.needs("mosquitto")
TRAIN = {"data": "blobs.npz", "epochs": 6, "batch_size": 16, "seed": 0}


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict[str, Path]:
    """The tiny bundle as shipped (v1) and its next release (v2, packed), both signed by the release key; and a
    second key pair no box trusts."""
    from ftedge.bundle.pack import pack_bundle
    from ftedge.bundle.signing import generate_keypair

    root = tmp_path_factory.mktemp("release")
    generate_keypair(root / "release")
    generate_keypair(root / "other")
    args = ("--input", "x:float32:1,20", "--labels", "a,b,c,d", "--lr", "0.05", "--name", "mlp")
    export(f"{ZOO}:mlp", root / "v1", *args, "--sign-key", str(root / "release.key.pem"))
    time.sleep(1.1)   # v2 is created later (a box refuses an older bundle)
    export(f"{ZOO}:mlp", root / "v2", *args, "--seed", "1", "--sign-key", str(root / "release.key.pem"))
    pack_bundle(root / "v2", root / "v2.tar.gz")
    return {"root": root, "v1": root / "v1", "v2": root / "v2.tar.gz", "key": root / "release.pub.pem",
            "other": root / "other.pub.pem"}


class Rig:
    """Boxes (agents) and collectors (`fleet serve` processes) on one broker; everything stopped at the end."""

    def __init__(self, tmp: Path, broker, release: dict[str, Path]) -> None:  # noqa: ANN001
        self.tmp, self.broker, self.release = tmp, broker, release
        self.agents: dict[str, AgentProc] = {}
        self.configs: dict[str, Path] = {}
        self.serves: list[subprocess.Popen] = []
        self.db = str(tmp / "fleet.sqlite")
        self.bundle_dir = tmp / "served"

    def box(self, name: str, noise: bool = False, trust: str = "key", seed: int = 0) -> Path:
        root = self.tmp / name
        (root / "data").mkdir(parents=True)
        shutil.copytree(self.release["v1"], root / "bundles" / "mlp")
        x, y = gaussian_classes(seed=20 + seed)
        if noise:   # labels unrelated to the inputs: no model can learn them
            y = np.random.default_rng(seed).integers(0, 4, size=len(y))
        np.savez(root / "data" / "blobs.npz", x=x, labels=y)
        cfg = root / "agent.toml"
        cfg.write_text(f'device_id = "{name}"\nfleet = "demo"\nstate_dir = "{root / "state"}"\n[mqtt]\n'
                       f'url = "{self.broker.url}"\nwill_delay = 1\nkeepalive = 5\n[paths]\n'
                       f'data_root = "{root / "data"}"\nbundle_root = "{root / "bundles"}"\n'
                       f'[deploy]\ntrusted_keys = ["{self.release[trust]}"]\n')
        self.configs[name] = cfg
        self.agents[name] = AgentProc(cfg, root / "agent.log")
        return root

    def restart(self, name: str) -> None:
        self.agents[name] = AgentProc(self.configs[name], self.tmp / name / "agent.log")

    def serve(self, db: str | None = None, name: str = "collector-1", share: str | None = None,
              port: int | None = None) -> subprocess.Popen:
        port = port or free_port()
        cmd = [sys.executable, "-m", "ftedge", "fleet", "serve", "--broker", self.broker.url, "--db", db or self.db,
               "--http", f"127.0.0.1:{port}", "--client-id", name, "--bundle-dir", str(self.bundle_dir)]
        if share:
            cmd += ["--share-group", share]
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(self.tmp / f"{name}.log", "ab"))
        p.log, p.port = self.tmp / f"{name}.log", port  # type: ignore[attr-defined]
        self.serves.append(p)
        return p

    def online(self, names: list[str], db: str | None = None) -> None:
        def up() -> bool:
            for n, a in self.agents.items():
                assert a.proc.poll() is None, f"{n}'s agent exited: {a.text()[-2000:]}"
            with FleetStore(db or self.db) as s:
                return {d["device"] for d in s.devices("demo") if d["state"] == "online"} >= set(names)
        assert wait_for(lambda: Path(db or self.db).exists() or "://" in (db or ""), 20)
        assert wait_for(up, 60), "the boxes never came online at the collector"

    def rollout(self, *args: str, db: str | None = None, timeout: float = 120) -> int:
        return main(["fleet", "rollout", "start", "--db", db or self.db, "--bundle", str(self.release["v2"]),
                     "--fleet", "demo", "--bundle-dir", str(self.bundle_dir), "--wait", "--timeout", str(timeout),
                     "--json", *args])

    def status(self, name: str, db: str | None = None) -> dict:
        with FleetStore(db or self.db) as s:
            from ftedge.fleet.rollout.cli import describe

            return describe(RolloutRecords(s), name)

    def close(self) -> None:
        for p in self.serves:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.serves:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        for a in self.agents.values():
            try:
                a.stop()
            except subprocess.TimeoutExpired:
                a.proc.kill()


@pytest.fixture()
def rig(tmp_path, broker, release):
    r = Rig(tmp_path, broker, release)
    yield r
    r.close()


def _manifest_sha(root: Path) -> str:
    import hashlib

    return hashlib.sha256((root / "bundles" / "mlp" / "manifest.json").read_bytes()).hexdigest()


def _active(root: Path) -> str | None:
    p = root / "state" / "models" / "active.json"
    return json.loads(p.read_text()).get("active") if p.exists() else None


def test_a_canary_that_does_not_trust_the_key_halts_the_rollout_and_no_other_box_is_touched(rig, capsys):
    roots = {n: rig.box(n, trust="other" if n == "box-1" else "key", seed=i)
             for i, n in enumerate(("box-1", "box-2", "box-3"))}
    before = {n: _manifest_sha(r) for n, r in roots.items()}
    rig.serve()
    rig.online(list(roots))
    code = rig.rollout("--name", "r-canary", "--canary-devices", "box-1")
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 3, doc
    assert doc["state"] == "halted" and doc["reason"].startswith("canary:"), doc
    by = {m["device"]: m for m in doc["devices"]}
    assert by["box-1"]["state"] == "failed" and "trusted keys" in by["box-1"]["reason"], by["box-1"]
    assert by["box-2"]["state"] == by["box-3"]["state"] == "pending"
    for n, r in roots.items():   # nothing changed on any box, the canary included (it refused before installing)
        assert _manifest_sha(r) == before[n] and not list((r / "bundles").glob("mlp.replaced-*")), n
        if n != "box-1":
            assert "deploy" not in rig.agents[n].text().lower() or "ro-r-canary" not in rig.agents[n].text()


def test_a_wave_that_regresses_on_too_many_boxes_halts_and_those_boxes_get_their_previous_model_back(rig, capsys):
    names = ["box-1", "box-2", "box-3", "box-4"]
    roots = {n: rig.box(n, noise=n in ("box-3", "box-4"), seed=i) for i, n in enumerate(names)}
    rig.serve()
    rig.online(names)
    # every box first personalizes the shipped bundle (v0001 where its gate promoted it)
    assert main(["fleet", "train", "--devices", ",".join(names), "--bundle", "mlp", "--data", "blobs.npz",
                 "--epochs", "6", "--batch-size", "16", "--wait", "--broker", rig.broker.url, "--json"]) == 0
    capsys.readouterr()
    previous = {n: _active(r) for n, r in roots.items()}
    assert previous["box-1"] == previous["box-2"] == "v0001", previous
    v1 = {n: _manifest_sha(r) for n, r in roots.items()}
    # the gate of each box: promote only a model at least 0.3 better than the untuned one; noise boxes cannot
    train = json.dumps({**TRAIN, "min_gain": 0.3})
    code = rig.rollout("--name", "r-regress", "--canary-devices", "box-1", "--train", train,
                       "--max-regressions", "20%")
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 3 and doc["state"] == "halted" and "regressed" in doc["reason"], doc
    by = {m["device"]: m for m in doc["devices"]}
    assert by["box-1"]["wave"] == 0 and by["box-1"]["state"] == "promoted" and by["box-1"]["gain"] > 0.3
    assert wait_for(lambda: all(m["state"] == "rolled_back" for m in rig.status("r-regress")["devices"]
                                if m["wave"] == 1), 60), rig.status("r-regress")["devices"]
    assert _active(roots["box-1"]) != previous["box-1"], "the canary passed its gate: it keeps its new model"
    assert _manifest_sha(roots["box-1"]) != v1["box-1"]
    for n in ("box-2", "box-3", "box-4"):
        assert _manifest_sha(roots[n]) == v1[n], f"{n} did not get its previous bundle back"
        assert _active(roots[n]) == previous[n], (n, _active(roots[n]), previous[n])
    gains = {n: by[n]["gain"] for n in names}
    assert gains["box-3"] < 0.3 and gains["box-4"] < 0.3, gains


def test_a_box_offline_when_its_wave_starts_gets_the_bundle_when_it_returns(rig, capsys):
    names = ["box-1", "box-2", "box-3"]
    roots = {n: rig.box(n, seed=i) for i, n in enumerate(names)}
    rig.serve()
    rig.online(names)
    rig.agents["box-3"].stop()   # a clean shutdown: its session (and the commands queued in it) stays
    with FleetStore(rig.db) as s:
        assert wait_for(lambda: {d["device"]: d["state"] for d in s.devices("demo")}.get("box-3") == "offline", 20)
    main(["fleet", "rollout", "start", "--db", rig.db, "--bundle", str(rig.release["v2"]), "--fleet", "demo",
          "--bundle-dir", str(rig.bundle_dir), "--name", "r-offline", "--canary-devices", "box-1",
          "--wave-timeout", "90"])
    assert wait_for(lambda: rig.status("r-offline")["wave"] == 1 and any(
        m["device"] == "box-2" and m["state"] == "deployed" for m in rig.status("r-offline")["devices"]), 60)
    by = {m["device"]: m for m in rig.status("r-offline")["devices"]}
    assert by["box-3"]["state"] == "deploying", "its deploy waits in its session"
    rig.restart("box-3")
    assert wait_for(lambda: rig.status("r-offline")["state"] == "done", 60), rig.status("r-offline")
    by = {m["device"]: m for m in rig.status("r-offline")["devices"]}
    assert by["box-3"]["state"] == "deployed" and by["box-3"]["attempt"] == 0
    assert _manifest_sha(roots["box-3"]) == _manifest_sha(roots["box-1"])


def test_a_collector_killed_mid_wave_resumes_the_rollout_and_deploys_no_box_twice(rig, capsys):
    names = ["box-1", "box-2", "box-3", "box-4"]
    roots = {n: rig.box(n, seed=i) for i, n in enumerate(names)}
    first = rig.serve()
    rig.online(names)
    main(["fleet", "rollout", "start", "--db", rig.db, "--bundle", str(rig.release["v2"]), "--fleet", "demo",
          "--bundle-dir", str(rig.bundle_dir), "--name", "r-kill", "--canary", "1", "--train", json.dumps(TRAIN)])
    assert wait_for(lambda: rig.status("r-kill")["wave"] == 1 and any(
        m["wave"] == 1 and m["state"] in ("deploying", "deployed", "training") for m in rig.status("r-kill")["devices"]),
        60), rig.status("r-kill")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    rig.serve(port=first.port)   # the same client id, address and database: its session and the rollout wait
    assert wait_for(lambda: rig.status("r-kill")["state"] == "done", 90), [
        (m["device"], m["state"], m["reason"]) for m in rig.status("r-kill")["devices"]]
    assert {m["state"] for m in rig.status("r-kill")["devices"]} == {"promoted"}, rig.status("r-kill")["devices"]
    for n, r in roots.items():
        installs = rig.agents[n].text().count("installed")
        assert installs == 1, f"{n} installed the bundle {installs} times"
        assert len(list((r / "bundles").glob("mlp.replaced-*"))) == 1, n
        jobs = list((r / "state" / "jobs").glob("*.json"))
        assert len(jobs) == 1, f"{n} ran {len(jobs)} training jobs"


def test_a_tampered_archive_on_the_collectors_disk_is_refused_by_every_box(rig, capsys):
    from ftedge.fleet.bundle_store import BundleStore

    names = ["box-1", "box-2", "box-3"]
    roots = {n: rig.box(n, seed=i) for i, n in enumerate(names)}
    before = {n: _manifest_sha(r) for n, r in roots.items()}
    rig.serve()
    rig.online(names)
    store = BundleStore(rig.bundle_dir)
    served = store.path(store.publish(rig.release["v2"]))
    data = bytearray(served.read_bytes())
    data[len(data) // 2] ^= 0xFF       # someone with access to the collector's disk changes one byte
    os.chmod(served, 0o644)
    served.write_bytes(bytes(data))
    code = rig.rollout("--name", "r-tamper", "--canary", "0")
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 3 and doc["state"] == "halted", doc
    for m in doc["devices"]:
        assert m["state"] == "failed" and "sha256" in m["reason"], m
    for n, r in roots.items():
        assert _manifest_sha(r) == before[n] and not list((r / "bundles").glob("mlp.replaced-*")), n


@pytest.mark.needs("postgres")
def test_two_collectors_on_one_postgresql_database_one_drives_and_the_other_takes_over(rig, pg_url):
    names = ["box-1", "box-2", "box-3"]
    roots = {n: rig.box(n, seed=i) for i, n in enumerate(names)}
    share = generate()
    serves = {n: rig.serve(db=pg_url, name=n, share=share) for n in ("collector-a", "collector-b")}
    rig.online(names, db=pg_url)
    main(["fleet", "rollout", "start", "--db", pg_url, "--bundle", str(rig.release["v2"]), "--fleet", "demo",
          "--bundle-dir", str(rig.bundle_dir), "--name", "r-pg", "--canary", "1", "--train", json.dumps(TRAIN)])
    with FleetStore(pg_url) as s:
        records = RolloutRecords(s)
        assert wait_for(lambda: records.leader() is not None, 20)
        leader = records.leader()[0]
        assert leader in serves
        assert wait_for(lambda: records.get("r-pg").wave == 1, 60), records.get("r-pg")
        serves[leader].send_signal(signal.SIGKILL)   # the driver dies mid-rollout
        serves[leader].wait(10)
        other = next(n for n in serves if n != leader)
        assert wait_for(lambda: records.leader() is not None and records.leader()[0] == other, 40), \
            "the other collector never took the lease over"
        # its orchestrator restarts it (same client id): the group's messages the broker dealt to its session
        # while it was down arrive (docs/fleet.md, "Holes in a share group"); it does not take the lease back
        rig.serve(db=pg_url, name=leader, share=share, port=serves[leader].port)
        assert wait_for(lambda: records.get("r-pg").finished, 90), records.get("r-pg")
        assert records.get("r-pg").state == "done" and records.leader()[0] == other
    for n, r in roots.items():
        assert rig.agents[n].text().count("installed") == 1, n
        assert len(list((r / "bundles").glob("mlp.replaced-*"))) == 1, n
