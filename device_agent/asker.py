"""The ``ask`` verb: answer a prompt with the active causal-LM version (or an untuned bundle) on this device.

Answers run on the asker's own thread, one at a time, so ``cancel``/``status``/``deploy`` never wait behind one;
at most ``[ask] queue`` asks wait behind the one being answered, more are refused ``busy``. An ask whose
``expires`` passes while it waits is refused ``expired``, and its answer stops (``stopped: "expired"``) when it
passes during generation; an answer also stops (``stopped: "deadline"``) when one token takes longer than
``[ask] token_deadline_s``. The prompt is bounded in tokens (``[ask] max_prompt_tokens`` and the bundle's
context: ``prompt_too_long``), not only in characters, because the prefill's memory grows with its square.

The opened model (tokenizer, decoder session, side-loaded adapter) is kept for the next question while the same
bytes answer: the key is the bundle's manifest digest (its files' hashes), so a ``deploy replace`` or a new
version opens the new one. Bundles are opened with the agent's trusted keys (signature checked as for a job).
The decoder is released when a training job starts (and after each answer while one runs): it would compete
with the training for memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ftedge.device_agent.commands import _inside, ask_request
from ftedge.device_agent.config import AskConfig
from ftedge.device_agent.versions import ModelStore
from ftedge.errors import FtedgeError, PromptTooLong, Rejected
from ftedge.runtime.tasks.lm import PINNED_BUNDLE

log = logging.getLogger(__name__)

Finish = Callable[[str, str, str, dict[str, Any]], None]   # (status, code, detail, extra): publishes the reply


def _manifest_digest(bundle: Path) -> str:
    """sha256 of a bundle's manifest (which holds every file's sha256): which exact bytes would answer."""
    try:
        return hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    except OSError as exc:
        raise Rejected("model_unusable", f"cannot read the bundle {bundle}: {exc}") from exc


class Asker:
    def __init__(self, models: ModelStore, bundle_root: Path, cfg: AskConfig | None = None,
                 trusted_keys: list[Any] | None = None, training: Callable[[], bool] = lambda: False,
                 threads: int | None = None) -> None:
        self.models, self.bundle_root, self.threads = models, Path(bundle_root), threads
        self.cfg, self.trusted_keys, self.training = cfg or AskConfig(), trusted_keys, training
        self._open: tuple[str, Any] | None = None
        self._lock = threading.Lock()       # held while a model is opened or answers
        self._pending: set[str] = set()     # cmd_ids waiting or being answered
        self._pending_lock = threading.Lock()
        self._queue: "queue.Queue[tuple[str, dict[str, Any], float | None, Finish] | None]" = queue.Queue()
        self._release = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="ftedge-ask", daemon=True)

    # -- the command thread's side -------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._queue.put(None)

    def submit(self, cmd_id: str, args: dict[str, Any], expires_ms: float | None, finish: Finish) -> None:
        """Validate and queue an ask; ``finish`` publishes its one reply later. Malformed args and a full queue
        raise Rejected at once; a repeat of a cmd_id still waiting is dropped (its reply comes once)."""
        req = ask_request(args)
        with self._pending_lock:
            if cmd_id in self._pending:
                return
            if len(self._pending) > self.cfg.queue:
                raise Rejected("busy", f"{len(self._pending)} asks are being answered or waiting (ask.queue = "
                                       f"{self.cfg.queue}); retry later")
            self._pending.add(cmd_id)
        self._queue.put((cmd_id, req, expires_ms, finish))

    def release(self) -> None:
        """Drop the opened decoder now, or after the answer in progress (a training job starts)."""
        if self._lock.acquire(blocking=False):
            try:
                self._open = None
            finally:
                self._lock.release()
        else:
            self._release.set()

    # -- the ask thread -------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            cmd_id, req, expires_ms, finish = item
            try:
                try:
                    if expires_ms is not None and time.time() * 1000 > expires_ms:
                        raise Rejected("expired", f"command {cmd_id} expired at {int(expires_ms)} ms while waiting "
                                                  "behind other asks")
                    result = self.ask(req, expires_ms)
                except Rejected as rej:
                    log.warning("rejected ask %s: %s", cmd_id, rej.detail)
                    result = ("rejected", rej.code, rej.detail, {})
                except Exception as exc:  # noqa: BLE001 - one bad ask must not stop the worker
                    log.exception("ask %s failed", cmd_id)
                    result = ("error", "internal", f"{type(exc).__name__}: {exc}", {})
                with self._pending_lock:
                    self._pending.discard(cmd_id)
                finish(*result)
            except Exception:  # noqa: BLE001 - e.g. the reply could not be queued
                log.exception("could not reply to ask %s", cmd_id)
                with self._pending_lock:
                    self._pending.discard(cmd_id)

    def _model(self, key: str, target: Path) -> Any:
        from ftedge.runtime.tasks.lm.model import open_lm

        if self._open is None or self._open[0] != key:
            self._open = None  # drop the old decoder before opening the next
            self._open = (key, open_lm(target, threads=self.threads, trusted_keys=self.trusted_keys))
        return self._open[1]

    def _target(self, req: dict[str, Any]) -> tuple[Path, str, str | None]:
        """(directory to open, cache key, version id) of a request."""
        if "bundle" in req:
            target = _inside(self.bundle_root, req["bundle"], "bundle")
            if not (target / "manifest.json").is_file():
                raise Rejected("unknown_bundle", f"no bundle {req['bundle']!r} under {self.bundle_root}")
            return target, f"bundle:{target}:{_manifest_digest(target)}", None
        active = self.models.active()
        if active is None or active.get("model_file") != "adapter.safetensors":
            raise Rejected("no_model", "no personalized language model is active on this device: train a "
                                       "causal-LM bundle first, or pass args.bundle to ask the untuned one")
        version = active["id"]
        target = self.models.path(version).parent
        base = target / PINNED_BUNDLE
        if not (base / "manifest.json").is_file():  # a version stored before versions kept their base
            try:
                base = Path(json.loads((target / "result.json").read_text(encoding="utf-8"))["bundle"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise Rejected("model_unusable", f"version {version} does not name its bundle ({exc}); roll back "
                                                 "or train again") from exc
        return target, f"version:{version}:{_manifest_digest(base)}", version

    def ask(self, req: dict[str, Any], expires_ms: float | None = None) -> tuple[str, str, str, dict[str, Any]]:
        """Answer one validated request (:func:`ask_request`) now, on the calling thread."""
        with self._lock:
            target, key, version = self._target(req)
            try:
                model = self._model(key, target)
                gen = model.answer(req["prompt"], system=req.get("system"),
                                   max_new_tokens=req.get("max_new_tokens", 64),
                                   max_prompt_tokens=self.cfg.max_prompt_tokens,
                                   temperature=float(req.get("temperature", 0.0)), top_p=float(req.get("top_p", 1.0)),
                                   top_k=req.get("top_k", 0), seed=req.get("seed", 0),
                                   token_deadline_s=self.cfg.token_deadline_s,
                                   until=expires_ms / 1000 if expires_ms is not None else None)
            except PromptTooLong as exc:
                raise Rejected("prompt_too_long", str(exc)) from exc
            except FtedgeError as exc:
                self._open = None
                raise Rejected("model_unusable", f"cannot answer with {version or target}: {exc}") from exc
            finally:
                if self._release.is_set() or self.training():
                    self._release.clear()
                    self._open = None
        return "done", "ok", f"answered with {version or 'the untuned bundle'}", {
            "answer": gen.text, "tokens": len(gen.ids), "stopped": gen.stopped, "prompt_tokens": gen.prompt_tokens,
            "seconds": round(gen.seconds, 3), "tokens_per_s": round(gen.tokens_per_s, 2), "version": version,
            "route": gen.route}
