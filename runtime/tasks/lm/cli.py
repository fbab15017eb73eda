"""Causal-LM commands: `ftedge generate`, and what `train` / `evaluate` print for a causal LM. Torch-free."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ftedge.runtime.engines.providers import add_providers_argument

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
    add_providers_argument(g)
    g.add_argument("--bundle", type=Path, help="the bundle, when it moved since the run")
    g.add_argument("--json", action="store_true", help="print {answer, tokens, stopped, tokens_per_s, …}")
    g.set_defaults(handler=run_generate)


def evaluate_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--general", metavar="FILE.jsonl", help="general prompts for retention vs the untuned bundle")
    g.add_argument("--max-new-tokens", type=int, default=48, help="answer budget (default 48)")
    g.add_argument("--no-router", action="store_true",
                   help="apply a routed adapter to every prompt (to judge the adapter alone)")


def run_generate(args: argparse.Namespace) -> int:
    from ftedge.runtime.tasks.lm.model import open_lm

    model = open_lm(args.target, args.providers, args.threads, bundle=args.bundle)
    gen = model.answer(args.prompt, system=args.system, max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    if args.json:
        print(json.dumps({"answer": gen.text, "tokens": len(gen.ids), "prompt_tokens": gen.prompt_tokens,
                          "stopped": gen.stopped, "seconds": round(gen.seconds, 4),
                          "tokens_per_s": round(gen.tokens_per_s, 2), "model": model.kind, "route": gen.route}))
    else:
        print(gen.text)
    return 0


def report(result: dict[str, Any]) -> list[str]:
    m, b = result["metrics"], result["baseline"]
    parts = [f"{result['status']}: {result['epochs_run']} epoch(s), best {result['best_epoch']}"]
    if m.get("perplexity") is not None and b.get("perplexity") is not None:
        parts.append(f"held-out perplexity {b['perplexity']:.2f} untuned → {m['perplexity']:.2f}")
    if m.get("accuracy") is not None:
        parts.append(f"answer accuracy {b['accuracy']:.3f} → {m['accuracy']:.3f}")
    if m.get("retention") is not None:
        parts.append(f"retention {m['retention']:.2f}")
    if result.get("router"):
        parts.append(f"router: adapter on {result['router'].get('eval_to_adapter', '—')} of held-out and "
                     f"{result['router'].get('general_to_adapter', '—')} of general prompts")
    if result["status"] == "succeeded":
        parts.append(f"promoted: {result['promoted']} ({result['gate']}); {result['samples']['train']} rows, "
                     f"{len(result['skipped'])} skipped, {len(result['truncated'])} truncated; "
                     f"{result['duration_s']:.1f} s")
    from ftedge.runtime.training.warm_start import summary_line

    warm = summary_line(result)
    return ["; ".join(parts)] + ([warm] if warm else [])


def run_evaluate(args: argparse.Namespace) -> int:
    from ftedge.runtime.tasks.lm.evaluate import evaluate_lm
    from ftedge.runtime.tasks.lm.model import load_adapter, open_lm

    model = open_lm(args.target, args.providers, use_router=not args.no_router)
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
