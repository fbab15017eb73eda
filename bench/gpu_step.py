"""Training-step time on an NVIDIA GPU: the bundle's portable step graph (``step.onnx``) on the CUDA EP vs PyTorch on
CUDA, the same heads, the same batches, one process (issue 35).

    python -m bench.gpu_step --json          # in the GPU venv: scripts/gpu-check.sh builds it and runs this
    python -m bench.gpu_step --device cpu    # the same mechanics on the CPU (CPU EP vs PyTorch CPU): a check only

One venv holds torch (a CUDA build) and onnxruntime-gpu (instead of onnxruntime: one ``onnxruntime`` module per
venv). Heads, defined here (MODEL specs ``bench/gpu_step.py:<name>``), random weights (seeded), SYNTHETIC inputs:
- ``wide-mlp``: frozen Linear 64→512 + ReLU; trainable head 512→2048→2048→10 (GELU), batch 256;
- ``transformer-block``: frozen embedding (1000×256, 64 tokens); trainable head = one TransformerEncoderLayer (4 heads,
  ff 1024, no dropout) + mean pool + Linear 4, batch 64;
- ``small-mlp``: frozen Linear 20→64 + ReLU; trainable head Linear 64→4, batch 32 (tiny: launch overhead dominates).
Per head: ``ftedge export`` once, head inputs = the backbone's outputs on one random batch, then (a) the portable
engine on ``[CUDA, CPU]``, (b) the same head module in PyTorch on cuda, AdamW with the bundle's lr / betas / eps /
weight decay, ``loss.item()`` each step (the runtime fetches each step's loss too), (c) the portable engine on the CPU
EP for scale. Median ms of ``--steps`` after ``--warmup`` untimed steps, and each side's loss after them (the same
initial weights and batch: a check that both sides trained the same head; they are not bit-equal — the step graph's
AdamW, onnxruntime-training's adam_mode 1, folds the bias correction into the step size, so its eps acts at another
scale than PyTorch's, and on the wide heads the losses drift apart by ~10-20 % within the first dozen steps).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from bench._common import ROOT, md_table, median, progress

say = progress("[gpu_step] ")


class _Net(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class _BlockHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, batch_first=True)
        self.out = nn.Linear(256, 4)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.block(h).mean(dim=1))


def wide_mlp() -> nn.Module:  # noqa: D103 - MODEL specs
    torch.manual_seed(0)
    return _Net(nn.Sequential(nn.Linear(64, 512), nn.ReLU()),
                nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 2048), nn.GELU(), nn.Linear(2048, 10)))


def transformer_block() -> nn.Module:  # noqa: D103
    torch.manual_seed(0)
    return _Net(nn.Embedding(1000, 256), _BlockHead())


def small_mlp() -> nn.Module:  # noqa: D103
    torch.manual_seed(0)
    return _Net(nn.Sequential(nn.Linear(20, 64), nn.ReLU()), nn.Linear(64, 4))


HEADS = {  # name -> (factory, export --input, batch)
    "wide-mlp": (wide_mlp, "x:float32:1,64", 256),
    "transformer-block": (transformer_block, "tokens:int64:1,64:0-1000", 64),
    "small-mlp": (small_mlp, "x:float32:1,20", 32),
}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_ms(fn, steps: int, warmup: int, device: str = "cpu") -> tuple[float, float]:  # noqa: ANN001
    """Median ms of ``steps`` calls after ``warmup``; and the last call's value (a loss)."""
    for _ in range(warmup):
        fn()
    times, value = [], None
    for _ in range(steps):
        _sync(device)
        t = time.perf_counter()
        value = fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return median(times) * 1e3, value


def run_head(name: str, work: Path, device: str, steps: int, warmup: int) -> dict:
    import numpy as np

    from ftedge.cli import main as ftedge_main
    from ftedge.runtime import load_bundle
    from ftedge.runtime.engines.session import BundleSession

    factory, spec, batch = HEADS[name]
    out = work / name
    if ftedge_main(["export", f"{Path(__file__).resolve()}:{factory.__name__}", "-o", str(out), "--input", spec,
                    "--head", "head", "--quiet", "--force"]):
        raise SystemExit(f"export of {name} failed")
    bundle = load_bundle(out)
    rng = np.random.default_rng(0)
    feeds = {s.name: (rng.integers(*(s.value_range or (0, 2)), s.concrete_shape(batch)).astype(s.dtype)
                      if s.dtype.startswith("int") else rng.standard_normal(s.concrete_shape(batch)).astype(s.dtype))
             for s in bundle.inputs}
    head = BundleSession(bundle).embed(feeds)
    y = rng.integers(0, int(bundle.output.shape[-1]), batch)
    ep = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    row: dict = {"head": name, "batch": batch, "device": device}
    runs = [("ort_cpu", ["CPUExecutionProvider"])] if device == "cpu" else [
        ("ort_cuda", [ep, "CPUExecutionProvider"]), ("ort_cpu", ["CPUExecutionProvider"])]
    for label, providers in runs:
        session = BundleSession(bundle, providers, engine="portable")
        ms, loss = _time_ms(lambda s=session: s.train_step(head, y)[0], steps, warmup)
        row[label] = {"ms": ms, "loss": loss, "providers": session.model.step.providers,
                      "placement": session.model.step.placement()}   # nodes the CUDA EP left to the CPU EP
    opt_cfg = bundle.manifest["optimizer"]
    module = factory().head.to(device).train()
    opt = torch.optim.AdamW(module.parameters(), lr=opt_cfg["lr"], betas=tuple(opt_cfg["betas"]), eps=opt_cfg["eps"],
                            weight_decay=opt_cfg["weight_decay"])
    x = [torch.from_numpy(head[s.name]).to(device) for s in bundle.head_inputs]
    yt = torch.from_numpy(y).to(device)

    def torch_step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(module(*x), yt)
        loss.backward()
        opt.step()
        return float(loss.item())

    ms, loss = _time_ms(torch_step, steps, warmup, device)
    row[f"torch_{device}"] = {"ms": ms, "loss": loss, "torch": torch.__version__}
    return row


def report(rows: list[dict], device: str) -> list[str]:
    ort, ref = f"ort_{device}", f"torch_{device}"
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (mechanics check, not a GPU figure)"
    return [f"Device: {gpu}; torch {torch.__version__}. Median ms per training step (SYNTHETIC inputs).", "",
            *md_table(("head", "batch", f"portable step, {device} EP", f"PyTorch {device}", "PyTorch ÷ portable",
                       "portable, CPU EP", "loss after (portable / PyTorch)", "step graph ran on"),
                      [(r["head"], r["batch"], f"{r[ort]['ms']:.3f}", f"{r[ref]['ms']:.3f}",
                        f"{r[ref]['ms'] / r[ort]['ms']:.2f}×", f"{r['ort_cpu']['ms']:.3f}" if device == "cuda" else "—",
                        f"{r[ort]['loss']:.4f} / {r[ref]['loss']:.4f}",
                        _where(r[ort]["placement"])) for r in rows])]


def _where(p: dict) -> str:
    """``CUDA (2/57 nodes on CPU EP)``, or why the graph moved to the CPU EP."""
    if p.get("fallback"):
        return "CPU (moved: " + p["fallback"][:80].replace("|", "/") + ")"
    lead = p["providers"][0].removesuffix("ExecutionProvider")
    nodes = f" ({p['cpu_fallback_nodes']}/{p['nodes']} nodes on CPU EP)" if p.get("nodes") else ""
    return lead + nodes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_step", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--heads", default=",".join(HEADS), help=f"comma-separated, of {', '.join(HEADS)}")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--json", action="store_true", help="also print one JSON object on the last line")
    args = ap.parse_args(argv)
    if args.device == "cuda":
        from ftedge.runtime.engines.ort_backend import available_providers

        if not torch.cuda.is_available() or "CUDAExecutionProvider" not in available_providers():
            raise SystemExit(f"no CUDA here: torch.cuda.is_available() = {torch.cuda.is_available()}, onnxruntime "
                             f"providers {available_providers()}; run in the venv scripts/gpu-check.sh builds, or "
                             "pass --device cpu to check the mechanics")
    names = [h for h in args.heads.split(",") if h]
    unknown = [h for h in names if h not in HEADS]
    if unknown:
        raise SystemExit(f"unknown --heads {','.join(unknown)}; choose from {', '.join(HEADS)}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for name in names:
            say(name)
            rows.append(run_head(name, Path(tmp), args.device, args.steps, args.warmup))
    print("\n".join(report(rows, args.device)))
    if args.json:
        print(json.dumps({"device": args.device, "rows": rows, "root": str(ROOT)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
