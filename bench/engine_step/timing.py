"""Timing one case: both engines' training step on the same cached head inputs (ABBA blocks), where the portable
step's time goes, and, with --profile, onnxruntime's own session profiles."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench._common import median, ms_summary, timed
from bench.engine_step.cases import BATCH


def bench_case(case: str, bundle_dir: Path, args: argparse.Namespace, say: Callable[[str], None]) -> dict:
    """Both engines' step times on one bundle, the breakdown and (--profile) the session profiles."""
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
    est = {e: median(timed(step(e), 3)) for e in sessions}
    for e in sessions:
        timed(step(e), max(0, min(args.warmup, int(3.0 / est[e])) - 3))
    slowest = max(median(timed(step(e), 3)) for e in sessions)
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
    rows = {e: ms_summary(v) for e, v in times.items()}
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
    out["mask"] = ms_summary(timed(masks, args.steps))
    batch = pe._batch(args_list, lab)
    batch["weights"] = np.ones(n, np.float32)
    batch.update({"lr": np.array(1e-4, np.float32), "lr_wd": np.array(0.0, np.float32),
                  "max_grad_norm": np.array(pe.max_grad_norm, np.float32)})
    batch.update(masks())
    ss = pe.step
    fetch = ["loss", pe.output_name]
    out["run"] = ms_summary(timed(lambda: ss.run(pe.state, batch, fetch), args.steps))
    # one IOBinding, bound once: inputs fixed (the state does not advance), outputs to fresh buffers each run
    rt = sys.modules["onnxruntime"]
    binding = ss.session.io_binding()
    for name in ss.input_names:
        v = pe.state[name] if name in pe.state else rt.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(batch[name]))
        binding.bind_ortvalue_input(name, v)
    for name in ss.output_names:
        binding.bind_output(name, "cpu")
    out["bare"] = ms_summary(timed(lambda: ss.session.run_with_iobinding(binding), args.steps))
    np_feeds = {name: (pe.state[name].numpy() if name in pe.state else batch[name]) for name in ss.input_names}
    out["numpy"] = ms_summary(timed(lambda: ss.session.run(None, np_feeds), args.steps))

    # alternatives the engine could use (state not advanced; timing only):
    # (1) run_with_ort_values: state OrtValues + batch wrapped per step, outputs as OrtValues, loss/output to numpy
    def ortvalues():  # noqa: ANN202
        f = {n: pe.state[n] if n in pe.state else rt.OrtValue.ortvalue_from_numpy(batch[n]) for n in ss.input_names}
        res = dict(zip(ss.output_names, ss.session.run_with_ort_values(ss.output_names, f)))
        return float(res["loss"].numpy()), res[pe.output_name].numpy()

    out["ortvalues"] = ms_summary(timed(ortvalues, args.steps))
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

    out["prebound"] = ms_summary(timed(rebind_batch, args.steps))
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
    out["ort_training"] = {"module_fwd_bwd": ms_summary(fwd), "optimizer_step": ms_summary(opt), "lazy_reset_grad": ms_summary(reset)}
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
