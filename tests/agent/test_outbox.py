"""The device agent's durable outbox: envelope, seq without holes, durability, bounds."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ftedge.device_agent.outbox import KINDS, Message, Outbox, OutboxError

ROOT_TOPIC = "ftedge/v1/fleet1/dev1"
PROGRESS = f"{ROOT_TOPIC}/jobs/j1/progress"
RESULT = f"{ROOT_TOPIC}/jobs/j1/result"


def progress(step: int, pad: int = 200) -> dict:
    return {"job": "j1", "epoch": 0, "step": step, "loss": 0.5, "metrics": {"acc": 0.9}, "pad": "x" * pad}


def result(i: int = 0, pad: int = 200) -> dict:
    return {"job": f"j{i}", "status": "succeeded", "final": {"acc": 0.99}, "detail": "r" * pad}


def open_outbox(tmp_path: Path, **kw) -> Outbox:
    kw.setdefault("device", "dev1")
    return Outbox(tmp_path / "outbox.db", **kw)


def all_seqs(ob: Outbox, boot: str) -> list[int]:
    return [m.seq for m in ob.pending() if m.boot == boot]


def test_seq_starts_at_one_and_has_no_holes(tmp_path):
    with open_outbox(tmp_path, boot="b1") as ob:
        seqs = [ob.enqueue(PROGRESS, {"job": "j1", "step": i}, kind="progress").seq for i in range(1000)]
        assert seqs == list(range(1, 1001))
        assert all_seqs(ob, "b1") == seqs
        assert ob.depth() == 1000


def test_new_boot_restarts_seq_and_older_boots_come_first(tmp_path):
    with open_outbox(tmp_path, boot="zzz") as ob:  # boots order by creation, not by id
        for i in range(3):
            ob.enqueue(PROGRESS, {"step": i}, kind="progress")
    with open_outbox(tmp_path, boot="aaa") as ob:
        assert [ob.enqueue(RESULT, result(), kind="result").seq for _ in range(2)] == [1, 2]
        assert [(m.boot, m.seq) for m in ob.pending()] == [("zzz", 1), ("zzz", 2), ("zzz", 3), ("aaa", 1), ("aaa", 2)]
        assert [(m.boot, m.seq) for m in ob.pending(limit=2)] == [("zzz", 1), ("zzz", 2)]


def test_default_boot_is_fresh_per_start(tmp_path):
    a = open_outbox(tmp_path)
    a.close()
    b = open_outbox(tmp_path)
    assert a.boot != b.boot and len(b.boot) == 12
    assert b.enqueue(RESULT, result(), kind="result").seq == 1


def test_seq_counter_survives_deleted_rows(tmp_path):
    with open_outbox(tmp_path, boot="b1") as ob:
        for _ in range(3):
            ob.ack(ob.enqueue(RESULT, result(), kind="result").id)
        assert ob.depth() == 0
        assert ob.enqueue(RESULT, result(), kind="result").seq == 4
    with open_outbox(tmp_path, boot="b1") as ob:  # the same boot id reopened continues its counter
        assert ob.enqueue(RESULT, result(), kind="result").seq == 5


def test_envelope_payload_and_hist(tmp_path):
    t = [1_700_000_000.123]
    with open_outbox(tmp_path, device="dev1", boot="b1", clock=lambda: t[0]) as ob:
        m = ob.enqueue(f"{ROOT_TOPIC}/job", {"job": "j1", "state": "running"}, kind="job", retain=True)
        assert isinstance(m, Message)
        assert (m.topic, m.kind, m.qos, m.retain, m.boot, m.seq, m.attempts) == (
            f"{ROOT_TOPIC}/job", "job", 1, True, "b1", 1, 0)
        assert m.body == {"job": "j1", "state": "running", "v": 1, "ts": 1_700_000_000_123, "dev": "dev1",
                          "boot": "b1", "seq": 1, "hist": False}
        raw = m.payload(hist=False)
        assert isinstance(raw, bytes) and b" " not in raw  # compact
        assert json.loads(raw) == m.body
        assert json.loads(m.payload(hist=True))["hist"] is True
        assert json.loads(ob.enqueue(RESULT, {"detail": "é"}, kind="result").payload(False))["detail"] == "é"

        assert not m.is_replay(ob.boot)
        assert ob.mark_attempt(m.id)
        (again,) = [p for p in ob.pending() if p.id == m.id]
        assert again.attempts == 1 and again.is_replay(ob.boot)
        assert again.body == m.body  # stored hist stays false; payload() sets it
    with open_outbox(tmp_path, device="dev1") as ob:  # after a restart, older boots replay as hist
        old = ob.pending()[0]
        assert old.boot == "b1" and old.is_replay(ob.boot)


def test_ack_deletes(tmp_path):
    with open_outbox(tmp_path) as ob:
        a = ob.enqueue(RESULT, result(1), kind="result")
        b = ob.enqueue(RESULT, result(2), kind="result")
        assert ob.ack(a.id) is True
        assert ob.ack(a.id) is False  # a late second PUBACK is harmless
        assert ob.mark_attempt(a.id) is False
        assert [m.id for m in ob.pending()] == [b.id]
        assert ob.depth() == 1 and ob.size_bytes() == len(b.payload(False))
        ob.ack(b.id)
        assert ob.depth() == 0 and ob.size_bytes() == 0 and ob.pending() == []
        c = ob.enqueue(RESULT, result(3), kind="result")
        assert c.id > b.id  # ids are never reused: a stale ack cannot delete a new message


def test_survives_reopen(tmp_path):
    with open_outbox(tmp_path, boot="b1") as ob:
        ids = [ob.enqueue(RESULT, result(i), kind="result").id for i in range(5)]
        ob.ack(ids[0])
        ob.ack(ids[3])
    with open_outbox(tmp_path) as ob:
        assert [(m.boot, m.seq) for m in ob.pending()] == [("b1", 2), ("b1", 3), ("b1", 5)]
        assert ob.pending()[0].body["job"] == "j1"
        assert ob.depth() == 3


def test_wal_mode_and_schema_version(tmp_path):
    open_outbox(tmp_path).close()
    db = sqlite3.connect(tmp_path / "outbox.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(OutboxError, match="newer than this ftedge.*upgrade ftedge"):
        open_outbox(tmp_path)


def test_damaged_file_gives_a_clear_error(tmp_path):
    (tmp_path / "outbox.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutboxError, match="move it aside"):
        open_outbox(tmp_path)


def _child(code: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, **kw)


def test_enqueued_message_survives_sigkill_right_after_enqueue(tmp_path):
    code = f"""
import os, signal
from pathlib import Path
from ftedge.device_agent.outbox import Outbox
ob = Outbox(Path({str(tmp_path / "outbox.db")!r}), device="dev1", boot="killed")
for i in range(20):
    m = ob.enqueue({RESULT!r}, {{"job": "j1", "i": i}}, kind="result")
print(m.seq, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = _child(code)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert out.strip() == "20"
    with open_outbox(tmp_path) as ob:
        msgs = ob.pending()
        assert [(m.boot, m.seq) for m in msgs] == [("killed", s) for s in range(1, 21)]
        assert [m.body["i"] for m in msgs] == list(range(20))


def test_sigkill_mid_stream_keeps_every_returned_seq_without_holes(tmp_path):
    code = f"""
from pathlib import Path
from ftedge.device_agent.outbox import Outbox
ob = Outbox(Path({str(tmp_path / "outbox.db")!r}), device="dev1", boot="killed")
while True:
    m = ob.enqueue({PROGRESS!r}, {{"job": "j1", "step": 1}}, kind="progress")
    print(m.seq, flush=True)
"""
    proc = _child(code)
    last = 0
    for line in proc.stdout:
        last = int(line)
        if last >= 200:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    with open_outbox(tmp_path) as ob:
        seqs = [m.seq for m in ob.pending()]
    assert seqs == list(range(1, len(seqs) + 1))  # no holes, nothing half-written
    assert len(seqs) >= last >= 200  # everything enqueue returned is on disk


def test_two_threads_get_distinct_consecutive_seqs(tmp_path):
    with open_outbox(tmp_path, boot="b1") as ob:
        got: list[list[int]] = [[], []]
        errors: list[BaseException] = []

        def worker(k: int) -> None:
            try:
                for i in range(500):
                    got[k].append(ob.enqueue(PROGRESS, {"job": "j1", "t": k, "i": i}, kind="progress").seq)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert sorted(got[0] + got[1]) == list(range(1, 1001))
        assert all(a < b for a, b in zip(got[0], got[0][1:]))  # per thread, in call order
        assert all_seqs(ob, "b1") == list(range(1, 1001))


def test_concurrent_ack_and_enqueue(tmp_path):
    with open_outbox(tmp_path) as ob:
        done = threading.Event()
        acked: list[int] = []

        def acker() -> None:
            while not done.is_set() or ob.depth():
                for m in ob.pending(limit=50):
                    ob.mark_attempt(m.id)
                    if ob.ack(m.id):
                        acked.append(m.seq)

        t = threading.Thread(target=acker)
        t.start()
        for i in range(500):
            ob.enqueue(RESULT, result(i, pad=10), kind="result")
        done.set()
        t.join(timeout=60)
        assert sorted(acked) == list(range(1, 501))
        assert ob.depth() == 0 and ob.size_bytes() == 0


def test_progress_is_thinned_first_results_never(tmp_path):
    with open_outbox(tmp_path, boot="b1", max_bytes=6000) as ob:
        for i in range(40):
            ob.enqueue(PROGRESS, progress(i), kind="progress")
        assert ob.size_bytes() <= 6000
        msgs = ob.pending()
        assert [m.seq for m in msgs] == list(range(1, 41))  # every seq still there
        flags = [m.thinned for m in msgs]
        assert any(flags) and not all(flags)
        assert flags == sorted(flags, reverse=True)  # the oldest ones went first
        stub = msgs[0]
        assert stub.body == {"job": "j1", "thinned": True, "v": 1, "ts": stub.body["ts"], "dev": "dev1",
                             "boot": "b1", "seq": 1, "hist": False}
        assert json.loads(stub.payload(True))["hist"] is True
        assert msgs[-1].body["pad"] == "x" * 200

        # Results alone exceed the budget: all progress is thinned, results are kept whole.
        for i in range(40):
            ob.enqueue(RESULT, result(i, pad=300), kind="result")
        report = ob.enforce_bounds()
        assert report["over_budget"] is True and report["bytes"] > 6000
        assert ob.last_bounds["over_budget"] is True
        msgs = ob.pending()
        assert [m.seq for m in msgs] == list(range(1, 81))
        assert all(m.thinned for m in msgs if m.kind == "progress")
        assert all(not m.thinned and m.body["detail"] == "r" * 300 for m in msgs if m.kind == "result")
        stats = ob.stats()
        assert stats["over_budget"] and stats["kinds"]["result"] == 40 and stats["thinned"] == 40


def test_superseded_snapshots_thinned_after_progress_and_before_any_result(tmp_path):
    job, meta, status = f"{ROOT_TOPIC}/job", f"{ROOT_TOPIC}/meta", f"{ROOT_TOPIC}/status"
    with open_outbox(tmp_path, max_bytes=10**6) as ob:
        ob.enqueue(status, {"state": "online", "reason": "birth"}, kind="status", retain=True)
        for v in range(3):
            ob.enqueue(job, {"job": "j1", "state": f"s{v}", "pad": "j" * 400}, kind="job", retain=True)
        for v in range(2):
            ob.enqueue(meta, {"agent": f"0.{v}", "pad": "m" * 400}, kind="meta", retain=True)
        ob.enqueue(RESULT, result(1, pad=400), kind="result")
        for i in range(10):
            ob.enqueue(PROGRESS, progress(i, pad=400), kind="progress")
        ob.enqueue(f"{ROOT_TOPIC}/cmdres/host1", {"cmd_id": "c1", "status": "done"}, kind="cmdres")

        # Budget reachable by thinning progress alone: snapshots untouched.
        ob.max_bytes = ob.size_bytes() - 1500
        ob.enforce_bounds()
        msgs = ob.pending()
        assert any(m.thinned for m in msgs if m.kind == "progress")
        assert not any(m.thinned for m in msgs if m.kind != "progress")

        # Budget below everything: all progress, then superseded snapshots; newest snapshots and
        # status / result / cmdres stay whole.
        ob.max_bytes = 100
        report = ob.enforce_bounds()
        assert report["over_budget"] is True
        jobs = [m for m in ob.pending() if m.kind == "job"]
        assert [m.thinned for m in jobs] == [True, True, False] and jobs[2].body["state"] == "s2"
        assert jobs[0].body["job"] == "j1" and "state" not in jobs[0].body
        metas = [m for m in ob.pending() if m.kind == "meta"]
        assert [m.thinned for m in metas] == [True, False] and metas[1].body["agent"] == "0.1"
        assert "job" not in metas[0].body  # meta bodies have no job to keep
        assert all(m.thinned for m in ob.pending() if m.kind == "progress")
        assert not any(m.thinned for m in ob.pending() if m.kind in ("status", "result", "cmdres"))
        assert [m.seq for m in ob.pending()] == list(range(1, ob.depth() + 1))


def test_age_bound_thins_old_progress_and_superseded_snapshots(tmp_path):
    t = [1_000_000.0]
    job = f"{ROOT_TOPIC}/job"
    with open_outbox(tmp_path, max_age_s=60, clock=lambda: t[0]) as ob:
        ob.enqueue(PROGRESS, progress(1), kind="progress")
        ob.enqueue(job, {"job": "j1", "state": "running"}, kind="job", retain=True)
        ob.enqueue(job, {"job": "j1", "state": "done"}, kind="job", retain=True)
        ob.enqueue(RESULT, result(1), kind="result")
        t[0] += 30
        ob.enqueue(PROGRESS, progress(2), kind="progress")
        assert ob.enforce_bounds()["thinned"] == 0
        t[0] += 45  # the first four are 75 s old, the last progress 45 s
        assert ob.stats()["oldest_age_s"] == pytest.approx(75)
        ob.enqueue(RESULT, result(2), kind="result")  # enqueue enforces the bounds itself
        assert ob.last_bounds["thinned"] == 2
        thinned = [(m.seq, m.kind) for m in ob.pending() if m.thinned]
        assert thinned == [(1, "progress"), (2, "job")]
        t[0] += 10 * 86400  # results and the current snapshot never age out
        ob.enforce_bounds()
        assert {m.seq for m in ob.pending() if not m.thinned} == {3, 4, 6}
        assert ob.depth() == 6


def test_tiny_bodies_are_not_grown_by_thinning(tmp_path):
    with open_outbox(tmp_path, max_bytes=200) as ob:
        for i in range(10):
            ob.enqueue("t/p", {}, kind="progress")
        assert ob.enforce_bounds()["over_budget"] is True  # terminates, nothing made bigger
        assert not any(m.thinned for m in ob.pending())


@pytest.mark.parametrize("kind", ["telemetry", "", "RESULT"])
def test_invalid_kind(tmp_path, kind):
    with open_outbox(tmp_path) as ob, pytest.raises(OutboxError, match="unknown message kind.*use one of"):
        ob.enqueue(RESULT, {}, kind=kind)


def _circular() -> dict:
    body: dict = {"job": "j1"}
    body["self"] = [body]
    return body


@pytest.mark.parametrize(
    "body, match",
    [
        ({"x": object()}, "not JSON.*use only"),
        ({"x": {1, 2}}, "not JSON"),
        ({"loss": float("nan"), "x": object()}, "not JSON"),
        (_circular(), "not JSON.*Circular"),
        (["not", "a", "dict"], "must be a dict"),
        ({"seq": 5}, "envelope field"),
    ],
)
def test_bad_bodies_raise_clear_errors_and_consume_no_seq(tmp_path, body, match):
    with open_outbox(tmp_path) as ob:
        with pytest.raises(OutboxError, match=match):
            ob.enqueue(RESULT, body, kind="result")
        assert ob.depth() == 0
        assert ob.enqueue(RESULT, {}, kind="result").seq == 1  # no hole left by the failure


def test_non_finite_floats_become_null(tmp_path):
    """A diverged loss must not cost the message: NaN / Infinity are not JSON, null is."""
    with open_outbox(tmp_path) as ob:
        m = ob.enqueue(RESULT, {"status": "failed", "final": {"loss": float("nan"), "acc": 0.25},
                                "curve": [1.0, float("inf"), (float("-inf"), 2.0)]}, kind="result")
        assert m.body["final"] == {"loss": None, "acc": 0.25} and m.body["curve"] == [1.0, None, [None, 2.0]]
        assert b"NaN" not in m.payload(False) and ob.pending()[0].body == m.body


def test_opening_to_read_registers_no_boot(tmp_path):
    with open_outbox(tmp_path, boot="agent") as ob:
        ob.enqueue(RESULT, result(), kind="result")
    for _ in range(3):
        with open_outbox(tmp_path) as reader:  # e.g. `ftedge agent status` next to the running agent
            assert reader.stats()["depth"] == 1
    db = sqlite3.connect(tmp_path / "outbox.db")
    assert db.execute("SELECT boot FROM boots").fetchall() == [("agent",)]
    db.close()


def test_bad_topic_and_qos(tmp_path):
    with open_outbox(tmp_path) as ob:
        with pytest.raises(OutboxError, match="wildcards"):
            ob.enqueue(f"{ROOT_TOPIC}/#", {}, kind="status")
        with pytest.raises(OutboxError, match="qos"):
            ob.enqueue(RESULT, {}, kind="result", qos=3)


def test_stats(tmp_path):
    with open_outbox(tmp_path) as ob:
        ob.enqueue(RESULT, result(), kind="result")
        ob.enqueue(PROGRESS, progress(1), kind="progress")
        s = ob.stats()
        assert s["depth"] == 2 and s["bytes"] == ob.size_bytes() > 0
        assert s["kinds"] == {k: int(k in ("result", "progress")) for k in KINDS}
        assert s["oldest_age_s"] >= 0 and s["over_budget"] is False and s["boot"] == ob.boot
        for m in ob.pending():
            ob.ack(m.id)
        assert ob.stats()["oldest_age_s"] is None


def test_throughput_enqueue_and_ack(tmp_path):
    n = 2000
    with open_outbox(tmp_path) as ob:
        start = time.perf_counter()
        for i in range(n):
            ob.ack(ob.enqueue(PROGRESS, progress(i, pad=100), kind="progress").id)
        elapsed = time.perf_counter() - start
        assert ob.depth() == 0
    print(f"\noutbox enqueue+ack: {n / elapsed:,.0f} messages/s ({elapsed * 1e3 / n:.2f} ms each)")


def test_an_unstored_message_takes_the_next_seq_and_later_ones_continue_after_it(tmp_path):
    """Disk full: `ephemeral` hands out a seq without storing; enqueue must never reuse it (no duplicate seq)."""
    ob = Outbox(tmp_path / "o.sqlite", "dev-1")
    with pytest.raises(OutboxError, match="first message"):
        ob.ephemeral("t/cmdres/x", {"cmd_id": "c"}, kind="cmdres")
    first = ob.enqueue("t/status", {"state": "online"}, kind="status")
    unstored = ob.ephemeral("t/cmdres/x", {"cmd_id": "c"}, kind="cmdres")
    again = ob.ephemeral("t/cmdres/x", {"cmd_id": "d"}, kind="cmdres")
    later = ob.enqueue("t/status", {"state": "online"}, kind="status")
    assert [first.seq, unstored.seq, again.seq, later.seq] == [1, 2, 3, 4]
    assert unstored.body["boot"] == first.boot and unstored.body["seq"] == 2
    assert [m.seq for m in ob.pending()] == [1, 4], "the unstored ones are not in the outbox"
    ob.close()
