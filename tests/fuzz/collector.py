"""(e) The collector's message parser: ``FleetStore.ingest_batch`` on batches of ``(topic, payload, retained)``
(an in-memory SQLite store per input), then everything that reads what was stored: ``check_gaps``, the
query methods, the Prometheus text and the dashboard (page and fragment, and a device's page).

Input: JSON lines, each ``[topic, payload, retained]`` with the payload as latin-1 text (any bytes); the whole
file is one batch, ingested twice (the second time as duplicates). Contract: no exception anywhere — a bad
message is counted in ``malformed_total`` and must not break ingest or any view.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from ftedge.fleet.device_page import device_doc, device_html
from ftedge.fleet.store import FleetStore
from hypothesis import strategies as st

from tests.fuzz.common import corpus, guarded
from tests.fuzz.mutate import mutated

NOW = 1_767_000_000.0
# st.text() never draws a lone surrogate, and NUL rarely: both are strings no database stores (issue 33).
CHARS = st.characters() | st.sampled_from(["\ud800", "\udfff", "\x00"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(CHARS, max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(CHARS, max_size=6), inner, max_size=3),
    max_leaves=8)
REST = ["status", "meta", "job", "jobs/j1/progress", "jobs/j1/result", "jobs/j2/result", "cmdres/host", "cmd/train",
        "jobs//result", "jobs/j1/progress/x", "other"]
FIELDS = {
    "state": st.sampled_from(["online", "offline"]), "reason": st.sampled_from(["birth", "lwt", "resync"]),
    "will": st.booleans(), "epoch": st.integers(-3, 5), "status": st.sampled_from(["running", "succeeded", "failed"]),
    "promoted": st.booleans(), "cmd_id": st.sampled_from(["c1", "c2"]), "active_version": st.sampled_from(["v1", None]),
    "job": st.sampled_from(["j1", "j2"]), "loss": st.floats(0, 3), "thinned": st.booleans(),
    "metrics": st.fixed_dictionaries({"loss": st.floats(0, 3), "accuracy": st.floats(0, 1)}),
    "baseline": st.fixed_dictionaries({"accuracy": st.floats(0, 1)}),
    "final": st.fixed_dictionaries({"accuracy": st.floats(0, 1)}),
    "duration_s": st.floats(0, 100), "models": st.lists(st.text(CHARS, max_size=4), max_size=2),
    # issue 36: a result's trigger and warm start, a meta's personalization policy and state
    "trigger": st.sampled_from(["command", "policy", "cron"]), "trigger_reason": st.text(CHARS, max_size=8),
    "warm_start": st.sampled_from(["v1", None]), "previous_gain": st.floats(-1, 1),
    "previous": st.fixed_dictionaries({"accuracy": st.floats(0, 1)}),
    "headline": st.fixed_dictionaries({"metric": st.sampled_from(["accuracy", ""]), "tuned": st.floats(0, 1),
                                       "untuned": st.floats(0, 1)}),
    "personalize": st.none() | st.fixed_dictionaries(
        {"policy": st.fixed_dictionaries({"bundle": st.sampled_from(["kws", "<b>"]), "window": st.text(max_size=6)}),
         "state": st.fixed_dictionaries({"state": st.sampled_from(["waiting_data", "running", "bogus"]),
                                         "reason": st.text(CHARS, max_size=8),
                                         "next_eligible_ms": st.integers(-1, 2**64)})}),
}


@st.composite
def message(draw: st.DrawFn) -> list:
    fleet = draw(st.sampled_from(["f1", "f1", "f2", "", "+"]) | st.text(CHARS, max_size=6))
    dev = draw(st.sampled_from(["d1", "d1", "d2"]) | st.text(CHARS, max_size=6))
    topic = f"ftedge/v1/{fleet}/{dev}/{draw(st.sampled_from(REST) | st.text(CHARS, max_size=12))}"
    body = {"v": 1, "ts": draw(st.sampled_from([NOW * 1000, NOW * 1000 - 5000, 0]) | st.integers(-1, 2**64)),
            "dev": dev if draw(st.integers(0, 9)) else draw(json_values),
            "boot": draw(st.sampled_from(["b1", "b2", "b" * 65]) | json_values),
            "seq": draw(st.integers(0, 12) | json_values),
            "hist": draw(st.booleans())}
    for key in draw(st.lists(st.sampled_from(sorted(ENVELOPE)), max_size=2)):
        body[key] = draw(json_values)
    for key in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=6, unique=True)):
        body[key] = draw(FIELDS[key] | json_values) if draw(st.integers(0, 3)) else draw(json_values)
    text = json.dumps(body, allow_nan=True)
    if draw(st.integers(0, 7)) == 0:
        text = draw(mutated([text.encode()], max_ops=2)).decode("latin-1")
    return [topic, text, draw(st.booleans())]


ENVELOPE = {"v", "ts", "dev", "boot", "seq", "hist"}


@st.composite
def batches(draw: st.DrawFn) -> bytes:
    msgs = draw(st.lists(message(), min_size=1, max_size=14))
    return "\n".join(json.dumps(m) for m in msgs).encode()


def inputs() -> st.SearchStrategy[bytes]:
    return st.one_of(batches(), batches(), mutated([p.read_bytes() for p in corpus("collector")], max_ops=3))


def _parse(data: bytes) -> list[tuple[str, bytes, bool]]:
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            topic, payload, retained = json.loads(line)
        except (ValueError, TypeError):
            continue
        if isinstance(topic, str) and isinstance(payload, str):
            out.append((topic, payload.encode("latin-1", "replace"), bool(retained)))
    return out


def check(data: bytes) -> None:
    """One batch through ingest and every view; raises ContractViolation."""
    msgs = _parse(data)
    with guarded("FleetStore", ()):
        from ftedge.fleet.http import (
            dashboard_fragment,
            dashboard_page,
            prometheus_text,
        )

        with FleetStore(":memory:", reorder_window_s=1.0) as store:
            store.ingest_batch(msgs, now=NOW)
            store.ingest_batch(msgs, now=NOW + 1)
            store.check_gaps(now=NOW + 10)
            devices = store.devices()
            for d in devices:
                store.device(d["fleet"], d["device"])
            for j in store.jobs():
                store.job(j["fleet"], j["device"], j["job"])
            store.fleet_summary()
            store.counters()
            store.gaps()
            store.reply("c1")
            prometheus_text(store)
            dashboard_page(store)
            for d in devices[:3]:
                dashboard_fragment(store, device=d["device"], now_ms=int(NOW * 1000))
                doc = device_doc(store, quote(d["device"], safe=""), d["fleet"])   # the device's page (issue 36)
                if doc is not None:
                    device_html(doc)
