"""Command handling: validate ``cmd/{verb}`` requests, act, and build the reply.

Every request is JSON ``{"cmd_id": str, "args": {...}}`` (optional ``"expires": epoch ms``). Anything
malformed gets a ``rejected`` reply with a code and a detail and changes nothing. Replies are idempotent
on ``cmd_id``: a repeated request gets the first reply again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ftedge.device_agent.jobs import TRAIN_OPTIONS, Job, new_job_id
from ftedge.errors import FtedgeError

log = logging.getLogger(__name__)

VERBS = ("train", "cancel", "status", "rollback", "deploy", "ping", "resync")
_ENGINES = ("auto", "portable", "ort-training")
_MODES = ("auto", "cached", "full")


class Rejected(Exception):
    def __init__(self, code: str, detail: str, cmd_id: str | None = None) -> None:
        super().__init__(detail)
        self.code, self.detail, self.cmd_id = code, detail, cmd_id


def _inside(root: Path, rel: str, what: str) -> Path:
    """``rel`` resolved against ``root``; anything resolving outside it is rejected."""
    if not isinstance(rel, str) or not rel.strip():
        raise Rejected("bad_args", f"args.{what} must be a non-empty string")
    root = root.resolve()
    path = (root / rel).resolve()
    if path != root and root not in path.parents:
        raise Rejected("path_outside_root", f"args.{what} {rel!r} resolves outside {root}")
    return path


def parse_request(payload: bytes) -> tuple[str, dict[str, Any]]:
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Rejected("malformed_json", f"payload is not UTF-8 JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise Rejected("malformed_json", "payload must be a JSON object {\"cmd_id\": …, \"args\": {…}}")
    cmd_id = body.get("cmd_id")
    if not isinstance(cmd_id, str) or not cmd_id or len(cmd_id) > 128:
        raise Rejected("bad_cmd_id", "cmd_id must be a non-empty string of at most 128 characters")
    args = body.get("args", {})
    if not isinstance(args, dict):
        raise Rejected("bad_args", "args must be a JSON object", cmd_id)
    expires = body.get("expires")
    if expires is not None:
        if not isinstance(expires, (int, float)):
            raise Rejected("bad_args", "expires must be epoch milliseconds", cmd_id)
        if expires < time.time() * 1000:
            raise Rejected("expired", f"command {cmd_id} expired at {int(expires)} ms", cmd_id)
    return cmd_id, args


def train_job(args: dict[str, Any], data_root: Path, bundle_root: Path, cmd_id: str) -> Job:
    """A validated train job from command args (bundle/data resolved inside their roots)."""
    unknown = sorted(set(args) - {"bundle", "data", *TRAIN_OPTIONS})
    if unknown:
        raise Rejected("bad_args", f"unknown train argument(s) {', '.join(unknown)}; "
                                   f"allowed: bundle, data, {', '.join(TRAIN_OPTIONS)}")
    bundle = _inside(bundle_root, args.get("bundle"), "bundle")
    data = _inside(data_root, args.get("data"), "data")
    if not (bundle / "manifest.json").is_file():
        raise Rejected("unknown_bundle", f"no bundle {args['bundle']!r} under {bundle_root}; deploy it first")
    if not data.exists():
        raise Rejected("unknown_data", f"no data {args['data']!r} under {data_root}")
    options: dict[str, Any] = {}
    for key, typ in TRAIN_OPTIONS.items():
        if key not in args:
            continue
        value = args[key]
        if isinstance(value, bool) or not isinstance(value, typ):
            raise Rejected("bad_args", f"args.{key} must be {getattr(typ, '__name__', 'a number')}, got {value!r}")
        if isinstance(value, (int, float)) and value < 0:
            raise Rejected("bad_args", f"args.{key} must not be negative")
        options[key] = value
    if options.get("mode", "auto") not in _MODES:
        raise Rejected("bad_args", f"args.mode must be one of {', '.join(_MODES)}")
    if options.get("engine", "auto") not in _ENGINES:
        raise Rejected("bad_args", f"args.engine must be one of {', '.join(_ENGINES)}")
    for key in ("epochs", "batch_size", "embed_batch_size"):
        if key in options and options[key] < 1:
            raise Rejected("bad_args", f"args.{key} must be at least 1")
    try:
        from ftedge.runtime.bundle import load_bundle

        load_bundle(bundle, verify=False)  # schema and roles now; the job verifies every hash before training
    except FtedgeError as exc:
        raise Rejected("bad_bundle", str(exc)) from exc
    return Job(id=new_job_id(), bundle=str(bundle), data=str(data), options=options, cmd_id=cmd_id)


class ReplyCache:
    """Replies by cmd_id (idempotency), persisted so a retry after an agent restart gets the same answer."""

    def __init__(self, path: Path, keep: int = 1000) -> None:
        self.path, self.keep = path, keep
        self.lock = threading.Lock()
        try:
            self.replies: dict[str, dict[str, Any]] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.replies = {}

    def get(self, cmd_id: str) -> dict[str, Any] | None:
        with self.lock:
            return self.replies.get(cmd_id)

    def put(self, cmd_id: str, reply: dict[str, Any]) -> None:
        from ftedge.runtime.hashing import atomic_write_json

        with self.lock:
            self.replies[cmd_id] = reply
            if len(self.replies) > self.keep:
                for k in list(self.replies)[: len(self.replies) - self.keep]:
                    del self.replies[k]
            atomic_write_json(self.path, self.replies)


Handler = Callable[[str, dict[str, Any]], tuple[str, dict[str, Any]]]
