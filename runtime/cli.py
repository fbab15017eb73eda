"""Device-side commands: `ftedge inspect`, `train`, `evaluate`, `keygen`, `pack`. Torch-free."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ftedge.bundle.loader import load_bundle
from ftedge.runtime import detect_cli, lm_cli
from ftedge.runtime.inspect import summary
from ftedge.runtime.lm_model import bundle_task


def _default_cache() -> Path:
    base = os.environ.get("FTEDGE_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "ftedge")
    return Path(base).expanduser() / "embeddings"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show what a bundle holds and verify its hashes",
        description="Verify a bundle (schema version, sha256 and size of every file) and show its inputs, labels, "
        "which parameters train, file sizes and hashes, and the recorded parity against PyTorch.",
        epilog="example:\n  ftedge inspect bundles/kws\n  ftedge inspect bundles/kws --json | jq .parity",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory (written by `ftedge export`)")
    p.add_argument("--json", action="store_true", help="print the manifest plus {'verified': true} as JSON")
    p.add_argument("--trusted-key", dest="trusted_keys", metavar="PUB.pem", action="append", type=Path,
                   help="require a valid manifest signature by this Ed25519 public key (repeatable)")
    p.set_defaults(handler=run_inspect)

    k = sub.add_parser(
        "keygen",
        help="create an Ed25519 key pair for signing bundles",
        description="Write PREFIX.key.pem (Ed25519 private key, unencrypted PKCS#8, mode 0600: keep it on the "
        "build host) and PREFIX.pub.pem (the public key devices trust). Existing files are never overwritten.",
        epilog="example:\n  ftedge keygen -o keys/release\n  ftedge export ... --sign-key keys/release.key.pem",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    k.add_argument("-o", dest="prefix", metavar="KEY_PREFIX", required=True, type=Path, help="path prefix of the keys")
    k.set_defaults(handler=run_keygen)

    pk = sub.add_parser(
        "pack",
        help="archive a verified bundle as a deterministic .tar.gz for deployment",
        description="Verify BUNDLE and write it as ARCHIVE (.tar.gz, one top-level folder, fixed owners, modes "
        "and timestamps: the same bundle always gives the same bytes). Prints `SHA256  ARCHIVE`; devices "
        "deploy it by URL and that sha256.",
        epilog="example:\n  ftedge pack bundles/kws -o dist/kws.tar.gz",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pk.add_argument("bundle", metavar="BUNDLE", help="bundle directory (written by `ftedge export`)")
    pk.add_argument("-o", dest="archive", metavar="ARCHIVE.tar.gz", required=True, type=Path, help="archive to write")
    pk.set_defaults(handler=run_pack)

    t = sub.add_parser(
        "train",
        help="fine-tune a bundle on local data (torch-free)",
        description="Fine-tune BUNDLE on local data and write RUN_DIR: metrics.jsonl, result.json, checkpoint/ "
        "(resumable) and model.onnx (backbone + tuned head, plain onnxruntime). The untuned model is evaluated "
        "on the same validation split; result.json says whether the tuned one is promoted.",
        epilog="""examples:
  ftedge train bundles/kws --data /data/my_voice -o runs/2026-11-22 --epochs 20
  ftedge train bundles/kws --data /data/my_voice -o runs/2026-11-22 --epochs 20 --resume   # after a crash
  ftedge train bundles/kws --data samples.npz -o runs/r2 --patience 3 --max-seconds 120 --json
  ftedge train bundles/kws --data /data/my_voice -o runs/r3 --auto --max-seconds 60   # settings by cross-validation

data: a folder per label, PATH/<label>/<sample>: *.npy (any bundle), *.wav (audio bundles),
*.png/*.jpg/*.jpeg (image bundles), *.txt (text bundles); or a .npz with one array per input name
plus 'labels'; or a .csv with text,label columns (text bundles).
Unreadable or mismatched samples are skipped and listed in result.json.""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("bundle", metavar="BUNDLE")
    t.add_argument("--data", required=True, metavar="PATH", help="folder per label, a .npz, or a .csv (text); "
                   "detectors: a YOLO data.yaml / dataset folder or a COCO .json")
    t.add_argument("-o", dest="run_dir", required=True, metavar="RUN_DIR", type=Path, help="run directory to write")
    t.add_argument("--epochs", type=int, default=None, help="epochs (default 20; causal LMs 10)")
    t.add_argument("--batch-size", type=int, default=None, help="batch size (default 32; causal LMs 4)")
    t.add_argument("--embed-batch-size", type=int, metavar="N",
                   help="samples per backbone pass (default max(batch size, 64)); lower it to cut peak memory "
                        "with large inputs, e.g. 224×224 images")
    t.add_argument("--lr", type=float, help="peak learning rate (default: the bundle's)")
    t.add_argument("--schedule", choices=["cosine", "linear", "constant"], default="cosine",
                   help="decay after a 10%% linear warm-up (default cosine)")
    t.add_argument("--val-fraction", type=float, default=None,
                   help="stratified validation share (default 0.2; with --auto 0: the search cross-validates "
                        "on every sample, and a share given here is held out from it and only reported)")
    t.add_argument("--weight-decay", type=float, default=None, help="decoupled weight decay (default: the bundle's)")
    t.add_argument("--class-weight", choices=["none", "balanced"], default="none",
                   help="balanced: weigh each class equally in the loss (imbalanced local data)")
    t.add_argument("--auto", action="store_true",
                   help="choose learning rate, weight decay and epochs (and class weighting on imbalanced data) by "
                        "k-fold cross-validation on the embedding cache within --max-seconds (default 120 s), then "
                        "fit once on all samples; promoted only if the cross-validated gain's lower bound clears "
                        "--min-gain")
    t.add_argument("--folds", type=int, default=5, help="folds of the --auto search (default 5)")
    t.add_argument("--max-trials", type=int, default=100, help="trials of the --auto search at most (default 100)")
    t.add_argument("--patience", type=int, default=0, help="stop after N epochs without improvement; 0: off")
    t.add_argument("--seed", type=int, default=0, help="seed for split, shuffling and dropout (default 0)")
    t.add_argument("--max-seconds", type=float, help="time budget; stops cleanly at an epoch boundary")
    t.add_argument("--mode", choices=["auto", "cached", "full"], default="auto",
                   help="cached: backbone once per sample, head trains on the cache; full: backbone every step "
                   "(or the merged graph of a --no-split bundle); auto: cached when the bundle is split")
    t.add_argument("--providers", metavar="P1,P2", help="execution providers for the backbone, e.g. CUDA,CPU "
                   "(unavailable ones fall back to CPU with a warning)")
    t.add_argument("--engine", choices=["auto", "portable", "ort-training"], default="auto",
                   help="training engine: portable (plain onnxruntime, any platform and execution provider), "
                   "ort-training (onnxruntime-training 1.19.2, x86_64 + CPython <= 3.12 only); auto (default): "
                   "portable when the bundle carries it, else ort-training")
    t.add_argument("--backbone", choices=["fp32", "int8"], default="fp32", help="backbone variant (int8 needs "
                   "export --quantize-backbone int8)")
    t.add_argument("--min-gain", type=float, default=0.0, help="promote only if better than the untuned model "
                   "by more than this (accuracy, or MAE for regression; default 0)")
    t.add_argument("--cache-dir", type=Path, default=None,
                   help="embedding cache (default $FTEDGE_CACHE_DIR or ~/.cache/ftedge/embeddings)")
    t.add_argument("--no-cache", action="store_true", help="do not read or write the on-disk embedding cache")
    t.add_argument("--resume", action="store_true", help="continue RUN_DIR from its last complete epoch")
    t.add_argument("--json", action="store_true", help="print result.json to stdout")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    lm_cli.add_train_arguments(t)
    detect_cli.add_train_arguments(t)
    t.set_defaults(handler=run_train)

    e = sub.add_parser(
        "evaluate",
        help="accuracy, macro-F1 and confusion matrix of a run's model.onnx or a bundle",
        description="Evaluate a personalized model (RUN_DIR with model.onnx) or an untuned BUNDLE on local data.",
        epilog="example:\n  ftedge evaluate runs/2026-11-22 --data /data/my_voice_test --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("target", metavar="MODEL_OR_BUNDLE", help="run directory or bundle directory")
    e.add_argument("--data", required=True, metavar="PATH")
    e.add_argument("--providers", metavar="P1,P2", help="execution providers (default CPU)")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.add_argument("--general", metavar="FILE.jsonl", help="causal LMs: general prompts for retention vs the untuned bundle")
    e.add_argument("--max-new-tokens", type=int, default=48, help="causal LMs: answer budget (default 48)")
    e.add_argument("--no-router", action="store_true",
                   help="causal LMs: apply a routed adapter to every prompt (to judge the adapter alone)")
    e.add_argument("--split", help="detectors: the split of a data.yaml / COCO folder to evaluate on (default val)")
    e.set_defaults(handler=run_evaluate)
    lm_cli.register(sub)
    detect_cli.register(sub)


def run_inspect(args: argparse.Namespace) -> int:
    # raises BundleError (exit 1) if tampered, or unsigned/untrusted when --trusted-key is given
    bundle = load_bundle(args.bundle, verify=True, trusted_keys=args.trusted_keys)
    if args.json:
        extra = {"signed_by": bundle.signed_by} if bundle.signed_by else {}
        print(json.dumps({**bundle.manifest, "verified": True, **extra}, indent=2))
    else:
        print(summary(bundle.path, bundle.manifest, verified=True, signed_by=bundle.signed_by))
    return 0


def run_keygen(args: argparse.Namespace) -> int:
    from ftedge.bundle.signing import generate_keypair, key_id, load_private_key

    private, public = generate_keypair(args.prefix)
    print(f"key {key_id(load_private_key(private).public_key())}: private {private} (keep secret), public {public}")
    return 0


def run_pack(args: argparse.Namespace) -> int:
    from ftedge.bundle.pack import pack_bundle

    print(f"{pack_bundle(args.bundle, args.archive)}  {args.archive}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from ftedge.runtime.trainer import TrainConfig, train

    task = bundle_task(args.bundle)
    if task == "causal-lm":
        return lm_cli.run_train_lm(args)
    if task == "detection":
        return detect_cli.run_train_det(args)
    args.epochs = 20 if args.epochs is None else args.epochs
    args.batch_size = 32 if args.batch_size is None else args.batch_size
    cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction,
        patience=args.patience, seed=args.seed, max_seconds=args.max_seconds, mode=args.mode,
        providers=args.providers.split(",") if args.providers else None, resume=args.resume,
        min_gain=args.min_gain, schedule=args.schedule, backbone=args.backbone,
        embed_batch_size=args.embed_batch_size, engine=args.engine, weight_decay=args.weight_decay,
        class_weight=args.class_weight, auto=args.auto, folds=args.folds, max_trials=args.max_trials,
        cache_dir=None if args.no_cache else (args.cache_dir or _default_cache()),
    )
    result = train(args.bundle, args.data, args.run_dir, cfg, progress=not (args.quiet or args.json))
    if args.json:
        print(json.dumps(result))
    elif not args.quiet:
        m, b = result["metrics"], result["baseline"]
        key = "accuracy" if "accuracy" in b else "mae"
        print(f"{result['status']}: {result['epochs_run']} epoch(s), best {result['best_epoch']} "
              f"({result['stop_reason']}); val {key} {b.get(key, float('nan')):.4f} untuned → "
              f"{m.get(key, float('nan')):.4f} tuned; promoted: {result['promoted']}; "
              f"{result['samples']['total']} samples, {len(result['skipped'])} skipped; {result['duration_s']:.1f} s; "
              f"engine {result['engine']}")
        if result.get("search"):
            print(auto_summary(result))
        if result["skipped"]:
            print(f"skipped {len(result['skipped'])} sample(s); see {args.run_dir / 'result.json'}", file=sys.stderr)
    return 0 if result["status"] == "succeeded" else 1


def auto_summary(result: dict) -> str:
    """Two lines on what ``--auto`` chose and its cross-validated estimate (train and evaluate print them)."""
    search = result["search"]
    c, e = search["chosen"], search["estimate"]
    key = "accuracy" if "accuracy" in e.get("metrics", {}) else "mae"
    return (f"--auto chose lr {c['lr']:.3g}, weight decay {c['weight_decay']:.3g}, {c['epochs']} epoch(s) of a "
            f"{c['horizon']}-epoch schedule, class weight {c['class_weight']} ({len(search['trials'])} trials, "
            f"{search['folds']}-fold, stopped: {search['stopped']})\n"
            f"cross-validated {key} {e['metrics'].get(key, float('nan')):.4f} vs untuned "
            f"{e['baseline_metrics'].get(key, float('nan')):.4f}: gain {e['gain']:+.4f} "
            f"[{e['lo']:+.4f}, {e['hi']:+.4f}] ({e.get('level', 0.95):.0%}, {e['n']} samples)")


def run_evaluate(args: argparse.Namespace) -> int:
    from ftedge.runtime.evaluate import evaluate

    task = bundle_task(args.target)
    if task == "causal-lm":
        return lm_cli.run_evaluate_lm(args)
    if task == "detection":
        return detect_cli.run_evaluate_det(args)
    result = evaluate(args.target, args.data, providers=args.providers.split(",") if args.providers else None)
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
