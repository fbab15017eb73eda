"""Command handling: validate ``cmd/{verb}`` requests, act, and build the reply.

Every request is JSON ``{"cmd_id": str, "args": {...}}`` (optional ``"expires": epoch ms``). Anything
malformed gets a ``rejected`` reply with a code and a detail and changes nothing. Replies are idempotent
on ``(cmd_id, verb)``: a repeated request gets the first reply again. NaN/Infinity are not JSON and are
refused; every numeric train option has bounds (its declaration in ``ftedge.runtime.training.options``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ftedge.device_agent.jobs import Job, new_job_id, valid_job_id
from ftedge.errors import FtedgeError, Rejected
from ftedge.runtime import tasks
from ftedge.runtime.tasks.lm import MIN_TEMPERATURE

log = logging.getLogger(__name__)

VERBS = ("train", "cancel", "status", "rollback", "deploy", "ping", "resync", "ask", "policy")
WARM_ACTIVE = "active"   # a train command's warm_start: the active version (or a version id, "v0003")
REPLIES_KEEP = 10_000           # replies kept for idempotency …
REPLIES_MAX_BYTES = 4 * 2**20   # … and at most this many bytes of them


_MAX_PATH, _MAX_NAME = 1024, 255  # PATH_MAX-ish and NAME_MAX on Linux file systems


def _inside(root: Path, rel: str, what: str) -> Path:
    """``rel`` resolved against ``root``; anything resolving outside it is rejected."""
    if not isinstance(rel, str) or not rel.strip():
        raise Rejected("bad_args", f"args.{what} must be a non-empty string")
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:  # JSON allows lone surrogates ("\udcff"); file names here are UTF-8
        raise Rejected("bad_args", f"args.{what} is not valid UTF-8 text") from None
    if "\0" in rel or len(rel) > _MAX_PATH or any(len(part.encode()) > _MAX_NAME for part in rel.split("/")):
        raise Rejected("bad_args", f"args.{what} must be a relative path without NUL bytes, at most {_MAX_PATH} "
                                   f"characters, each name at most {_MAX_NAME} bytes")
    root = root.resolve()
    try:
        path = (root / rel).resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # symlink loops and the like
        raise Rejected("bad_args", f"args.{what} {rel[:200]!r} cannot be resolved: {exc}") from exc
    if path != root and root not in path.parents:
        raise Rejected("path_outside_root", f"args.{what} {rel!r} resolves outside {root}")
    return path


def _non_finite(obj: Any, path: str = "args") -> str | None:
    """The path of the first NaN/±Infinity in ``obj`` (Python's json accepts them; JSON does not)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return path
    if isinstance(obj, dict):
        return next((p for k, v in obj.items() if (p := _non_finite(v, f"{path}.{k}"))), None)
    if isinstance(obj, list):
        return next((p for i, v in enumerate(obj) if (p := _non_finite(v, f"{path}[{i}]"))), None)
    return None


def peek_cmd_id(payload: bytes) -> str | None:
    """The request's ``cmd_id`` if it has a valid one, else None; never raises (for replies to requests that
    failed in any way, so the sender can match them)."""
    try:
        body = json.loads(payload.decode("utf-8"))
    except Exception:  # noqa: BLE001 - any undecodable payload simply has no cmd_id
        return None
    cmd_id = body.get("cmd_id") if isinstance(body, dict) else None
    return cmd_id if isinstance(cmd_id, str) and cmd_id and len(cmd_id) <= 128 else None


def request_expires(payload: bytes) -> float | None:
    """The ``expires`` (epoch ms) of a request :func:`parse_request` accepted, or None."""
    expires = json.loads(payload.decode("utf-8")).get("expires")
    return float(expires) if isinstance(expires, (int, float)) and not isinstance(expires, bool) else None


def parse_request(payload: bytes) -> tuple[str, dict[str, Any]]:
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Rejected("malformed_json", f"payload is not UTF-8 JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise Rejected("malformed_json", "payload must be a JSON object {\"cmd_id\": …, \"args\": {…}}")
    cmd_id = body.get("cmd_id")
    if not isinstance(cmd_id, str) or not cmd_id or len(cmd_id) > 128:
        raise Rejected("bad_cmd_id", "cmd_id must be a non-empty string of at most 128 characters")
    args = body.get("args", {})
    if not isinstance(args, dict):
        raise Rejected("bad_args", "args must be a JSON object", cmd_id)
    bad = _non_finite(body, "body")
    if bad:
        raise Rejected("bad_args", f"{bad.removeprefix('body.')} is NaN or infinite: send finite JSON numbers only",
                       cmd_id)
    expires = body.get("expires")
    if expires is not None:
        if not isinstance(expires, (int, float)):
            raise Rejected("bad_args", "expires must be epoch milliseconds", cmd_id)
        if expires < time.time() * 1000:
            raise Rejected("expired", f"command {cmd_id} expired at {int(expires)} ms and this device's clock says "
                                      f"{int(time.time() * 1000)} ms: the sender gave up (if it was just sent, "
                                      "this device's clock is ahead: check its time sync)", cmd_id)
    return cmd_id, args


def warm_start_dir(value: str, models: Any) -> str:
    """A train command's ``warm_start`` ("active" or a version id) as the version's directory; Rejected when there
    is no such version (the box then trains from the bundle only if asked without warm_start)."""
    if value == WARM_ACTIVE:
        active = models.active()
        if active is None:
            raise Rejected("bad_args", 'args.warm_start "active": no version is active on this box; train without '
                                       "warm_start first")
        value = active["id"]
    try:
        models.get(value)
    except FtedgeError as exc:
        raise Rejected("bad_args", f"args.warm_start: {exc}") from None
    return str(models.root / value)


def train_job(args: dict[str, Any], data_root: Path, bundle_root: Path, cmd_id: str | None,
              models: Any = None) -> Job:
    """A validated train job from command args (bundle/data resolved inside their roots).

    The options are checked against their declarations (:mod:`ftedge.runtime.training.options`): an unknown key,
    a wrong type, a value out of bounds, or an option the bundle's task does not take is ``bad_args``; a bundle
    whose task this ftedge does not know is ``bad_bundle``.
    """
    every = tasks.all_options()
    unknown = sorted(set(args) - {"bundle", "data", *every})
    if unknown:
        raise Rejected("bad_args", f"unknown train argument(s) {', '.join(unknown)}; "
                                   f"allowed: bundle, data, {', '.join(every)}")
    bundle = _inside(bundle_root, args.get("bundle"), "bundle")
    data = _inside(data_root, args.get("data"), "data")
    if not (bundle / "manifest.json").is_file():
        raise Rejected("unknown_bundle", f"no bundle {args['bundle']!r} under {bundle_root}; deploy it first")
    if not data.exists():
        raise Rejected("unknown_data", f"no data {args['data']!r} under {data_root}")
    options = {key: every[key].check(args[key]) for key in every if key in args}
    if "warm_start" in options and models is not None:
        options["warm_start"] = warm_start_dir(options["warm_start"], models)
    try:
        from ftedge.bundle.loader import load_bundle

        loaded = load_bundle(bundle, verify=False)  # schema, roles, task now; the job verifies every hash later
        row, task = tasks.for_bundle(loaded)
    except FtedgeError as exc:
        raise Rejected("bad_bundle", str(exc)) from exc
    wrong = sorted(set(options) - set(task.options.names()))
    if wrong:
        raise Rejected("bad_args", f"{', '.join(wrong)} do(es) not apply to a {row.name} bundle; its options: "
                                   f"{', '.join(task.options.names())}")
    for key in options:
        kind = task.options.by_name[key].path   # the task's own rule: a causal LM's eval_data is a file
        if kind is None:
            continue
        path = _inside(data_root, options[key], key)
        if not (path.is_file() if kind == "file" else path.exists()):
            raise Rejected("unknown_data", f"no {'file' if kind == 'file' else 'data'} {options[key]!r} under "
                                           f"{data_root} (args.{key})")
        options[key] = str(path)
    return Job(id=new_job_id(), bundle=str(bundle), data=str(data), options=options, cmd_id=cmd_id)


def cancel_target(args: dict[str, Any], current: str | None) -> str | None:
    """The job a cancel names (``args.job``, else the running one); a malformed id is Rejected."""
    if "job" not in args or args["job"] is None:
        return current
    job_id = args["job"]
    if not valid_job_id(job_id):
        raise Rejected("bad_args", f"args.job must be a job id like j20260101-120000-a1b2c3 (as the train reply "
                                   f"gave it), got {json.dumps(job_id)[:60]}")
    return job_id


class ReplyCache:
    """Replies by ``(cmd_id, verb)`` (idempotency), persisted so a retry after a restart gets the same answer.

    Keeps the newest ``keep`` replies within ``max_bytes`` of JSON. A file that cannot be read back is
    renamed ``replies.json.corrupt-<UTC time>`` (kept for inspection) and logged; the cache starts empty.
    """

    def __init__(self, path: Path, keep: int = REPLIES_KEEP, max_bytes: int = REPLIES_MAX_BYTES) -> None:
        self.path, self.keep, self.max_bytes = Path(path), keep, max_bytes
        self.lock = threading.Lock()
        self.replies: dict[str, dict[str, Any]] = self._load()
        self.sizes = {k: len(json.dumps(v)) for k, v in self.replies.items()}

    @staticmethod
    def _key(cmd_id: str, verb: str) -> str:
        return f"{verb}/{cmd_id}"  # verbs hold no "/": unambiguous

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.error("reply cache %s is unreadable (%s); starting without it", self.path, exc)
            return {}
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            if doc.get("version") != 2:  # the first format was keyed by cmd_id alone: no verb to key on
                log.warning("reply cache %s has the old format (keyed by cmd_id only); its %d repl(ies) are "
                            "dropped", self.path, len(doc))
                return {}
            replies = doc.get("replies")
            if not isinstance(replies, dict) or not all(isinstance(v, dict) for v in replies.values()):
                raise ValueError("'replies' is not an object of objects")
            return replies
        except ValueError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
            try:
                os.replace(self.path, aside)
            except OSError:
                aside = self.path
            log.warning("reply cache %s is corrupt (%s); set aside as %s and starting empty: commands repeated "
                        "from before now run again", self.path, exc, aside)
            return {}

    # ``verb`` defaults to "deploy" only for the deploy worker's older call sites; pass it explicitly.
    def get(self, cmd_id: str, verb: str = "deploy") -> dict[str, Any] | None:
        with self.lock:
            return self.replies.get(self._key(cmd_id, verb))

    def put(self, cmd_id: str, reply: dict[str, Any], verb: str = "deploy") -> None:
        from ftedge.durable import atomic_write_json

        key = self._key(cmd_id, verb)
        with self.lock:
            self.replies.pop(key, None)
            self.replies[key] = reply
            self.sizes[key] = len(json.dumps(reply))
            total = sum(self.sizes.values())
            for k in list(self.replies):
                if len(self.replies) <= max(1, self.keep) and total <= self.max_bytes:
                    break
                if k == key:
                    continue
                total -= self.sizes.pop(k, 0)
                del self.replies[k]
            try:
                atomic_write_json(self.path, {"version": 2, "replies": self.replies})
            except (OSError, FtedgeError) as exc:  # e.g. disk full: still idempotent until a restart
                log.error("could not save the reply cache %s (%s); kept in memory", self.path, exc)


Handler = Callable[[str, dict[str, Any]], tuple[str, dict[str, Any]]]


ASK_ARGS = {"prompt": str, "system": str, "max_new_tokens": int, "temperature": (int, float), "top_p": (int, float),
            "top_k": int, "seed": int, "bundle": str}
ASK_LIMITS = {"max_new_tokens": (1, 256), "temperature": (0, 2), "top_p": (0.01, 1), "top_k": (0, 1000),
              "seed": (0, 2**31 - 1)}
MAX_PROMPT_CHARS = 4000


def ask_request(args: dict[str, Any]) -> dict[str, Any]:
    """Validated ``ask`` args: ``prompt`` (1..4000 characters), optional ``system``, sampling settings and
    ``bundle`` (answer with that untuned bundle instead of the active version). The token bound is checked
    after tokenizing (:class:`ftedge.device_agent.asker.Asker`)."""
    unknown = sorted(set(args) - set(ASK_ARGS))
    if unknown:
        raise Rejected("bad_args", f"unknown ask argument(s) {', '.join(unknown)}; allowed: {', '.join(ASK_ARGS)}")
    out: dict[str, Any] = {}
    for key, typ in ASK_ARGS.items():
        if key not in args:
            continue
        value = args[key]
        if isinstance(value, bool) or not isinstance(value, typ):
            raise Rejected("bad_args", f"args.{key} must be {'text' if typ is str else 'a number'}, got "
                                       f"{json.dumps(value)[:60]}")
        if key in ASK_LIMITS and not ASK_LIMITS[key][0] <= value <= ASK_LIMITS[key][1]:
            lo, hi = ASK_LIMITS[key]
            raise Rejected("bad_args", f"args.{key} must be between {lo:g} and {hi:g}, got {value!r}")
        if key == "temperature" and 0 < value < MIN_TEMPERATURE:
            raise Rejected("bad_args", f"args.temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, "
                                       f"got {value!r}")
        out[key] = value
    prompt = out.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
        raise Rejected("bad_args", f"args.prompt must be non-empty text of at most {MAX_PROMPT_CHARS} characters")
    if len(out.get("system", "")) > MAX_PROMPT_CHARS:
        raise Rejected("bad_args", f"args.system must be at most {MAX_PROMPT_CHARS} characters")
    try:
        for key in ("prompt", "system"):
            if key in out:
                out[key].encode("utf-8")
    except UnicodeEncodeError:
        raise Rejected("bad_args", "args.prompt/system is not valid UTF-8 text") from None
    return out
