"""What ``ftedge train`` and ``ftedge evaluate`` print for classification and regression bundles."""

from __future__ import annotations

import argparse
import json
from typing import Any


def report(result: dict[str, Any]) -> list[str]:
    m, b = result["metrics"], result["baseline"]
    key = result["headline"]["metric"]
    lines = [f"{result['status']}: {result['epochs_run']} epoch(s), best {result['best_epoch']} "
             f"({result['stop_reason']}); val {key} {b.get(key, float('nan')):.4f} untuned → "
             f"{m.get(key, float('nan')):.4f} tuned; promoted: {result['promoted']}; "
             f"{result['samples']['total']} samples, {len(result['skipped'])} skipped; {result['duration_s']:.1f} s; "
             f"engine {result['engine']}"]
    if result.get("search"):
        lines.append(auto_summary(result))
    if result.get("warm_start"):
        from ftedge.runtime.training.warm_start import summary_line

        lines.append(summary_line(result))
    return lines


def auto_summary(result: dict[str, Any]) -> str:
    """Two lines on what ``--auto`` chose and its cross-validated estimate."""
    search = result["search"]
    c, e = search["chosen"], search["estimate"]
    key = result["headline"]["metric"]
    return (f"--auto chose lr {c['lr']:.3g}, weight decay {c['weight_decay']:.3g}, {c['epochs']} epoch(s) of a "
            f"{c['horizon']}-epoch schedule, class weight {c['class_weight']} ({len(search['trials'])} trials, "
            f"{search['folds']}-fold, stopped: {search['stopped']})\n"
            f"cross-validated {key} {e['metrics'].get(key, float('nan')):.4f} vs untuned "
            f"{e['baseline_metrics'].get(key, float('nan')):.4f}: gain {e['gain']:+.4f} "
            f"[{e['lo']:+.4f}, {e['hi']:+.4f}] ({e.get('level', 0.95):.0%}, {e['n']} samples)")


def run_evaluate(args: argparse.Namespace) -> int:
    from ftedge.runtime.tasks.classify.evaluate import evaluate

    result = evaluate(args.target, args.data, providers=args.providers)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['kind']} {result['model']} on {result['samples']} samples ({len(result['skipped'])} skipped)")
    if result.get("tuning"):
        t = result["tuning"]
        c, e = t["chosen"], t["estimate"]
        print(f"tuned by --auto: lr {c['lr']:.3g}, weight decay {c['weight_decay']:.3g}, {c['epochs']} epoch(s), "
              f"class weight {c['class_weight']} ({t['trials']} trials); cross-validated score {e['tuned']:.4f} "
              f"(untuned {e['untuned']:.4f}, gain {e['gain']:+.4f} [{e['lo']:+.4f}, {e['hi']:+.4f}])")
    if "accuracy" in result:
        print(f"accuracy {result['accuracy']:.4f}   macro-F1 {result['macro_f1']:.4f}")
        for label, c in (result.get("per_class") or {}).items():
            print(f"  {label:16s} support {c['support']:5d}  correct {c['correct']:5d}  predicted {c['predicted']:5d}")
        if "confusion_matrix" in result:
            print("confusion matrix (rows: truth, columns: prediction)")
            for row in result["confusion_matrix"]:
                print("  " + " ".join(f"{v:5d}" for v in row))
        if result.get("top_confusions"):
            print(f"most frequent confusions (of {len(result['per_class'])} classes seen)")
            for c in result["top_confusions"]:
                print(f"  {c['truth']:16s} -> {c['predicted']:16s} {c['count']:5d}")
    else:
        print(f"MAE {result['mae']:.4f}   RMSE {result['rmse']:.4f}")
    return 0
