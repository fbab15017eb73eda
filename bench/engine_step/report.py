"""The Markdown report of a run."""

from __future__ import annotations

from bench._common import md_table


STEP_COLUMNS = ("case", "trainable params", "head input", "timed steps per engine (block)", "portable ms (p10–p90)",
                "ort-training ms (p10–p90)", "portable ÷ ort-training (median)", "(p10)")
BREAKDOWN_COLUMNS = ("case", "train_step", "mask (n masks, elements)", "run (state tensors)", "bare", "numpy feeds",
                     "run_with_ort_values", "prebound state", "ort-training fwd+bwd / opt / reset")


def _step_row(r: dict) -> list[object]:
    if "failed" in r:
        return [r["case"], f"FAILED (exit {r['failed']})", *[""] * 6]
    pe, ot = r["engines"]["portable"], r["engines"]["ort-training"]
    shape = "; ".join(f"{k} {v}" for k, v in r["head_inputs"].items())
    return [r["case"], f"{r['trainable_params']:,}", shape, f"{pe['n']} ({r['block']})",
            f"{pe['median_ms']:.3f} ({pe['p10_ms']:.3f}–{pe['p90_ms']:.3f})",
            f"{ot['median_ms']:.3f} ({ot['p10_ms']:.3f}–{ot['p90_ms']:.3f})", f"{r['ratio_portable_over_ort']:.2f}×",
            f"{r['ratio_p10_portable_over_ort']:.2f}×"]


def _breakdown_row(r: dict) -> list[object]:
    b = r["breakdown"]
    o = b["ort_training"]
    return [r["case"], f"{r['engines']['portable']['median_ms']:.3f}",
            f"{b['mask']['median_ms']:.3f} ({b['mask_count']}, {b['mask_elements']:,})",
            f"{b['run']['median_ms']:.3f} ({b['state_tensors']})", f"{b['bare']['median_ms']:.3f}",
            f"{b['numpy']['median_ms']:.3f}", f"{b['ortvalues']['median_ms']:.3f}", f"{b['prebound']['median_ms']:.3f}",
            f"{o['module_fwd_bwd']['median_ms']:.3f} / {o['optimizer_step']['median_ms']:.3f}"
            f" / {o['lazy_reset_grad']['median_ms']:.3f}"]


def print_report(rep: dict) -> None:
    """The report on stdout."""
    p = print
    p("")
    p(f"## Training-step time, portable vs ort-training (same process, onnxruntime {rep['onnxruntime']}, batch "
      f"{rep['batch']}, SYNTHETIC inputs, random weights; engines alternating in {rep['rounds']} "
      f"blocks of up to {rep['steps']} steps each, n below)")
    p("")
    for line in md_table(STEP_COLUMNS, [_step_row(r) for r in rep["cases"]]):
        p(line)
    p("")
    p("Portable step breakdown (median ms): train_step = the engine call; mask = numpy dropout masks; run = "
      "StepSession.run (fresh IOBinding each step); bare = run_with_iobinding on a binding prepared once; numpy = "
      "session.run with numpy feeds; run_with_ort_values = state OrtValues + batch wrapped per step, outputs "
      "as OrtValues; prebound state = one IOBinding with state inputs and state outputs (preallocated) bound once, "
      "only the batch re-bound per step (what two alternating bindings would cost). ort-training: Module forward+backward / Optimizer.step / lazy_reset_grad.")
    p("")
    for line in md_table(BREAKDOWN_COLUMNS, [_breakdown_row(r) for r in rep["cases"] if "failed" not in r]):
        p(line)
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
