"""Undoing a rollout on a box (issue 34): `rollback` puts the replaced bundle and an earlier model version back.

A real agent process over the real Mosquitto broker; bundles are tiny `mlp` variants deployed by file://.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from ftedge.bundle.pack import pack_bundle
from ftedge.mqtt.contract import ENVELOPE_KEYS
from tests.helpers.agent_harness import Collector

pytestmark = pytest.mark.needs("mosquitto")


def _release(bundles: Path, tmp_path: Path, tag: str, created_at: str) -> tuple[Path, str, bytes]:
    """A packed copy of the harness's `mlp` bundle with its own ``created_at``: (archive, sha256, manifest bytes)."""
    src = tmp_path / "release" / tag / "mlp"
    shutil.copytree(bundles / "mlp", src)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest.pop("signature", None)
    (src / "manifest.json").write_text(json.dumps({**manifest, "created_at": created_at}, indent=2))
    archive = tmp_path / "release" / f"mlp-{tag}.tar.gz"
    return archive, pack_bundle(src, archive), (src / "manifest.json").read_bytes()


def _start(broker, device, agents, tmp_path: Path) -> tuple[Collector, Path]:
    """An agent whose bundle root has no `mlp` yet (its first deploy replaces nothing), and a collector."""
    root = tmp_path / "bundles"
    shutil.rmtree(root / "mlp")
    col = Collector(broker)
    agents(device(broker, extra_toml=f'[deploy]\nrequire_signed = false\nfile_root = "{tmp_path / "release"}"\n'))
    col.wait_online()
    return col, root


def _deploy(col: Collector, archive: Path, sha: str, replace: bool = False) -> dict:
    reply = col.send("deploy", {"url": archive.as_uri(), "sha256": sha, "name": "mlp", "replace": replace},
                     wait_for="done", timeout=60)
    assert reply["code"] == "deployed" and reply["bundle"] == "mlp", reply
    return reply


def _train(col: Collector, epochs: int = 3) -> str:
    job = col.send("train", {"bundle": "mlp", "data": "blobs.npz", "epochs": epochs})["job"]
    assert col.wait(lambda: col.of(f"jobs/{job}/result"), 60)
    result = col.of(f"jobs/{job}/result")[0]
    assert result["status"] == "succeeded" and result["promoted"] is True, result
    return result["version"]


def _listing(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".ftedge-"))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_rollback_restores_the_replaced_bundle_and_the_previous_version(broker, device, agents, bundles, tmp_path):
    v1, sha1, manifest1 = _release(bundles, tmp_path, "v1", "2030-01-01T00:00:00+00:00")
    v2, sha2, manifest2 = _release(bundles, tmp_path, "v2", "2031-01-01T00:00:00+00:00")
    col, root = _start(broker, device, agents, tmp_path)
    first = _deploy(col, v1, sha1)
    assert first["replaced"] is None and first["manifest_sha256"] == _sha(manifest1), "a first deploy replaces nothing"
    again = _deploy(col, v1, sha1, replace=True)
    assert again["replaced"] is None, "the identical bundle was already there: nothing replaced"
    assert _listing(root) == ["kws", "mlp"]
    assert _train(col) == "v0001"

    second = _deploy(col, v2, sha2, replace=True)
    replaced = second["replaced"]
    assert replaced and replaced.startswith("mlp.replaced-") and second["manifest_sha256"] == _sha(manifest2)
    assert (root / replaced / "manifest.json").read_bytes() == manifest1
    assert _train(col) == "v0002"

    cmd = "rollback-wave-1"
    back = col.send("rollback", {"to": "v0001", "bundle": "mlp", "restore": replaced}, cmd_id=cmd)
    assert back["status"] == "done" and back["code"] == "ok", back
    assert back["active_version"] == "v0001" and back["bundle"] == "mlp" and back["restored"] == replaced
    kept = back["replaced"]  # where v2 went: a later rollback (or deploy) can roll forward again
    assert kept and kept.startswith("mlp.replaced-") and kept != replaced
    assert (root / "mlp" / "manifest.json").read_bytes() == manifest1
    assert (root / kept / "manifest.json").read_bytes() == manifest2
    after = _listing(root)
    assert after == sorted(["kws", "mlp", kept])
    assert col.wait(lambda: col.of("meta")[-1]["active_version"] == "v0001")
    assert col.send("status")["agent"]["active_version"] == "v0001"

    meta_count = len(col.of("meta"))
    col.send("rollback", {"to": "v0001", "bundle": "mlp", "restore": replaced}, cmd_id=cmd, wait_for=None)
    assert col.wait(lambda: len(col.replies[cmd]) == 2)
    repeat = col.replies[cmd][1]
    assert {k: v for k, v in repeat.items() if k not in ENVELOPE_KEYS} == \
        {k: v for k, v in back.items() if k not in ENVELOPE_KEYS}, "a repeated cmd_id answers the same"
    assert _listing(root) == after and (root / "mlp" / "manifest.json").read_bytes() == manifest1, \
        "a repeated cmd_id must not swap the bundle a second time"
    assert len(col.of("meta")) == meta_count, "nothing was redone"

    forward = col.send("rollback", {"to": "v0002", "bundle": "mlp", "restore": kept})
    assert forward["status"] == "rejected" and forward["code"] == "rollback_refused", \
        "v0002 was never active before v0001 (rollback pops the history); the bundle stays"
    assert _listing(root) == after and (root / "mlp" / "manifest.json").read_bytes() == manifest1
    forward = col.send("rollback", {"bundle": "mlp", "restore": kept})
    assert forward["status"] == "done" and forward["active_version"] == "v0001", forward
    assert (root / "mlp" / "manifest.json").read_bytes() == manifest2, "the kept folder rolls the bundle forward"
    col.close()


def test_rollback_to_none_deactivates_and_a_later_rollback_brings_a_version_back(broker, device, agents, tmp_path):
    col = Collector(broker)
    agents(device(broker))
    col.wait_online()
    assert col.send("rollback", {"to": "none"})["active_version"] is None, "nothing active: nothing to change"
    version = _train(col)
    off = col.send("rollback", {"to": "none"})
    assert off["status"] == "done" and off["active_version"] is None, off
    assert col.send("status")["agent"]["active_version"] is None
    assert col.wait(lambda: col.of("meta")[-1]["active_version"] is None)
    assert col.of("meta")[-1]["models"] == [version], "deactivating deletes nothing"
    state = json.loads((tmp_path / "state" / "models" / "active.json").read_text())
    assert state["active"] is None and state["history"] == [version] and state["events"][-1]["action"] == "deactivate"

    back = col.send("rollback", {})  # no args: back one step, i.e. to the version active before "none"
    assert back["status"] == "done" and back["active_version"] == version, back
    assert col.send("rollback", {"to": "none"})["active_version"] is None
    named = col.send("rollback", {"to": version})
    assert named["status"] == "done" and named["active_version"] == version, named
    assert col.wait(lambda: col.of("meta")[-1]["active_version"] == version)
    col.close()


def test_a_refused_rollback_changes_nothing(broker, device, agents, bundles, tmp_path):
    v1, sha1, _ = _release(bundles, tmp_path, "v1", "2030-01-01T00:00:00+00:00")
    v2, sha2, manifest2 = _release(bundles, tmp_path, "v2", "2031-01-01T00:00:00+00:00")
    col, root = _start(broker, device, agents, tmp_path)
    _deploy(col, v1, sha1)
    version = _train(col)
    replaced = _deploy(col, v2, sha2, replace=True)["replaced"]
    outside = tmp_path / "elsewhere"
    shutil.copytree(root / replaced, outside)
    (root / "mlp.replaced-20000101T000000Z").symlink_to(outside, target_is_directory=True)
    (root / "mlp.replaced-20000102T000000Z").write_text("not a folder")
    state = tmp_path / "state" / "models" / "active.json"
    listing, active = _listing(root), state.read_bytes()

    def refused(args: dict, code: str, says: str) -> None:
        reply = col.send("rollback", args)
        assert reply["status"] == "rejected" and reply["code"] == code and says in reply["detail"], (args, reply)
        assert _listing(root) == listing and state.read_bytes() == active, f"{args} changed something"
        assert (root / "mlp" / "manifest.json").read_bytes() == manifest2

    none = {"to": "none", "bundle": "mlp"}
    refused({**none, "restore": "../x"}, "bad_args", "not a kept folder")
    refused({**none, "restore": f"../bundles/{replaced}"}, "bad_args", "not a kept folder")
    refused({**none, "restore": "kws.replaced-20300101T000000Z"}, "bad_args", "not a kept folder")
    refused({**none, "restore": "mlp"}, "bad_args", "not a kept folder")
    refused({**none, "restore": "mlp.old"}, "bad_args", "not a kept folder")
    refused({"bundle": "../mlp", "restore": "../mlp.replaced-20300101T000000Z"}, "bad_args", "not usable")
    refused({"bundle": "mlp"}, "bad_args", "go together")
    refused({"to": 3}, "bad_args", "version id")
    refused({"to": "v0001", "wave": 2}, "bad_args", "unknown rollback argument")
    # The model part (deactivate) ran first: a failing bundle part undoes it.
    refused({**none, "restore": "mlp.replaced-19990101T000000Z"}, "rollback_refused", "no kept bundle")
    refused({**none, "restore": "mlp.replaced-20000101T000000Z"}, "rollback_refused", "not a folder")
    refused({**none, "restore": "mlp.replaced-20000102T000000Z"}, "rollback_refused", "not a folder")

    job = col.send("train", {"bundle": "mlp", "data": "blobs.npz", "epochs": 10_000})["job"]
    refused({**none, "restore": replaced}, "rollback_refused", f"job {job}")
    assert col.send("cancel", {"job": job})["status"] == "done"
    assert col.wait(lambda: col.of(f"jobs/{job}/result"), 60)
    assert col.send("status")["agent"]["active_version"] == version
    ok = col.send("rollback", {**none, "restore": replaced})
    assert ok["status"] == "done" and ok["active_version"] is None and ok["restored"] == replaced, ok
    col.close()
