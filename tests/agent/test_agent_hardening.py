"""Issue 12 hardening of the device agent: the real agent process, a real Mosquitto, real files."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.agent_harness import ROOT_TOPIC, Collector
from tests.helpers.services import missing

pytestmark = pytest.mark.needs("mosquitto")


# The test bundles are unsigned: jobs that train them opt out of signature checks, as the config documents.
NOSIG = "[deploy]\nrequire_signed = false\n"


def _jobs(tmp_path: Path) -> list[dict]:
    d = tmp_path / "state" / "jobs"
    return [json.loads(p.read_text()) for p in d.glob("*.json")] if d.is_dir() else []


def _big_clips(data: Path, n: int, name: str) -> None:
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), n // 4)
    x = (0.7 * y[:, None, None] + rng.standard_normal((len(y), 101, 40))).astype(np.float32)
    np.savez(data / name, x=x, labels=y)


# -- 3, 15, 16, 17: command validation -------------------------------------------------------------

BAD_TRAIN = [
    {"embed_batch_size": 10**9}, {"batch_size": 100000}, {"epochs": 10**6}, {"lr": 1e6},
    {"max_seconds": 10**12}, {"val_fraction": 1}, {"val_fraction": 1.5}, {"patience": 10**9},
    {"seed": 2**70}, {"min_gain": 1e300}, {"schedule": "exotic"}, {"backbone": "fp64"},
    {"epochs": 2.0}, {"epochs": True}, {"mode": ["cached"]}, {"lr": {"value": 0.1}},
]


def test_train_options_are_bounded_and_typed_and_cancel_ids_validated(broker, device, agents, tmp_path):
    col = Collector(broker)
    agents(device(broker))
    col.wait_online()
    base = {"bundle": "mlp", "data": "blobs.npz"}
    for extra in BAD_TRAIN:
        reply = col.send("train", {**base, **extra})
        assert reply["status"] == "rejected" and reply["code"] == "bad_args", (extra, reply)
        assert reply["detail"].startswith("args."), reply
    for raw in ('{"cmd_id":"nan1","args":{"bundle":"mlp","data":"blobs.npz","lr":NaN}}',
                '{"cmd_id":"inf1","args":{"bundle":"mlp","data":"blobs.npz","lr":Infinity}}',
                '{"cmd_id":"inf2","args":{"bundle":"mlp","data":"blobs.npz","max_seconds":1e400}}'):
        cmd_id = json.loads(raw.replace("NaN", "0").replace("Infinity", "0").replace("1e400", "0"))["cmd_id"]
        col.send("train", raw=raw.encode(), wait_for=None)
        assert col.wait(lambda: col.replies.get(cmd_id)), raw
        assert col.replies[cmd_id][0]["status"] == "rejected", (raw, col.replies[cmd_id])
    for bad in ("../jobs/x", "j2026", 5, "", "j20260101-000000-abcdeg"):
        reply = col.send("cancel", {"job": bad})
        assert reply["status"] == "rejected" and reply["code"] == "bad_args", (bad, reply)
    assert col.send("cancel", {"job": "j20260101-000000-abcdef"})["code"] == "unknown_job"
    # 17: idempotency is per (cmd_id, verb): the same id with another verb is a new command
    assert col.send("ping", cmd_id="same-id")["detail"] == "pong"
    status = col.send("status", cmd_id="same-id")
    assert col.wait(lambda: len(col.replies["same-id"]) == 2)
    assert "agent" in col.replies["same-id"][1], col.replies["same-id"]
    assert not col.topics("jobs/") and not _jobs(tmp_path), "a rejected command must not start anything"
    assert status is not None
    col.close()


def test_reply_cache_is_keyed_by_verb_and_a_corrupt_one_is_set_aside(tmp_path, caplog):
    from ftedge.device_agent.commands import ReplyCache

    path = tmp_path / "replies.json"
    cache = ReplyCache(path)
    cache.put("c1", {"status": "done", "detail": "pong"}, verb="ping")
    assert cache.get("c1", verb="status") is None
    assert ReplyCache(path).get("c1", verb="ping")["detail"] == "pong"
    path.write_text('{"c1": {"status": "do')  # torn / corrupt
    with caplog.at_level("WARNING"):
        fresh = ReplyCache(path)
    aside = list(tmp_path.glob("replies.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == '{"c1": {"status": "do', aside
    assert "corrupt" in caplog.text and fresh.get("c1", verb="ping") is None
    small = ReplyCache(tmp_path / "r2.json", keep=5, max_bytes=10**6)
    for i in range(8):
        small.put(f"c{i}", {"status": "done"}, verb="ping")
    assert small.get("c0", verb="ping") is None and small.get("c7", verb="ping") is not None
    assert ReplyCache(tmp_path / "r2.json", keep=5).get("c3", verb="ping") is not None


# -- 10, 12: retained commands and packet size --------------------------------------------------------

def test_retained_commands_are_never_acted_on_and_big_packets_are_refused(broker, device, agents, tmp_path):
    col = Collector(broker)
    col.client.publish(ROOT_TOPIC + "cmd/train", json.dumps(
        {"cmd_id": "retained-1", "args": {"bundle": "mlp", "data": "blobs.npz", "epochs": 1}}).encode(),
        qos=1, retain=True).wait_for_publish(5)
    agents(device(broker))
    col.wait_online()
    assert col.send("ping")["status"] == "done"
    # a retained command published while the agent is online is refused too
    col.client.publish(ROOT_TOPIC + "cmd/train", json.dumps(
        {"cmd_id": "retained-2", "args": {"bundle": "mlp", "data": "blobs.npz", "epochs": 1}}).encode(),
        qos=1, retain=True).wait_for_publish(5)
    assert col.wait(lambda: col.replies.get("retained-2")), "a live retained command gets a rejection"
    assert col.replies["retained-2"][0]["code"] == "retained_command"
    assert col.send("ping")["status"] == "done"
    assert not col.topics("jobs/") and not _jobs(tmp_path), "a retained command must never start a job"
    # 12: a command bigger than the agent's maximum packet size (256 KiB default) never reaches it
    big = json.dumps({"cmd_id": "big-1", "args": {"pad": "x" * 300_000}}).encode()
    col.send("ping", raw=big, wait_for=None)
    assert col.send("ping")["status"] == "done"  # in order: the big one was dropped before this one
    assert "big-1" not in col.replies
    col.client.publish(ROOT_TOPIC + "cmd/train", b"", qos=1, retain=True).wait_for_publish(5)
    col.close()


# -- 3: poison job -----------------------------------------------------------------------------------

def test_a_job_that_kills_the_agent_every_start_fails_after_max_starts(broker, device, agents, tmp_path):
    _big_clips(tmp_path / "data", 1024, "many.npz")
    cfg = device(broker, extra_toml=NOSIG + "[jobs]\nmax_starts = 2\n")
    col = Collector(broker)
    agent = agents(cfg)
    col.wait_online()
    job = col.send("train", {"bundle": "kws", "data": "many.npz", "epochs": 3, "mode": "full",
                             "batch_size": 4})["job"]
    for boot in range(1, 5):
        assert col.wait(lambda: col.of(f"jobs/{job}/result") or any(
            j["job"] == job and j["status"] == "running" and j["attempts"] == boot for j in col.of("job")), 60)
        if col.of(f"jobs/{job}/result"):
            break
        assert not col.of(f"jobs/{job}/progress"), "the kill must come before the first epoch ends"
        agent.stop(signal.SIGKILL)  # a crash mid-epoch, as an OOM kill would do
        agent = agents(cfg)
        col.wait_online(boot + 1)
    results = col.of(f"jobs/{job}/result")
    assert results, "the job must end instead of crashing the agent forever"
    assert results[0]["status"] == "failed" and "started 2 times without finishing an epoch" in results[0]["error"]
    assert col.send("ping")["status"] == "done"
    col.close()


# -- 4: full disk ------------------------------------------------------------------------------------

def _mount_small_fs(where: Path, mb: int) -> list[str]:
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(where)], capture_output=True)
    if r.returncode == 0:
        return ["umount", "-l", str(where)]
    img = where.parent / "small.img"
    steps = [["truncate", "-s", f"{mb}M", str(img)], ["mkfs.ext4", "-q", str(img)],
             ["mount", "-o", "loop", str(img), str(where)]]
    for cmd in steps:
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            why = f"cannot mount a small filesystem here ({' '.join(cmd)} failed): needs root (CI runs as root)"
            missing(why)
    return ["umount", "-l", str(where)]


def _fill(where: Path, name: str = "filler.bin") -> Path:
    """Write a file until the filesystem says ENOSPC (really full, not faked)."""
    import os

    filler = where / name
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_full_disk_fails_the_job_but_not_the_job_loop_and_status_says_disk_full(broker, device, agents, tmp_path):
    state = tmp_path / "state"
    unmount = _mount_small_fs(state, 48)
    agent = None
    try:
        col = Collector(broker)
        agent = agents(device(broker, extra_toml=NOSIG))
        col.wait_online()
        job = col.send("train", {"bundle": "kws", "data": "clips.npz", "epochs": 400, "mode": "full",
                                 "batch_size": 8})["job"]
        assert col.wait(lambda: col.of(f"jobs/{job}/progress"), 60)
        filler = _fill(state)
        assert col.wait(lambda: col.of(f"jobs/{job}/result"), 60), agent.text()[-3000:]
        result = col.of(f"jobs/{job}/result")[0]
        assert result["status"] == "failed" and "space" in result["error"].lower(), result
        more = _fill(state, "filler-2.bin")  # the released reserve is used up too: not a byte left
        status = col.send("status")["agent"]
        assert status["disk"]["full"] is True and isinstance(status["disk"]["free_bytes"], int), status
        assert any("disk full" in p for p in status["problems"]), status
        filler.unlink()
        more.unlink()
        again = col.send("train", {"bundle": "mlp", "data": "blobs.npz", "epochs": 2})
        assert again["status"] == "accepted", again
        assert col.wait(lambda: col.of(f"jobs/{again['job']}/result"), 60), "the job loop must survive ENOSPC"
        assert col.of(f"jobs/{again['job']}/result")[0]["status"] == "succeeded"
        assert col.send("status")["agent"]["disk"]["full"] is False
        assert "Exception in thread" not in agent.text(), "an agent thread died on the full disk"
        col.close()
    finally:
        if agent is not None:
            agent.proc.kill()
            agent.proc.wait()
        subprocess.run(unmount, capture_output=True)


# -- 5, 8: verified, pinned bundle ------------------------------------------------------------------

def test_job_start_verifies_the_signature_when_keys_are_trusted(broker, device, agents, tmp_path):
    from ftedge.bundle.signing import generate_keypair, sign_manifest

    private, public = generate_keypair(tmp_path / "release")
    broot = tmp_path / "bundles"
    shutil.copytree(broot / "mlp", broot / "mlp-signed")
    m = json.loads((broot / "mlp" / "manifest.json").read_text())
    (broot / "mlp-signed" / "manifest.json").write_text(json.dumps(sign_manifest(m, private)))
    col = Collector(broker)
    agents(device(broker, extra_toml=f"[deploy]\ntrusted_keys = [\"{public}\"]\n"))
    col.wait_online()
    unsigned = col.send("train", {"bundle": "mlp", "data": "blobs.npz", "epochs": 1})["job"]
    assert col.wait(lambda: col.of(f"jobs/{unsigned}/result"), 60)
    result = col.of(f"jobs/{unsigned}/result")[0]
    assert result["status"] == "failed" and "not signed" in result["error"], result
    signed = col.send("train", {"bundle": "mlp-signed", "data": "blobs.npz", "epochs": 1})["job"]
    assert col.wait(lambda: col.of(f"jobs/{signed}/result"), 60)
    assert col.of(f"jobs/{signed}/result")[0]["status"] == "succeeded"
    col.close()


def test_replacing_the_bundle_mid_job_does_not_mix_bundles(broker, device, agents, tmp_path):
    import onnxruntime as ort

    broot = tmp_path / "bundles"
    shutil.copytree(broot / "kws", broot / "live")
    col = Collector(broker)
    agents(device(broker, extra_toml=NOSIG))
    col.wait_online()
    job = col.send("train", {"bundle": "live", "data": "clips.npz", "epochs": 12, "mode": "full",
                             "batch_size": 16})["job"]
    assert col.wait(lambda: col.of(f"jobs/{job}/progress"), 60)
    shutil.move(broot / "live", broot / "live.old")  # what `deploy replace` does: another bundle in its place
    shutil.copytree(broot / "mlp", broot / "live")
    assert col.wait(lambda: col.of(f"jobs/{job}/result"), 120)
    result = col.of(f"jobs/{job}/result")[0]
    assert result["status"] == "succeeded" and result["version"], result
    model = tmp_path / "state" / "models" / result["version"] / "model.onnx"
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    x = np.load(tmp_path / "data" / "clips.npz")["x"][:4]
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert out.shape == (4, 4), "the model is the original (kws) bundle's, trained end to end"
    col.close()


# -- 18: cancel in the embed phase; promoted only when stored ---------------------------------------

def test_cancel_during_the_embed_phase_stops_it(broker, device, agents, tmp_path):
    import sqlite3

    _big_clips(tmp_path / "data", 2400, "embed.npz")
    col = Collector(broker)
    agents(device(broker, extra_toml=NOSIG))
    col.wait_online()
    job = col.send("train", {"bundle": "kws", "data": "embed.npz", "epochs": 2, "mode": "cached",
                             "embed_batch_size": 4})["job"]
    assert col.wait(lambda: any(j["job"] == job and j["status"] == "running" for j in col.of("job")), 60)
    assert col.send("cancel", {"job": job})["status"] == "done"
    assert col.wait(lambda: col.of(f"jobs/{job}/result"), 120)
    assert col.of(f"jobs/{job}/result")[0]["status"] == "cancelled"
    db = tmp_path / "state" / "cache" / "embeddings.sqlite"
    rows = sqlite3.connect(db).execute("SELECT COUNT(*) FROM emb").fetchone()[0] if db.exists() else 0
    assert rows < 2400, "the cancel must stop the embedding, not wait for all of it"
    col.close()


def test_promoted_is_false_when_the_version_cannot_be_stored(broker, device, agents, tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "models").write_text("not a directory")  # storing any version fails
    col = Collector(broker)
    agents(device(broker, extra_toml=NOSIG))
    col.wait_online()
    job = col.send("train", {"bundle": "mlp", "data": "blobs.npz", "epochs": 3})["job"]
    assert col.wait(lambda: col.of(f"jobs/{job}/result"), 60)
    result = col.of(f"jobs/{job}/result")[0]
    assert result["promoted"] is False and result["version"] is None, result
    assert result["error"] and "could not be stored" in result["error"], result
    assert col.send("ping")["status"] == "done"
    col.close()


# -- 12: retention at start --------------------------------------------------------------------------

def _fake_run(run: Path, n: int) -> None:
    run.mkdir(parents=True)
    (run / "model.onnx").write_bytes(f"model {n}".encode())
    (run / "model.json").write_text("{}")
    (run / "result.json").write_text(json.dumps({"status": "succeeded", "promoted": True}))


def test_retention_caps_are_enforced_at_start(broker, device, agents, tmp_path):
    from ftedge.device_agent.versions import ModelStore
    from ftedge.runtime.data.cache import EmbeddingCache

    state = tmp_path / "state"
    store = ModelStore(state)
    for n in range(6):
        _fake_run(tmp_path / "fake" / f"r{n}", n)
        store.add_version(tmp_path / "fake" / f"r{n}", f"job{n}")
    store.rollback()  # history v0001..v0005: active v0005, predecessor v0004 (v0006 is the newest)
    (state / "jobs").mkdir(parents=True)
    for n in range(5):
        jid = f"j20260101-00000{n}-abcde{n}"
        (state / "jobs" / f"{jid}.json").write_text(json.dumps({
            "id": jid, "bundle": "b", "data": "d", "options": {}, "status": "succeeded",
            "created_ms": 1000 + n, "finished_ms": 2000 + n}))
        (state / "runs" / jid).mkdir(parents=True)
        (state / "runs" / jid / "result.json").write_text("{}")
    cache = EmbeddingCache(state / "cache")
    cache.store("bb", [(f"s{i}", b"\1" * 10_000) for i in range(100)])  # ~1 MB
    cache.close()
    active = store.active()["id"]
    col = Collector(broker)
    agents(device(broker, extra_toml="[retention]\nkeep_runs = 2\nkeep_versions = 2\n"
                                     "cache_max_bytes = 300000\n"))
    col.wait_online()
    assert col.send("ping")["status"] == "done"
    runs = sorted(p.name for p in (state / "runs").iterdir())
    assert runs == ["j20260101-000003-abcde3", "j20260101-000004-abcde4"], runs
    versions = [v["id"] for v in ModelStore(state).list()]
    assert active in versions and len(versions) <= 3, versions
    rows = EmbeddingCache(state / "cache")
    n = rows.db.execute("SELECT COUNT(*), SUM(LENGTH(data)) FROM emb").fetchone()
    assert n[1] <= 300000 and n[0] > 0, n
    col.close()


def test_model_store_prune_keeps_active_and_predecessor(tmp_path):
    from ftedge.device_agent.versions import ModelStore

    store = ModelStore(tmp_path)
    for n in range(5):
        _fake_run(tmp_path / "runs" / f"r{n}", n)
        store.add_version(tmp_path / "runs" / f"r{n}", f"job{n}")
    store.activate("v0001")  # active v0001, predecessor v0005
    removed = store.prune(keep=1)
    left = [v["id"] for v in store.list()]
    assert "v0001" in left and "v0005" in left and len(left) == 2, (left, removed)
    assert store.rollback()["id"] == "v0005"


def test_retention_also_applies_after_every_stored_version(broker, device, agents, tmp_path):
    """A box that trains all day in one boot must not grow runs and versions without bound (soak finding)."""
    from ftedge.device_agent.versions import ModelStore

    col = Collector(broker)
    agents(device(broker, extra_toml=NOSIG + "[retention]\nkeep_runs = 1\nkeep_versions = 1\n"))
    col.wait_online()
    for i in range(4):
        reply = col.send("train", {"bundle": "mlp", "data": "blobs.npz", "epochs": 2, "min_gain": 0, "seed": i},
                         wait_for="accepted")
        assert col.wait(lambda: col.of(f"jobs/{reply['job']}/result"), 120), f"job {i} never finished"
    state = tmp_path / "state"
    assert len(list((state / "runs").iterdir())) <= 2, "finished runs beyond keep_runs (+ the newest) remain"
    versions = [v["id"] for v in ModelStore(state).list()]
    assert 1 <= len(versions) <= 2, f"versions beyond keep_versions (+ active/predecessor) remain: {versions}"
    col.close()
