"""Judging a causal-LM adapter by what it answers: accuracy on held-out prompts (paraphrases of the training
questions, each with a reference answer and optional keywords), retention of the base model's answers on general
prompts, perplexity of held-out answers, and the promotion gate built on them. Metrics:
:mod:`ftedge.runtime.tasks.lm.answer_metrics`."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from ftedge.bundle.loader import Bundle
from ftedge.runtime.tasks.lm import answer_metrics
from ftedge.runtime.tasks.lm.chat import ChatTokenizer, Example, _messages, load_qa, prompt_of, read_rows
from ftedge.runtime.tasks.lm.generator import Decoder
from ftedge.errors import DataError

log = logging.getLogger(__name__)


def answer_all(decoder: Decoder, tok: ChatTokenizer, rows: list[dict[str, Any]], max_new_tokens: int,
               routes: list[str | None] | None = None, untuned: list[str] | None = None) -> list[str]:
    """Greedy answers; with ``routes``, which weights answered each row is appended to it (routed adapters).
    ``untuned``: the untuned model's answers to the same rows, reused for the rows a router keeps from the
    adapter (greedy decoding is deterministic, so generating them again would give the same text)."""
    out = []
    for i, row in enumerate(rows):
        prompt = tok.prompt_ids(prompt_of(row))
        route = decoder.routes_to_adapter(prompt) if untuned is not None else None
        if route is False:
            out.append(untuned[i])
            decoder.last_route = "untuned"
        else:
            ids, _ = decoder.generate(prompt, max_new_tokens, tok.stop_ids, max_length=tok.max_length + max_new_tokens,
                                      route=route)
            out.append(tok.decode(ids).strip())
        if routes is not None:
            routes.append(decoder.last_route)
    return out


def route_shares(**routes: list[str | None]) -> dict[str, Any]:
    """``{NAME_to_adapter: share}`` of each non-empty list of routes (empty when nothing was routed)."""
    return {f"{name}_to_adapter": round(sum(r == "adapter" for r in rs) / len(rs), 4)
            for name, rs in routes.items() if rs and rs[0] is not None}


def evaluate_answers(bundle: Bundle, tok: ChatTokenizer, initial: dict[str, np.ndarray], adapter: dict[str, np.ndarray],
                     eval_rows: list[dict[str, Any]] | None, general_rows: list[dict[str, Any]],
                     cfg: Any, previous: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Answers of the untuned and the tuned adapter: accuracy on ``eval_rows``, retention on ``general_rows``;
    with ``previous`` (a warm start's adapter) also its accuracy on ``eval_rows``, as ``out["previous"]``."""
    out: dict[str, Any] = {"base": {}, "tuned": {}}
    if not eval_rows and not general_rows:
        return out
    decoder = Decoder(bundle.file("decoder"), bundle.manifest["llm"], initial, cfg.providers, cfg.threads)
    answers: dict[str, dict[str, list[str]]] = {}
    routes: dict[str, list[str | None]] = {"eval": [], "general": []}
    for which, weights in (("base", initial), ("tuned", adapter)):
        decoder.set_adapter(weights)
        got = routes if which == "tuned" else {"eval": None, "general": None}
        base = answers.get("base", {"eval": None, "general": None})
        answers[which] = {key: answer_all(decoder, tok, rows, cfg.max_new_tokens, got[key], base[key])
                          for key, rows in (("eval", eval_rows or []), ("general", general_rows))}
        if eval_rows:
            out[which] = score(answers[which]["eval"], eval_rows)
    if previous is not None and eval_rows:   # the same held-out prompts; retention is the candidate's alone
        decoder.set_adapter(previous)
        out["previous"] = score(answer_all(decoder, tok, eval_rows, cfg.max_new_tokens, [],
                                           answers["base"]["eval"]), eval_rows)
    out["routes"] = route_shares(**routes)
    if general_rows:
        out["retention"] = answer_metrics.retention(answers["base"]["general"], answers["tuned"]["general"])
    out["answers"] = [{"prompt": prompt_of(r)[-1]["content"], "reference": r.get("answer"), "base": b, "tuned": t}
                      for r, b, t in zip(eval_rows or [], answers["base"]["eval"], answers["tuned"]["eval"])]
    return out


def gate(metrics: dict[str, Any], baseline: dict[str, Any], cfg: Any) -> tuple[bool, str]:
    """Promote when answer accuracy gains more than ``min_gain`` (perplexity falls, without an eval set) and
    retention holds."""
    if metrics.get("accuracy") is not None and baseline.get("accuracy") is not None:
        gain = metrics["accuracy"] - baseline["accuracy"]
        ok, why = gain > cfg.min_gain, f"accuracy {baseline['accuracy']:.3f} -> {metrics['accuracy']:.3f}"
    elif metrics.get("perplexity") is not None and baseline.get("perplexity") is not None:
        ok = metrics["perplexity"] < baseline["perplexity"]
        why = f"perplexity {baseline['perplexity']:.2f} -> {metrics['perplexity']:.2f}"
    else:
        return False, "nothing held out to judge the tuned model by (give --eval-data)"
    if metrics.get("retention") is not None:
        kept = metrics["retention"] >= cfg.min_retention
        why += f"; retention {metrics['retention']:.2f} (min {cfg.min_retention})"
        ok = ok and kept
    return ok, why


def keywords_of(row: dict[str, Any], where: str) -> list[Any] | None:
    """A row's ``keywords`` (phrases, or lists of alternative phrases), checked; None when it has none."""
    kws = row.get("keywords")
    if kws is None:
        return None
    ok = isinstance(kws, list) and all(isinstance(k, str) and answer_metrics.tokens(k) or isinstance(k, list) and k
                                       and all(isinstance(a, str) and answer_metrics.tokens(a) for a in k) for k in kws)
    if not ok:
        raise DataError(f"{where}: `keywords` must be a list of phrases or of lists of alternative phrases, none empty "
                        f"or only punctuation/articles; got {str(kws)[:80]}")
    return kws


def score(predictions: list[str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """accuracy / exact_match / token_f1 of ``predictions`` against the rows' ``answer`` and ``keywords``."""
    scored = [{"prediction": p, "reference": r.get("answer") or "", "keywords": keywords_of(r, f"row {i + 1}")}
              for i, (p, r) in enumerate(zip(predictions, rows))]
    return {k: v for k, v in answer_metrics.score_answers(scored).items() if k != "n"}


def perplexity(decoder: Decoder, examples: list[Example]) -> dict[str, Any]:
    """exp(mean NLL) of the answer tokens of ``examples`` under the decoder (full sequence, no cache)."""
    total, count = 0.0, 0
    for e in examples:
        logits = decoder.logits(e.prompt_ids + e.answer_ids)
        p = len(e.prompt_ids)
        z = logits[p - 1: p - 1 + len(e.answer_ids)].astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        total -= float(logp[np.arange(len(e.answer_ids)), e.answer_ids].sum())
        count += len(e.answer_ids)
    return {"answer_tokens": count, "nll": total / max(count, 1), "perplexity": math.exp(total / max(count, 1))}


def rows_of(path: str | Path, flag: str, tok: ChatTokenizer | None = None, need_answer: bool = False,
            skipped: list[dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """The usable rows of a ``.jsonl`` file, checked before any training: JSON objects with a prompt (and with
    ``need_answer`` a non-empty answer) whose prompt fits the bundle's ``max_length`` (with ``tok``). Every other
    line is skipped, logged and appended to ``skipped`` as ``{"source": FILE:LINE, "reason": …}``; DataError when
    none is left."""
    rows, bad = read_rows(path)
    good = []
    for where, row in rows:
        try:
            if need_answer:
                messages, answer = _messages(row)
                if not answer.strip():
                    raise ValueError("empty answer")
            else:
                messages = prompt_of(row)
            if tok is not None and len(tok.prompt_ids(messages)) > tok.max_length:
                raise ValueError(f"the prompt is longer than the bundle's {tok.max_length} tokens")
        except (ValueError, DataError) as exc:
            bad.append({"source": where, "reason": f"{flag}: {str(exc).removeprefix('bad row: ')}"})
            continue
        good.append(row)
    for entry in bad:
        log.warning("%s %s: line skipped: %s", flag, entry["source"], entry["reason"])
    if skipped is not None:
        skipped.extend(bad)
    if not good:
        reasons = "; ".join(f"{s['source']}: {s['reason']}" for s in bad[:3])
        raise DataError(f"{flag} {path}: no usable rows ({len(bad)} skipped{': ' + reasons if reasons else ''})")
    return good


def evaluate_lm(model: Any, data: str | Path, general: str | Path | None = None, base_adapter: Any = None,
                max_new_tokens: int = 48) -> dict[str, Any]:
    """``ftedge evaluate`` of a causal LM: perplexity of the answers in ``data``, answer accuracy (rows with an
    ``answer``), and with ``general`` the retention of the untuned bundle's answers."""
    rows = rows_of(data, "--data")
    with_answers = [r for r in rows if isinstance(r.get("answer"), str) and r["answer"].strip()]
    out: dict[str, Any] = {"kind": model.kind, "model": model.source, "task": "causal-lm", "samples": len(rows)}
    if with_answers:
        qa = load_qa(data, model.tok)
        out["skipped"] = qa.skipped
        out.update(perplexity(model.decoder, qa.examples))
    else:
        out["skipped"] = []
    routes: dict[str, list[str | None]] = {"data": [], "general": []}
    answers = answer_all(model.decoder, model.tok, rows, max_new_tokens, routes["data"])
    if with_answers:
        out.update(score([a for a, r in zip(answers, rows) if r in with_answers], with_answers))
    if general is not None:
        grows = rows_of(general, "--general")
        tuned = answer_all(model.decoder, model.tok, grows, max_new_tokens, routes["general"])
        model.decoder.set_adapter(base_adapter)
        base = answer_all(model.decoder, model.tok, grows, max_new_tokens)
        out["retention"] = answer_metrics.retention(base, tuned)
    out["router"] = route_shares(**routes) or None
    out["answers"] = [{"prompt": prompt_of(r)[-1]["content"], "answer": a, "reference": r.get("answer")}
                      for r, a in zip(rows, answers)][:50]
    return out
