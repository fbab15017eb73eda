"""ModelStore keeps every personalized model version; activation history drives rollback."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
from ftedge.device_agent.versions import ModelStore

from ftedge.errors import AgentError


def fake_run(tmp_path: Path, name: str, promoted: bool, status: str = "succeeded") -> Path:
    """A run directory as `ftedge train` leaves it (tiny fake model bytes)."""
    run = tmp_path / "runs" / name
    run.mkdir(parents=True)
    (run / "model.onnx").write_bytes(f"onnx-{name}".encode() * 10)
    (run / "model.json").write_text(json.dumps({"name": "kws", "labels": ["yes", "no"]}))
    (run / "result.json").write_text(json.dumps({
        "status": status, "promoted": promoted, "metrics": {"accuracy": 0.9, "loss": 0.3},
        "baseline": {"accuracy": 0.8, "loss": 0.5}, "gain": 0.1, "bundle": {"name": "kws", "path": "/b"}}))
    return run


@pytest.fixture()
def store(tmp_path) -> ModelStore:
    return ModelStore(tmp_path / "state")


def three(tmp_path: Path, store: ModelStore) -> list[dict]:
    return [store.add_version(fake_run(tmp_path, "a", True), "job-a"),
            store.add_version(fake_run(tmp_path, "b", False), "job-b", note={"by": "test"}),
            store.add_version(fake_run(tmp_path, "c", True), "job-c")]


def test_add_versions_only_promoted_become_active(tmp_path, store):
    assert store.active() is None and store.list() == []
    a, b, c = three(tmp_path, store)
    assert [v["id"] for v in (a, b, c)] == ["v0001", "v0002", "v0003"]
    assert a["activated"] and a["parent"] is None
    assert not b["activated"] and not b["active"] and "NOT activated" in b["message"]
    assert b["parent"] == "v0001" and b["note"] == {"by": "test"} and b["job"] == "job-b"
    assert c["activated"] and c["parent"] == "v0001"
    assert store.active()["id"] == "v0003"
    listed = store.list()
    assert [v["id"] for v in listed] == ["v0001", "v0002", "v0003"]
    assert [v["active"] for v in listed] == [False, False, True]
    rec = json.loads((tmp_path / "state/models/v0003/version.json").read_text())
    assert rec["sha256"] == hashlib.sha256((tmp_path / "runs/c/model.onnx").read_bytes()).hexdigest()
    assert rec["bundle"] == "kws" and rec["metrics"]["accuracy"] == 0.9 and rec["baseline"]["accuracy"] == 0.8
    assert rec["promoted"] is True and rec["created_at"].endswith("Z")
    for f in ("model.onnx", "model.json", "result.json", "version.json"):
        assert (tmp_path / "state/models/v0002" / f).is_file()
    assert store.path("v0002") == tmp_path / "state/models/v0002/model.onnx"
    assert store.path("v0002").read_bytes() == (tmp_path / "runs/b/model.onnx").read_bytes()
    assert not [p for p in (tmp_path / "state/models").iterdir() if p.name.startswith(".")]


def test_first_version_not_promoted_leaves_nothing_active(tmp_path, store):
    v = store.add_version(fake_run(tmp_path, "a", False), "job")
    assert not v["activated"] and store.active() is None
    with pytest.raises(AgentError, match="nothing to roll back to: no version is active"):
        store.rollback()
    with pytest.raises(AgentError, match=r"no version is active; use activate\('v0001'\)"):
        store.rollback(to="v0001")
    assert store.activate("v0001")["changed"] and store.active()["id"] == "v0001"


def test_rollback_returns_to_previous_and_stops_at_the_first(tmp_path, store):
    three(tmp_path, store)
    r = store.rollback()
    assert r["id"] == "v0001" and r["previous"] == "v0003" and r["changed"]
    assert store.active()["id"] == "v0001"
    with pytest.raises(AgentError, match="nothing to roll back to"):
        store.rollback()
    assert store.active()["id"] == "v0001"


def test_rollback_to_named_version(tmp_path, store):
    three(tmp_path, store)
    store.activate("v0002")
    assert store.active()["id"] == "v0002"
    r = store.rollback(to="v0001")
    assert r["id"] == "v0001" and store.active()["id"] == "v0001"
    with pytest.raises(AgentError, match="nothing to roll back to"):
        store.rollback()  # v0001 was the first activation: history unwound to it
    with pytest.raises(AgentError, match=r"never active before .*activate\('v0002'\)"):
        store.rollback(to="v0002")
    assert store.rollback(to="v0001")["changed"] is False


def test_activate_then_rollback_undoes_it(tmp_path, store):
    three(tmp_path, store)
    a = store.activate("v0002")
    assert a["changed"] and a["previous"] == "v0003" and store.active()["id"] == "v0002"
    assert store.activate("v0002")["changed"] is False
    assert store.rollback()["id"] == "v0003"
    assert store.rollback()["id"] == "v0001"


def test_history_persists_across_instances(tmp_path, store):
    three(tmp_path, store)
    store.activate("v0002")
    again = ModelStore(tmp_path / "state")
    assert again.active()["id"] == "v0002"
    assert again.rollback()["id"] == "v0003"
    assert ModelStore(tmp_path / "state").rollback()["id"] == "v0001"
    state = json.loads((tmp_path / "state/models/active.json").read_text())
    assert state["active"] == "v0001" and state["history"] == ["v0001"]
    assert [e["action"] for e in state["events"]] == ["promoted", "stored", "promoted", "activate",
                                                      "rollback", "rollback"]
    v4 = again.add_version(fake_run(tmp_path, "d", True), "job-d")
    assert v4["id"] == "v0004" and v4["parent"] == "v0001"


def test_nothing_is_deleted(tmp_path, store):
    three(tmp_path, store)
    store.rollback()
    store.activate("v0002")
    store.rollback(to="v0001")
    for v in ("v0001", "v0002", "v0003"):
        assert (tmp_path / "state/models" / v / "model.onnx").is_file()
    assert [v["id"] for v in store.list()] == ["v0001", "v0002", "v0003"]


def test_unknown_ids_name_the_known_ones(tmp_path, store):
    three(tmp_path, store)
    for call in (lambda: store.activate("v0009"), lambda: store.rollback(to="v9"),
                 lambda: store.path("../v0001"), lambda: store.get("nope")):
        with pytest.raises(AgentError, match="known versions: v0001, v0002, v0003"):
            call()
    with pytest.raises(AgentError, match="none yet"):
        ModelStore(tmp_path / "empty").path("v0001")


def test_incomplete_or_failed_runs_are_refused(tmp_path, store):
    run = fake_run(tmp_path, "x", True)
    (run / "model.onnx").unlink()
    with pytest.raises(AgentError, match="lacks model.onnx"):
        store.add_version(run, "job")
    with pytest.raises(AgentError, match="did not succeed"):
        store.add_version(fake_run(tmp_path, "y", True, status="diverged"), "job")
    assert store.list() == []


def test_corrupted_model_is_not_activated(tmp_path, store):
    three(tmp_path, store)
    store.path("v0002").write_bytes(b"garbage")
    with pytest.raises(AgentError, match="sha256"):
        store.activate("v0002")
    assert store.active()["id"] == "v0003"


def test_concurrent_adds_get_distinct_ids(tmp_path, store):
    runs = [fake_run(tmp_path, f"r{i}", i % 2 == 0) for i in range(8)]
    threads = [threading.Thread(target=store.add_version, args=(r, f"job{i}")) for i, r in enumerate(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [v["id"] for v in store.list()] == [f"v{i:04d}" for i in range(1, 9)]
    assert sorted(v["job"] for v in store.list()) == sorted(f"job{i}" for i in range(8))



def test_the_event_log_of_active_json_stays_bounded(tmp_path, store, monkeypatch):
    """Every store/activate/rollback appends an event; a box promoting all day must not grow the file forever."""
    from ftedge.device_agent import versions

    monkeypatch.setattr(versions, "MAX_EVENTS", 5)
    for n in range(8):
        store.add_version(fake_run(tmp_path, f"r{n}", True), f"job-{n}")
    store.rollback()
    state = json.loads((tmp_path / "state/models/active.json").read_text())
    assert len(state["events"]) == 5 and state["events"][-1]["action"] == "rollback", state["events"]
    assert store.active()["id"] == "v0007" and len(store.list()) == 8, "trimming the log changes no state"


def test_deactivate_keeps_the_history_and_a_version_comes_back(tmp_path, store):
    assert store.deactivate()["changed"] is False, "a fresh box has nothing active: nothing to change"
    three(tmp_path, store)  # history v0001, v0003
    off = store.deactivate()
    assert off["changed"] and off["previous"] == "v0003" and store.active() is None
    again = ModelStore(tmp_path / "state")  # active null with a history is a consistent state
    assert again.active() is None and [v["active"] for v in again.list()] == [False, False, False]
    assert again.deactivate()["changed"] is False
    assert again.prune(0) == ["v0002"], "the last two activations stay: rollback returns to them"
    back = again.rollback()
    assert back["id"] == "v0003" and back["previous"] is None and again.active()["id"] == "v0003"
    again.deactivate()
    assert again.rollback(to="v0001")["id"] == "v0001", "with none active, any version of the history"
    state = json.loads((tmp_path / "state/models/active.json").read_text())
    assert state["history"] == ["v0001"] and [e["action"] for e in state["events"]][-5:] == [
        "deactivate", "pruned", "rollback", "deactivate", "rollback"]
    again.deactivate()
    assert again.activate("v0001")["changed"] and again.active()["id"] == "v0001"
    assert json.loads((tmp_path / "state/models/active.json").read_text())["history"] == ["v0001"]
    v4 = again.add_version(fake_run(tmp_path, "d", True), "job-d")
    assert v4["parent"] == "v0001" and again.rollback()["id"] == "v0001"


def test_a_failed_transaction_puts_active_json_back(tmp_path, store):
    three(tmp_path, store)
    before = (tmp_path / "state/models/active.json").read_bytes()
    with pytest.raises(AgentError, match="bundle part failed"):
        with store.transaction():
            store.deactivate()
            assert store.active() is None
            raise AgentError("bundle part failed")
    assert (tmp_path / "state/models/active.json").read_bytes() == before and store.active()["id"] == "v0003"
    with store.transaction():
        store.rollback()
    assert store.active()["id"] == "v0001"
