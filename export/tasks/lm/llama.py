"""A Llama-style decoder written as plain functions over named weights, with LoRA on chosen projections.

The exporter traces these functions (not Hugging Face's modules) into the three causal-LM graphs: their shapes are
explicit (no cache objects, no dispatch on attention backends), so the same code gives the backbone pass, the
training step on cached hidden states and the KV-cache decoder. ``tests/runtime/lm/test_llm.py`` holds it equal to
``transformers``' ``LlamaForCausalLM`` and PEFT's LoRA.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ftedge.errors import ExportError

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NEG = -1e9  # additive mask value: large but finite, so a fully masked (padding) row stays finite


@dataclass(frozen=True)
class LlamaShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    eps: float
    rope_theta: float

    @classmethod
    def from_config(cls, cfg: Any) -> "LlamaShape":
        if getattr(cfg, "model_type", None) not in ("llama", "mistral", "qwen2", "smollm3") and not hasattr(cfg, "num_key_value_heads"):
            raise ExportError(f"--task causal-lm supports Llama-style decoders; {getattr(cfg, 'model_type', '?')} "
                              "is not one")
        rope = getattr(cfg, "rope_parameters", None) or {}
        scaling = getattr(cfg, "rope_scaling", None) or {}
        kind = rope.get("rope_type") or scaling.get("rope_type") or "default"
        if kind != "default":
            raise ExportError(f"rope type {kind!r} is not supported yet (default RoPE only)")
        theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        heads = cfg.num_attention_heads
        return cls(layers=cfg.num_hidden_layers, hidden=cfg.hidden_size, heads=heads,
                   kv_heads=cfg.num_key_value_heads or heads,
                   head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
                   intermediate=cfg.intermediate_size, vocab=cfg.vocab_size, eps=float(cfg.rms_norm_eps),
                   rope_theta=float(theta))


def hf_weights(model: Any) -> dict[str, torch.Tensor]:
    """Hugging Face ``LlamaForCausalLM`` weights under this module's names (``layers.{i}.{proj}``, ``embed``,
    ``norm``, ``lm_head``), detached fp32."""
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {"embed": sd["model.embed_tokens.weight"], "norm": sd["model.norm.weight"]}
    out["lm_head"] = sd.get("lm_head.weight", out["embed"])
    for key, value in sd.items():
        m = re.match(r"model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.(weight|bias)$", key)
        if m:
            out[f"layers.{m[1]}.{m[3]}" + (".bias" if m[4] == "bias" else "")] = value
        m = re.match(r"model\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight$", key)
        if m:
            out[f"layers.{m[1]}.{m[2]}"] = value
    return out


def lora_names(layers: range, targets: str) -> list[tuple[str, str]]:
    """``(A, B)`` parameter names for every projection of ``layers`` that ``targets`` (re.search over
    ``layers.{i}.{proj}``) selects."""
    rx = re.compile(targets)
    out = []
    for i in layers:
        for proj in PROJECTIONS:
            base = f"layers.{i}.{proj}"
            if rx.search(base):
                out.append((f"{base}.lora_A", f"{base}.lora_B"))
    if not out:
        raise ExportError(f"--lora-targets {targets!r} selects no projection of layers {layers.start}..{layers.stop - 1} "
                          f"(names look like layers.{layers.start}.q_proj; projections: {', '.join(PROJECTIONS)})")
    return out


def init_lora(w: dict[str, torch.Tensor], names: list[tuple[str, str]], rank: int, seed: int) -> dict[str, torch.Tensor]:
    """PEFT's default initialisation: A Kaiming-uniform (a=sqrt(5)), B zeros (the adapter starts as a no-op)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for a, b in names:
        weight = w[a[: -len(".lora_A")]]
        fan_in = weight.shape[1]
        bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)) on [rank, fan_in]
        out[a] = (torch.rand(rank, fan_in, generator=g) * 2 - 1) * bound
        out[b] = torch.zeros(weight.shape[0], rank)
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope(shape: LlamaShape, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [B, 1, T, head_dim] for integer ``positions`` [B, T]."""
    inv = 1.0 / (shape.rope_theta ** (torch.arange(0, shape.head_dim, 2, dtype=torch.float32) / shape.head_dim))
    freqs = positions.to(torch.float32).unsqueeze(-1) * inv
    emb = torch.cat([freqs, freqs], dim=-1).unsqueeze(1)
    return emb.cos(), emb.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def causal_mask(attention_mask: torch.Tensor, past: int | torch.Tensor = 0) -> torch.Tensor:
    """Additive mask [B, 1, T, P+T]: a query sees earlier keys that ``attention_mask`` [B, P+T] keeps."""
    total = attention_mask.shape[1]
    steps = total - past
    q = torch.arange(steps).unsqueeze(1) + past
    k = torch.arange(total).unsqueeze(0)
    allowed = (k <= q).unsqueeze(0) & (attention_mask.unsqueeze(1) > 0)
    return torch.where(allowed, 0.0, NEG).to(torch.float32).unsqueeze(1)


class Llama:
    """Weights ``w`` (see :func:`hf_weights`), LoRA adapters ``lora`` (``…lora_A``/``…lora_B`` tensors), and
    the scale alpha / rank."""

    def __init__(self, shape: LlamaShape, w: dict[str, torch.Tensor], lora_scale: float = 1.0) -> None:
        self.s = shape
        self.w = w
        self.lora_scale = lora_scale

    def proj(self, x: torch.Tensor, name: str, lora: dict[str, torch.Tensor]) -> torch.Tensor:
        y = F.linear(x, self.w[name], self.w.get(name + ".bias"))
        a = lora.get(name + ".lora_A")
        if a is not None:
            y = y + F.linear(F.linear(x, a), lora[name + ".lora_B"]) * self.lora_scale
        return y

    def block(self, i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
              lora: dict[str, torch.Tensor], past: tuple[torch.Tensor, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One decoder layer; returns the output and this layer's keys/values (past included)."""
        s, p = self.s, f"layers.{i}."
        b, t, _ = x.shape
        h = rms_norm(x, self.w[p + "input_layernorm"], s.eps)
        q = self.proj(h, p + "q_proj", lora).view(b, t, s.heads, s.head_dim).transpose(1, 2)
        k = self.proj(h, p + "k_proj", lora).view(b, t, s.kv_heads, s.head_dim).transpose(1, 2)
        v = self.proj(h, p + "v_proj", lora).view(b, t, s.kv_heads, s.head_dim).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        rep = s.heads // s.kv_heads
        kk = k.repeat_interleave(rep, dim=1) if rep > 1 else k
        vv = v.repeat_interleave(rep, dim=1) if rep > 1 else v
        scores = torch.matmul(q, kk.transpose(-1, -2)) * (1.0 / math.sqrt(s.head_dim)) + mask
        attn = torch.matmul(torch.softmax(scores, dim=-1), vv)
        attn = attn.transpose(1, 2).reshape(b, t, s.heads * s.head_dim)
        x = x + self.proj(attn, p + "o_proj", lora)
        h = rms_norm(x, self.w[p + "post_attention_layernorm"], s.eps)
        mlp = F.silu(self.proj(h, p + "gate_proj", lora)) * self.proj(h, p + "up_proj", lora)
        return x + self.proj(mlp, p + "down_proj", lora), (k, v)

    def layers_forward(self, x: torch.Tensor, layers: range, attention_mask: torch.Tensor,
                       lora: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Hidden states through ``layers`` for right-padded sequences (positions 0..T-1)."""
        b, t, _ = x.shape
        positions = torch.arange(t).unsqueeze(0).expand(b, t)
        cos, sin = rope(self.s, positions)
        mask = causal_mask(attention_mask)
        for i in layers:
            x, _ = self.block(i, x, cos, sin, mask, lora or {})
        return x

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.w["embed"])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(rms_norm(hidden, self.w["norm"], self.s.eps), self.w["lm_head"])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                lora: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits [B, T, V] of the whole model (no cache)."""
        return self.logits(self.layers_forward(self.embed(input_ids), range(self.s.layers), attention_mask, lora))


def answer_nll(model: Llama, hidden: torch.Tensor, label_pos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood [B, A] of ``labels`` predicted at ``label_pos`` (positions whose next
    token is a label), from final-layer ``hidden`` [B, T, D]: the LM head runs on those positions only."""
    idx = label_pos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    picked = torch.gather(hidden, 1, idx)
    logits = model.logits(picked)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none"
                           ).reshape(labels.shape)
