"""Parsing one received message against the MQTT contract: the topic tree and the envelope ``v, ts, dev, boot,
seq, hist`` (:mod:`ftedge.mqtt.contract`), the body checks of :mod:`~ftedge.fleet.validate`, the size caps.
Pure: no SQL, no logging; the store counts and logs what this refuses (see ARCHITECTURE.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ftedge.mqtt.contract import CMD, CMDRES, JOB, JOBS, META, PROGRESS, RESULT, STATUS, TOPIC_ROOT

from .validate import BOOT_PATTERN, MAX_BOOT, MAX_NAME, MAX_PAYLOAD, body_problem, is_int, number, unstorable

_INT64 = 2**63


@dataclass
class Message:
    """A device message that passed the contract checks."""

    fleet: str
    device: str
    kind: str           # status meta job progress result cmdres other
    job: str | None
    body: dict[str, Any]
    text: str
    retained: bool
    ts: int
    boot: str
    seq: int


def _bad(shown: str, why: str) -> tuple[str, str, str]:
    return "malformed", shown, why


def parse(topic: Any, payload: bytes, retained: bool,
          max_payload_bytes: int = MAX_PAYLOAD) -> Message | tuple[str, str, str]:
    """``topic, payload, retained`` as received → a :class:`Message`, or ``(verdict, topic_shown, why)`` with
    verdict ``malformed`` (counted in ``malformed_total``) or ``ignored`` (host → device ``cmd/…``)."""
    if not isinstance(topic, str):
        return _bad(repr(topic), "topic is not a string")
    parts = topic.split("/", 4)
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT or not all(parts[2:]):
        return _bad(topic, "topic is not ftedge/v1/{fleet}/{device}/...")
    fleet, device, rest = parts[2], parts[3], parts[4]
    if rest == CMD or rest.startswith(f"{CMD}/"):
        return "ignored", "", ""
    if len(fleet) > MAX_NAME or len(device) > MAX_NAME or len(rest) > 2 * MAX_NAME:
        return _bad(topic[:300], f"fleet, device or topic name longer than {MAX_NAME} characters")
    if unstorable(topic):
        return _bad(repr(topic), "topic holds a NUL or a lone surrogate (neither database can store it)")
    if len(payload) > max_payload_bytes:
        return _bad(topic, f"payload of {len(payload)} bytes exceeds the {max_payload_bytes} byte cap "
                           "(FleetStore max_payload_bytes)")
    try:
        text = payload if isinstance(payload, str) else bytes(payload).decode("utf-8")
        body = json.loads(text)
    except (UnicodeDecodeError, ValueError, TypeError, RecursionError):
        return _bad(topic, "payload is not UTF-8 JSON")
    if not isinstance(body, dict):
        return _bad(topic, "payload is not a JSON object")
    ts, boot, seq = body.get("ts"), body.get("boot"), body.get("seq")
    if ("v" not in body or not is_int(seq) or not 0 <= seq < _INT64 or not isinstance(boot, str) or not boot
            or number(ts) is None or not math.isfinite(ts) or not 0 <= ts < _INT64):
        return _bad(topic, "missing or invalid envelope (v, ts, dev, boot, seq)")
    if not BOOT_PATTERN.fullmatch(boot):
        return _bad(topic, f"envelope boot is not a token of at most {MAX_BOOT} of A-Z a-z 0-9 . _ - "
                           f"({len(boot)} characters)")
    # Raw UTF-8 holds neither a lone surrogate nor (in valid JSON) a NUL: only a \u escape can make one.
    if ("\\u" in text or not isinstance(payload, (bytes, bytearray, memoryview))) and unstorable(body):
        return _bad(topic, "a string of the body holds a NUL or a lone surrogate (\\u0000, \\ud800-\\udfff): "
                           "neither database can store it; send valid Unicode text")
    if body.get("dev") != device:
        return _bad(topic, f"envelope dev {body.get('dev')!r} is not the topic's device")
    job = None
    if rest in (STATUS, META, JOB):
        kind = rest
    elif rest.startswith(f"{JOBS}/"):
        segs = rest.split("/")
        if len(segs) == 3 and segs[1] and segs[2] in (PROGRESS, RESULT):
            kind, job = segs[2], segs[1]
        else:
            kind = "other"
    elif rest.startswith(f"{CMDRES}/"):
        kind = CMDRES
    else:
        kind = "other"
    if seq == 0 and kind != STATUS:
        return _bad(topic, "seq 0 is reserved for the Last Will (status)")
    if (kind in (PROGRESS, RESULT) and job is not None and len(job) > MAX_NAME):
        return _bad(topic, f"job name longer than {MAX_NAME} characters")
    problem = body_problem(kind, body)
    if problem is not None:
        return _bad(topic, problem)
    return Message(fleet, device, kind, job, body, text, bool(retained), int(ts), boot, seq)

