"""Detection personalization, "a shop's three products": ftedge (device venv) vs a PyTorch reference fine-tune.

Reproduce (repo root, host venv; the device venv must hold the current ftedge, e.g. after
`.venv-device/bin/pip install -q --no-deps --force-reinstall .`):

    .venv/bin/python -m bench.detection_personalization --wait-idle 300 --json           # 50 train / 200 held-out,
                                                                                         # 60 epochs (~2.5 min)
    .venv/bin/python -m bench.detection_personalization --quick --wait-idle 300 --json   # smoke: 12 / 20, 3 epochs

On a 2-core machine other work ruins PyTorch's timings most (its OpenMP threads wait on a busy core: a shared
run measured the reference 5x slower and eager inference 40x slower), hence --wait-idle and other_cpu_s.

Data (examples/detect/make_shop.py into --work): SYNTHETIC scenes made of REAL pixels: real background photos
(scikit-image / scikit-learn samples) with real Fashion-MNIST product photos pasted on; boxes from the paste masks
(nobody drew them). --train scenes (the data.yaml train split) from Fashion-MNIST train, --heldout scenes (its
val split) from t10k: other physical items. Products: sneaker, bag, ankle_boot; other clothes are unlabelled
distractors.

Model: MobileNetV2 (ImageNet, frozen; `ftedge export ftedge.export.detect_sources:mobilenet_v2 --task detect`)
with ftedge's anchor-free head (strides 16 + 32, 320x320 letterboxed input). The bundle is exported once on the
host (export_s, not part of the device job) and reused while its manifest schema and labels match.

Contenders, same data, head initialisation, loss, targets, split, order, flips, schedule and best-epoch rule:
  ftedge     `ftedge train BUNDLE --data DATA --no-cache --json` in the torch-free device venv, as its own process:
             startup, loading, backbone feature maps of every training and validation image (--no-cache: paid in
             full), the epochs (cached maps of the image or of its mirror image, AdamW step graph, warm-up 5 % + cosine, validation mAP after
             each epoch, checkpoints), model.onnx of the best epoch. Validation: ftedge's default 20 % split of the
             training images (no --eval-data: the held-out images are never used for selection).
  reference  bench/detection_reference.py (`-m bench.detection_reference`) in the host venv as its own process: import torch, MobileNetV2 weights,
             the same data through ftedge's loaders, the same head (DetectionHead from the bundle's
             init.safetensors), detection_loss, torch.optim.AdamW, flips of the INPUT image with the frozen
             backbone run every step (no feature cache), per-epoch validation mAP on the same split, best epoch
             written as safetensors. Its module docstring lists every difference from ftedge.
  untuned    the bundle's fresh head (`ftedge evaluate BUNDLE`), ~0 by construction (focal prior 0.01).

Figures:
  heldout map50 / map50_95   COCO mAP (runtime/detect_metrics.coco_map, pycocotools-exact) on the held-out images,
                             boxes in image pixels. ftedge: `ftedge evaluate RUN --data DATA` (model.onnx). reference:
                             its parameters baked into the SAME graph (PortableEngine checkpoint → write_personalized
                             → model.onnx; `ftedge evaluate`), so both are scored by one decoder + NMS; alongside,
                             `torch_map50*`: its own PyTorch decode + NMS (detection_reference.py evaluate), to show
                             they agree.
  val_map50                  validation mAP@0.5 of the best epoch on the 20 % split (model-input pixels).
  whole_s                    wall time of the whole process (bench/proc_launcher.py: fork to exit, imports included).
  job_s                      ftedge: result.json duration_s (features + epochs + model.onnx) ; reference: load_s +
                             train_s (its data letterboxing + head init + epochs with validation).
  other_cpu_s                CPU seconds other processes used while the job ran (/proc/stat minus its own):
                             the machine is shared; with --wait-idle S each timed phase first waits for quiet CPUs.
  peak_rss_mb                ru_maxrss of the whole process via os.wait4 (proc_launcher), MiB.
  images/s                   inference at 320x320, batch 1, 2 threads, warm-up then --infer-runs timed runs cycling
                             over the first held-out images (letterboxed beforehand): ftedge model.onnx with
                             onnxruntime (intra_op_num_threads 2, device venv) vs PyTorch eager (set_num_threads 2,
                             inference_mode: backbone + DetectionHead + decode + greedy per-class NMS in torch).
                             `with_files`: ftedge's Detector.detect from image files (decode + letterbox included).

Progress goes to stderr, the table to stdout, with --json one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import DEVICE_PY, ROOT, cpu_times, fmt, md_table, progress, rounded, run_measured

LABELS = "sneaker,bag,ankle_boot"
DATA_NOTE = "SYNTHETIC shop scenes (examples/detect/make_shop.py: real Fashion-MNIST products on real photos)"

INFER_SCRIPT = r"""
import json, sys, time
from ftedge.runtime.tasks.detect.letterbox import letterbox_spec, load_letterboxed
from ftedge.runtime.tasks.detect.trainer import OUTPUTS
from ftedge.runtime.tasks.detect.detector import Detector
from ftedge.runtime.engines.ort_backend import InferenceModel
run, paths_file, runs, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
paths = json.load(open(paths_file))
spec = letterbox_spec(json.load(open(run + "/model.json"))["preprocessing"])
xs = [load_letterboxed(p, spec)[0][None] for p in paths]
model = InferenceModel(run + "/model.onnx", None, threads)
for x in xs[:5]:
    model.run({"image": x}, OUTPUTS)                                   # warm-up, not timed
t = time.perf_counter()
for r in range(runs):
    model.run({"image": xs[r % len(xs)]}, OUTPUTS)
s = time.perf_counter() - t
det = Detector(run, None, threads)
det.detect(paths[:5], batch=1)                                         # warm-up, not timed
done, t = 0, time.perf_counter()
while done < runs:
    part = paths[:min(len(paths), runs - done)]
    det.detect(part, batch=1)
    done += len(part)
s2 = time.perf_counter() - t
print(json.dumps({"images_per_s": runs / s, "seconds": s, "runs": runs, "distinct_images": len(xs),
                  "with_files": {"images_per_s": done / s2, "seconds": s2, "runs": done}, "threads": threads,
                  "batch": 1}))
"""


say = progress("[detect-bench] ")


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Share of all CPUs busy over ``seconds`` (None off Linux): other work skews every timing here."""
    b0, t0 = cpu_times()
    time.sleep(seconds)
    b1, t1 = cpu_times()
    return (b1 - b0) / (t1 - t0) if t1 > t0 else None


def measured(cmd: list[str], cwd: str | Path) -> dict[str, Any]:
    """run_measured + ``other_cpu_s``: CPU seconds other processes took while it ran (contention check)."""
    before = cpu_times()[0]
    rec = run_measured(cmd, cwd=cwd)
    rec["other_cpu_s"] = max(0.0, cpu_times()[0] - before - rec["cpu_s"])
    return rec


def quiet_machine(phase: str, wait_s: float, log: dict[str, Any]) -> None:
    """Wait up to ``wait_s`` for the CPUs to fall under 15 % busy; record what they were before ``phase``."""
    deadline = time.monotonic() + wait_s
    busy = cpu_busy()
    while busy is not None and busy > 0.15 and time.monotonic() < deadline:
        say(f"CPUs {busy:.0%} busy with other work before {phase}: waiting (--wait-idle)")
        time.sleep(10)
        busy = cpu_busy()
    log[phase] = None if busy is None else round(busy, 3)
    if busy is not None and busy > 0.15:
        say(f"WARNING: CPUs {busy:.0%} busy with other work before {phase}: its timing is skewed")


def make_data(work: Path, args: argparse.Namespace) -> Path:
    """examples/detect/make_shop.py into work/data-T-H-sS (deterministic; rewritten every run, ~2 s)."""
    data = work / f"data-{args.items}-{args.train}-{args.heldout}-s{args.seed}"
    subprocess.run([sys.executable, str(ROOT / "examples" / "detect" / "make_shop.py"), str(data), "--train",
                    str(args.train), "--heldout", str(args.heldout), "--seed", str(args.seed), "--format", "yolo",
                    "--items", args.items],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return data


EXPORT_LR = 2e-3  # the bundle's learning rate, as the README's example exports it


def ensure_bundle(bundle: Path) -> float | None:
    """Export the detection bundle with the host ftedge unless a current one is there; its seconds (None: reused)."""
    from ftedge.bundle.manifest import SCHEMA_VERSION

    mf = bundle / "manifest.json"
    if mf.is_file():
        m = json.loads(mf.read_text())
        if (m.get("schema_version") == SCHEMA_VERSION and m.get("task") == "detection"
                and m.get("labels") == LABELS.split(",") and m.get("optimizer", {}).get("lr") == EXPORT_LR):
            say(f"reusing bundle {bundle}")
            return None
        say(f"{bundle} is stale (schema {m.get('schema_version')}, task {m.get('task')}): exporting again")
    say(f"exporting MobileNetV2 + detection head ({LABELS}) → {bundle}")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ftedge", "export", "ftedge.export.detect_sources:mobilenet_v2", "-o",
                    str(bundle), "--task", "detect", "--labels", LABELS, "--lr", str(EXPORT_LR), "--force", "--quiet"],
                   check=True, cwd=ROOT)
    return time.perf_counter() - t


def check_device_venv(py: str) -> str:
    if not Path(py).exists():
        raise SystemExit(f"device python {py} does not exist (--device-python or FTEDGE_DEVICE_PYTHON)")
    probe = subprocess.run([py, "-c", "import importlib.metadata as m, ftedge.runtime.tasks.detect.trainer, "
                            "ftedge.runtime.tasks.detect.detector; print(m.version('ftedge'))"], capture_output=True, text=True,
                           cwd="/")
    if probe.returncode != 0:
        raise SystemExit(f"the device venv's ftedge ({py}) has no detection trainer: it is stale. Refresh it: "
                         f"{py} -m pip install -q --no-deps --force-reinstall {ROOT}\n{probe.stderr.strip()[-800:]}")
    return probe.stdout.strip()


def json_of(cmd: list[str], cwd: str | Path = "/") -> dict:
    """Run ``cmd`` (not timed); its last stdout line as JSON."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} … failed: {proc.stderr.strip()[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bake_reference(bundle_dir: Path, params: Path, out_dir: Path) -> None:
    """The reference's head parameters → out_dir/model.onnx through ftedge's own path (a portable checkpoint, then
    write_personalized, as the trainer writes its best epoch) + model.json, so `ftedge evaluate` scores it."""
    from safetensors.numpy import load_file, save_file

    from ftedge.bundle.loader import load_bundle
    from ftedge.runtime.tasks.detect.trainer import OUTPUTS
    from ftedge.runtime.engines.portable import PortableEngine
    from ftedge.runtime.training.personalized import write_personalized

    bundle = load_bundle(bundle_dir)
    values = load_file(str(params))
    missing = set(bundle.manifest["engines"]["portable"]["params"]) - set(values)
    if missing:
        raise SystemExit(f"{params} lacks head parameters {sorted(missing)[:4]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "reference.ckpt.safetensors"
    save_file({f"p:{k}": v for k, v in values.items()}, str(ckpt), metadata={"engine": "portable", "steps": "0"})
    write_personalized(bundle, PortableEngine(bundle, ckpt), out_dir / "model.onnx", outputs=OUTPUTS)
    m = bundle.manifest
    (out_dir / "model.json").write_text(json.dumps({
        **{k: m.get(k) for k in ("name", "inputs", "output", "labels", "loss", "task", "preprocessing", "detection")},
        "outputs": OUTPUTS, "kind": "detector"}))


def ratio(a: Any, b: Any) -> float | None:
    return a / b if a is not None and b else None


def diff(a: Any, b: Any) -> float | None:
    return None if a is None or b is None else a - b


def run(args: argparse.Namespace) -> dict:
    if args.quick:
        args.train, args.heldout = min(args.train, 12), min(args.heldout, 20)
        args.epochs = args.epochs or 3
    args.epochs = args.epochs or 60
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    device_py = str(args.device_python)
    version = check_device_venv(device_py)
    say(f"device venv {device_py}: ftedge {version}; {os.cpu_count()} CPUs")
    data = make_data(work, args)
    say(f"data ({DATA_NOTE}): {args.train} train, {args.heldout} held-out scenes → {data}")
    bundle = Path(args.bundle or work / "bundle").resolve()
    export_s = ensure_bundle(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    lr = args.lr if args.lr is not None else float(manifest["optimizer"]["lr"])

    run_dir = work / "ftedge-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [device_py, "-m", "ftedge", "train", str(bundle), "--data", str(data), "-o", str(run_dir), "--epochs",
           str(args.epochs), "--batch-size", str(args.batch_size), "--seed", str(args.seed), "--no-cache", "--json",
           "--quiet"] + (["--lr", str(args.lr)] if args.lr is not None else [])
    busy: dict[str, Any] = {}
    quiet_machine("ftedge_train", args.wait_idle, busy)
    say("ftedge train (device venv): " + " ".join(cmd))
    ft = measured(cmd, cwd="/")
    res = ft["result"] or json.loads((run_dir / "result.json").read_text())
    say(f"ftedge: {ft['wall_s']:.1f} s whole, peak RSS {ft['rss_mib']:.0f} MiB, best epoch {res['best_epoch']}")

    ref_dir = work / "reference"
    shutil.rmtree(ref_dir, ignore_errors=True)
    params = ref_dir / "params.safetensors"
    rcmd = [sys.executable, "-m", "bench.detection_reference", "train", "--bundle", str(bundle), "--data",
            str(data), "--out", str(params), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
            "--lr", str(lr), "--weight-decay", str(res["config"]["weight_decay"]), "--seed", str(args.seed),
            "--threads", str(args.threads), "--json"]
    quiet_machine("reference_train", args.wait_idle, busy)
    say("reference (host venv, PyTorch): " + " ".join(rcmd))
    ref = measured(rcmd, cwd=ROOT)
    rr = ref["result"]
    say(f"reference: {ref['wall_s']:.1f} s whole, peak RSS {ref['rss_mib']:.0f} MiB, best epoch {rr['best_epoch']}")

    say("held-out evaluation (not timed): ftedge run, reference through the same graph, untuned bundle")
    evaluate = [device_py, "-m", "ftedge", "evaluate"]
    ft_eval = json_of([*evaluate, str(run_dir), "--data", str(data), "--json"])
    bake_reference(bundle, params, ref_dir / "run")
    ref_eval = json_of([*evaluate, str(ref_dir / "run"), "--data", str(data), "--json"])
    base_eval = json_of([*evaluate, str(bundle), "--data", str(data), "--json"])
    quiet_machine("reference_eager", args.wait_idle, busy)
    say("reference: PyTorch-side held-out mAP and eager images/s")
    torch_eval = json_of([sys.executable, "-m", "bench.detection_reference", "evaluate", "--bundle",
                          str(bundle), "--params", str(params), "--data", str(data), "--threads", str(args.threads),
                          "--bench-runs", str(args.infer_runs), "--bench-images", str(args.infer_images), "--json"],
                         ROOT)
    quiet_machine("ftedge_inference", args.wait_idle, busy)
    say("ftedge model.onnx images/s (device venv)")
    paths_file = work / "infer_images.json"
    paths_file.write_text(json.dumps([str(p) for p in sorted((data / "images" / "val").glob("*.jpg"))
                                      [:args.infer_images]]))
    inf = run_measured([device_py, "-c", INFER_SCRIPT, str(run_dir), str(paths_file), str(args.infer_runs),
                        str(args.threads)], cwd="/")["result"]

    t = res.get("timings") or {}
    ftedge = {
        "heldout_map50": ft_eval["map50"], "heldout_map50_95": ft_eval["map50_95"],
        "heldout_map75": ft_eval["map75"],
        "heldout_per_class": {k: v["ap50"] for k, v in ft_eval["per_class"].items()},
        "val_map50": res["metrics"].get("map50"), "val_baseline_map50": res["baseline"].get("map50"),
        "best_epoch": res["best_epoch"], "epochs_run": res["epochs_run"], "promoted": res["promoted"],
        "whole_s": ft["wall_s"], "job_s": res["duration_s"], "features_s": t.get("features_s"),
        "epochs_s": res.get("train_s"), "model_export_s": t.get("export_s"), "peak_rss_mb": ft["rss_mib"],
        "result_peak_rss_mb": res.get("peak_rss_mb"), "cpu_s": ft["cpu_s"], "other_cpu_s": ft["other_cpu_s"],
        "samples": res["samples"], "images_per_s": inf["images_per_s"],
        "images_per_s_with_files": inf["with_files"]["images_per_s"],
        "inference": inf, "ftedge_version": version, "command": " ".join(cmd),
    }
    ftedge["val_curve"] = [json.loads(ln).get("val_map50") for ln in (run_dir / "metrics.jsonl").read_text()
                           .splitlines() if ln]
    reference = {
        "heldout_map50": ref_eval["map50"], "heldout_map50_95": ref_eval["map50_95"],
        "heldout_map75": ref_eval["map75"],
        "heldout_per_class": {k: v["ap50"] for k, v in ref_eval["per_class"].items()},
        "torch_map50": torch_eval["map50"], "torch_map50_95": torch_eval["map50_95"],
        "val_map50": rr["best_val_map50"], "val_baseline_map50": rr["baseline_val_map50"],
        "best_epoch": rr["best_epoch"], "epochs_run": rr["epochs"], "whole_s": ref["wall_s"],
        "job_s": rr["load_s"] + rr["train_s"], "load_s": rr["load_s"], "train_s": rr["train_s"], "val_s": rr["val_s"],
        "peak_rss_mb": ref["rss_mib"], "result_peak_rss_mb": rr["peak_rss_mb"], "cpu_s": ref["cpu_s"],
        "other_cpu_s": ref["other_cpu_s"], "images_per_s": torch_eval["eager"]["images_per_s"],
        "eager": torch_eval["eager"],
        "val_curve": rr["val_map50"], "train_loss": rr["train_loss"],
        "box_mapping_max_diff_px": rr["box_mapping_max_diff_px"], "torch": rr["torch"], "command": " ".join(rcmd),
    }
    untuned = {"heldout_map50": base_eval["map50"], "heldout_map50_95": base_eval["map50_95"],
               "val_map50": res["baseline"].get("map50")}
    ratios = {
        "whole_time_reference_over_ftedge": ratio(reference["whole_s"], ftedge["whole_s"]),
        "job_time_reference_over_ftedge": ratio(reference["job_s"], ftedge["job_s"]),
        "peak_rss_ftedge_over_reference": ratio(ftedge["peak_rss_mb"], reference["peak_rss_mb"]),
        "inference_ftedge_over_eager": ratio(ftedge["images_per_s"], reference["images_per_s"]),
        "heldout_map50_ftedge_minus_reference": diff(ftedge["heldout_map50"], reference["heldout_map50"]),
        "heldout_map50_95_ftedge_minus_reference": diff(ftedge["heldout_map50_95"], reference["heldout_map50_95"]),
        "reference_graph_minus_torch_map50": diff(reference["heldout_map50"], reference["torch_map50"]),
    }
    w, r_ = ratios["whole_time_reference_over_ftedge"], ratios["peak_rss_ftedge_over_reference"]
    targets = {
        "job_5x_faster_than_reference": {"value": w, "met": w is not None and w >= 5},
        "peak_rss_half_of_reference": {"value": r_, "met": r_ is not None and r_ <= 0.5},
        "tuned_above_untuned": {"value": ftedge["heldout_map50"], "untuned": untuned["heldout_map50"],
                                "met": (ftedge["heldout_map50"] or 0) > (untuned["heldout_map50"] or 0)},
    }
    settings = {"model": "MobileNetV2 (ImageNet, frozen) + ftedge anchor-free head, 320x320", "labels": LABELS,
                "items": args.items, "train_images": args.train, "heldout_images": args.heldout, "epochs": args.epochs,
                "batch_size": args.batch_size, "lr": lr, "weight_decay": res["config"]["weight_decay"],
                "seed": args.seed, "val_fraction": 0.2, "threads": args.threads, "infer_runs": args.infer_runs,
                "quick": args.quick, "bundle": str(bundle), "export_s": export_s, "data": str(data),
                "cpus": os.cpu_count(), "cpu_busy_before": busy, "wait_idle_s": args.wait_idle}
    return {"benchmark": "detection_personalization", "data": DATA_NOTE, "settings": settings, "ftedge": ftedge,
            "reference": reference, "untuned": untuned, "ratios": ratios, "targets": targets}


def report(r: dict) -> str:
    s, f, ref, u, ra = r["settings"], r["ftedge"], r["reference"], r["untuned"], r["ratios"]
    lines = [
        f"## Detection personalization — {DATA_NOTE.replace('SYNTHETIC', '**SYNTHETIC**')}",
        "",
        f"{s['model']}; {s['train_images']} train images ({f['samples']['train']} train / {f['samples']['val']} "
        f"validation), {s['heldout_images']} held-out; {s['epochs']} epochs, batch {s['batch_size']}, lr {s['lr']}, "
        f"weight decay {s['weight_decay']}, seed {s['seed']}; {s['cpus']} CPUs, {s['threads']} threads"
        f"{' (--quick)' if s['quick'] else ''}."
        + (f" Bundle export (host, not in the job): {s['export_s']:.1f} s." if s["export_s"] else ""),
        "",
        *md_table(("model", "held-out mAP@0.5", "mAP@0.5:0.95", "val mAP@0.5", "best epoch", "whole_s", "job_s",
                   "peak_rss_mb", "images/s"), [
            ("untuned head", fmt(u["heldout_map50"]), fmt(u["heldout_map50_95"]), fmt(u["val_map50"]), "", "", "", "",
             ""),
            ("ftedge", fmt(f["heldout_map50"]), fmt(f["heldout_map50_95"]), fmt(f["val_map50"]), f["best_epoch"],
             f"{f['whole_s']:.1f}", f"{f['job_s']:.1f}", f"{f['peak_rss_mb']:.0f}",
             f"{fmt(f['images_per_s'], '.1f')} ({fmt(f['images_per_s_with_files'], '.1f')} from files)"),
            ("reference (PyTorch)", fmt(ref["heldout_map50"]), fmt(ref["heldout_map50_95"]), fmt(ref["val_map50"]),
             ref["best_epoch"], f"{ref['whole_s']:.1f}", f"{ref['job_s']:.1f}", f"{ref['peak_rss_mb']:.0f}",
             f"{fmt(ref['images_per_s'], '.1f')} (eager)"),
            ("reference, PyTorch decode + NMS", fmt(ref["torch_map50"]), fmt(ref["torch_map50_95"]), "", "", "", "",
             "", ""),
        ]),
        "",
        f"Ratios: whole job reference/ftedge {fmt(ra['whole_time_reference_over_ftedge'], '.2f')}x (job_s "
        f"{fmt(ra['job_time_reference_over_ftedge'], '.2f')}x); peak RSS ftedge/reference "
        f"{fmt(ra['peak_rss_ftedge_over_reference'], '.2f')}; inference ftedge/eager "
        f"{fmt(ra['inference_ftedge_over_eager'], '.2f')}x; held-out mAP@0.5 ftedge − reference "
        f"{fmt(ra['heldout_map50_ftedge_minus_reference'], '+.3f')}.",
        "",
        f"ftedge job: features {fmt(f['features_s'], '.1f')} s (backbone on every image, --no-cache), epochs "
        f"{fmt(f['epochs_s'], '.1f')} s, model.onnx {fmt(f['model_export_s'], '.1f')} s. Reference job: load "
        f"{ref['load_s']:.1f} s (data letterboxing, backbone and head init), epochs {ref['train_s']:.1f} s "
        f"(validation {ref['val_s']:.1f} s of it). Held-out mAP of both through model.onnx (`ftedge evaluate`); the "
        f"reference's PyTorch decode + NMS differs from its graph score by "
        f"{fmt(ra['reference_graph_minus_torch_map50'], '+.4f')}.",
        "",
        f"Contention: CPUs busy with other work just before each timed phase {s['cpu_busy_before']}; other "
        f"processes' CPU seconds during the jobs: ftedge {f['other_cpu_s']:.1f} s, reference "
        f"{ref['other_cpu_s']:.1f} s.",
        "",
        "Targets (reported, not asserted):",
    ]
    for name, t in r["targets"].items():
        lines.append(f"- {name}: {fmt(t['value'], '.3f')} → {'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.detection_personalization", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "bench" / ".cache" / "detect-work"),
                    help="work folder: data, bundle, runs (default bench/.cache/detect-work)")
    ap.add_argument("--bundle", help="detection bundle; exported there with the host ftedge when missing or stale "
                    "(default WORK/bundle)")
    ap.add_argument("--device-python", default=os.environ.get("FTEDGE_DEVICE_PYTHON", str(DEVICE_PY)),
                    help="python of the torch-free device venv (default $FTEDGE_DEVICE_PYTHON or .venv-device)")
    ap.add_argument("--train", type=int, default=50, help="training scenes (default 50; 20 %% validate)")
    ap.add_argument("--heldout", type=int, default=200, help="held-out scenes (default 200)")
    ap.add_argument("--seed", type=int, default=0, help="data, split, order and flip seed (default 0)")
    ap.add_argument("--items", choices=["shop", "category"], default="shop",
                    help="make_shop.py --items: the shop's own three items (default) or any item of the three "
                    "classes (class-level detection, harder)")
    ap.add_argument("--epochs", type=int, help="default 60, ftedge's (3 with --quick)")
    ap.add_argument("--batch-size", type=int, default=8, help="default 8, ftedge's")
    ap.add_argument("--lr", type=float, help="default: the bundle's (ftedge's default)")
    ap.add_argument("--threads", type=int, default=2, help="reference training and both inference timings")
    ap.add_argument("--infer-runs", type=int, default=100, help="timed batch-1 inference runs (default 100)")
    ap.add_argument("--infer-images", type=int, default=100, help="distinct held-out images they cycle over")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each timed phase wait up to S seconds for the CPUs to be under 15 %% busy with "
                    "other work (default 0: measure at once; the busy share is recorded either way)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 12 train / 20 held-out images, 3 epochs")
    ap.add_argument("--json", action="store_true", help="end the output with one JSON line of the figures")
    args = ap.parse_args(argv)
    r = run(args)
    print(report(r))
    if args.json:
        print(json.dumps(rounded(r)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
