"""The device agent against a real Mosquitto broker (started per test on a free loopback port)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import paho.mqtt.client as mqtt
import pytest

from tests.helpers.agent_harness import (
    DEV,
    FLEET,
    ROOT_TOPIC,
    Collector,
    assert_no_holes,
)
from tests.helpers.broker import Broker
from tests.helpers.common import ROOT

pytestmark = pytest.mark.needs("mosquitto")


def test_birth_retained_and_offline_on_sigterm_and_lwt_on_sigkill(broker, device, agents):
    cfg = device(broker)
    col = Collector(broker)
    agent = agents(cfg)
    assert col.wait(lambda: any(b["state"] == "online" for b in col.of("status")))
    birth = [b for b in col.of("status") if b["state"] == "online"][0]
    assert birth["reason"] == "birth" and birth["seq"] >= 1 and birth["dev"] == DEV and birth["hist"] is False
    assert col.wait(lambda: col.of("meta")) and "onnxruntime" in col.of("meta")[0]
    assert "portable" in col.of("meta")[0]["engines"]  # the training engines this box can run
    assert col.send("ping")["status"] == "done"
    assert agent.stop(signal.SIGTERM) == 0
    assert col.wait(lambda: any(b["state"] == "offline" for b in col.of("status")))
    assert [b for b in col.of("status") if b["state"] == "offline"][-1]["reason"] == "shutdown"
    # the offline status was acknowledged before exit, not left in the outbox to be re-sent on the next start
    assert "agent stopped; 0 message(s) left in the outbox" in agent.text(), agent.text()[-1500:]

    late = Collector(broker, client_id="late")  # retained: a newcomer sees the last status
    assert late.wait(lambda: late.of("status")) and late.of("status")[-1]["state"] == "offline"

    agent = agents(cfg)
    assert col.wait(lambda: sum(b["state"] == "online" for b in col.of("status")) >= 2)
    agent.stop(signal.SIGKILL)
    assert col.wait(lambda: any(b.get("reason") == "lwt" for b in col.of("status")), 20), "no Last Will"
    will = [b for b in col.of("status") if b.get("reason") == "lwt"][-1]
    assert will["state"] == "offline" and will["will"] is True and will["seq"] == 0
    col.close()
    late.close()


def test_train_job_over_mqtt_with_progress_result_and_version(broker, device, agents):
    col = Collector(broker)
    agents(device(broker))
    col.wait_online()
    reply = col.send("train", {"bundle": "mlp", "data": "blobs.npz", "epochs": 5, "batch_size": 16})
    assert reply["status"] == "accepted" and reply["cmd_id"] and reply["job"]
    job = reply["job"]
    assert col.wait(lambda: col.of(f"jobs/{job}/result"), 60)
    result = col.of(f"jobs/{job}/result")[0]
    assert result["status"] == "succeeded" and result["promoted"] is True and result["version"]
    assert result["final"]["accuracy"] > result["baseline"]["accuracy"]
    progress = col.of(f"jobs/{job}/progress")
    assert [p["epoch"] for p in progress] == [1, 2, 3, 4, 5]
    assert all(k in progress[0] for k in ("job", "epoch", "step", "loss", "metrics", "lr", "samples_per_s", "rss_mb"))
    assert col.wait(lambda: any(m.get("active_version") == result["version"] for m in col.of("meta")))
    assert col.wait(lambda: any(j["status"] == "succeeded" for j in col.of("job")))
    again = col.send("train", {"bundle": "mlp", "data": "blobs.npz", "epochs": 5}, cmd_id=reply["cmd_id"])
    assert again["job"] == job, "a repeated cmd_id must not start a second job"
    assert_no_holes(col.seqs())
    col.close()


def test_auto_train_job_reports_the_chosen_settings_and_cv_estimate(broker, device, agents):
    col = Collector(broker)
    agents(device(broker))
    col.wait_online()
    bad = col.send("train", {"bundle": "mlp", "data": "blobs.npz", "auto": "yes"})
    assert bad["status"] == "rejected" and "args.auto must be a JSON boolean" in bad["detail"]
    bad = col.send("train", {"bundle": "mlp", "data": "blobs.npz", "class_weight": "heavy"})
    assert bad["status"] == "rejected" and "class_weight" in bad["detail"]
    reply = col.send("train", {"bundle": "mlp", "data": "blobs.npz", "auto": True, "max_trials": 4, "folds": 3,
                               "epochs": 4, "batch_size": 16})
    assert reply["status"] == "accepted"
    job = reply["job"]
    assert col.wait(lambda: col.of(f"jobs/{job}/result"), 90)
    result = col.of(f"jobs/{job}/result")[0]
    assert "tuning" in result, json.dumps(result)
    t = result["tuning"]
    assert result["status"] == "succeeded" and t["trials"] == 4 and t["epochs"] >= 1 and t["lr"] > 0
    assert t["cv_lo"] <= t["cv_gain"] <= t["cv_hi"] and result["promoted"] == (t["cv_lo"] > 0)
    assert result["final"]["split"] == "cv" and result["final"]["accuracy"] == t["cv_score"]
    assert [p["epoch"] for p in col.of(f"jobs/{job}/progress")] == list(range(1, t["epochs"] + 1))
    col.close()


def test_cancel_stops_a_running_job(broker, device, agents):
    col = Collector(broker)
    agents(device(broker))
    col.wait_online()
    job = col.send("train", {"bundle": "kws", "data": "clips.npz", "epochs": 500, "mode": "full",
                             "batch_size": 8})["job"]
    assert col.wait(lambda: col.of(f"jobs/{job}/progress"), 60)
    assert col.send("cancel", {"job": job})["status"] == "done"
    assert col.wait(lambda: col.of(f"jobs/{job}/result"), 60)
    assert col.of(f"jobs/{job}/result")[0]["status"] == "cancelled"
    col.close()


MALFORMED = [
    ("train", b"{not json", "malformed_json"),
    ("train", json.dumps({"args": {}}).encode(), "bad_cmd_id"),
    ("frobnicate", None, "unknown_verb"),
    ("train", {"bundle": "mlp"}, "bad_args"),
    ("train", {"bundle": "mlp", "data": "blobs.npz", "epochs": "ten"}, "bad_args"),
    ("train", {"bundle": "mlp", "data": "../../etc/passwd"}, "path_outside_root"),
    ("train", {"bundle": "../mlp", "data": "blobs.npz"}, "path_outside_root"),
    ("train", {"bundle": "nope", "data": "blobs.npz"}, "unknown_bundle"),
    ("train", {"bundle": "mlp", "data": "blobs.npz", "wat": 1}, "bad_args"),
    ("train", {"bundle": "mlp", "data": "blobs.npz", "engine": "tensorflow"}, "bad_args"),
    ("cancel", {"job": "j20260101-000000-abcdef"}, "unknown_job"),
    ("cancel", {"job": "j-unknown"}, "bad_args"),  # not a job id at all
    ("rollback", {}, "rollback_refused"),
    ("deploy", {"url": "file:///x.tar.gz"}, "bad_args"),
]


def test_every_malformed_command_is_rejected_and_agent_keeps_answering(broker, device, agents):
    col = Collector(broker)
    agents(device(broker))
    col.wait_online()
    assert col.send("ping")["status"] == "done"
    for verb, args, code in MALFORMED:
        cmd_id = uuid.uuid4().hex[:12]
        if isinstance(args, bytes):
            col.send(verb, raw=args, wait_for=None)
            assert col.wait(lambda: any(r["code"] == code for rs in col.replies.values() for r in rs)), code
        else:
            reply = col.send(verb, args, cmd_id=cmd_id)
            assert reply["status"] == "rejected" and reply["code"] == code, (verb, args, reply)
    expired = uuid.uuid4().hex[:12]
    col.client.publish(ROOT_TOPIC + "cmd/ping", json.dumps({"cmd_id": expired, "expires": 1}).encode(), qos=1)
    assert col.wait(lambda: any(r["code"] == "expired" for r in col.replies.get(expired, [])))
    assert col.send("ping")["status"] == "done"
    assert not col.topics("jobs/"), "a rejected command must not start anything"
    col.close()


def _hold_until(col: Collector, cond, timeout: float = 60) -> None:
    assert col.wait(cond, timeout)


def test_broker_restart_mid_job_loses_nothing(broker, device, agents):
    col = Collector(broker)
    agents(device(broker))
    col.wait_online()
    job = col.send("train", {"bundle": "kws", "data": "clips.npz", "epochs": 120, "mode": "full",
                             "batch_size": 8})["job"]
    _hold_until(col, lambda: len(col.of(f"jobs/{job}/progress")) >= 3)
    broker.stop()
    time.sleep(2.0)  # the job keeps training; its telemetry waits in the outbox
    broker.start()
    _hold_until(col, lambda: col.of(f"jobs/{job}/result"), 120)
    time.sleep(1.0)
    epochs = sorted({p["epoch"] for p in col.of(f"jobs/{job}/progress")})
    assert epochs == list(range(1, 121)) or col.of(f"jobs/{job}/result")[0]["status"] == "succeeded"
    assert epochs == list(range(1, epochs[-1] + 1))
    assert len({json.dumps(r, sort_keys=True) for r in col.of(f"jobs/{job}/result")}) == 1
    assert_no_holes(col.seqs())
    assert any(b.get("hist") for _, b in col.topics("jobs/")), "replayed messages are marked hist"
    col.close()


def test_agent_sigkilled_mid_job_resumes_and_publishes_one_result(broker, device, agents):
    cfg = device(broker)
    col = Collector(broker)
    agent = agents(cfg)
    col.wait_online()
    job = col.send("train", {"bundle": "kws", "data": "clips.npz", "epochs": 80, "mode": "full",
                             "batch_size": 8})["job"]
    _hold_until(col, lambda: len(col.of(f"jobs/{job}/progress")) >= 5)
    agent.stop(signal.SIGKILL)
    agent = agents(cfg)
    _hold_until(col, lambda: col.of(f"jobs/{job}/result"), 120)
    time.sleep(1.0)
    results = col.of(f"jobs/{job}/result")
    assert len(results) == 1 and results[0]["status"] == "succeeded"
    seqs = col.seqs()
    assert len(seqs) == 2, "two boots"
    assert_no_holes(seqs)
    epochs = [p["epoch"] for p in col.of(f"jobs/{job}/progress")]
    assert sorted(set(epochs)) == list(range(1, 81)), "every epoch reported once the duplicates are removed"
    col.close()


def test_wrong_password_is_refused_and_acl_denial_is_reported(tmp_path, device, agents):
    from ftedge.fleet.acl import render_acl

    acl = render_acl([(FLEET, "dev-001"), (FLEET, "dev-002")])  # the shipped layout (`ftedge fleet acl`)
    b = Broker(tmp_path / "authbroker", users={"dev-001": "s3cret", "dev-002": "other", "collector": "c0l"},
               acl=acl).start()
    try:
        col = Collector(b, username="collector", password="c0l")
        (tmp_path / "bad.pass").write_text("wrong\n")
        agent = agents(device(b, username="dev-001", password_file=tmp_path / "bad.pass"))
        time.sleep(3)
        assert not col.of("status"), "a wrong password must not get in"
        assert "refused" in agent.text() or "Not authorized" in agent.text() or "Bad user" in agent.text()
        agent.stop()

        (tmp_path / "other.pass").write_text("other\n")  # dev-002's credentials, dev-001's topics: ACL denies
        agent = agents(device(b, username="dev-002", password_file=tmp_path / "other.pass"))
        assert col.wait(lambda: "broker refused a publish" in agent.text(), 20), agent.text()[-2000:]
        assert not col.of("status")
        agent.stop()
        col.close()
    finally:
        b.stop()


def test_mutual_tls(tmp_path, device, agents):
    b = Broker(tmp_path / "tlsbroker", tls=True, require_certificate=True).start()
    try:
        certs = b.certs
        col = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-col", protocol=mqtt.MQTTv5)
        col.tls_set(ca_certs=str(certs["ca.crt"]), certfile=str(certs["client.crt"]), keyfile=str(certs["client.key"]))
        seen: list[dict] = []
        col.on_connect = lambda cl, *_: cl.subscribe(f"ftedge/v1/{FLEET}/#", qos=1)
        col.on_message = lambda cl, ud, msg: seen.append(json.loads(msg.payload))
        col.connect("127.0.0.1", b.port)
        col.loop_start()
        agents(device(b, ca_file=certs["ca.crt"], cert_file=certs["client.crt"], key_file=certs["client.key"]))
        assert Collector.wait(lambda: any(m.get("state") == "online" for m in seen), 20)
        col.loop_stop()
    finally:
        b.stop()


def test_deploy_over_mqtt_then_train_it_and_refuse_a_wrong_hash(broker, device, agents, bundles, tmp_path):
    from ftedge.bundle.pack import pack_bundle
    from ftedge.bundle.signing import generate_keypair, sign_manifest

    # Signed, as recommended: the agent requires signatures by default. file:// needs a file_root.
    private, public = generate_keypair(tmp_path / "keys" / "fleet")
    src = tmp_path / "release" / "mlp"
    shutil.copytree(bundles / "mlp", src)
    manifest = json.loads((src / "manifest.json").read_text())
    (src / "manifest.json").write_text(json.dumps(sign_manifest(manifest, private), indent=2))
    archive = tmp_path / "release" / "mlp2.tar.gz"
    sha = pack_bundle(src, archive)
    col = Collector(broker)
    agents(device(broker, extra_toml=f'[deploy]\ntrusted_keys = ["{public}"]\nfile_root = "{tmp_path / "release"}"'))
    col.wait_online()
    bad = col.send("deploy", {"url": archive.as_uri(), "sha256": "0" * 64, "name": "mlp-bad"}, wait_for="error")
    assert bad["code"] == "deploy_failed" and "sha256" in bad["detail"]
    assert not (tmp_path / "bundles" / "mlp-bad").exists()
    ok = col.send("deploy", {"url": archive.as_uri(), "sha256": sha, "name": "mlp2"}, wait_for="done")
    assert ok["bundle"] == "mlp2" and (tmp_path / "bundles" / "mlp2" / "manifest.json").is_file()
    job = col.send("train", {"bundle": "mlp2", "data": "blobs.npz", "epochs": 2})["job"]
    assert col.wait(lambda: col.of(f"jobs/{job}/result"), 60)
    assert col.of(f"jobs/{job}/result")[0]["status"] == "succeeded"
    col.close()


def test_versions_and_rollback_over_mqtt(broker, device, agents, tmp_path):
    col = Collector(broker)
    agents(device(broker))
    col.wait_online()
    versions = []
    for epochs in (3, 6):
        job = col.send("train", {"bundle": "mlp", "data": "blobs.npz", "epochs": epochs})["job"]
        assert col.wait(lambda: col.of(f"jobs/{job}/result"), 60)
        versions.append(col.of(f"jobs/{job}/result")[0]["version"])
    assert len(set(versions)) == 2 and all(versions)
    assert col.send("status")["agent"]["active_version"] == versions[1]
    reply = col.send("rollback")
    assert reply["status"] == "done" and reply["active_version"] == versions[0]
    assert col.wait(lambda: col.of("meta")[-1]["active_version"] == versions[0])
    assert sorted(col.of("meta")[-1]["models"]) == sorted(versions), "nothing is deleted by a rollback"
    status = subprocess.run([os.environ.get("FTEDGE_DEVICE_PYTHON") or sys.executable, "-m", "ftedge", "agent", "status", "--config", str(tmp_path / "agent.toml"),
                             "--json"], capture_output=True, text=True, cwd=ROOT)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["active_version"] == versions[0]
    col.close()


def test_agent_started_while_the_broker_is_down_connects_when_it_comes_up(tmp_path, device, agents):
    b = Broker(tmp_path / "late-broker")  # configured, not started
    agent = agents(device(b))
    time.sleep(2)
    assert agent.proc.poll() is None, "a failed first connect must not kill the agent"
    b.start()
    try:
        col = Collector(b)
        col.wait_online()
        assert col.send("ping")["status"] == "done"
        birth = [m for m in col.of("status") if m.get("reason") == "birth"][0]
        assert birth["seq"] == 1
        col.close()
    finally:
        b.stop()


def test_status_returns_to_online_after_an_outage_longer_than_the_will_delay(broker, device, agents):
    col = Collector(broker)
    agents(device(broker))
    col.wait_online()
    broker.stop()
    time.sleep(1.5)
    broker.start()
    assert col.wait(lambda: any(b.get("reason") == "reconnect" for b in col.of("status")), 30)
    late = Collector(broker, client_id="late-joiner")  # the retained status a newcomer sees
    assert late.wait(lambda: late.of("status")) and late.of("status")[-1]["state"] == "online"
    assert_no_holes(col.seqs())
    col.close()
    late.close()
