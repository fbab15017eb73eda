"""Human-readable summary of a bundle (for `ftedge inspect` and after `ftedge export`); each task's own
manifest section is described by its row in :mod:`ftedge.bundle.tasks`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftedge.bundle.tasks import task_of


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _shape(spec: dict[str, Any]) -> str:
    return "[" + ", ".join(str(d) for d in spec["shape"]) + "]"


def summary(path: str | Path, m: dict[str, Any], verified: bool | None = None, signed_by: str | None = None) -> str:
    lines = [
        f"bundle   {path}  ({m.get('name')}, schema {m.get('schema_version')}, layout {m.get('layout')})",
        f"made by  {m.get('created_by')} at {m.get('created_at')}; "
        + ", ".join(f"{k} {v}" for k, v in (m.get("producer") or {}).items() if k != "ftedge"),
    ]
    task = task_of(m)
    lines.append(f"task     {task.name} (headline {task.headline.label}; {task.summary})")
    if verified is not None:
        lines.append(f"verified {'yes: every file matches its sha256' if verified else 'NO'}")
    sig = m.get("signature") if isinstance(m.get("signature"), dict) else None
    check = "; verified with a trusted key" if signed_by else "; not checked (pass --trusted-key)" if verified else ""
    lines.append(f"sig      signed by {sig.get('key_id')} ({sig.get('alg')}){check}" if sig else "sig      unsigned")
    lines.append("inputs   " + "; ".join(f"{t['name']} {t['dtype']} {_shape(t)}" for t in m.get("inputs", [])))
    out = m.get("output") or {}
    lines.append(f"output   {out.get('name')} {out.get('dtype')} {_shape(out) if out else ''}")
    if m.get("layout") == "split":
        lines.append("cache    " + "; ".join(
            f"{t['name']} {t['dtype']} {_shape(t)} ({t.get('meta', {}).get('source', '?')})" for t in m.get("head_inputs", [])))
    labels = m.get("labels") or []
    lines.append(f"labels   {len(labels)}: {', '.join(labels[:20])}{' …' if len(labels) > 20 else ''}" if labels else "labels   (none)")
    opt = m.get("optimizer") or {}
    lines.append(f"train    loss {m.get('loss')}, optimizer {opt.get('name')} lr {opt.get('lr')}; "
                 f"{m.get('trainable_parameter_count', '?')} of {m.get('parameter_count', '?')} parameters train")
    engines = m.get("engines") or ({"ort-training": {}} if m.get("schema_version") == 1 else {})
    lines.append("engines  " + "; ".join(
        (f"{name} ({len(e.get('masks') or [])} dropout mask(s), {len(e.get('buffers') or [])} BatchNorm statistic(s))"
         if name == "portable" else name) for name, e in engines.items())
        + ("" if "portable" in engines else "  — re-export for the portable engine (plain onnxruntime)"))
    lines += task.describe(m)
    tr = m.get("trainable") or []
    lines.append(f"trains   {len(tr)} tensors: {', '.join(tr[:8])}{' …' if len(tr) > 8 else ''}")
    lines.append(f"frozen   {len(m.get('frozen') or [])} tensors")
    parity = m.get("parity") or {}
    if parity.get("skipped"):
        lines.append("parity   SKIPPED (not checked against PyTorch)")
    elif "head + nms" in parity:
        rel = [v.get("relative", float("nan")) for k, v in parity.items() if k.startswith("backbone ")]
        hn = parity["head + nms"]
        lines.append(f"parity   backbone max rel diff {max(rel) if rel else float('nan'):.2e}; head + NMS: "
                     f"{'the same' if hn.get('same_detections') else 'DIFFERENT'} {hn.get('detections')} detections as "
                     f"PyTorch (boxes {hn.get('max_box_diff_px', float('nan')):.1e} px, scores "
                     f"{hn.get('max_score_diff', float('nan')):.1e})")
    else:
        diffs = parity.get("max_abs_diff") or {}
        fp32 = [v for k, v in diffs.items() if "int8" not in k]
        worst = max(fp32) if fp32 else float("nan")
        lines.append(f"parity   fp32 max abs diff {worst:.2e} vs PyTorch (tolerance {parity.get('tolerance')}); "
                     "int8 rows are informational")
        for k, v in diffs.items():
            lines.append(f"           {k}: {v:.2e}")
    if parity.get("step") and not parity.get("skipped"):
        st = parity["step"]
        lines.append(f"step     training-step graph vs the PyTorch step: max rel diff {st['max_rel_diff']:.2e} "
                     f"(tolerance {st['tolerance']})")
    lines.append("files")
    roles = {v: k for k, v in (m.get("roles") or {}).items()}
    for rel, e in (m.get("files") or {}).items():
        lines.append(f"  {rel:32s} {_size(e['size']):>10s}  sha256 {e['sha256'][:16]}…  {roles.get(rel, '')}")
    total = sum(e["size"] for e in (m.get("files") or {}).values())
    lines.append(f"  total {_size(total)}")
    return "\n".join(lines)
