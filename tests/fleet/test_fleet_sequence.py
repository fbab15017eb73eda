"""The collector's pure logic, without SQL or a broker: per-boot sequence tracking (de-duplication, holes,
late fills, boot order) and parsing a received message against the contract."""

from __future__ import annotations

import json

import pytest
from ftedge.fleet.envelope import Message, parse
from ftedge.fleet.sequence import MAX_HOLES_PER_WRITE_OFF, Hole, Stream, started_later


def stream(**kw) -> Stream:
    return Stream("f", "d", kw.pop("boot", "b1"), kw.pop("first_ts", 0), kw.pop("first_seen_ms", 0), **kw)


class Recorder:
    """What the store's ``seen`` table does: remember a seq, say whether it was new."""

    def __init__(self) -> None:
        self.seqs: set[int] = set()

    def __call__(self, seq: int) -> bool:
        new = seq not in self.seqs
        self.seqs.add(seq)
        return new


def offer_all(st: Stream, seqs, rec=None, retained=False, now=0.0) -> list[bool]:
    rec = rec if rec is not None else Recorder()
    return [st.offer(s, retained, now, rec).new for s in seqs]


def test_in_order_seqs_are_new_and_repeats_are_duplicates():
    st = stream()
    assert offer_all(st, [1, 2, 3, 2, 3, 1]) == [True, True, True, False, False, False]
    assert (st.contiguous, st.above, st.pending) == (3, set(), False)


def test_reordered_seqs_close_the_gap_without_a_hole():
    st, rec = stream(), Recorder()
    assert offer_all(st, [1, 4, 3, 2, 4], rec, now=10.0) == [True, True, True, True, False]
    assert st.contiguous == 4 and not st.above and not st.pending
    assert st.write_off(cutoff=1e9) == []          # nothing left to count


def test_a_gap_older_than_the_window_is_written_off_once_as_ranges():
    st = stream()
    offer_all(st, [1, 2, 5, 6, 9], now=100.0)
    assert st.pending and st.marks == [(5, 100.0), (6, 100.0), (9, 100.0)]
    assert st.write_off(cutoff=99.0) == []          # still inside the reorder window
    assert st.write_off(cutoff=100.0) == [(3, 4), (7, 8)]
    assert st.contiguous == 9 and not st.above and not st.pending
    assert st.write_off(cutoff=1e9) == []           # counted once


def test_sparse_seqs_are_written_off_as_at_most_the_capped_number_of_holes():
    """Seqs 2, 4, …, 1000 (issue 33): 100 holes, the last spanning the rest; the seqs that arrived inside it are
    recorded as arrived, so a repeat is a duplicate, a missing one a late fill, and the hole completes."""
    st, rec = stream(), Recorder()
    offer_all(st, range(2, 1001, 2), rec, now=0.0)
    ranges = st.write_off(cutoff=0.0)
    cap = MAX_HOLES_PER_WRITE_OFF
    assert len(ranges) == cap and ranges[:2] == [(1, 1), (3, 3)] and ranges[-1] == (2 * cap - 1, 999)
    lo, hi = ranges[-1]
    arrived = st.arrived(lo, hi)
    assert arrived == len(range(2 * cap, 999, 2))
    hole = Hole(1, lo, hi, arrived)
    st.holes.append(hole)
    assert st.offer(500, False, 1.0, rec).new is False             # arrived before the write-off
    late = st.offer(501, False, 1.0, rec)
    assert late.new and late.filled is hole and hole.filled == arrived + 1
    offer_all(st, range(2 * cap - 1, 1000, 2), rec)               # the rest arrive late: the hole completes
    assert hole.complete and hole not in st.holes


def test_only_marks_past_the_window_are_written_off():
    st = stream()
    offer_all(st, [1, 3], now=100.0)
    offer_all(st, [6], now=200.0)
    assert st.write_off(cutoff=150.0) == [(2, 2)]
    assert st.contiguous == 3 and st.above == {6} and st.pending
    assert st.write_off(cutoff=250.0) == [(4, 5)]


def test_a_late_arrival_fills_a_counted_hole_once():
    st, rec = stream(), Recorder()
    offer_all(st, [1, 4], rec, now=0.0)
    (rng,) = st.write_off(cutoff=0.0)
    st.holes.append(Hole(7, *rng))
    o = st.offer(2, False, 1.0, rec)
    assert o.new and o.filled is not None and o.filled.id == 7 and o.filled.filled == 1 and st.holes
    assert not st.offer(2, False, 1.0, rec).new      # a duplicate of the late fill
    o = st.offer(3, False, 1.0, rec)
    assert o.new and o.filled.complete and not st.holes and st.purge
    assert not st.offer(3, False, 1.0, rec).new      # the hole is gone: an old seq is a duplicate


def test_a_retained_replay_never_opens_a_hole_by_itself():
    st = stream()
    assert offer_all(st, [7], retained=True) == [True]
    assert not st.pending and st.write_off(cutoff=1e9) == []
    assert st.offer(7, False, 0.0, Recorder()).new is False
    assert offer_all(st, [9]) == [True] and st.pending     # a live one beyond it does


def test_seqs_beyond_the_mark_are_recorded_for_the_store():
    st, rec = stream(), Recorder()
    offer_all(st, [1, 3, 5, 2], rec)
    assert rec.seqs == {3, 5}                           # 1 and 2 extend the contiguous mark: no row needed


def test_boots_are_ordered_by_when_the_collector_first_saw_them_else_by_ts():
    a, b = stream(boot="a", first_ts=5, first_seen_ms=2000), stream(boot="b", first_ts=9, first_seen_ms=1000)
    assert started_later(a, b) and not started_later(b, a)       # a box with no clock: ts says otherwise
    will_only = stream(boot="w", first_ts=50, first_seen_ms=0)
    assert started_later(will_only, b) and not started_later(b, will_only)
    same_batch = stream(boot="c", first_ts=1, first_seen_ms=1000)
    assert started_later(b, same_batch)


def topic(rest: str, device: str = "d1") -> str:
    return f"ftedge/v1/f/{device}/{rest}"


def body(device: str = "d1", seq: int = 1, **kw) -> bytes:
    return json.dumps({"v": 1, "ts": 1000, "dev": device, "boot": "b", "seq": seq, "hist": False, **kw}).encode()


def test_parse_reads_kind_job_and_envelope():
    m = parse(topic("jobs/j1/progress"), body(epoch=1, loss=0.5), False)
    assert isinstance(m, Message)
    assert (m.fleet, m.device, m.kind, m.job, m.boot, m.seq, m.ts, m.retained) == ("f", "d1", "progress", "j1",
                                                                                   "b", 1, 1000, False)
    assert parse(topic("status"), body(state="online"), True).kind == "status"
    assert parse(topic("cmdres/host1"), body(cmd_id="x", status="done"), False).kind == "cmdres"
    assert parse(topic("jobs/j1/other"), body(), False).kind == "other"


def test_parse_ignores_commands_to_devices():
    assert parse(topic("cmd/train"), b"{}", False)[0] == "ignored"


@pytest.mark.parametrize("t, payload, why", [
    (b"ftedge/v1/f/d1/status", body(), "not a string"),
    ("other/v1/f/d1/status", body(), "topic is not"),
    ("ftedge/v1/f/d1", body(), "topic is not"),
    (topic("status"), b"\xff", "not UTF-8 JSON"),
    (topic("status"), b"[1]", "not a JSON object"),
    (topic("status"), json.dumps({"v": 1, "ts": 1, "dev": "d1", "boot": "b"}).encode(), "envelope"),
    (topic("status"), body(seq=-1), "envelope"),
    (topic("status"), body(seq=True), "envelope"),
    (topic("status"), json.dumps({"v": 1, "ts": 10**400, "dev": "d1", "boot": "b", "seq": 1}).encode(), "envelope"),
    (topic("status"), body(device="other"), "is not the topic's device"),
    (topic("meta"), body(seq=0), "seq 0 is reserved"),
    (topic("jobs/" + "j" * 200 + "/result"), body(), "longer than"),
])
def test_parse_refuses_what_breaks_the_contract_and_says_why(t, payload, why):
    verdict, _shown, reason = parse(t, payload, False)
    assert verdict == "malformed" and why in reason


def test_parse_caps_the_payload_size():
    big = body(pad="x" * 2000)
    assert isinstance(parse(topic("meta"), big, False, max_payload_bytes=4096), Message)
    verdict, _, reason = parse(topic("meta"), big, False, max_payload_bytes=1024)
    assert verdict == "malformed" and "byte cap" in reason
