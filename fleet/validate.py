"""What the collector accepts from a device: the body schema per message kind, with type checks and size caps.

A device message whose payload exceeds ``max_payload`` bytes, whose topic names are too long, or whose body
has a known field of the wrong type is *malformed*: it is counted in ``malformed_total`` and stored nowhere,
so no row can later break the dashboard, ``/metrics`` or ``fleet status``. Unknown fields are kept (newer
agents may add some) but count towards the payload cap. Numbers are JSON numbers, never booleans; integers
fit in 64 bits; identifiers and enum-like strings are at most ``MAX_ID`` characters. A job's ``headline``
(:mod:`~ftedge.fleet.headline`) is an object naming its ``metric`` (a non-empty short string), with an optional
``label`` (short string), ``higher_is_better`` (bool) and values ``tuned``, ``untuned`` (results) and ``value``
(progress), each a finite number or null.

Every string of a message (topic, keys and values at any depth) must be storable in both databases: a lone
UTF-16 surrogate (``"\\ud800"``, which no UTF-8 encoder accepts) or a NUL (``"\\u0000"``, which PostgreSQL's
text refuses) makes the message malformed here, so it can never fail a whole batch's transaction later. A
``boot`` is a short token: at most ``MAX_BOOT`` of ``[A-Za-z0-9._-]`` (agents send 12 hex digits); it is part
of primary keys, where a long one would exceed PostgreSQL's index row size.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ftedge.mqtt.contract import MAX_REASON, POLICY_STATES, TRIGGERS

MAX_PAYLOAD = 64 * 1024     # bytes of one device message (default of FleetStore(max_payload_bytes=…))
MAX_NAME = 128              # characters of a fleet, device or job name in a topic
MAX_ID = 256                # characters of an identifier / enum-like string field
MAX_DEPTH = 16              # nesting of objects and arrays
MAX_BOOT = 64               # characters of an envelope's boot id
MAX_LINE = MAX_REASON       # characters of a one-line explanation (a result's trigger_reason, a policy's reason)
BOOT_PATTERN = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_BOOT}}}")   # a boot id (fullmatch)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")   # NUL (PostgreSQL text) and lone surrogates (UTF-8)
_INT64 = 2**63

# Field types: "id" a short string, "text" a string, "int", "num" (int or float), "fin" (a finite "num"), "bool",
# "list" (of ids), "obj" an object, "metrics" an object whose well-known keys are numbers, "headline" a job's
# headline (HEADLINE_KEYS), "line" a string of at most MAX_LINE characters, "trigger" one of TRIGGERS,
# "personalize" a meta's personalization (POLICY_KEYS, POLICY_STATE_KEYS), "any". A trailing "?" allows null.
_COMMON = {"thinned": "bool?", "hist": "bool?"}
SCHEMAS: dict[str, dict[str, str]] = {
    "status": {"state": "id?", "reason": "id?", "will": "bool?"},
    "meta": {"agent": "id?", "onnxruntime": "id?", "providers": "list?", "hardware": "obj?", "models": "list?",
             "active_version": "id?", "personalize": "personalize?"},
    "job": {"job": "id?", "status": "id?", "bundle": "id?", "cmd_id": "id?", "created_ms": "int?",
            "started_ms": "int?", "finished_ms": "int?", "attempts": "int?", "version": "id?", "error": "text?"},
    "progress": {"job": "id?", "epoch": "int", "step": "int?", "loss": "num?", "metrics": "metrics?",
                 "lr": "num?", "samples_per_s": "num?", "rss_mb": "num?", "task": "id?", "headline": "headline?"},
    "result": {"job": "id?", "status": "id?", "final": "metrics?", "baseline": "metrics?", "promoted": "bool?",
               "duration_s": "num?", "error": "text?", "version": "id?", "skipped": "int?", "tuning": "obj?",
               "task": "id?", "epochs_run": "int?", "headline": "headline?", "providers": "obj?",
               "trigger": "trigger?", "trigger_reason": "line?", "warm_start": "id?", "previous": "metrics?",
               "previous_gain": "fin?", "stop_reason": "line?"},
    "cmdres": {"cmd_id": "id", "status": "id?", "code": "id?", "job": "id?"},
}
METRIC_KEYS = ("accuracy", "loss", "val_accuracy", "val_loss", "val_macro_f1", "val_mae", "macro_f1", "mae",
               "rmse", "perplexity", "val_perplexity", "retention", "exact_match", "token_f1",  # causal LMs
               "map50", "map50_95", "map75", "val_map50", "val_map50_95")  # detectors
# A headline's keys and their types (a headline needs its metric; finite numbers: "fin?").
HEADLINE_KEYS = {"metric": "id", "label": "id?", "higher_is_better": "bool?", "tuned": "fin?", "untuned": "fin?",
                 "value": "fin?"}
# A meta's personalize.policy (the agent's Policy.public(): device_agent/policy/spec.py FIELDS and its source) and
# personalize.state (the policy's state; "state" is one of POLICY_STATES).
POLICY_KEYS = {"bundle": "id?", "data": "line?", "enabled": "bool?", "min_new_samples": "int?",
               "min_interval_h": "fin?", "window": "id?", "max_load": "fin?", "on_battery": "bool?",
               "max_runs_per_day": "int?", "options": "obj?", "warm_start": "bool?", "max_samples_per_label": "int?",
               "max_bytes": "int?", "check_interval_s": "fin?", "hold_after_rollout_s": "fin?", "source": "id?"}
POLICY_STATE_KEYS = {"state": "policy_state", "reason": "line?", "samples": "int?", "new_samples": "int?",
                     "next_eligible_ms": "int?", "checked_ms": "int?", "runs_24h": "int?", "last_run": "last_run?",
                     "removed": "removed?"}
_LAST_RUN_KEYS = {"job": "id?", "at_ms": "int?"}
_REMOVED_KEYS = {"samples": "int?", "bytes": "int?"}


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and -_INT64 < x < _INT64


def is_num(x: Any) -> bool:
    return is_int(x) or isinstance(x, float)


def number(x: Any) -> float | None:
    """``x`` as a float if it is a JSON number that a float can hold (not a boolean), else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        return float(x)
    except OverflowError:   # an integer beyond any float
        return None


def finite(x: Any) -> float | None:
    """``x`` as a float if it is a finite JSON number, else None."""
    f = number(x)
    return f if f is not None and math.isfinite(f) else None


def _ok(kind: str, x: Any) -> bool:
    if kind.endswith("?"):
        if x is None:
            return True
        kind = kind[:-1]
    if kind == "id":
        return isinstance(x, str) and len(x) <= MAX_ID
    if kind == "text":
        return isinstance(x, str)
    if kind == "int":
        return is_int(x)
    if kind == "num":
        return is_num(x)
    if kind == "fin":
        return is_num(x) and finite(x) is not None
    if kind == "bool":
        return isinstance(x, bool)
    if kind == "list":
        return isinstance(x, list) and all(isinstance(v, str) and len(v) <= MAX_ID for v in x)
    if kind == "obj":
        return isinstance(x, dict)
    if kind == "metrics":
        return isinstance(x, dict) and all(x.get(k) is None or is_num(x[k]) for k in METRIC_KEYS)
    if kind == "headline":
        return (isinstance(x, dict) and isinstance(x.get("metric"), str) and bool(x["metric"])
                and all(_ok(spec, x.get(k)) for k, spec in HEADLINE_KEYS.items()))
    if kind == "line":
        return isinstance(x, str) and len(x) <= MAX_LINE
    if kind == "trigger":
        return x in TRIGGERS
    if kind == "policy_state":
        return x in POLICY_STATES
    if kind in _OBJECTS:
        return isinstance(x, dict) and all(_ok(spec, x.get(k)) for k, spec in _OBJECTS[kind].items())
    return True   # "any"


# Object kinds checked key by key (a missing key is null; "personalize" needs its state, see _ok).
_OBJECTS = {"policy": POLICY_KEYS, "policy_status": POLICY_STATE_KEYS, "last_run": _LAST_RUN_KEYS,
            "removed": _REMOVED_KEYS, "personalize": {"policy": "policy?", "state": "policy_status"}}


def unstorable(x: Any) -> bool:
    """Whether ``x`` (a decoded JSON value, or a topic) holds a string — key or value, at any depth — with a
    NUL or a lone surrogate, which neither database can store."""
    if isinstance(x, str):
        return "\x00" in x or (not x.isascii() and _UNSTORABLE.search(x) is not None)
    if isinstance(x, dict):
        return any(unstorable(k) or unstorable(v) for k, v in x.items())
    if isinstance(x, list):
        return any(unstorable(v) for v in x)
    return False


def _depth_ok(x: Any, depth: int = 0) -> bool:
    if depth > MAX_DEPTH:
        return False
    if isinstance(x, dict):
        return all(_depth_ok(v, depth + 1) for v in x.values())
    if isinstance(x, list):
        return all(_depth_ok(v, depth + 1) for v in x)
    return not isinstance(x, int) or isinstance(x, bool) or -_INT64 < x < _INT64


def body_problem(kind: str, body: dict[str, Any]) -> str | None:
    """Why ``body`` (a decoded message of ``kind``) must not be stored, or None if it may."""
    if not _depth_ok(body):
        return f"the body nests deeper than {MAX_DEPTH} levels or holds an integer beyond 64 bits"
    schema = SCHEMAS.get(kind, {})
    for name, kind_spec in (*_COMMON.items(), *schema.items()):
        if name in body and not _ok(kind_spec, body[name]):
            return f"field {name!r} of a {kind} message is {_describe(body[name])}, expected {_expected(kind_spec)}"
        if name not in body and not kind_spec.endswith("?") and kind_spec != "any":
            return f"a {kind} message needs the field {name!r} ({_expected(kind_spec)})"
    return None


def _describe(x: Any) -> str:
    if isinstance(x, str):
        return f"a string of {len(x)} characters"
    return "null" if x is None else f"a JSON {type(x).__name__}"


def _expected(spec: str) -> str:
    base = spec.rstrip("?")
    words = {"id": f"a string of at most {MAX_ID} characters", "text": "a string", "int": "a 64-bit integer",
             "num": "a number", "bool": "true or false", "list": f"a list of strings (≤ {MAX_ID} characters)",
             "fin": "a finite number", "obj": "an object",
             "metrics": f"an object whose {', '.join(METRIC_KEYS[:4])}, … are numbers",
             "headline": "an object with a metric (a non-empty string), optionally a label (a string), "
                         "higher_is_better (true or false) and finite numbers as tuned, untuned or value",
             "line": f"a string of at most {MAX_LINE} characters", "trigger": " or ".join(map(repr, TRIGGERS)),
             "personalize": f"an object {{policy, state}} whose state.state is one of {', '.join(POLICY_STATES)} "
                            "and whose other keys have the types of docs/mqtt.md (meta)"}
    return words.get(base, base) + (" or null" if spec.endswith("?") else "")
