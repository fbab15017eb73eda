"""`ftedge fleet train`: one job fanned out to several real agents over a real Mosquitto broker."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from ftedge.cli import main
from tests.helpers.agent_harness import AgentProc, Collector
from tests.helpers.broker import Broker
from tests.helpers.common import ZOO, export
from tests.helpers.zoo import gaussian_classes

pytestmark = pytest.mark.needs("mosquitto")


@pytest.fixture()
def fleet(tmp_path):
    """Three agents on one broker: dev-a and dev-b hold SYNTHETIC data, dev-c has none."""
    broker = Broker(tmp_path / "broker").start()
    procs: list[AgentProc] = []
    try:   # stop the agents and the broker even when the set-up itself fails
        export(f"{ZOO}:mlp", tmp_path / "bundle", "--input", "x:float32:1,20", "--labels", "a,b,c,d",
               "--lr", "0.01")
        for i, name in enumerate(("dev-a", "dev-b", "dev-c")):
            root = tmp_path / name
            (root / "data").mkdir(parents=True)
            shutil.copytree(tmp_path / "bundle", root / "bundles" / "mlp")
            if name != "dev-c":
                x, y = gaussian_classes(seed=10 + i)
                np.savez(root / "data" / "blobs.npz", x=x, labels=y)
            cfg = root / "agent.toml"
            cfg.write_text(f'device_id = "{name}"\nfleet = "demo"\nstate_dir = "{root / "state"}"\n[mqtt]\n'
                           f'url = "{broker.url}"\nwill_delay = 1\n[paths]\ndata_root = "{root / "data"}"\n'
                           f'bundle_root = "{root / "bundles"}"\n'
                           '[deploy]\nrequire_signed = false\n')   # unsigned test bundles: signing is tested elsewhere
            procs.append(AgentProc(cfg, root / "agent.log"))
        watch = Collector(broker)   # a command to a box that never connected has no session to wait in
        births = lambda: {t.split("/")[3] for t, b, _ in list(watch.messages)  # noqa: E731
                          if t.endswith("/status") and b.get("reason") == "birth"}
        assert watch.wait(lambda: births() == {"dev-a", "dev-b", "dev-c"}), births()
        watch.close()
        yield broker, tmp_path
    finally:
        for p in procs:
            try:
                p.stop()
            except subprocess.TimeoutExpired:
                p.proc.kill()
        broker.stop()


def test_fleet_train_fans_out_and_reports_every_device(fleet, capsys):
    broker, root = fleet
    code = main(["fleet", "train", "--devices", "dev-a,dev-b,dev-c", "--bundle", "mlp", "--data", "blobs.npz",
                 "--epochs", "5", "--batch-size", "16", "--wait", "--json", "--broker", broker.url,
                 "--timeout", "10", "--job-timeout", "120"])
    rows = {r["device"]: r for r in map(json.loads, capsys.readouterr().out.strip().splitlines())}
    assert code == 3, "one device rejected the job: the fan-out exits 3 (rejected by the device)"
    assert set(rows) == {"dev-a", "dev-b", "dev-c"}
    for dev in ("dev-a", "dev-b"):
        r = rows[dev]
        assert r["ok"] and r["reply"]["status"] == "accepted" and r["job"]
        assert r["result"]["status"] == "succeeded" and r["result"]["promoted"] is True
        assert r["result"]["final"]["accuracy"] > r["result"]["baseline"]["accuracy"]
        assert r["epochs"] == 5, "every epoch's progress reached the fan-out's collector"
        versions = json.loads((root / dev / "state" / "models" / "active.json").read_text())
        assert versions["active"] == r["result"]["version"]
    assert rows["dev-a"]["job"] != rows["dev-b"]["job"]
    c = rows["dev-c"]
    assert not c["ok"] and c["reply"]["status"] == "rejected" and "unknown_data" in c["error"]
    assert not (root / "dev-c" / "state" / "models" / "v0001").exists()
    # --option passes any train option by its agent key; the device validates it against the declarations
    code = main(["fleet", "train", "--devices", "dev-a", "--bundle", "mlp", "--data", "blobs.npz",
                 "--option", "flip=false", "--broker", broker.url, "--timeout", "10", "--json"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 3 and row["reply"]["status"] == "rejected", row
    assert "flip do(es) not apply to a classification bundle" in row["reply"]["detail"], row


def test_fleet_train_prints_a_line_per_device_and_times_out_on_unknown_devices(fleet, capsys):
    broker, _ = fleet
    code = main(["fleet", "train", "--devices", "dev-a,dev-404", "--bundle", "mlp", "--data", "blobs.npz",
                 "--epochs", "3", "--wait", "--broker", broker.url, "--timeout", "3"])
    out, err = capsys.readouterr()
    assert code == 4, "an unknown device never answers: the fan-out exits 4 (timed out)"
    assert "dev-a: accepted, job" in out and "dev-a: job" in out and "succeeded" in out
    assert "dev-404: no reply within 3 s" in out and "1 of 2 devices failed: dev-404" in err


def test_fleet_train_usage_errors(capsys):
    assert main(["fleet", "train", "--devices", "a,a", "--bundle", "b", "--data", "d",
                 "--broker", "mqtt://127.0.0.1:1"]) == 2
    assert "distinct device ids" in capsys.readouterr().err
    assert main(["fleet", "train", "--devices", "a", "--bundle", "b", "--data", "d", "--broker", "http://x"]) == 2
    assert main(["fleet", "train", "--devices", "a", "--bundle", "b", "--data", "d", "--option", "flip",
                 "--broker", "mqtt://127.0.0.1:1"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
