"""The causal-LM bundle's graphs, traced from :mod:`ftedge.export.tasks.lm.llama`.

``backbone.onnx``  ``input_ids``, ``attention_mask`` [B, T] → ``hidden`` [B, T, D] after the frozen lower layers
                   (right-padded sequences; computed once per training sequence and cached on the device).
``step.onnx``      the portable engine's training step on cached ``hidden``: the top blocks with LoRA adapters, the
                   final norm and the frozen LM head (on answer positions only), token cross-entropy weighted by
                   ``weights`` [B, A], backward, AdamW. Inputs as :mod:`ftedge.export.step_graph` (``p:``/``m:``/``v:``,
                   ``lr``, ``lr_wd``, ``max_grad_norm``) plus ``hidden``, ``attention_mask``, ``label_pos``,
                   ``labels``, ``weights``; outputs the state ``_out``, ``loss``, ``token_nll``.
``head.onnx``      the same forward without the update (LoRA tensors as inputs): ``token_nll`` for validation.
``decoder.onnx``   the whole model for generation with a KV cache and side-loaded adapters: ``input_ids``,
                   ``attention_mask`` [B, P+S], ``position_ids`` [B, S], ``logit_index`` [K] (which of the S
                   positions get logits), ``past_key.{i}``/``past_value.{i}`` [B, KV, P, hd], the LoRA tensors →
                   ``logits`` [B, K, V], ``cut_mean`` [B, D] (mean hidden state at the backbone cut: the
                   adapter router's feature), ``present_key.{i}``/``present_value.{i}``.
Every graph has dynamic batch and sequence sizes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ftedge.errors import ExportError
from ftedge.export.tasks.lm.llama import Llama, answer_nll, causal_mask, rms_norm, rope
from ftedge.export.graph_io import FnModule as _Fn, externalize
from ftedge.export.graph_io import quiet_export as _quiet_export, step_differences, torchscript as _torchscript
from ftedge.export.step_graph import adamw_all

STEP_TOLERANCE = 1e-4


def write_backbone(model: Llama, cut: int, path: Path) -> None:
    def backbone(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return model.layers_forward(model.embed(input_ids), range(cut), attention_mask)

    ids = torch.randint(0, model.s.vocab, (2, 7))
    _torchscript(backbone, (ids, torch.ones_like(ids)), path, ["input_ids", "attention_mask"], ["hidden"],
                 {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                  "hidden": {0: "batch", 1: "seq"}}, "backbone")


def _top(model: Llama, layers: range, lora: dict[str, torch.Tensor], hidden: torch.Tensor,
         attention_mask: torch.Tensor, label_pos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    b, t, _ = hidden.shape
    positions = torch.arange(t).unsqueeze(0).expand(b, t)
    cos, sin = rope(model.s, positions)
    mask = causal_mask(attention_mask)
    x = hidden
    for i in layers:
        x, _ = model.block(i, x, cos, sin, mask, lora)
    return answer_nll(model, x, label_pos, labels)


def write_head(model: Llama, layers: range, names: list[str], init: dict[str, torch.Tensor], path: Path) -> None:
    def head(hidden, attention_mask, label_pos, labels, *ps):  # noqa: ANN001, ANN202
        return _top(model, layers, dict(zip(names, ps)), hidden, attention_mask, label_pos, labels)

    ex = _batch_example(model, 2, 7, 3, torch.Generator().manual_seed(3))
    _torchscript(head, (*ex[:4], *[init[k] for k in names]), path,
                 ["hidden", "attention_mask", "label_pos", "labels", *names], ["token_nll"],
                 {"hidden": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                  "label_pos": {0: "batch", 1: "answer"}, "labels": {0: "batch", 1: "answer"},
                  "token_nll": {0: "batch", 1: "answer"}}, "validation")


def _batch_example(model: Llama, b: int, t: int, a: int, g: torch.Generator) -> list[torch.Tensor]:
    hidden = torch.randn(b, t, model.s.hidden, generator=g)
    mask = torch.ones(b, t, dtype=torch.int64)
    mask[-1, t - 2:] = 0
    pos = torch.stack([torch.randperm(t - 2, generator=g)[:a].sort().values for _ in range(b)])
    labels = torch.randint(0, model.s.vocab, (b, a), generator=g)
    weights = torch.ones(b, a)
    weights[-1, -1] = 0.0
    return [hidden, mask, pos, labels, weights]


def write_step(model: Llama, layers: range, names: list[str], init: dict[str, torch.Tensor], path: Path
               ) -> dict[str, Any]:
    """Trace the LoRA training step with dynamic batch, sequence and answer lengths; verify it against eager."""
    from torch._decomp import core_aten_decompositions
    from torch.func import grad_and_value
    from torch.fx.experimental.proxy_tensor import make_fx

    from ftedge.export.conv_grad import decompositions

    n = len(names)

    def step(*a: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ps, ms, vs = list(a[:n]), list(a[n:2 * n]), list(a[2 * n:3 * n])
        lr, lr_wd, clip, hidden, attention_mask, label_pos, labels, weights = a[3 * n:]

        def loss_fn(p: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            nll = _top(model, layers, dict(zip(names, p)), hidden, attention_mask, label_pos, labels)
            return (nll * weights).sum() / weights.sum().clamp_min(1e-6), nll

        grads, (value, nll) = grad_and_value(loss_fn, has_aux=True)(ps)
        out_p, out_m, out_v = adamw_all(ps, grads, ms, vs, lr, lr_wd, clip)
        return (*out_p, *out_m, *out_v, value.detach(), nll.detach())

    p0 = [init[k].clone() for k in names]
    state = [*p0, *[torch.zeros_like(p) for p in p0], *[torch.zeros_like(p) for p in p0]]
    scalars = [torch.tensor(1e-3), torch.tensor(1e-5), torch.tensor(0.0)]
    batch = _batch_example(model, 3, 11, 5, torch.Generator().manual_seed(1))
    in_names = [f"{s}:{k}" for s in "pmv" for k in names] + ["lr", "lr_wd", "max_grad_norm", "hidden",
                                                             "attention_mask", "label_pos", "labels", "weights"]
    out_names = [f"{k}_out" for k in in_names[:3 * n]] + ["loss", "token_nll"]
    example = (*state, *scalars, *batch)

    def trace() -> Any:
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

        mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
        dyn_axes = [()] * (3 * n + 3) + [(0, 1), (0, 1), (0, 1), (0, 1), (0, 1)]
        fakes = []
        for t, axes in zip(example, dyn_axes):
            dyn = [DimDynamic.DYNAMIC if i in axes else DimDynamic.STATIC for i in range(t.dim())]
            fakes.append(mode.from_tensor(t, symbolic_context=StatelessSymbolicContext(dynamic_sizes=dyn)))
        return make_fx(step, decomposition_table={**core_aten_decompositions(), **decompositions()},
                       tracing_mode="fake", _allow_non_fake_inputs=True)(*fakes)

    try:
        gm = _quiet_export(trace)
    except Exception as exc:
        raise ExportError(f"tracing the LoRA training step failed: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0]}") from exc
    B = torch.export.Dim("batch", min=1, max=1 << 12)
    T = torch.export.Dim("seq", min=2, max=1 << 15)
    A = torch.export.Dim("answer", min=1, max=1 << 15)
    dyn: list[Any] = [None] * (3 * n + 3) + [{0: B, 1: T}, {0: B, 1: T}, {0: B, 1: A}, {0: B, 1: A}, {0: B, 1: A}]
    try:
        program = _quiet_export(lambda: torch.onnx.export(
            _Fn(gm), example, dynamo=True, input_names=in_names, output_names=out_names,
            dynamic_shapes=(tuple(dyn),), optimize=True, verbose=False, report=False))
        program.save(os.fspath(path))
    except Exception as exc:
        cause = exc.__cause__ or exc
        raise ExportError(f"exporting the LoRA training step failed: {type(cause).__name__}: "
                          f"{str(cause).splitlines()[0] if str(cause) else ''}") from exc
    externalize(path)
    return _verify_step(step, state, model, path, in_names, out_names, n)


def _verify_step(step: Callable[..., Any], state: list[torch.Tensor], model: Llama, path: Path,
                 in_names: list[str], out_names: list[str], n: int) -> dict[str, Any]:
    """``step.onnx`` against the eager step on two batch shapes with non-zero adapters: loss, token NLL, AdamW
    moments (the gradients), each relative to its largest value."""
    from ftedge.runtime.engines.ort_backend import InferenceModel

    sess = InferenceModel(path).session
    worst: dict[str, float] = {}
    bad = []
    for b, t, a in ((2, 9, 4), (3, 6, 2)):
        g = torch.Generator().manual_seed(b * 100 + t)
        st = [s + 0.02 * torch.randn(s.shape, generator=g) if i < n else s for i, s in enumerate(state)]
        args = [*st, torch.tensor(0.01), torch.tensor(1e-5), torch.tensor(0.0),
                *_batch_example(model, b, t, a, g)]
        ref = [r.detach().numpy() for r in step(*args)]
        got = sess.run(None, {k: v.numpy() for k, v in zip(in_names, args)})
        for name, diff in step_differences(out_names, ref, got).items():
            worst[name] = max(worst.get(name, 0.0), diff)
            if not diff <= STEP_TOLERANCE:
                bad.append(f"{name} ({b}x{t}): {diff:.3g}")
    if bad:
        raise ExportError("the LoRA training-step graph disagrees with the PyTorch step: " + "; ".join(bad[:8]))
    return {"max_rel_diff": max(worst.values()), "tolerance": STEP_TOLERANCE,
            "reference": "eager pytorch step of the same llama blocks (torch.func.grad_and_value + AdamW)"}


class _LeanDecoder:
    """The decoder's forward written for a small graph (the same math as :meth:`Llama.block`, checked by the
    export's parity and ``tests/runtime/lm/test_llm.py``). Per token the decode step is dominated by per-node overhead, not
    FLOPs, on a small model, so it trims the nodes per layer:

    * q/k/v and gate/up are one MatMul each (weights concatenated once at export), then a Split;
    * RoPE rotates q and k together, before the head transpose, with the sign of ``rotate_half`` folded into a
      precomputed ``sin`` (``[-x2, x1] * sin == [x2, x1] * [-sin, sin]`` exactly): a Split and a Concat, no Neg;
    * grouped-query attention reshapes q to [B, KV, rep*S, hd] and multiplies it with k [B, KV, P+S, hd] directly
      (the mask tiled once to rep*S rows) instead of ``repeat_interleave``-ing k and v in every layer;
    * the dynamic sizes B and S are read once from ``input_ids`` (kv_heads, head_dim are constants), so every
      Reshape's shape is built from the same two scalars and ORT's common-subexpression pass keeps one copy.
    """

    def __init__(self, model: Llama, names: list[str]) -> None:
        s, w = model.s, model.w
        self.model, self.s = model, s
        self.rep = s.heads // s.kv_heads
        self.qkv_sizes = [s.heads * s.head_dim, s.kv_heads * s.head_dim, s.kv_heads * s.head_dim]
        self.fused: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        for i in range(s.layers):
            p = f"layers.{i}."
            for key, projs in (("qkv", ("q_proj", "k_proj", "v_proj")), ("gate_up", ("gate_proj", "up_proj"))):
                weights = [w[p + n] for n in projs]
                biases = [w.get(p + n + ".bias") for n in projs]
                bias = None
                if any(b is not None for b in biases):
                    bias = torch.cat([b if b is not None else torch.zeros(wt.shape[0]) for b, wt in zip(biases, weights)])
                self.fused[p + key] = (torch.cat(weights), bias)

    def _fused(self, x: torch.Tensor, i: int, key: str, projs: tuple[str, ...], sizes: list[int],
               lora: dict[str, torch.Tensor]) -> torch.Tensor:
        """The concatenated projections' output, each adapter's delta added to its own slice."""
        p = f"layers.{i}."
        weight, bias = self.fused[p + key]
        y = F.linear(x, weight, bias)
        deltas = [self._delta(x, p + n, lora) for n in projs]
        if all(d is None for d in deltas):
            return y
        if all(d is not None for d in deltas):
            return y + torch.cat(deltas, dim=-1)
        parts = list(y.split(sizes, dim=-1))
        return torch.cat([part if d is None else part + d for part, d in zip(parts, deltas)], dim=-1)

    def _delta(self, x: torch.Tensor, name: str, lora: dict[str, torch.Tensor]) -> torch.Tensor | None:
        a = lora.get(name + ".lora_A")
        if a is None:
            return None
        return F.linear(F.linear(x, a), lora[name + ".lora_B"]) * self.model.lora_scale

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sign-folded sin [B, S, 1, head_dim] (the layout of q/k before the head transpose)."""
        s = self.s
        inv = 1.0 / (s.rope_theta ** (torch.arange(0, s.head_dim, 2, dtype=torch.float32) / s.head_dim))
        freqs = positions.to(torch.float32).unsqueeze(-1) * inv
        emb = torch.cat([freqs, freqs], dim=-1).unsqueeze(2)
        sin = freqs.sin().unsqueeze(2)
        return emb.cos(), torch.cat([-sin, sin], dim=-1)

    def block(self, i: int, x: torch.Tensor, b: Any, t: Any, cos: torch.Tensor, sin: torch.Tensor,
              mask: torch.Tensor, lora: dict[str, torch.Tensor], past: tuple[torch.Tensor, torch.Tensor]
              ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        s, model, p = self.s, self.model, f"layers.{i}."
        hd, kv, heads = s.head_dim, s.kv_heads, s.heads
        h = rms_norm(x, model.w[p + "input_layernorm"], s.eps)
        qkv = self._fused(h, i, "qkv", ("q_proj", "k_proj", "v_proj"), self.qkv_sizes, lora)
        qkv = qkv.reshape(b, t, heads + 2 * kv, hd)
        qk, v = qkv.split([heads + kv, kv], dim=2)
        x1, x2 = qk.split([hd // 2, hd // 2], dim=-1)          # static sizes: a Split, no Shape/Div chain
        qk = qk * cos + torch.cat([x2, x1], dim=-1) * sin
        qk = qk.transpose(1, 2)                                   # [B, H+KV, S, hd]
        q, k = qk.split([heads, kv], dim=1)
        k = torch.cat([past[0], k], dim=2)
        v = torch.cat([past[1], v.transpose(1, 2)], dim=2)
        q = q.reshape(b, kv, self.rep * t, hd)                    # head j = kv * rep + r, as repeat_interleave
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(hd)) + mask
        attn = torch.matmul(torch.softmax(scores, dim=-1), v)    # [B, KV, rep*S, hd]
        attn = attn.reshape(b, heads, t, hd).transpose(1, 2).reshape(b, t, heads * hd)
        x = x + model.proj(attn, p + "o_proj", lora)
        h = rms_norm(x, model.w[p + "post_attention_layernorm"], s.eps)
        gate, up = self._fused(h, i, "gate_up", ("gate_proj", "up_proj"), [s.intermediate] * 2, lora
                               ).split([s.intermediate, s.intermediate], dim=-1)
        return x + model.proj(F.silu(gate) * up, p + "down_proj", lora), (k, v)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                logit_index: torch.Tensor, past: list[torch.Tensor], lora: dict[str, torch.Tensor], cut: int
                ) -> tuple[torch.Tensor, ...]:
        b, t = input_ids.shape[0], input_ids.shape[1]
        past_len = past[0].shape[2]
        cos, sin = self.rope(position_ids)
        mask = causal_mask(attention_mask, past_len)              # [B, 1, S, P+S]
        if self.rep > 1:
            mask = mask.repeat(1, 1, self.rep, 1)                 # rows r*S + i: the rep query groups
        x = self.model.embed(input_ids)
        presents: list[torch.Tensor] = []
        cut_mean = x.new_zeros(())
        for i in range(self.s.layers):
            if i == cut:
                cut_mean = masked_mean(x, attention_mask[:, past_len:])
            x, (k, v) = self.block(i, x, b, t, cos, sin, mask, lora, (past[2 * i], past[2 * i + 1]))
            presents += [k, v]
        picked = torch.index_select(x, 1, logit_index)
        return (self.model.logits(picked), cut_mean, *presents)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` [B, S, D] over the positions ``mask`` [B, S] keeps → [B, D]."""
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


def write_decoder(model: Llama, names: list[str], init: dict[str, torch.Tensor], path: Path, cut: int) -> None:
    """The whole model, one graph for prefill (P = 0) and each generated token (see :class:`_LeanDecoder`).
    Besides logits and the cache it outputs ``cut_mean`` [B, D]: the mean hidden state at the backbone cut over
    the call's positions — at prefill, the prompt's feature for the adapter router (:mod:`ftedge.runtime.tasks.lm.router`)."""
    s = model.s
    L = s.layers
    lean = _LeanDecoder(model, names)

    def decoder(input_ids, attention_mask, position_ids, logit_index, *rest):  # noqa: ANN001, ANN202
        return lean.forward(input_ids, attention_mask, position_ids, logit_index, list(rest[:2 * L]),
                            dict(zip(names, rest[2 * L:])), cut)

    b, p, t = 1, 3, 4
    ids = torch.randint(0, s.vocab, (b, t))
    past = [torch.randn(b, s.kv_heads, p, s.head_dim) for _ in range(2 * L)]
    example = (ids, torch.ones(b, p + t, dtype=torch.int64), torch.arange(p, p + t).unsqueeze(0),
               torch.tensor([t - 1]), *past, *[init[k] for k in names])
    past_names = [f"past_{kv}.{i}" for i in range(L) for kv in ("key", "value")]
    present_names = [f"present_{kv}.{i}" for i in range(L) for kv in ("key", "value")]
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"},
                                       "position_ids": {0: "batch", 1: "seq"}, "logit_index": {0: "k"},
                                       "logits": {0: "batch", 1: "k"}, "cut_mean": {0: "batch"}}
    axes |= {k: {0: "batch", 2: "past"} for k in past_names}
    axes |= {k: {0: "batch", 2: "total"} for k in present_names}
    _torchscript(decoder, example, path, ["input_ids", "attention_mask", "position_ids", "logit_index",
                                          *past_names, *names], ["logits", "cut_mean", *present_names], axes, "decoder")


DECODER_QUANT = ("int4", "int8")
_MIN_QUANT_ELEMENTS = 1 << 14  # smaller weight matrices stay fp32: no speed to win, only accuracy to lose


def quantized_weight_matmuls(path: Path, lm_head: bool = True) -> tuple[list[str], list[str]]:
    """(quantize, keep fp32): the MatMul nodes of ``path`` split by whether their weight is a large base-model
    initializer. Everything else — attention score/value products, the LoRA matmuls (their factors are graph
    inputs, side-loaded per adapter) — stays fp32, and must be excluded by name because ORT's dynamic int8
    quantizer would otherwise quantize activation x activation MatMuls too."""
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer if len(t.dims) == 2}
    quant, keep = [], []
    for node in model.graph.node:
        if node.op_type == "MatMul":
            big = sizes.get(node.input[1], 0) >= _MIN_QUANT_ELEMENTS and (lm_head or "logits" not in node.output)
            (quant if big else keep).append(node.name)
    return quant, keep


def quantize_decoder(src: Path, dst: Path, kind: str, lm_head: bool = True) -> dict[str, Any]:
    """``kind`` "int4" / "int8": weight-only 4- or 8-bit MatMulNBits (blocks of 32 weights along the input with
    their own scale, symmetric, accuracy_level 4: int8 activations inside the kernel, the fastest CPU path — about
    1.5x the fp32 decoder's tokens/s at int8 on 2 x86 cores). Base-model projections (and the LM head unless
    ``lm_head`` is False) are quantized; the embedding table, norms and LoRA matmuls stay fp32. (Dynamic int8
    MatMulInteger, this option's earlier meaning, quantizes each activation tensor with one scale: its greedy
    answers drifted from fp32 on every test prompt.) Returns what was quantized."""
    import onnx

    if kind not in DECODER_QUANT:
        raise ExportError(f"--quantize-decoder {kind!r}: choose one of {', '.join(DECODER_QUANT)}")
    quant, keep = quantized_weight_matmuls(src, lm_head)
    bits = 4 if kind == "int4" else 8
    try:
        from ftedge.runtime.engines.ort_backend import quantize_nbits

        quantized = _quiet_export(lambda: quantize_nbits(onnx.load(os.fspath(src)), bits, 32, keep))
        onnx.save(quantized, os.fspath(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=dst.name + ".data", size_threshold=1024)
    except Exception as exc:
        raise ExportError(f"{kind} quantization of the decoder failed: {type(exc).__name__}: {exc}") from exc
    externalize(dst)
    ops = {"MatMulNBits": 0, "MatMulInteger": 0, "DynamicQuantizeMatMul": 0, "MatMul": 0}
    for node in onnx.load(os.fspath(dst), load_external_data=False).graph.node:
        if node.op_type in ops:
            ops[node.op_type] += 1
    return {"weights": kind, "quantized_matmuls": len(quant), "fp32_matmuls": ops["MatMul"],
            "ops": {k: v for k, v in ops.items() if v},
            "scheme": f"{bits}-bit MatMulNBits, block 32, symmetric, accuracy_level 4 (int8 activations per block)",
            "lm_head": "quantized" if lm_head else "fp32", "embedding": "fp32"}
