"""Training-step time of the two engines, same bundle, same process: `portable` vs `ort-training` (issue 11).

Reproduce (repo root; needs the legacy venv, which has onnxruntime-training 1.19.2 and therefore runs BOTH engines:
onnxruntime-training includes the plain InferenceSession the portable engine uses; 3-7 minutes here, most of it
the five exports; `--workdir DIR --reuse` keeps and reuses the bundles):

    .venv-legacy/bin/python bench/engine_step.py --profile        # all cases, <= 20 x 30 timed steps per engine
    .venv-legacy/bin/python bench/engine_step.py --json           # + one JSON object on the last line
    .venv-legacy/bin/python bench/engine_step.py --cases cnn-head,tf-base --steps 20 --rounds 4   # quick

ALL INPUTS ARE SYNTHETIC and all weights random (nothing is pretrained; step time does not depend on it):

  cnn-head   bench/train_speed.py's KWSNet (DS-CNN, 96,904 params, BN calibrated on synthetic log-mels), split bundle,
             head only = Dropout(0.1) + Linear(128 -> 8) (1,032 trainable params) on cached backbone embeddings
             [32, 128] (the embeddings of synthetic log-mels). The per-step cost of bench/train_speed.py's (a).
  cnn-full   the same model as a --no-split bundle: every step runs the frozen backbone on raw [32, 101, 40] inputs
             (bench/train_speed.py's (b), `--mode full`).
  tf-tiny    tests/zoo.py `transformer` (Embedding(50, 32) + 2 TransformerEncoderLayer(d=32, 4 heads, ff 64, dropout
             0.1) + mean pool + Linear(32 -> 3)), 10 tokens, `--trainable 'encoder\\.layers\\.1\\.' --trainable
             '^head'` (the tests' transformer-last-block family); per-call overhead dominates.
  tf-base    the same architecture at a small-text-model size: Embedding(1000, 128) + 2 TransformerEncoderLayer(
             d=128, 4 heads, ff 512, GELU, dropout 0.1, batch_first) + mean pool + Linear(128 -> 8), 32 tokens; the
             last block + head train (199,304 of 525,576 params). THE CASE OF THE ISSUE'S TARGET (<= 1.2x).
  tf-wide    d=256, 8 heads, ff 1024, 64 tokens (same layout; 791,816 of 1,837,576 params train): compute-bound.

Every case: `ftedge export ... --engine all` (one bundle carries both engines: same backbone, same initial head),
then in a process of its own one `BundleSession(bundle, engine=...)` per engine on the same cached head inputs (the
backbone pass is done once, outside the timing), batch 32, AdamW, lr fixed. Both sessions stay open; the engines
alternate in --rounds blocks of up to --steps steps (ABBA order, so load drift hits both alike; slow cases run
smaller blocks so that a case's timing stays near --seconds-per-case), after --warmup untimed steps each.
Each step = one `session.train_step(head_feeds, labels)` (forward, loss, backward, optimizer update, loss back as a
Python float), timed alone with perf_counter; reported: median (and p10/p90) over all timed steps.

Breakdown of the portable step (same process, after the main timing), each median over --steps calls:
  mask     drawing the dropout masks with numpy (PortableEngine.train_step's loop)
  bare     session.run_with_iobinding on one IOBinding prepared once (state and batch already bound; outputs to
           fresh buffers): the graph's kernels plus ORT's per-run cost, no Python binding work
  run      StepSession.run (new IOBinding per step, binds ~3 x params + batch, copies loss/output to numpy)
  numpy    the step graph through plain session.run with numpy feeds (state copied in and out every step)
and, with --profile, onnxruntime's own session profile of step.onnx (a separate InferenceSession) and of the
ort-training Module's training graph: kernel time per op type, summed, per step.
ort-training's step is split into Module forward+backward / Optimizer.step / lazy_reset_grad.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()
BENCH = ROOT / "bench"
ZOO = ROOT / "tests" / "zoo.py"
BATCH = 32
CLASSES = 8

# name -> (d, heads, ff, seq, vocab, activation)
TF_SIZES = {"tf-base": (128, 4, 512, 32, 1000, "gelu"), "tf-wide": (256, 8, 1024, 64, 1000, "gelu")}
CASES = ("cnn-head", "cnn-full", "tf-tiny", "tf-base", "tf-wide")


# ---------------------------------------------------------------------------------------------------
# Models (torch imported lazily: only the export subprocess needs it)
# ---------------------------------------------------------------------------------------------------
def token_classifier():  # noqa: ANN201
    """Zero-argument factory for `ftedge export bench/engine_step.py:token_classifier` (size via FTEDGE_STEP_TF)."""
    import torch
    import torch.nn as nn

    d, heads, ff, seq, vocab, act = json.loads(os.environ["FTEDGE_STEP_TF"])

    class TokenClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, d)
            layer = nn.TransformerEncoderLayer(d, nhead=heads, dim_feedforward=ff, dropout=0.1, activation=act,
                                               batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
            self.head = nn.Linear(d, CLASSES)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(self.embed(tokens)).mean(dim=1))

    torch.manual_seed(0)
    return TokenClassifier()


def export_case(case: str, work: Path, say, reuse: bool = False) -> tuple[Path, dict]:  # noqa: ANN001
    """Write the case's bundle with both engines; returns (bundle dir, facts)."""
    env = dict(os.environ)
    out = work / case
    common = ["--engine", "all", "--quiet", "--force", "-o", str(out)]
    if case.startswith("cnn"):
        sys.path.insert(0, str(BENCH))
        import train_speed as ts  # numpy-level helpers; torch only inside make_weights

        weights = work / "kws-weights.pt"
        if not weights.exists():
            calib, _ = ts.make_data(256, CLASSES, 1000)
            ts.make_weights(weights, CLASSES, 0, calib)
        env["FTEDGE_BENCH_WEIGHTS"], env["FTEDGE_BENCH_CLASSES"] = str(weights), str(CLASSES)
        labels = ",".join(f"kw{i}" for i in range(CLASSES))
        cmd = [sys.executable, "-m", "ftedge", "export", f"{BENCH / 'train_speed.py'}:export_model",
               "--input", f"x:float32:1,{ts.T},{ts.F}", "--head", ts.HEAD, "--labels", labels, "--lr", "0.01", *common]
        if case == "cnn-full":
            cmd.append("--no-split")
    elif case == "tf-tiny":
        cmd = [sys.executable, "-m", "ftedge", "export", f"{ZOO}:transformer", "--input", "tokens:int64:1,10:0-50",
               "--trainable", r"encoder\.layers\.1\.", "--trainable", "^head", *common]
    else:
        d, heads, ff, seq, vocab, act = TF_SIZES[case]
        env["FTEDGE_STEP_TF"] = json.dumps(TF_SIZES[case])
        cmd = [sys.executable, "-m", "ftedge", "export", f"{THIS}:token_classifier",
               "--input", f"tokens:int64:1,{seq}:0-{vocab}",
               "--trainable", r"encoder\.layers\.1\.", "--trainable", "^head", *common]
    if reuse and (out / "manifest.json").exists():
        say(f"  {case}: reusing the bundle in {out} (--reuse)")
        return out, {"export_cmd": " ".join(cmd[1:]), "export_s": None}
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"export of {case} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    dt = time.perf_counter() - t
    say(f"  exported {case} in {dt:.1f} s")
    return out, {"export_cmd": " ".join(cmd[1:]), "export_s": round(dt, 1)}


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------
def pct(vals: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(vals), q))


def summary(vals_s: list[float]) -> dict:
    ms = [v * 1e3 for v in vals_s]
    return {"median_ms": round(statistics.median(ms), 4), "p10_ms": round(pct(ms, 10), 4),
            "p90_ms": round(pct(ms, 90), 4), "n": len(ms)}


def timed(fn, n: int) -> list[float]:  # noqa: ANN001
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_case(case: str, bundle_dir: Path, args: argparse.Namespace, say) -> dict:  # noqa: ANN001
    from ftedge.runtime import load_bundle
    from ftedge.runtime.engines.session import BundleSession

    bundle = load_bundle(bundle_dir)
    rng = np.random.default_rng(0)
    raw = {}
    for spec in bundle.inputs:
        shape = spec.concrete_shape(BATCH)
        if spec.dtype.startswith("float"):
            raw[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            lo, hi = spec.value_range or (0, 2)
            raw[spec.name] = rng.integers(lo, hi, shape).astype(spec.dtype)
    n_out = int(bundle.output.concrete_shape(1)[-1]) if bundle.loss == "cross-entropy" else None
    labels = rng.integers(0, n_out, BATCH).astype(np.int64)
    sessions = {e: BundleSession(bundle, engine=e) for e in ("portable", "ort-training")}
    feeds = sessions["portable"].embed(raw)  # the same cached head inputs for both engines
    lr = float(bundle.manifest["optimizer"]["lr"])
    for s in sessions.values():
        s.set_learning_rate(lr)
        s.model  # noqa: B018 - open the engine now, not inside the timing
    head_params = sum(int(np.prod(v.shape)) for v in sessions["portable"].model.parameters().values())
    shapes = {k: list(v.shape) for k, v in feeds.items()}
    say(f"  {case}: head inputs {shapes}, {head_params:,} trainable params, layout {bundle.layout}")

    def step(e: str):  # noqa: ANN202
        return lambda: sessions[e].train_step(feeds, labels)

    # warm-up: 3 steps each, then more up to --warmup steps or ~3 s per engine
    est = {e: statistics.median(timed(step(e), 3)) for e in sessions}
    for e in sessions:
        timed(step(e), max(0, min(args.warmup, int(3.0 / est[e])) - 3))
    slowest = max(statistics.median(timed(step(e), 3)) for e in sessions)
    # the same number of steps for both engines, in --rounds alternating blocks of up to --steps; fewer steps in all
    # (at least 20) when the slower engine would take more than --seconds-per-case over both engines
    total = max(20, min(args.steps * args.rounds, int(args.seconds_per_case / (2 * slowest))))
    block = max(1, total // args.rounds)
    times: dict[str, list[float]] = {e: [] for e in sessions}
    for r in range(args.rounds):
        order = list(sessions) if r % 2 == 0 else list(sessions)[::-1]
        for e in order:
            times[e] += timed(step(e), block)
    args = argparse.Namespace(**{**vars(args), "steps": min(args.steps * 5, max(10, total // 4))})  # breakdown, profile
    rows = {e: summary(v) for e, v in times.items()}
    ratio = rows["portable"]["median_ms"] / rows["ort-training"]["median_ms"]
    res = {"case": case, "layout": bundle.layout, "head_inputs": shapes, "trainable_params": head_params,
           "engines": rows, "ratio_portable_over_ort": round(ratio, 3), "block": block,
           "ratio_p10_portable_over_ort": round(rows["portable"]["p10_ms"] / rows["ort-training"]["p10_ms"], 3)}
    res["breakdown"] = breakdown(sessions, feeds, labels, args)
    if args.profile:
        res["profile"] = profile(bundle, sessions, feeds, labels, args)
    say(f"  {case}: portable {rows['portable']['median_ms']:.3f} ms, ort-training {rows['ort-training']['median_ms']:.3f}"
        f" ms per step (median of {rows['portable']['n']}) -> {ratio:.2f}x")
    return res


def breakdown(sessions: dict, feeds: dict, labels: np.ndarray, args: argparse.Namespace) -> dict:
    """Where the portable step's time goes (and ort-training's, by API call)."""
    pe = sessions["portable"].model
    args_list = sessions["portable"]._args(feeds)
    lab = sessions["portable"].labels_array(labels)
    n = len(lab)
    out: dict = {}

    def masks():  # noqa: ANN202 - PortableEngine.train_step's mask loop, verbatim
        res = {}
        for m in pe.masks:
            shape = [n if d == "batch" else int(d) for d in m["shape"]]
            keep = 1.0 - float(m["ratio"])
            res[m["name"]] = (pe.rng.random(shape, dtype=np.float32) < keep).astype(np.float32) / keep
        return res

    out["mask_count"] = len(pe.masks)
    out["mask_elements"] = int(sum(np.prod([n if d == "batch" else int(d) for d in m["shape"]]) for m in pe.masks))
    out["mask"] = summary(timed(masks, args.steps))
    batch = pe._batch(args_list, lab)
    batch["weights"] = np.ones(n, np.float32)
    batch.update({"lr": np.array(1e-4, np.float32), "lr_wd": np.array(0.0, np.float32),
                  "max_grad_norm": np.array(pe.max_grad_norm, np.float32)})
    batch.update(masks())
    ss = pe.step
    fetch = ["loss", pe.output_name]
    out["run"] = summary(timed(lambda: ss.run(pe.state, batch, fetch), args.steps))
    # one IOBinding, bound once: inputs fixed (the state does not advance), outputs to fresh buffers each run
    rt = sys.modules["onnxruntime"]
    binding = ss.session.io_binding()
    for name in ss.input_names:
        v = pe.state[name] if name in pe.state else rt.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(batch[name]))
        binding.bind_ortvalue_input(name, v)
    for name in ss.output_names:
        binding.bind_output(name, "cpu")
    out["bare"] = summary(timed(lambda: ss.session.run_with_iobinding(binding), args.steps))
    np_feeds = {name: (pe.state[name].numpy() if name in pe.state else batch[name]) for name in ss.input_names}
    out["numpy"] = summary(timed(lambda: ss.session.run(None, np_feeds), args.steps))

    # alternatives the engine could use (state not advanced; timing only):
    # (1) run_with_ort_values: state OrtValues + batch wrapped per step, outputs as OrtValues, loss/output to numpy
    def ortvalues():  # noqa: ANN202
        f = {n: pe.state[n] if n in pe.state else rt.OrtValue.ortvalue_from_numpy(batch[n]) for n in ss.input_names}
        res = dict(zip(ss.output_names, ss.session.run_with_ort_values(ss.output_names, f)))
        return float(res["loss"].numpy()), res[pe.output_name].numpy()

    out["ortvalues"] = summary(timed(ortvalues, args.steps))
    # (2) a binding prepared once per state buffer set (two, used alternately, would be "ping-pong"): state in and
    #     state_out to preallocated OrtValues bound once; per step only the batch inputs are re-bound
    pre = ss.session.io_binding()
    state_names = [n for n in ss.input_names if n in pe.state]
    batch_names = [n for n in ss.input_names if n not in pe.state]
    for n in state_names:
        pre.bind_ortvalue_input(n, pe.state[n])
    outs_pre = {}
    for n in ss.output_names:
        src = n[:-4] if n.endswith("_out") else None
        if src in pe.state:
            outs_pre[n] = rt.OrtValue.ortvalue_from_shape_and_type(pe.state[src].shape(), np.float32)
            pre.bind_ortvalue_output(n, outs_pre[n])
        else:
            pre.bind_output(n, "cpu")

    def rebind_batch():  # noqa: ANN202
        for n in batch_names:
            pre.bind_cpu_input(n, batch[n])
        ss.session.run_with_iobinding(pre)
        res = pre.get_outputs()
        return res

    out["prebound"] = summary(timed(rebind_batch, args.steps))
    out["state_tensors"] = len(state_names)
    out["bound_inputs"] = len(ss.input_names)
    out["outputs"] = len(ss.output_names)
    # ort-training by API call
    tm = sessions["ort-training"].model.model
    ot_args = sessions["ort-training"]._args(feeds) + [sessions["ort-training"].labels_array(labels)]
    fwd, opt, reset = [], [], []
    tm.module.train()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        tm.module(*ot_args)
        t1 = time.perf_counter()
        tm.optimizer.step()
        t2 = time.perf_counter()
        tm.module.lazy_reset_grad()
        t3 = time.perf_counter()
        fwd.append(t1 - t0)
        opt.append(t2 - t1)
        reset.append(t3 - t2)
    out["ort_training"] = {"module_fwd_bwd": summary(fwd), "optimizer_step": summary(opt), "lazy_reset_grad": summary(reset)}
    return out


def _profile_summary(path: str, runs: int) -> dict:
    """Kernel time per op type (µs per step) from an onnxruntime profile JSON, and model_run time per step."""
    text, events, pos = Path(path).read_text(), [], 0
    dec = json.JSONDecoder()
    while pos < len(text):  # two sessions created in the same second share one file: several arrays back to back
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            break
        chunk, pos = dec.raw_decode(text, pos)
        events += chunk if isinstance(chunk, list) else [chunk]
    by_op: dict[str, float] = {}
    model_run = 0.0
    for ev in events:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + ev["dur"]
        elif ev.get("cat") == "Session" and ev.get("name") == "model_run":
            model_run += ev["dur"]
    kernels = sum(by_op.values())
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:8]
    return {"kernel_us_per_step": round(kernels / runs, 1), "model_run_us_per_step": round(model_run / runs, 1),
            "top_ops_us_per_step": {k: round(v / runs, 1) for k, v in top}}


def profile(bundle, sessions: dict, feeds: dict, labels: np.ndarray, args: argparse.Namespace) -> dict:  # noqa: ANN001
    """onnxruntime session profiles: portable step.onnx (fresh InferenceSession) and the ort-training training graph."""
    rt = sys.modules["onnxruntime"]
    from ftedge.runtime.engines.engine import bundle_engines
    from ftedge.runtime.engines.ort_training_backend import training_api

    runs = min(args.steps, 100)
    out = {}
    pe = sessions["portable"].model
    lab = sessions["portable"].labels_array(labels)
    with tempfile.TemporaryDirectory() as tmp:
        so = rt.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "portable")
        so.log_severity_level = 3
        sess = rt.InferenceSession(str(bundle.path / bundle_engines(bundle)["portable"]["files"]["step"]), so,
                                   providers=["CPUExecutionProvider"])
        batch = pe._batch(sessions["portable"]._args(feeds), lab)
        batch["weights"] = np.ones(len(lab), np.float32)
        batch.update({"lr": np.array(1e-4, np.float32), "lr_wd": np.array(0.0, np.float32),
                      "max_grad_norm": np.array(0.0, np.float32)})
        for m in pe.masks:
            shape = [len(lab) if d == "batch" else int(d) for d in m["shape"]]
            batch[m["name"]] = np.ones(shape, np.float32)
        np_feeds = {i.name: (pe.state[i.name].numpy() if i.name in pe.state else batch[i.name]) for i in sess.get_inputs()}
        for _ in range(5 + runs):  # 5 warm-up runs are in the profile too (counted in the division)
            sess.run(None, np_feeds)
        out["portable_step_onnx"] = _profile_summary(sess.end_profiling(), runs + 5)
        out["portable_step_onnx"]["nodes"] = len(__import__("onnx").load(
            str(bundle.path / bundle_engines(bundle)["portable"]["files"]["step"])).graph.node)

        api = training_api()
        files = bundle_engines(bundle)["ort-training"]["files"]
        so2 = rt.SessionOptions()
        so2.enable_profiling = True
        so2.profile_file_prefix = str(Path(tmp) / "ortt")
        state = api.CheckpointState.load_checkpoint(str(bundle.path / files["checkpoint"]))
        # no eval model: a second session created in the same second would write the same profile file
        mod = api.Module(str(bundle.path / files["training"]), state, None, "cpu", so2)
        optim = api.Optimizer(str(bundle.path / files["optimizer"]), mod)
        mod.train()
        ot_args = sessions["ort-training"]._args(feeds) + [sessions["ort-training"].labels_array(labels)]
        for _ in range(runs + 5):
            mod(*ot_args)
            optim.step()
            mod.lazy_reset_grad()
        del optim, mod, state  # the training and eval sessions write their profiles when destroyed
        import gc

        gc.collect()
        profs = []
        for path in Path(tmp).glob("ortt*.json"):
            try:
                profs.append(_profile_summary(str(path), runs + 5))
            except ValueError as exc:
                out["ort_training_profile_error"] = f"{path.name}: {exc}"
        if profs:  # the training session's profile: the one with the model runs
            out["ort_training_graph"] = max(profs, key=lambda s: s["model_run_us_per_step"])
            out["ort_training_graph"]["note"] = ("the Module's training session (forward+backward); the optimizer "
                                                 "graph runs in a separate session, not profiled")
        out["ort_training_graph_nodes"] = len(__import__("onnx").load(str(bundle.path / files["training"])).graph.node)
    return out


def run_one(args: argparse.Namespace) -> int:
    """Worker: export one case and time it; its result as JSON on the last stdout line."""
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    bundle_dir, facts = export_case(args.one_case, args.workdir, say, args.reuse)
    res = bench_case(args.one_case, bundle_dir, args, say)
    res.update(facts)
    print(json.dumps(res))
    return 0


# ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per engine per round (default 30)")
    ap.add_argument("--rounds", type=int, default=20, help="rounds, engines alternating (default 20)")
    ap.add_argument("--warmup", type=int, default=30,
                    help="untimed steps per engine first (default 30, fewer if that would take over ~3 s)")
    ap.add_argument("--seconds-per-case", type=float, default=40.0,
                    help="cap on the timed steps of a case (both engines, all rounds): slow cases run fewer steps "
                         "per round (at least 10; default 40)")
    ap.add_argument("--profile", action="store_true", help="also onnxruntime session profiles (kernel time per op)")
    ap.add_argument("--workdir", type=Path, help="keep the bundles here (default: a temp dir, removed)")
    ap.add_argument("--reuse", action="store_true", help="with --workdir: reuse bundles already exported there")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one-case", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one_case:
        return run_one(args)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        ap.error(f"unknown case(s) {bad}; choose from {CASES}")

    from ftedge.runtime.engines.ort_backend import has_training_api, version

    if not has_training_api():
        raise SystemExit(f"onnxruntime {version()} here has no training API: run this with the legacy venv "
                         "(.venv-legacy/bin/python bench/engine_step.py), which runs both engines")
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    tmp = None
    work = args.workdir
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="ftedge-engine-step-")
        work = Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for case in cases:
            # each case in its own process: its own allocator arenas, and a fresh onnxruntime import (in one
            # process, a second BundleSession after an ort-training engine was opened raises ValueError from
            # ftedge.runtime.engines.ort_backend.has_training_api: see BENCHMARKS.md, issue 11)
            cmd = [sys.executable, str(THIS), "--one-case", case, "--workdir", str(work), "--steps", str(args.steps),
                   "--rounds", str(args.rounds), "--warmup", str(args.warmup),
                   "--seconds-per-case", str(args.seconds_per_case)] + (["--reuse"] if args.reuse else []) + (["--profile"] if args.profile else [])
            p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
            if p.returncode != 0:
                print(f"case {case} FAILED (exit {p.returncode}); see stderr above", file=sys.stderr)
                results.append({"case": case, "failed": p.returncode})
                continue
            results.append(json.loads(p.stdout.strip().splitlines()[-1]))
    finally:
        if tmp is not None:
            tmp.cleanup()
    report = {"bench": "engine_step", "data": "SYNTHETIC inputs, random weights", "batch": BATCH,
              "onnxruntime": version(), "python": sys.version.split()[0],
              "threads": "onnxruntime default (one per core)", "cores": os.cpu_count(),
              "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup, "cases": results,
              "loadavg_before": [round(v, 2) for v in load_before],
              "loadavg_after": [round(v, 2) for v in os.getloadavg()], "total_s": round(time.perf_counter() - t0, 1)}
    print_report(report)
    if args.json:
        print(json.dumps(report))
    return 0


def print_report(rep: dict) -> None:
    p = print
    p("")
    p(f"## Training-step time, portable vs ort-training (same process, onnxruntime {rep['onnxruntime']}, batch "
      f"{rep['batch']}, SYNTHETIC inputs, random weights; engines alternating in {rep['rounds']} "
      f"blocks of up to {rep['steps']} steps each, n below)")
    p("")
    p("| case | trainable params | head input | timed steps per engine (block) | portable ms (p10–p90) | "
      "ort-training ms (p10–p90) | portable ÷ ort-training (median) | (p10) |")
    p("|---|---|---|---|---|---|---|---|")
    for r in rep["cases"]:
        if "failed" in r:
            p(f"| {r['case']} | FAILED (exit {r['failed']}) | | | | | | |")
            continue
        pe, ot = r["engines"]["portable"], r["engines"]["ort-training"]
        shape = "; ".join(f"{k} {v}" for k, v in r["head_inputs"].items())
        p(f"| {r['case']} | {r['trainable_params']:,} | {shape} | {pe['n']} ({r['block']}) | {pe['median_ms']:.3f} ({pe['p10_ms']:.3f}–{pe['p90_ms']:.3f}) | "
          f"{ot['median_ms']:.3f} ({ot['p10_ms']:.3f}–{ot['p90_ms']:.3f}) | {r['ratio_portable_over_ort']:.2f}× | "
          f"{r['ratio_p10_portable_over_ort']:.2f}× |")
    p("")
    p("Portable step breakdown (median ms): train_step = the engine call; mask = numpy dropout masks; run = "
      "StepSession.run (fresh IOBinding each step); bare = run_with_iobinding on a binding prepared once; numpy = "
      "session.run with numpy feeds; run_with_ort_values = state OrtValues + batch wrapped per step, outputs "
      "as OrtValues; prebound state = one IOBinding with state inputs and state outputs (preallocated) bound once, "
      "only the batch re-bound per step (what two alternating bindings would cost). ort-training: Module forward+backward / Optimizer.step / lazy_reset_grad.")
    p("")
    p("| case | train_step | mask (n masks, elements) | run (state tensors) | bare | numpy feeds | run_with_ort_values | "
      "prebound state | ort-training fwd+bwd / opt / reset |")
    p("|---|---|---|---|---|---|---|---|---|")
    for r in rep["cases"]:
        if "failed" in r:
            continue
        b = r["breakdown"]
        o = b["ort_training"]
        p(f"| {r['case']} | {r['engines']['portable']['median_ms']:.3f} | {b['mask']['median_ms']:.3f} "
          f"({b['mask_count']}, {b['mask_elements']:,}) | {b['run']['median_ms']:.3f} ({b['state_tensors']}) | "
          f"{b['bare']['median_ms']:.3f} | {b['numpy']['median_ms']:.3f} | {b['ortvalues']['median_ms']:.3f} | "
          f"{b['prebound']['median_ms']:.3f} | {o['module_fwd_bwd']['median_ms']:.3f} / {o['optimizer_step']['median_ms']:.3f}"
          f" / {o['lazy_reset_grad']['median_ms']:.3f} |")
    if any("profile" in r for r in rep["cases"]):
        p("")
        p("onnxruntime session profiles (µs per step, kernels summed; model_run = the whole Run):")
        for r in rep["cases"]:
            if "profile" not in r:
                continue
            pr = r["profile"]
            ps = pr["portable_step_onnx"]
            p(f"- {r['case']}: portable step.onnx ({ps['nodes']} nodes): kernels {ps['kernel_us_per_step']}, model_run "
              f"{ps['model_run_us_per_step']}; top {ps['top_ops_us_per_step']}")
            if "ort_training_graph" in pr:
                ot = pr["ort_training_graph"]
                p(f"  ort-training training graph ({pr['ort_training_graph_nodes']} nodes): kernels "
                  f"{ot['kernel_us_per_step']}, model_run {ot['model_run_us_per_step']}; top {ot['top_ops_us_per_step']}")
    p("")
    p(f"load average before/after: {rep['loadavg_before']} / {rep['loadavg_after']}; total {rep['total_s']} s; "
      f"{rep['cores']} cores, onnxruntime default threads")


if __name__ == "__main__":
    sys.exit(main())
