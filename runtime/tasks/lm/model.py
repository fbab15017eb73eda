"""A causal-LM bundle or personalized run opened for answering: tokenizer, decoder, side-loaded adapter.

A personalized LLM is a LoRA adapter (``adapter.safetensors``, ~1 MB) beside a ``result.json`` that names the
bundle it belongs to (path and the digest of the bundle's file table); the base decoder stays in the bundle.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ftedge.runtime.tasks.lm import PINNED_BUNDLE, TASK
from ftedge.bundle.loader import Bundle, load_bundle
from ftedge.errors import BundleError, PromptTooLong, UsageError
from ftedge.runtime.tasks.lm.chat import ChatTokenizer, bundle_tokenizer
from ftedge.runtime.tasks.lm.generator import Decoder, Generation
from ftedge.runtime.training.warm_start import ADAPTER_FILE, bundle_digest  # noqa: F401  (re-exported)


def load_adapter(path: str | Path) -> dict[str, Any]:
    """LoRA tensors (name → float32 array) from a safetensors file."""
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise BundleError(f"cannot read the adapter {path}: {exc}; retrain or roll back to another version") from exc


def run_bundle(run_dir: Path, bundle: str | Path | None = None, trusted_keys: Any = None) -> tuple[Bundle, Path]:
    """(bundle, adapter path) of a personalized run; ``bundle`` overrides the recorded path (a moved bundle)."""
    try:
        result = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{run_dir} is neither a bundle nor a finished run directory ({exc})") from exc
    adapter = run_dir / result.get("model", {}).get("file", ADAPTER_FILE)
    if not adapter.is_file():
        raise UsageError(f"{run_dir} has no {adapter.name}; the run did not finish")
    loaded = load_bundle(bundle or result["bundle"], trusted_keys=trusted_keys)
    if result.get("bundle_sha256") and bundle_digest(loaded) != result["bundle_sha256"]:
        raise BundleError(f"{loaded.path} is not the bundle {run_dir} was trained from (its files differ); "
                          "point --bundle at that bundle")
    return loaded, adapter


@dataclass
class LMModel:
    bundle: Bundle
    tok: ChatTokenizer
    decoder: Decoder
    kind: str          # "bundle" (untuned) or "personalized"
    source: str

    @property
    def context(self) -> int | None:
        """The positions the model was built for (``llm.context``; None in bundles exported before it was recorded)."""
        value = self.bundle.manifest["llm"].get("context")
        return int(value) if isinstance(value, int) and value > 1 else None

    def answer(self, prompt: str | list[dict[str, str]], system: str | None = None, max_new_tokens: int = 64,
               max_prompt_tokens: int | None = None, **sampling: Any) -> Generation:
        """Generate an answer. The prompt (with ``system`` and the chat markers) must fit ``max_prompt_tokens``
        and leave the model's context one position; the answer stops (``stopped: "context"``) where the context ends.
        Why a token bound and not only a character one: the prefill's attention memory grows with the square of
        the prompt's tokens, and a byte-level tokenizer gives up to 4 tokens per rare character."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if system is not None:
            messages = [{"role": "system", "content": system}] + [m for m in messages if m["role"] != "system"]
        ids = self.tok.prompt_ids(messages)
        limits = [n for n in (max_prompt_tokens, self.context and self.context - 1) if n]
        if limits and len(ids) > min(limits):
            raise PromptTooLong(len(ids), min(limits))
        t0 = time.perf_counter()
        out, why = self.decoder.generate(ids, max_new_tokens, self.tok.stop_ids, max_length=self.context, **sampling)
        return Generation(out, self.tok.decode(out).strip(), why, len(ids), time.perf_counter() - t0,
                          self.decoder.last_route)


def open_lm(target: str | Path, providers: Sequence[str] | None = None, threads: int | None = None,
            bundle: str | Path | None = None, trusted_keys: Any = None, use_router: bool = True) -> LMModel:
    """A bundle directory (untuned) or a run / model-version directory holding ``adapter.safetensors``."""
    path = Path(target)
    if (path / "manifest.json").is_file():
        b = load_bundle(path, trusted_keys=trusted_keys)
        adapter_path, kind = b.file("init"), "bundle"
    else:
        if bundle is None and (path / PINNED_BUNDLE / "manifest.json").is_file():
            bundle = path / PINNED_BUNDLE  # the agent's model version keeps the base it was trained on
        b, adapter_path = run_bundle(path, bundle, trusted_keys)
        kind = "personalized"
    if not TASK.serves(b.manifest):
        raise UsageError(f"{b.path} is not a causal-LM bundle (task {b.manifest.get('task')!r}); "
                         "`ftedge generate` needs one exported with --task causal-lm")
    tok = bundle_tokenizer(b.path, b.manifest["preprocessing"])
    decoder = Decoder(b.file("decoder"), b.manifest["llm"], load_adapter(adapter_path), providers, threads,
                      use_router)
    return LMModel(b, tok, decoder, kind, str(path))
