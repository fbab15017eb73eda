"""Text generation with a causal-LM bundle's ``decoder.onnx`` on plain onnxruntime: KV cache, greedy or sampled,
stop tokens, a token budget; the LoRA adapter is side-loaded (fed as inputs, bound once as OrtValues).

Why side-loaded rather than merged: the adapter of a personalized version is ~1 MB; merging would write a second
~600 MB decoder per version on the device (and a merged int4/int8 base would need re-quantizing). The price is the
adapters' small matmuls per token (rank 8: well under 1 % of the FLOPs of a 135 M model).

An adapter that carries a router (:mod:`ftedge.runtime.tasks.lm.router`) is applied only to prompts the router calls
the site's own; the prefill's ``cut_mean`` output is the feature, and an off-topic prompt is prefilled again with
the adapter's B factors zeroed (the untuned model) before generating.

Why not onnxruntime-genai: it needs its own model folder format (genai_config.json, its builder's graph naming) and
wheel, has no aarch64 CPython 3.13 wheel on every box this project targets and adds a second native runtime beside
onnxruntime; the loop here is ~100 lines over the one onnxruntime the device already has.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ftedge.errors import DataError
from ftedge.runtime.engines.ort_backend import StepSession
from ftedge.runtime.tasks.lm import MIN_TEMPERATURE
from ftedge.runtime.tasks.lm.router import split_adapter


@dataclass
class Generation:
    ids: list[int]
    text: str
    stopped: str          # "stop" (a stop token), "length" (max_new_tokens), "context" (max_length reached),
                          # "deadline" (a token was too slow) or "expired" (past the caller's deadline)
    prompt_tokens: int
    seconds: float
    route: str | None = None  # with a routed adapter: "adapter" or "untuned" (which weights answered)

    @property
    def tokens_per_s(self) -> float:
        return len(self.ids) / self.seconds if self.seconds > 0 else 0.0


class Decoder:
    """``decoder.onnx`` with its adapter bound; ``layers``/``kv_heads``/``head_dim`` from the manifest's ``llm``."""

    def __init__(self, path: str | Path, llm: dict[str, Any], adapter: dict[str, np.ndarray],
                 providers: Sequence[str] | None = None, threads: int | None = None, use_router: bool = True) -> None:
        self.session = StepSession(path, providers, threads)
        self.layers, self.kv_heads, self.head_dim = int(llm["layers"]), int(llm["kv_heads"]), int(llm["head_dim"])
        self.past_names = [f"past_{kv}.{i}" for i in range(self.layers) for kv in ("key", "value")]
        self.set_adapter(adapter, use_router)

    def set_adapter(self, adapter: dict[str, np.ndarray], use_router: bool = True) -> None:
        """Side-load another adapter (same bundle): bound once, used by every following call. An adapter with a
        router (``router.*`` tensors) is applied only to the prompts its router calls inside; the others are
        answered with the adapter's B factors zeroed, i.e. exactly the untuned model. ``use_router=False``
        applies the adapter to every prompt."""
        lora, router = split_adapter(adapter)
        missing = [n for n in self.session.input_names if ".lora_" in n and n not in lora]
        if missing:
            raise DataError(f"the adapter lacks {len(missing)} tensor(s) the decoder needs ({missing[0]}, …); "
                            "it belongs to another bundle")
        if router is not None and "cut_mean" not in self.session.output_names:
            raise DataError("the adapter has a router but this bundle's decoder has no `cut_mean` output; "
                            "re-export the bundle with this ftedge")
        used = {k: np.asarray(v, np.float32) for k, v in lora.items() if k in self.session.input_names}
        self.adapter = {k: self.session.to_device(v) for k, v in used.items()}
        self.router = router if use_router else None
        self.untuned = ({k: self.session.to_device(np.zeros_like(v)) if k.endswith(".lora_B") else self.adapter[k]
                         for k, v in used.items()} if self.router is not None else None)
        self.last_route: str | None = None

    def _empty_past(self, batch: int) -> dict[str, np.ndarray]:
        z = np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32)
        return {n: z for n in self.past_names}

    def forward(self, ids: np.ndarray, mask: np.ndarray, state: dict[str, Any], past_len: int,
                logit_index: np.ndarray, adapter: dict[str, Any] | None = None) -> np.ndarray:
        """One call: ``ids`` [B, S] after ``past_len`` cached positions; ``state`` holds the cache (updated) and,
        after a prefill with a router, ``cut_mean`` (the prompt's router feature)."""
        b, s = ids.shape
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64),
                 "position_ids": np.tile(np.arange(past_len, past_len + s, dtype=np.int64), (b, 1)),
                 "logit_index": logit_index.astype(np.int64)}
        if past_len == 0:
            feeds.update(self._empty_past(b))
        weights = self.adapter if adapter is None else adapter
        bound = {**weights, **{k: state[k] for k in self.past_names if k in state}} if past_len else dict(weights)
        fetch = ["logits", "cut_mean"] if past_len == 0 and self.router is not None else ["logits"]
        out = self.session.run(bound, feeds, fetch, keep=[f"present_{n[5:]}" for n in self.past_names])
        for name in self.past_names:
            state[name] = out.pop(f"present_{name[5:]}")
        if "cut_mean" in out:
            state["cut_mean"] = out["cut_mean"]
        return out["logits"]

    def routes_to_adapter(self, prompt_ids: Sequence[int]) -> bool | None:
        """Whether the router applies the adapter to this prompt (one prefill); None without a router."""
        if self.router is None:
            return None
        state: dict[str, Any] = {}
        arr = np.asarray([list(prompt_ids)], np.int64)
        self.forward(arr, np.ones_like(arr), state, 0, np.array([arr.shape[1] - 1]), self.untuned)
        return self.router.inside(state["cut_mean"][0])

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits [T, V] of every position of one sequence, in one pass without reusing a cache."""
        arr = np.asarray([list(ids)], np.int64)
        return self.forward(arr, np.ones_like(arr), {}, 0, np.arange(arr.shape[1]))[0]

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int = 64, stop_ids: Sequence[int] = (),
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 max_length: int | None = None, use_cache: bool = True, route: bool | None = None,
                 token_deadline_s: float | None = None, until: float | None = None) -> tuple[list[int], str]:
        """Token ids after ``prompt_ids`` and why it stopped; greedy at ``temperature`` 0, else sampled
        (top-k / nucleus, seeded). ``use_cache=False`` recomputes the whole sequence per token (for tests).
        ``route``: the router's decision for this prompt when the caller already has it (:meth:`routes_to_adapter`),
        which saves the prefill it would otherwise spend on an off-topic prompt. It stops with ``"deadline"`` when
        one token (the first: the prefill) took longer than ``token_deadline_s``, and with ``"expired"`` once the
        epoch time ``until`` has passed (the asker gave up)."""
        if not prompt_ids:
            raise DataError("an empty prompt")
        if 0 < temperature < MIN_TEMPERATURE:
            raise DataError(f"temperature {temperature!r} is below {MIN_TEMPERATURE:g}: use 0 for greedy decoding "
                            f"or at least {MIN_TEMPERATURE:g}")
        rng = np.random.default_rng(seed)
        stop = set(int(i) for i in stop_ids)
        seq = [int(i) for i in prompt_ids]
        out: list[int] = []
        state: dict[str, Any] = {}
        self.last_route = None
        last = time.monotonic()
        if self.router is None:
            weights = self.adapter
            logits = self._next(seq, state, 0, use_cache, weights)
        elif route is not None:
            weights = self.adapter if route else self.untuned
            logits = self._next(seq, state, 0, use_cache, weights)
            self.last_route = "adapter" if route else "untuned"
        else:
            # The feature sits below every adapter, so it is the same whichever weights the prefill used.
            weights = self.adapter
            logits = self._next(seq, state, 0, use_cache, weights)
            inside = self.router.inside(state["cut_mean"][0])
            self.last_route = "adapter" if inside else "untuned"
            if not inside:
                weights = self.untuned
                logits = self._next(seq, state, 0, use_cache, weights)
        while True:
            tok = _choose(logits, temperature, top_k, top_p, rng)
            if tok in stop:
                return out, "stop"
            out.append(tok)
            seq.append(tok)
            if len(out) >= max_new_tokens:
                return out, "length"
            if max_length is not None and len(seq) >= max_length:
                return out, "context"
            now = time.monotonic()
            if token_deadline_s is not None and now - last > token_deadline_s:
                return out, "deadline"
            if until is not None and time.time() > until:
                return out, "expired"
            last = now
            logits = self._next(seq, state, len(seq) - 1, use_cache, weights)

    def _next(self, seq: list[int], state: dict[str, Any], past_len: int, use_cache: bool,
              weights: dict[str, Any]) -> np.ndarray:
        if not use_cache or past_len == 0:
            arr = np.asarray([seq], np.int64)
            state.clear()
            return self.forward(arr, np.ones_like(arr), state, 0, np.array([len(seq) - 1]), weights)[0, -1]
        arr = np.asarray([seq[-1:]], np.int64)
        return self.forward(arr, np.ones((1, len(seq)), np.int64), state, past_len, np.array([0]), weights)[0, -1]


def _choose(logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng: np.random.Generator) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if top_k > 0 and top_k < z.size:
        z[z < np.partition(z, -top_k)[-top_k]] = -np.inf
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        cum = np.cumsum(p[order])
        cut = order[np.searchsorted(cum, top_p) + 1:]
        p[cut] = 0.0
        p /= p.sum()
    return int(rng.choice(p.size, p=p))


def timed(decoder: Decoder, prompt_ids: Sequence[int], decode: Any, **kw: Any) -> Generation:
    t0 = time.perf_counter()
    ids, why = decoder.generate(prompt_ids, **kw)
    return Generation(ids, decode(ids), why, len(prompt_ids), time.perf_counter() - t0, decoder.last_route)
