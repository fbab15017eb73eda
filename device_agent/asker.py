"""The ``ask`` verb: answer a prompt with the active causal-LM version (or an untuned bundle) on this device.

The opened model (tokenizer, decoder session, side-loaded adapter) is kept for the next question while the active
version stays the same; a rollback or a new version opens the new one. Answers are generated on the agent's command
thread, one at a time, with a token budget of at most 256.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from ftedge.device_agent.commands import _inside, ask_request
from ftedge.device_agent.versions import ModelStore
from ftedge.errors import FtedgeError, Rejected

log = logging.getLogger(__name__)


class Asker:
    def __init__(self, models: ModelStore, bundle_root: Path, threads: int | None = None) -> None:
        self.models, self.bundle_root, self.threads = models, Path(bundle_root), threads
        self._open: tuple[str, Any] | None = None
        self._lock = threading.Lock()

    def _model(self, key: str, target: Path) -> Any:
        from ftedge.runtime.tasks.lm.model import open_lm

        if self._open is None or self._open[0] != key:
            self._open = None  # drop the old decoder before opening the next
            self._open = (key, open_lm(target, threads=self.threads))
        return self._open[1]

    def ask(self, args: dict[str, Any]) -> tuple[str, str, str, dict[str, Any]]:
        req = ask_request(args)
        if "bundle" in req:
            target = _inside(self.bundle_root, req["bundle"], "bundle")
            if not (target / "manifest.json").is_file():
                raise Rejected("unknown_bundle", f"no bundle {req['bundle']!r} under {self.bundle_root}")
            key, version = f"bundle:{target}", None
        else:
            active = self.models.active()
            if active is None or active.get("model_file") != "adapter.safetensors":
                raise Rejected("no_model", "no personalized language model is active on this device: train a "
                                           "causal-LM bundle first, or pass args.bundle to ask the untuned one")
            version = active["id"]
            target, key = self.models.path(version).parent, f"version:{version}"
        with self._lock:
            try:
                model = self._model(key, target)
                gen = model.answer(req["prompt"], system=req.get("system"),
                                   max_new_tokens=req.get("max_new_tokens", 64),
                                   temperature=float(req.get("temperature", 0.0)), top_p=float(req.get("top_p", 1.0)),
                                   top_k=req.get("top_k", 0), seed=req.get("seed", 0))
            except FtedgeError as exc:
                self._open = None
                raise Rejected("model_unusable", f"cannot answer with {key.split(':', 1)[1]}: {exc}") from exc
        return "done", "ok", f"answered with {version or 'the untuned bundle'}", {
            "answer": gen.text, "tokens": len(gen.ids), "stopped": gen.stopped, "prompt_tokens": gen.prompt_tokens,
            "seconds": round(gen.seconds, 3), "tokens_per_s": round(gen.tokens_per_s, 2), "version": version,
            "route": gen.route}
