"""The Markdown report of a run's figures (:mod:`bench.train_speed.summary`)."""

from __future__ import annotations

from collections.abc import Callable

from bench._common import md_table
from bench.train_speed.contenders import FTEDGE_RUNS, NAMES, NO_LEGACY, ORDER


def fmt_ratio(num: float, den: float) -> str:
    return f"{num / den:.2f}×" if den else "n/a"


def _met(flag) -> str:  # noqa: ANN001
    return "not measured" if flag is None else ("met" if flag else "NOT met")


CONTENDER_COLUMNS = ("contender", "runs", "whole-process s", "in-process s", "CPU s", "peak RSS MiB",
                     "val acc (best / last epoch)", "× faster than (c)", "× faster than (d)", "RSS ÷ (c)", "RSS ÷ (d)")
ENGINE_COLUMNS = ("comparison", "portable s", "ort-training s", "portable ÷ ort-training (time)", "portable RSS MiB",
                  "ort-training RSS MiB", "portable ÷ ort-training (RSS)", "train_s portable / ort-training")


def _contender_rows(rep: dict) -> list[list[object]]:
    """One row per contender in report order; the legacy venv's rows say why they are missing."""
    rows = rep["runs"]
    c, d = rows["c"], rows["d"]
    out: list[list[object]] = []
    for name in ORDER:
        if name not in rows:
            if name in ("a-L", "a-ort", "b-ort", "ref-L") and rep["legacy_python"] is None:
                out.append([NAMES[name], 0, NO_LEGACY, *[""] * 8])
            continue
        r = rows[name]
        if name in FTEDGE_RUNS:
            acc = f"{r['accuracy']:.3f} / {r['last_epoch_accuracy']:.3f}"
        elif name in ("c", "d"):
            acc = f"— / {r['accuracy']:.3f}"
        else:
            acc = "n/a (no training)"
        out.append([NAMES[name], r["n"], f"{r['wall_s']:.2f}", f"{r['in_process_s']:.2f}", f"{r['cpu_s']:.2f}",
                    f"{r['rss_mib']:.0f}", acc, fmt_ratio(c["wall_s"], r["wall_s"]), fmt_ratio(d["wall_s"], r["wall_s"]),
                    f"{r['rss_mib'] / c['rss_mib']:.2f}", f"{r['rss_mib'] / d['rss_mib']:.2f}"])
    return out


def _engine_rows(rep: dict) -> list[list[object]]:
    """Portable vs ort-training, one row per comparison (or why it was not measured)."""
    rows, out = rep["runs"], []
    for e in rep["engines"].values():
        if not e["measured"]:
            out.append([e["what"], e["note"], *[""] * 6])
            continue
        p, o = rows[e["portable"]], rows[e["ort_training"]]
        out.append([f"{e['what']} ({e['portable']} vs {e['ort_training']})", f"{p['wall_s']:.2f}", f"{o['wall_s']:.2f}",
                    f"{e['wall_ratio_portable_over_ort']:.2f}×", f"{p['rss_mib']:.0f}", f"{o['rss_mib']:.0f}",
                    f"{e['rss_ratio_portable_over_ort']:.2f}×",
                    f"{p['timings']['train_s']:.3f} / {o['timings']['train_s']:.3f}"])
    return out


def print_report(rep: dict, say: Callable[[str], None]) -> None:
    """The report, line by line through ``say``."""
    rows, cfg = rep["runs"], rep["config"]
    say("")
    say(f"## Personalization speed and memory: {rep['model']['name']} ({rep['model']['params']:,} params, head-only), "
        f"{cfg['samples']} SYNTHETIC samples ({cfg['train']} train / {cfg['val']} val), {cfg['epochs']} epochs, "
        f"batch {cfg['batch_size']}, lr {cfg['lr']}, {cfg['threads']} threads; median of {cfg['repeat']} run(s) "
        f"({cfg['full_repeat']} for the full-mode rows)")
    say("")
    for line in md_table(CONTENDER_COLUMNS, _contender_rows(rep)):
        say(line)
    say("")
    say("whole-process s: wall time of the subprocess (interpreter start + imports + everything); in-process s: "
        "ftedge's duration_s (from Trainer start: excludes interpreter start, ftedge/numpy imports and CLI parsing, "
        "includes the lazy `import onnxruntime`) / the torch and ORT workers' time after their imports. (c)/(d) "
        "report final-epoch accuracy (evaluated once); ftedge "
        "reports its best-epoch checkpoint (selected on the same val split) and the last epoch.")
    say("")
    say("### Engines: portable vs ort-training (whole processes, same bundle)")
    say("")
    for line in md_table(ENGINE_COLUMNS, _engine_rows(rep)):
        say(line)
    say("")
    say("import onnx in a fresh process (the trainer imports it to write/check model.onnx), median of 3: " + "; ".join(
        f"{k} venv {v['s']:.2f} s (onnx {v['onnx']}, ml_dtypes {v['ml_dtypes']})" for k, v in rep["onnx_import"].items()))
    say("")
    say("ftedge timings (median, s): " + "; ".join(
        f"{n}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[n]["timings"].items()) + f", duration {rows[n]['duration_s']:.3f}"
        for n in ORDER if n in rows and n in FTEDGE_RUNS))
    say("torch timings (median, s): " + "; ".join(
        f"{n}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[n]["timings"].items()) for n in ("c", "d")))
    say("ORT pass (median, s): " + "; ".join(
        f"{n} (onnxruntime {rows[n]['ort']}): " + ", ".join(f"{k} {v:.3f}" for k, v in rows[n]["timings"].items())
        for n in ("ref", "ref-L") if n in rows))
    say("every run's whole-process s: " + "; ".join(
        f"{n} " + ", ".join(f"{w:.2f}" for w in rows[n]["wall_s_all"]) for n in ORDER if n in rows))
    say("torch setup_s includes optimizer_init_s: constructing the first torch.optim.AdamW imports torch._dynamo "
        "(torch 2.13); a cost any PyTorch program using AdamW pays, counted in (c)/(d). The torch runs are plain "
        "fp32 eager (no torch.compile, channels_last or inference_mode).")
    say("")
    say("Training overhead beyond one backbone inference pass ((a), portable):")
    for k, o in rep["overheads"].items():
        say(f"- {k}: {o['value'] * 100:.0f} %  [{o['formula']}] ({'≤ 20 %: met' if o['met_<=20%'] else '> 20 %: not met'})")
    say("")
    i8 = rep["int8"]
    say(f"int8: val accuracy fp32 {i8['accuracy_fp32']:.4f} vs int8 {i8['accuracy_int8']:.4f} (Δ {i8['accuracy_delta']:+.4f}); "
        f"quantized nodes in backbone.int8.onnx: {i8['quantized_nodes_in_backbone_int8']}"
        + (" — NOTHING was quantized: ftedge's int8 path quantizes MatMul only and this backbone is all Conv, so (e) "
           "runs an fp32 graph" if not i8["quantized_nodes_in_backbone_int8"] else ""))
    say("")
    say("Targets ((a) = the portable engine):")
    t = rep["targets"]
    say(f"- whole-process ≥ 20× faster than PyTorch eager (c): {t['speed_vs_eager_>=20x']['value']:.2f}× → "
        f"{_met(t['speed_vs_eager_>=20x']['met'])}")
    say(f"- whole-process ≥ 2× faster than PyTorch cached features (d): {t['speed_vs_cached_features_>=2x']['value']:.2f}× → "
        f"{_met(t['speed_vs_cached_features_>=2x']['met'])}")
    o = t["overhead_beyond_one_backbone_pass_<=20%"]
    say(f"- training overhead beyond one backbone pass ≤ 20 % (brief's formula, ftedge timers): {o['value'] * 100:.0f} % → "
        f"{_met(o['met'])} (other definitions above)")
    r = t["peak_rss_<=half_of_torch"]
    say(f"- peak RSS of ftedge train ≤ ½ of PyTorch: {r['value_vs_c']:.2f} of (c), {r['value_vs_d']:.2f} of (d) → "
        f"{_met(r['met'])}")
    sp, rs = t["cached_job_speed_portable_>=1.0x_ort_training"], t["cached_job_rss_portable_<=_ort_training"]
    if sp["value"] is None:
        say(f"- cached job, portable ≥ 1.0× ort-training speed and RSS ≤ its own: {NO_LEGACY}")
    else:
        say(f"- cached job, portable ≥ 1.0× ort-training speed: {sp['value']:.2f}× ({sp['measure']}) → {_met(sp['met'])}")
        say(f"- cached job, portable peak RSS ≤ ort-training's: {rs['value']:.2f}× ({rs['measure']}) → {_met(rs['met'])}")
    say("")
    say(f"peak RSS = ru_maxrss of each process, started via a fork+exec launcher (floor it passes on: "
        f"{rep['rss_floor_mib']} MiB, measured with /bin/true)")
    say(f"bundles exported by {rep['export_python']} (engines: {', '.join(rep['engines_in_bundle'])}; "
        f"export s: " + ", ".join(f"{k} {v}" for k, v in rep["export_s"].items()) + ")")
    say(f"load average before/after: {rep['loadavg_before']} / {rep['loadavg_after']}; bench total {rep['bench_total_s']} s; "
        f"device python: {rep['device_python']}{'' if rep['device_venv'] else ' (HOST venv fallback: not torch-free)'}; "
        f"legacy python: {rep['legacy_python'] or NO_LEGACY}")

