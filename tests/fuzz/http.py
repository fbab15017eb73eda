"""(f) The collector's HTTP query parsing: ``url_problem`` (the 400 for a NUL), ``page_args`` (the dashboard)
and ``devices_api`` (``/api/devices``), ``rollout_doc`` (``/api/rollouts/<name>``, ``/rollouts/<name>``) and
``device_doc`` (``/devices/<device>``, ``/api/devices/<device>/personalization``), on any
request target, against a real SQLite store holding a few devices.

Input: the request target (``/PATH?QUERY``) as bytes; http.server decodes it as latin-1, and so does this.
Contract: ``url_problem`` returns None or a reason, and a reason whenever a NUL would reach the store;
``page_args`` never raises and gives a page number of at most six digits; ``devices_api`` returns a page or raises ValueError
(the 400); the dashboard fragment renders.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

from ftedge.fleet.dashboard import dashboard_fragment, page_args
from ftedge.fleet import url_signing
from ftedge.fleet.bundle_http import parse_range
from ftedge.fleet.http import API_PAGE_MAX, devices_api, url_problem
from ftedge.fleet.store import FleetStore
from hypothesis import strategies as st

from ftedge.fleet.device_page import device_doc, device_html
from ftedge.fleet.rollout_page import rollout_doc

from tests.fuzz.common import corpus, guarded
from tests.fuzz.mutate import mutated

STORE = FleetStore(":memory:")
STORE.ingest_batch([(f"ftedge/v1/{fleet}/{dev}/status",
                     json.dumps({"state": "online", "reason": "birth", "v": 1, "ts": 1_700_000_000_000,
                                 "dev": dev, "boot": "b00t00000001", "seq": 1, "hist": False}).encode(), False)
                    for fleet in ("demo", "lab") for dev in ("dev-001", "dev-002", "dev-003")])

KEYS = ["page", "device", "limit", "after", "fleet", "x", "dev", "ro", "exp", "sig"]
URL_KEY, SHA = b"u" * 32, "ab" * 32
REFUSALS = {"missing parameters", "malformed parameters", "bad signature", "expired"}
VALUES = ["1", "2", "0", "-1", "²", "٣", "1e3", "999999", "9" * 30, "demo", "demo/dev-001", "lab/", "/", "%00",
          "a%00b", "%C2%B2", "%FF", "%", "%2", "+", "dev-001", "<script>", "", "bytes=0-", "bytes=-5",
          "bytes=5-1,2-3"]


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    path = draw(st.sampled_from(["/", "/fragment", "/api/devices", "/api/devices/dev-001/jobs/j",
                                 "/api/devices/dev%00/jobs/j", "/api/devices/d\x00/jobs/j",
                                 f"/bundles/{SHA}.tar.gz"]))
    pairs = draw(st.lists(st.tuples(st.sampled_from(KEYS) | st.text(max_size=4),
                                    st.sampled_from(VALUES) | st.text(max_size=8)), max_size=5))
    query = "&".join(f"{k}={v}" for k, v in pairs)
    return (path + ("?" + query if pairs or draw(st.booleans()) else "")).encode("utf-8", "surrogatepass")


ROLLOUT_TARGETS = [b"/api/rollouts/r1", b"/rollouts/%00", b"/rollouts/r%2F1", b"/rollouts/%3Cscript%3E/fragment",
                   b"/api/rollouts/..%2F", b"/devices/dev-001?fleet=lab", b"/devices/dev%00/fragment",
                   b"/api/devices/%3Cb%3E/personalization?fleet=demo"]


def inputs() -> st.SearchStrategy[bytes]:
    return st.one_of(st.sampled_from(ROLLOUT_TARGETS), structured(), structured(), mutated([p.read_bytes() for p in corpus("http")]),
                     st.binary(max_size=120))


def check(data: bytes) -> None:
    """One request target through the parsers; raises ContractViolation."""
    target = data.decode("latin-1")
    with guarded("bundle request", ()):
        reason = url_signing.verify(URL_KEY, SHA, urlparse(target).query)
        assert reason in REFUSALS, f"a query not signed with the key passed or gave {reason!r}: {target!r}"
        for size in (0, 1, 100):
            got = parse_range(target, size)
            assert got is None or got == "unsatisfiable" or (
                isinstance(got, tuple) and 0 <= got[0] <= got[1] < size), (target, size, got)
    with guarded("http query", ()):
        problem = url_problem(target)
        assert problem is None or isinstance(problem, str), problem
        url = urlparse(target)
        values = [v for k, vs in parse_qs(url.query, keep_blank_values=True).items() for v in (k, *vs)]
        if "\x00" in url.path or any("\x00" in v for v in values):
            assert problem, f"a NUL would reach the store: {target!r}"
        page, device = page_args(url.query)
        assert isinstance(page, int) and 0 <= page <= 999_999, page   # the dashboard clamps it to its pages
        if problem:
            return
        assert isinstance(dashboard_fragment(STORE, page, device), str)
    with guarded("rollout_doc", ()):
        for segment in [p for p in url.path.split("/") if p][-2:]:
            assert rollout_doc(STORE, segment) is None, segment   # the store has no rollout: a 404, never a 500
    with guarded("device_doc", ()):
        fleet = parse_qs(url.query).get("fleet", [None])[0]
        for segment in [p for p in url.path.split("/") if p][-2:]:
            doc = device_doc(STORE, segment, fleet)   # a device's page and /api/devices/<d>/personalization
            assert doc is None or isinstance(device_html(doc), str), segment
    with guarded("devices_api", (ValueError,)):
        rows, headers = devices_api(STORE, url.query)
        assert isinstance(rows, list) and len(rows) <= API_PAGE_MAX and "X-Total-Count" in headers
