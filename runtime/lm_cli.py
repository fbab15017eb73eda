"""Causal-LM commands: `ftedge generate`, and `train` / `evaluate` when the bundle is a causal LM. Torch-free."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GENERATE_EPILOG = """examples:
  ftedge generate bundles/faq-llm --prompt "When are you open on Sunday?"        # the untuned model
  ftedge generate runs/faq --prompt "What does error E4 mean?" --json            # the personalized one
  ftedge generate runs/faq --prompt "Suggest a ride" --temperature 0.7 --top-p 0.9 --seed 3

RUN_DIR is a finished `ftedge train` run of a causal-LM bundle (its adapter.safetensors is side-loaded
onto the bundle's decoder) or a model version kept by the device agent."""


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "generate",
        help="answer a prompt with a causal-LM bundle or personalized run (KV cache, plain onnxruntime)",
        description="Generate an answer with the bundle's decoder (KV cache), greedy by default or sampled, "
        "stopping at the chat template's end-of-turn token or --max-new-tokens.",
        epilog=GENERATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("target", metavar="RUN_DIR_OR_BUNDLE")
    g.add_argument("--prompt", required=True, help="the user's message")
    g.add_argument("--system", help="a system message (default: the chat template's own)")
    g.add_argument("--max-new-tokens", type=int, default=64, help="token budget of the answer (default 64)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; > 0: sample")
    g.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1: off)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    g.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: all cores)")
    g.add_argument("--providers", metavar="P1,P2", help="execution providers (default CPU)")
    g.add_argument("--bundle", type=Path, help="the bundle, when it moved since the run")
    g.add_argument("--json", action="store_true", help="print {answer, tokens, stopped, tokens_per_s, …}")
    g.set_defaults(handler=run_generate)


def add_train_arguments(t: argparse.ArgumentParser) -> None:
    c = t.add_argument_group("causal-LM bundles (--task causal-lm)")
    c.add_argument("--eval-data", metavar="FILE.jsonl",
                   help="held-out prompts with reference answers (and optional keywords) for validation loss, "
                   "answer accuracy and the gate; default: --val-fraction of the training rows (loss only). "
                   "Detectors: labelled images (its 'val' split) for validation mAP and the gate")
    c.add_argument("--general", metavar="FILE.jsonl",
                   help="general prompts the fine-tune must not forget: retention of the untuned answers")
    c.add_argument("--off-topic", metavar="FILE.jsonl",
                   help="prompts that are not the site's own (e.g. general questions, never the --general set): "
                   "a router fitted on them and the training prompts applies the adapter only to the site's "
                   "questions, so the untuned model keeps answering everything else")
    c.add_argument("--min-retention", type=float, default=0.9,
                   help="with --general: promote only if at least this share of untuned answers is kept (0.9)")
    c.add_argument("--max-new-tokens", type=int, default=48, help="answer budget when evaluating (default 48)")


def _providers(text: str | None) -> list[str] | None:
    return [p if p.endswith("ExecutionProvider") else f"{p}ExecutionProvider" for p in text.split(",")] if text else None


def run_generate(args: argparse.Namespace) -> int:
    from ftedge.runtime.lm_model import open_lm

    model = open_lm(args.target, _providers(args.providers), args.threads, bundle=args.bundle)
    gen = model.answer(args.prompt, system=args.system, max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    if args.json:
        print(json.dumps({"answer": gen.text, "tokens": len(gen.ids), "prompt_tokens": gen.prompt_tokens,
                          "stopped": gen.stopped, "seconds": round(gen.seconds, 4),
                          "tokens_per_s": round(gen.tokens_per_s, 2), "model": model.kind, "route": gen.route}))
    else:
        print(gen.text)
    return 0


def run_train_lm(args: argparse.Namespace) -> int:
    from ftedge.runtime.lm_trainer import LMTrainConfig, train_lm

    cfg = LMTrainConfig(
        epochs=args.epochs or 10, batch_size=args.batch_size or 4, lr=args.lr,
        weight_decay=args.weight_decay or 0.0,
        val_fraction=0.1 if args.val_fraction is None else args.val_fraction, seed=args.seed,
        max_seconds=args.max_seconds, resume=args.resume, min_gain=args.min_gain, min_retention=args.min_retention,
        max_new_tokens=args.max_new_tokens, eval_data=args.eval_data, general=args.general,
        off_topic=args.off_topic, providers=_providers(args.providers))
    result = train_lm(args.bundle, args.data, args.run_dir, cfg)
    if args.json:
        print(json.dumps(result))
    elif not args.quiet:
        m, b = result["metrics"], result["baseline"]
        parts = [f"{result['status']}: {result['epochs_done']} epoch(s), best {result['best_epoch']}"]
        if m.get("perplexity") is not None and b.get("perplexity") is not None:
            parts.append(f"held-out perplexity {b['perplexity']:.2f} untuned → {m['perplexity']:.2f}")
        if m.get("accuracy") is not None:
            parts.append(f"answer accuracy {b['accuracy']:.3f} → {m['accuracy']:.3f}")
        if m.get("retention") is not None:
            parts.append(f"retention {m['retention']:.2f}")
        if result.get("router"):
            parts.append(f"router: adapter on {result['router'].get('eval_to_adapter', '—')} of held-out and "
                         f"{result['router'].get('general_to_adapter', '—')} of general prompts")
        parts.append(f"promoted: {result['promoted']} ({result['gate']}); {result['samples']['train']} rows, "
                     f"{len(result['skipped'])} skipped, {len(result['truncated'])} truncated; "
                     f"{result['duration_s']:.1f} s")
        print("; ".join(parts))
        if result["skipped"]:
            print(f"skipped {len(result['skipped'])} row(s); see {args.run_dir / 'result.json'}", file=sys.stderr)
    return 0


def run_evaluate_lm(args: argparse.Namespace) -> int:
    from ftedge.runtime.lm_eval import evaluate_lm
    from ftedge.runtime.lm_model import load_adapter, open_lm

    model = open_lm(args.target, _providers(args.providers), use_router=not args.no_router)
    base = load_adapter(model.bundle.file("init")) if args.general else None
    result = evaluate_lm(model, args.data, args.general, base, args.max_new_tokens)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['kind']} {result['model']} on {result['samples']} prompts ({len(result['skipped'])} skipped)")
    if "perplexity" in result:
        print(f"perplexity {result['perplexity']:.3f} over {result['answer_tokens']} answer tokens")
    if result.get("accuracy") is not None:
        print(f"answer accuracy {result['accuracy']:.3f}   exact match {result['exact_match']:.3f}   "
              f"token F1 {result['token_f1']:.3f}")
    if result.get("retention"):
        r = result["retention"]
        print(f"retention {r['retention']:.3f} ({r['kept']} of {r['n']} untuned answers kept; mean F1 {r['mean_f1']:.3f})")
    return 0
