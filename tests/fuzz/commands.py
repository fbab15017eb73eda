"""(d) The agent's command parser: ``parse_request`` on any payload, then ``train_job`` (train),
``cancel_target`` (cancel) or ``ask_request`` (ask) on the parsed args, against real bundle and data roots holding
an escaping symlink; ``peek_cmd_id`` (the cmd_id of an error reply) on every payload.

Input: ``VERB`` newline ``PAYLOAD`` (the topic's last segment and the MQTT payload; corpus files are exactly
that). Contract: ``Rejected`` or a result; a train job's bundle and data resolve inside their roots and its
options are the declared ones (ftedge.runtime.training.options) within their bounds and choices; an accepted ask
has only its declared arguments within their bounds, a temperature of 0 or at least the floor, and UTF-8 text;
``peek_cmd_id`` never raises and agrees with ``parse_request``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from ftedge.device_agent import commands as cmds
from ftedge.runtime.tasks import all_options
from ftedge.runtime.tasks.lm import MIN_TEMPERATURE
from hypothesis import strategies as st

from tests.fuzz.common import corpus, guarded, workdir
from tests.helpers.common import DATA as TEST_DATA
from tests.fuzz.mutate import mutated

_DIR = workdir("commands")
DATA, BUNDLES, OUTSIDE = _DIR / "data", _DIR / "bundles", _DIR / "outside"


def _setup() -> None:
    for d in (DATA, BUNDLES, OUTSIDE / "b"):
        d.mkdir(parents=True, exist_ok=True)
    np.savez(DATA / "blobs.npz", x=np.zeros((4, 20), np.float32), labels=np.arange(4))
    (DATA / "clips").mkdir(exist_ok=True)
    shutil.copytree(TEST_DATA / "bundle_v1", BUNDLES / "bundle_v1",
                    dirs_exist_ok=True)
    shutil.copytree(Path(__file__).resolve().parent / "bases" / "mlp_v2", BUNDLES / "mlp", dirs_exist_ok=True)
    shutil.copy(BUNDLES / "mlp" / "manifest.json", OUTSIDE / "b" / "manifest.json")
    for link, target in ((BUNDLES / "evil", OUTSIDE / "b"), (DATA / "evil", OUTSIDE)):
        if not link.is_symlink():
            link.symlink_to(target)


_setup()
PATHS = ["mlp", "bundle_v1", "blobs.npz", "clips", "evil", "evil/b", "../outside/b", "/etc", "mlp/../bundle_v1",
         "mlp/../../outside/b", "", " ", ".", "a\x00b", "x" * 300, ("y/" * 2100) + "z", "mlp/manifest.json", "~",
         "\udcff", "%2e%2e/outside"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=10)
    | st.sampled_from(PATHS),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)
OPTIONS = all_options()   # the declarations the agent validates against
option_values = {k: st.sampled_from(list(o.bounds or (0, 1))) | st.integers(-2**40, 2**40) | st.floats()
                 | json_values for k, o in OPTIONS.items()}
for k, o in OPTIONS.items():
    if o.choices:
        option_values[k] = st.sampled_from(list(o.choices)) | option_values[k]


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    verb = draw(st.sampled_from(["train", "train", "train", "ask", "ask", "cancel", "status", "deploy", "bogus", ""]))
    args: dict = {}
    if verb == "ask":
        args["prompt"] = draw(st.text(max_size=30) | st.sampled_from(["x" * 4001, "<|im_start|>assistant\n", "\udcff"])
                              | json_values)
        for key in draw(st.lists(st.sampled_from(sorted(cmds.ASK_ARGS)), max_size=4, unique=True)):
            args[key] = draw(st.sampled_from([0, 1e-320, 0.009, 0.01, 2, 2.01, 256, 257, -1, 2**31]) | st.floats()
                             | json_values)
    elif verb == "train" or draw(st.booleans()):
        args["bundle"] = draw(st.sampled_from(PATHS) | json_values)
        args["data"] = draw(st.sampled_from(PATHS) | json_values)
        for key in draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=4, unique=True)):
            args[key] = draw(option_values[key])
    if verb == "cancel":
        args["job"] = draw(st.sampled_from(["j20260101-120000-a1b2c3", "../../x", "j2026", None]) | json_values)
    if draw(st.integers(0, 4)) == 0:
        args[draw(st.text(max_size=8))] = draw(json_values)
    body: dict = {"cmd_id": draw(st.text(min_size=1, max_size=12) | st.sampled_from(["x" * 129, "", None, 7])),
                  "args": args if draw(st.integers(0, 9)) else draw(json_values)}
    if draw(st.integers(0, 5)) == 0:
        body["expires"] = draw(st.sampled_from([0, 4102444800000, "soon", 1e308, -1]) | json_values)
    payload = json.dumps(body, allow_nan=True, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    return verb.encode() + b"\n" + payload


def inputs() -> st.SearchStrategy[bytes]:
    deep = st.integers(1, 200_000).map(lambda n: b"train\n" + b"[" * n + b"]" * (n % 3))
    return st.one_of(structured(), structured(), mutated([p.read_bytes() for p in corpus("commands")]), deep,
                     st.binary(max_size=200))


def check(data: bytes) -> None:
    """One command through the parser; raises ContractViolation."""
    verb, _, payload = data.partition(b"\n")
    verb_s = verb.decode("utf-8", "replace")
    peeked = cmds.peek_cmd_id(payload)
    assert peeked is None or isinstance(peeked, str), peeked
    with guarded(f"parse_request({verb_s})", (cmds.Rejected,)):
        cmd_id, args = cmds.parse_request(payload)
        assert peeked == cmd_id, (peeked, cmd_id)
        assert isinstance(cmd_id, str) and isinstance(args, dict), (cmd_id, args)
        if verb_s == "train":
            job = cmds.train_job(args, DATA, BUNDLES, cmd_id)
            for what, root in (("bundle", BUNDLES), ("data", DATA)):
                p = Path(getattr(job, what)).resolve()
                assert p == root.resolve() or root.resolve() in p.parents, f"job {what} {p} is outside {root}"
            for key, value in job.options.items():
                assert key in OPTIONS, f"unknown option {key} accepted"
                if OPTIONS[key].bounds:
                    lo, hi = OPTIONS[key].bounds
                    assert lo <= value <= hi, f"{key}={value!r} accepted outside [{lo}, {hi}]"
                if OPTIONS[key].choices:
                    assert value in OPTIONS[key].choices, f"{key}={value!r} accepted"
        elif verb_s == "ask":
            req = cmds.ask_request(args)
            assert set(req) <= set(cmds.ASK_ARGS) and isinstance(req["prompt"], str), req
            for key, (lo, hi) in cmds.ASK_LIMITS.items():
                assert key not in req or lo <= req[key] <= hi, f"ask {key}={req[key]!r} accepted"
            assert req.get("temperature", 0) == 0 or req["temperature"] >= MIN_TEMPERATURE, req
            for key in ("prompt", "system"):
                if key in req:
                    req[key].encode("utf-8")
        elif verb_s == "cancel" and hasattr(cmds, "cancel_target"):
            cmds.cancel_target(args, None)
