"""Execution providers per stage (issue 35): the CPU EP vs the OpenVINO EP, fp32 and int8 backbones, side by side in
one run; and the NPU pattern (int8 backbone on the accelerator, fp32 head trained on the CPU EP) scored for accuracy.

    .venv/bin/python -m bench.providers --phases timing,npu --json      # BENCHMARKS.md §2.5 (~7 min on 2 cores)
    .venv/bin/python -m bench.providers --json                          # timings only: 3 bundles x 7 placements
    .venv/bin/python -m bench.providers --models mlp --samples 48 --epochs 1 --modes cached   # smoke size (the test)

Two environments, one ``onnxruntime`` module each: this process (the host venv, torch) exports the bundles and
makes the data; every timed or trained half runs in the OpenVINO venv (onnxruntime-openvino: ``--openvino-python``,
default ``$FTEDGE_OPENVINO_PYTHON`` or ``.venv-openvino``), so the CPU EP and the OpenVINO EP are the same ORT
build. The OpenVINO EP runs on its ``CPU`` device here (x86_64): what it measures is OpenVINO's CPU plugin against
ORT's own CPU kernels on the same cores, not an NPU or GPU.

Backbones: fp32; the export's dynamic int8 (``--quantize-backbone int8-conv``, ``int8`` for the MLP); and a static
QDQ int8 made here (:func:`static_int8`: onnxruntime's ``quantize_static`` of every op it can, the form NPU EPs fuse)
in a copy of the bundle. ``ftedge export --quantize-backbone int8-qdq`` makes a static QDQ backbone too, but of
Conv/MatMul/Gemm only (closer to fp32 on MiniLM); BENCHMARKS.md §2.5's QDQ rows are this bench's every-op form.

Timing phase, per bundle (``--models``; SYNTHETIC inputs of the bundle's shapes, random labels):
- backbone ms per sample: an ``InferenceModel`` of each backbone on each EP, batches of ``--embed-batch``, median of
  ``--repeat`` passes after 2 untimed ones (the first, compiling pass is reported apart as ``open_s``: session
  creation + first run) and the session's placement (nodes left to the CPU EP, or why the graph moved there);
- step ms: ``PortableEngine.train_step`` (the bundle's ``step.onnx``) on each EP, batch ``--batch-size``, head inputs
  from the fp32 backbone, median of ``--steps`` after 3 untimed;
- whole jobs: ``ftedge train --mode cached`` and ``--mode full`` (``--no-cache``: cold) as separate processes, wall
  time and peak RSS (bench/proc_launcher.py), per placement (:data:`PLACEMENTS`), with result.json's per-stage
  ``providers``.
NPU phase: personalization accuracy of the NPU pattern (dynamic and static int8) vs the fp32 CPU path on the accent
benchmark's SYNTHETIC voices (bench/accent_personalization.py's data and recipe) and on REAL Fashion-MNIST photos
(bench/fashion_personalization.py's data and hand-set recipe), each run scored by ``ftedge evaluate`` with the
backbone on the EP it trained with.

Progress goes to stderr, the Markdown report to stdout; with ``--json`` the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._common import HOST_PY, OPENVINO_PY, ROOT, load_module, md_table, omp_env, progress, run_measured

say = progress("[providers] ")
CPU, OV = "CPUExecutionProvider", "OpenVINOExecutionProvider"


@dataclass(frozen=True)
class Model:
    """A bundle to export: the MODEL spec, its export flags, and its int8 variant (``--quantize-backbone``)."""

    spec: str
    args: tuple[str, ...]
    quantize: str
    about: str


KWS = ROOT / "examples" / "kws"
VISION = ROOT / "examples" / "vision"
FASHION_SIZE = 64
MODELS = {
    "kws": Model(f"{KWS / 'model.py'}:build_model", ("--input", "waveform:float32:1,16000", "--head", "classifier",
                 "--labels", "yes,no,up,down,left,right,on,off,stop,go", "--keep-head"), "int8-conv",
                 "KWS DS-CNN (accent benchmark's model; LogMel in the graph), 1 s of 16 kHz audio"),
    "effnet": Model(f"{VISION / 'efficientnet_lite0.py'}:build_model",
                    ("--input", f"image:float32:1,3,{FASHION_SIZE},{FASHION_SIZE}", "--image-size",
                     f"{FASHION_SIZE},{FASHION_SIZE}", "--mean", ",".join([repr(127 / 255)] * 3), "--std",
                     ",".join([repr(128 / 255)] * 3), "--head", "_fc", "--labels",
                     "T-shirt_top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle_boot"), "int8-conv",
                    f"EfficientNet-Lite0 (Fashion-MNIST benchmark's model, REAL ImageNet weights), {FASHION_SIZE}x{FASHION_SIZE}"),
    "mlp": Model(f"{ROOT / 'tests' / 'helpers' / 'zoo.py'}:mlp", ("--input", "x:float32:1,20"), "int8",
                 "small MLP (20-64-32 body, 4-class head; random weights)"),
}


@dataclass(frozen=True)
class Placement:
    """Where each stage runs: ``ftedge train`` flags and a label."""

    name: str
    flags: tuple[str, ...]
    qdq: bool = False               # the bundle copy whose int8 backbone is static QDQ (:func:`static_int8`)
    needs_step_flag: bool = False   # ``--step-providers``: an ftedge that places the step apart from the backbone


_NPU_FLAGS = ("--providers", "OpenVINO", "--step-providers", "CPU", "--backbone", "int8")
PLACEMENTS = (
    Placement("CPU EP, fp32", ("--providers", "CPU")),
    Placement("OpenVINO EP, fp32", ("--providers", "OpenVINO")),
    Placement("CPU EP, int8 backbone (export's dynamic int8)", ("--providers", "CPU", "--backbone", "int8")),
    Placement("OpenVINO EP, int8 backbone (dynamic)", ("--providers", "OpenVINO", "--backbone", "int8")),
    Placement("OpenVINO EP, int8 backbone (static QDQ)", ("--providers", "OpenVINO", "--backbone", "int8"), qdq=True),
    Placement("NPU pattern: dynamic int8 backbone on OpenVINO, step + head on CPU", _NPU_FLAGS, needs_step_flag=True),
    Placement("NPU pattern: static QDQ int8 backbone on OpenVINO, step + head on CPU", _NPU_FLAGS, qdq=True,
              needs_step_flag=True),
)
FP32_CPU, INT8_CPU, NPU_DYNAMIC, NPU_QDQ = PLACEMENTS[0], PLACEMENTS[2], PLACEMENTS[5], PLACEMENTS[6]
VARIANTS = {"fp32": "fp32", "int8": "int8 (export's dynamic)", "qdq": "int8 (static QDQ, bench-made)"}


# == host half: export, data ====================================================================================

def export(name: str, out: Path) -> float:
    """Export MODELS[name] with its int8 backbone (host venv, a separate process); seconds."""
    m = MODELS[name]
    t = time.perf_counter()
    proc = subprocess.run([str(HOST_PY), "-m", "ftedge", "export", m.spec, "-o", str(out), *m.args,
                           "--quantize-backbone", m.quantize, "--quiet", "--force"],
                          capture_output=True, text=True, cwd=ROOT, env=omp_env())
    if proc.returncode:
        raise SystemExit(f"export of {name} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def static_int8(bundle: Path, out: Path, calibration: list[dict], frontend_prefix: str = "/model/frontend/") -> None:
    """A copy of ``bundle`` whose int8 backbone is STATIC QDQ int8 instead of the export's dynamic int8: int8 weights,
    uint8 activations whose ranges are calibrated on ``calibration`` (model-input feeds), QuantizeLinear /
    DequantizeLinear pairs around each Conv / MatMul: the form OpenVINO and NPU EPs (QNN, VSI, ...) fuse into int8
    kernels. Made here with onnxruntime.quantization of every op it can (the export's ``int8-qdq``: Conv/MatMul/Gemm
    only), so BENCHMARKS.md's QDQ figures stay what they measured. An in-graph audio
    frontend stays fp32 (as the export's own int8 keeps it); the manifest's hash and size of the file are updated."""
    import shutil

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ftedge.bundle.hashing import sha256_file

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    rel = manifest["roles"]["backbone_int8"]
    pre = out / "backbone.pre.onnx"
    quant_pre_process(str(out / manifest["roles"]["backbone"]), str(pre), skip_symbolic_shape=True)
    import onnx

    exclude = [n.name for n in onnx.load(str(pre)).graph.node if n.name.startswith(frontend_prefix)]

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calibration)

        def get_next(self) -> dict | None:
            return next(self.it, None)

    quantize_static(str(pre), str(out / rel), Feeds(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
    pre.unlink()
    manifest["files"][rel] = {"sha256": sha256_file(out / rel), "size": (out / rel).stat().st_size}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


def random_calibration(bundle: Path, n: int = 16) -> list[dict]:
    """SYNTHETIC calibration feeds (batch 1) of the bundle's inputs: enough for timings, not for accuracy."""
    import numpy as np

    from ftedge.bundle.loader import load_bundle

    rng = np.random.default_rng(1)
    return [{s.name: _random(s, 1, rng) for s in load_bundle(bundle).inputs} for _ in range(n)]


def folder_calibration(bundle: Path, folder: Path, n: int = 32) -> list[dict]:
    """Calibration feeds from labelled files (decoded and preprocessed as the device does), batch 1."""
    from ftedge.bundle.loader import load_bundle
    from ftedge.runtime.data.samples import ModelIO, load_dataset

    data = load_dataset(folder, ModelIO.from_manifest(load_bundle(bundle).manifest))
    return [{k: v[i:i + 1] for k, v in data.inputs.items()} for i in range(min(n, len(data.targets)))]


def ov_python(path: Path) -> str:
    """The OpenVINO venv's python, or exit saying how to make it."""
    if not path.exists():
        raise SystemExit(f"no OpenVINO venv at {path}: run `scripts/dev.sh setup` (x86_64, CPython 3.10-3.13) "
                         "or set FTEDGE_OPENVINO_PYTHON to a python with onnxruntime-openvino")
    return str(path)


def has_step_providers(python: str) -> bool:
    """Whether this ftedge's ``train`` takes ``--step-providers`` (the NPU pattern's flag)."""
    proc = subprocess.run([python, "-m", "ftedge", "train", "--help"], capture_output=True, text=True, cwd=ROOT)
    return "--step-providers" in proc.stdout


# == OpenVINO half: per-stage timings (runs in the OV venv: --worker timing) ====================================

def synthetic_npz(bundle_dir: Path, n: int, out: Path, seed: int = 0) -> None:
    """SYNTHETIC data of the bundle's input shapes: standard normal floats (ints within their value range), labels
    drawn uniformly from its classes."""
    import numpy as np

    from ftedge.bundle.loader import load_bundle

    b = load_bundle(bundle_dir)
    rng = np.random.default_rng(seed)
    arrays = {s.name: _random(s, n, rng) for s in b.inputs}
    arrays["labels"] = np.asarray(b.labels)[rng.integers(0, len(b.labels), n)]
    np.savez(out, **arrays)


def _random(spec: Any, n: int, rng: Any) -> Any:
    import numpy as np

    shape = spec.concrete_shape(n)
    if spec.dtype.startswith("int"):
        lo, hi = spec.value_range or (0, 2)
        return rng.integers(lo, hi, shape).astype(spec.dtype)
    return rng.standard_normal(shape).astype(spec.dtype)


def stage_timings(bundle_dir: Path, qdq_dir: Path, embed_batch: int, batch: int, repeat: int, steps: int) -> dict:
    """Backbone ms per sample (fp32, the export's dynamic int8, static QDQ int8) and step ms, each on the CPU EP and
    the OpenVINO EP."""
    import numpy as np

    from ftedge.bundle.loader import load_bundle
    from ftedge.errors import RuntimeBackendError
    from ftedge.runtime.engines.ort_backend import InferenceModel
    from ftedge.runtime.engines.portable import PortableEngine
    from ftedge.runtime.engines.session import BundleSession

    b = load_bundle(bundle_dir)
    rng = np.random.default_rng(0)
    feeds = {s.name: _random(s, embed_batch, rng) for s in b.inputs}
    out: dict = {"backbone": {}, "step": {}}
    step_inputs = {s.name: _random(s, batch, rng) for s in b.inputs}
    head_feeds = None
    variants = (("fp32", b.file("backbone")), ("int8", b.file("backbone_int8")),
                ("qdq", load_bundle(qdq_dir).file("backbone_int8")))
    for variant, path in variants:
        for ep in (CPU, OV):
            t = time.perf_counter()
            try:   # an EP that cannot take the graph moves it to the CPU EP (placement()["fallback"] says why)
                model = InferenceModel(path, [ep, CPU] if ep != CPU else [CPU])
                model.run(feeds)
            except RuntimeBackendError as exc:
                out["backbone"][f"{variant}/{ep}"] = {"error": short_error(str(exc))}
                continue
            open_s = time.perf_counter() - t
            model.run(feeds)
            per = _median_s(lambda: model.run(feeds), repeat) / embed_batch
            out["backbone"][f"{variant}/{ep}"] = {"ms_per_sample": per * 1e3, "open_s": open_s,
                                                  "providers": model.providers, "placement": model.placement()}
            if head_feeds is None:   # the step's inputs: what the fp32 backbone makes of a batch
                embedded = BundleSession(b, [CPU]).embed(step_inputs)
                head_feeds = [embedded[s.name] for s in b.head_inputs]
    labels = rng.integers(0, len(b.labels), batch).astype(np.int64)
    for ep in (CPU, OV):
        t = time.perf_counter()
        engine = PortableEngine(b, None, [ep, CPU] if ep != CPU else [CPU])
        engine.train_step(head_feeds, labels)
        open_s = time.perf_counter() - t
        for _ in range(2):
            engine.train_step(head_feeds, labels)
        out["step"][ep] = {"ms": _median_s(lambda: engine.train_step(head_feeds, labels), steps) * 1e3,
                           "open_s": open_s, "providers": engine.step.providers, "placement": engine.step.placement()}
    return out


def short_error(text: str) -> str:
    """The reason in one table cell: the last line that says what failed, without ORT's prefixes."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    last = next((ln for ln in reversed(lines) if "rror" in ln or "FAIL" in ln), lines[-1] if lines else "?")
    last = last.split("[ONNXRuntimeError] : 1 : FAIL : ")[-1]
    return last.replace("|", "/")[-160:]


def _median_s(fn: Any, n: int) -> float:
    import statistics

    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# == whole jobs (from the host process, each its own OV-venv process) ===========================================

def train_job(python: str, bundle: Path, data: Path, run_dir: Path, placement: Placement, mode: str,
              extra: list[str]) -> dict:
    """One ``ftedge train`` process: wall s, peak RSS, result.json's timings and per-stage providers."""
    cmd = [python, "-m", "ftedge", "train", str(bundle), "--data", str(data), "-o", str(run_dir), "--mode", mode,
           "--no-cache", *placement.flags, *extra, "--json"]
    m = run_measured(cmd, ROOT, omp_env(), check=False)
    r = m["result"] or {}
    if m["exit"] != 0 and not r:   # a refused or failed run is a figure of its own: its reason is reported
        return {"error": short_error(m["stderr"]), "exit": m["exit"], "command": " ".join(["ftedge", *cmd[3:]])}
    return {"wall_s": m["wall_s"], "rss_mib": m["rss_mib"], "status": r.get("status"), "timings": r.get("timings"),
            "providers": r.get("providers"), "metrics": {k: (r.get("metrics") or {}).get(k) for k in ("accuracy", "loss")},
            "command": " ".join(["ftedge", *cmd[3:]])}


def evaluate(python: str, target: Path, data: Path, providers: str) -> dict:
    cmd = [python, "-m", "ftedge", "evaluate", str(target), "--data", str(data), "--providers", providers, "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=omp_env())
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fallback_text(providers: Any) -> str:
    """result.json's per-stage ``providers`` as ``backbone OpenVINO (0/1 nodes on CPU EP); step CPU`` (em dash if
    absent)."""
    if not isinstance(providers, dict):
        return "—"
    return "; ".join(f"{stage} {placement_text(providers[stage])}" for stage in ("backbone", "step", "head")
                     if isinstance(providers.get(stage), dict)) or "—"


def placement_text(p: dict) -> str:
    """One session's placement: the EP that led, the nodes left to the CPU EP, or why the graph moved there."""
    if p.get("fallback"):
        return f"CPU (whole graph moved: {short_error(p['fallback'])[-90:]})"
    lead = (p.get("providers") or ["?"])[0].removesuffix("ExecutionProvider")
    if lead == "CPU" or p.get("cpu_fallback_nodes") is None:
        return lead
    return f"{lead} ({p['cpu_fallback_nodes']}/{p.get('nodes', '?')} nodes on CPU EP)"


def timing_phase(args: argparse.Namespace, work: Path, python: str, step_flag: bool) -> list[dict]:
    rows = []
    for name in args.models:
        bundle, qdq = work / f"bundle-{name}", work / f"bundle-{name}-qdq"
        export_s = export(name, bundle)
        static_int8(bundle, qdq, random_calibration(bundle))
        say(f"{name}: exported in {export_s:.1f} s; stage timings")
        data = work / f"{name}.npz"
        proc = subprocess.run([python, "-m", "bench.providers", "--worker", json.dumps({
            "bundle": str(bundle), "qdq": str(qdq), "npz": str(data), "samples": args.samples, "embed_batch": args.embed_batch,
            "batch": args.batch_size, "repeat": args.repeat, "steps": args.steps})],
            capture_output=True, text=True, cwd=ROOT, env=omp_env())
        if proc.returncode:
            raise SystemExit(f"timing worker failed for {name}:\n{proc.stderr[-3000:]}")
        row = {"model": name, "about": MODELS[name].about, "quantize": MODELS[name].quantize,
               "export_s": export_s, **json.loads(proc.stdout.strip().splitlines()[-1]), "jobs": []}
        extra = ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", "0"]
        for placement in PLACEMENTS:
            if placement.needs_step_flag and not step_flag:
                continue
            for mode in args.modes:
                say(f"{name}: {placement.name}, {mode}")
                job = train_job(python, qdq if placement.qdq else bundle, data, work / f"run-{name}-{len(row['jobs'])}",
                                placement, mode, extra)
                row["jobs"].append({"placement": placement.name, "mode": mode, **job})
        rows.append(row)
    return rows


# == NPU phase: accuracy of the pattern vs the fp32 CPU path ====================================================

def npu_phase(args: argparse.Namespace, work: Path, python: str) -> list[dict]:
    """Accent voices (SYNTHETIC) and Fashion-MNIST (REAL): the fp32 CPU path, the export's int8 on the CPU EP, and
    the NPU pattern with the export's dynamic int8 and with a static QDQ int8 backbone (calibrated on data the
    personalization never sees: clips of a voice the base model was pretrained on; other training photos)."""
    contenders = [FP32_CPU, INT8_CPU, NPU_DYNAMIC, NPU_QDQ]
    rows = []
    kws_bundle, fashion_bundle = work / "bundle-kws", work / "bundle-effnet"
    if args.voices:
        if not (kws_bundle / "manifest.json").exists():
            export("kws", kws_bundle)
        accent = load_module(ROOT / "bench" / "accent_personalization.py", "accent_personalization")
        maker = load_module(ROOT / "examples" / "demo" / "make_kws_dataset.py", "make_kws_dataset")
        kws = load_module(KWS / "model.py", "kws_model")
        maker.make_dataset(work / "calib-kws", ["en-us"], kws.WORDS, 3, 1000 + args.seed)
        static_int8(kws_bundle, work / "bundle-kws-npu-qdq", folder_calibration(kws_bundle, work / "calib-kws"))
        for voice in args.voices:
            raw = work / f"{voice}-raw"
            maker.make_dataset(raw, [voice], kws.WORDS, args.shots + 20, args.seed)
            train_dir, test_dir = accent.split_user_data(raw, work / voice, args.shots, kws.WORDS)
            recipe = ["--epochs", "30", "--lr", "0.01", "--batch-size", "16", "--val-fraction", "0.2", "--seed",
                      str(args.seed)]
            rows.append(_npu_rows(python, f"accent {voice} (SYNTHETIC speech, {args.shots} shots/word)",
                                  (kws_bundle, work / "bundle-kws-npu-qdq"), train_dir, test_dir, work, contenders,
                                  recipe))
    if args.fashion_n:
        if not (fashion_bundle / "manifest.json").exists():
            export("effnet", fashion_bundle)
        fm = load_module(VISION / "make_fashion.py", "make_fashion")
        test_dir, train_dir, calib_dir = work / "fashion-test", work / "fashion-train", work / "calib-fashion"
        fm.write_sample(test_dir, "test", args.fashion_test, 0)
        seen = fm.write_sample(train_dir, "train", args.fashion_n, 1000 + args.seed)
        images, labels = fm.load("train")
        fm.write(calib_dir, images, labels, fm.stratified(labels, 64, 2000 + args.seed, seen))
        qdq = work / "bundle-effnet-npu-qdq"
        static_int8(fashion_bundle, qdq, folder_calibration(fashion_bundle, calib_dir, 64))
        recipe = ["--epochs", "30", "--lr", "0.01", "--batch-size", "32", "--seed", str(args.seed)]
        rows.append(_npu_rows(python, f"Fashion-MNIST (REAL photos), n {args.fashion_n}, {FASHION_SIZE}x{FASHION_SIZE}",
                              (fashion_bundle, qdq), train_dir, test_dir, work, contenders, recipe))
    return rows


def _npu_rows(python: str, task: str, bundles: tuple[Path, Path], train_dir: Path, test_dir: Path, work: Path,
              contenders: list[Placement], recipe: list[str]) -> dict:
    out = {"task": task, "runs": []}
    for p in contenders:
        say(f"{task}: {p.name}")
        run_dir = work / f"npu-{len(list(work.glob('npu-*')))}"
        job = train_job(python, bundles[p.qdq], train_dir, run_dir, p, "cached", recipe)
        if "error" in job:
            out["runs"].append({"placement": p.name, **job})
            continue
        ev_providers = "OpenVINO" if "OpenVINO" in p.flags else "CPU"
        ev = evaluate(python, run_dir, test_dir, ev_providers)
        out["runs"].append({"placement": p.name, "test_accuracy": ev["accuracy"], "evaluated_on": ev_providers,
                            "test_samples": ev["samples"], **job})
    return out


# == report =====================================================================================================

def report(res: dict) -> list[str]:
    lines = [f"Machine: {res['machine']}; onnxruntime-openvino {res.get('ort_version', '?')}. The OpenVINO EP runs "
             "on its CPU device (x86_64), 2 shared cores: OpenVINO's CPU plugin vs ORT's CPU kernels on the same "
             "cores. Data for the timings: SYNTHETIC (random inputs and labels)."]
    for row in res.get("timing", []):
        bb, st = row["backbone"], row["step"]
        stages = [(f"backbone {VARIANTS[v]}, ms per sample (open s; placement)", bb[f"{v}/{CPU}"], bb[f"{v}/{OV}"], "ms_per_sample")
                  for v in ("fp32", "int8", "qdq")] + [("step ms (open s; placement)", st[CPU], st[OV], "ms")]
        lines += ["", f"**{row['model']}**: {row['about']}; int8 = `--quantize-backbone {row['quantize']}`.", "",
                  *md_table(("stage", "CPU EP", "OpenVINO EP", "OpenVINO ÷ CPU"),
                            [(name, _cell(c, key), _cell(o, key), _ratio(o.get(key), c.get(key)))
                             for name, c, o, key in stages]),
                  "", *md_table(("placement", "cached job s", "full job s", "full ÷ cached", "peak RSS MiB (cached / full)",
                                 "where the stages ran (cached run's result.json)"), _job_rows(row["jobs"]))]
    for t in res.get("npu", []):
        base = t["runs"][0].get("test_accuracy")
        lines += ["", f"**{t['task']}**", "", *md_table(
            ("placement", "test accuracy", "vs fp32 CPU", "evaluated on", "train s (whole process)", "where the stages ran"),
            [(r["placement"], *((f"fails: {r['error']}", "—", "—", "—", "—") if "error" in r else (
                f"{r['test_accuracy']:.3f}", f"{r['test_accuracy'] - base:+.3f}" if base is not None else "—",
                r["evaluated_on"], f"{r['wall_s']:.2f}", fallback_text(r["providers"])))) for r in t["runs"]])]
    return lines


def _cell(m: dict, key: str) -> str:
    if "error" in m:
        return f"fails: {m['error']}"
    p = m.get("placement") or {}
    where = "" if (p.get("providers") or [CPU])[0] == CPU and not p.get("fallback") else f"; {placement_text(p)}"
    return f"{m[key]:.3f} ({m['open_s']:.2f}{where})"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "—"


def _job_rows(jobs: list[dict]) -> list[tuple]:
    rows = []
    for name in dict.fromkeys(j["placement"] for j in jobs):
        c, f = (next((j for j in jobs if j["placement"] == name and j["mode"] == m), {"error": "not run"})
                for m in ("cached", "full"))
        if "error" in c or "error" in f:
            rows.append((name, *(f"fails: {j['error']}" if "error" in j else f"{j['wall_s']:.2f}" for j in (c, f)),
                         "—", "—", "—"))
            continue
        rows.append((name, f"{c['wall_s']:.2f}", f"{f['wall_s']:.2f}", f"{f['wall_s'] / c['wall_s']:.2f}×",
                     f"{c['rss_mib']:.0f} / {f['rss_mib']:.0f}", fallback_text(c["providers"])))
    return rows


def machine() -> str:
    """``x86_64, AMD EPYC …, 2 cores``: what the OpenVINO EP's CPU device ran on."""
    import os

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor() or "?") if Path("/proc/cpuinfo").exists() else "?"
    return f"{platform.machine()}, {cpu}, {os.cpu_count()} cores (shared with other work)"


# == command line ===============================================================================================

def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.providers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phases", default="timing", help="timing, npu or both, comma-separated (default timing)")
    ap.add_argument("--models", default="kws,effnet,mlp", type=lambda s: [m for m in s.split(",") if m],
                    help=f"timing phase bundles, of {', '.join(MODELS)}")
    ap.add_argument("--samples", type=int, default=256, help="SYNTHETIC samples per timed job (default 256)")
    ap.add_argument("--epochs", type=int, default=5, help="epochs per timed job (default 5)")
    ap.add_argument("--modes", default="cached,full", type=lambda s: [m for m in s.split(",") if m],
                    help="whole-job modes timed (default cached,full)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--embed-batch", type=int, default=16, help="samples per timed backbone pass (default 16)")
    ap.add_argument("--repeat", type=int, default=20, help="timed backbone passes (default 20)")
    ap.add_argument("--steps", type=int, default=50, help="timed training steps (default 50)")
    ap.add_argument("--voices", default="en-gb-scotland,es", type=lambda s: [v for v in s.split(",") if v],
                    help="npu phase: held-out accent voices (SYNTHETIC, espeak-ng)")
    ap.add_argument("--shots", type=int, default=5, help="npu phase: clips per word per voice (default 5)")
    ap.add_argument("--fashion-n", type=int, default=200, help="npu phase: Fashion-MNIST training photos (0: skip)")
    ap.add_argument("--fashion-test", type=int, default=500, help="npu phase: Fashion-MNIST test photos")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--openvino-python", type=Path, default=OPENVINO_PY,
                    help="python of a venv with onnxruntime-openvino (default $FTEDGE_OPENVINO_PYTHON or .venv-openvino)")
    ap.add_argument("--workdir", type=Path, help="keep bundles, data and runs here (default: a temp dir, removed)")
    ap.add_argument("--json-out", type=Path, help="also write the JSON object here")
    ap.add_argument("--json", action="store_true", help="also print one JSON object on the last line")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    return ap


def _worker(spec: dict) -> int:
    """OpenVINO venv: write the SYNTHETIC npz, time the stages; one JSON line."""
    import onnxruntime

    synthetic_npz(Path(spec["bundle"]), spec["samples"], Path(spec["npz"]))
    out = stage_timings(Path(spec["bundle"]), Path(spec["qdq"]), spec["embed_batch"], spec["batch"], spec["repeat"], spec["steps"])
    print(json.dumps({**out, "ort_version": onnxruntime.__version__}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.worker:
        return _worker(json.loads(args.worker))
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown --models {','.join(unknown)}; choose from {', '.join(MODELS)}")
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    python = ov_python(args.openvino_python)
    step_flag = has_step_providers(python)
    if not step_flag:
        say("this ftedge's train has no --step-providers: the NPU-pattern placement is left out")
    t0 = time.perf_counter()
    res: dict = {"machine": machine(), "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("worker", "openvino_python")}}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if "timing" in phases:
            res["timing"] = timing_phase(args, work, python, step_flag)
            res["ort_version"] = res["timing"][0]["ort_version"] if res["timing"] else None
        if "npu" in phases:
            if not step_flag:
                raise SystemExit("the npu phase needs `ftedge train --step-providers` (this ftedge lacks it)")
            res["npu"] = npu_phase(args, work, python)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print("\n".join(report(res)))
    if args.json_out:
        args.json_out.write_text(json.dumps(res))
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
