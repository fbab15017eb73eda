"""The portable engine's graphs: one training step (forward, loss, backward, optimizer update) in standard ONNX
ops, derived with PyTorch's autograd, plus the inference head the device evaluates with.

``step.onnx``
    inputs  ``p:<param>`` (trainable parameters), ``m:<param>``/``v:<param>`` (AdamW moments), ``b:<buffer>``
            (running statistics of training-mode BatchNorm), ``lr`` (the step size: for AdamW the learning rate
            times the bias correction ``sqrt(1 - b2^t) / (1 - b1^t)``, computed by the device in float32 as
            onnxruntime-training does), ``lr_wd`` (learning rate × weight decay), ``max_grad_norm`` (<= 0: no
            clipping), the head inputs, ``labels``, ``weights`` (per sample; 0 pads a short batch), ``mask:<k>``
            (dropout masks, already scaled by 1 / (1 - ratio))
    outputs the same state names with ``_out`` appended, ``loss``, the model output.
``head.onnx``
    the trainable graph in eval mode whose trainable parameters and BatchNorm statistics are initializers that
    are also graph inputs: fed, they override the exported values; the device's eval pass and the personalized
    ``model.onnx`` both use it.
``init.safetensors``
    the initial parameters and buffers.
The update matches onnxruntime-training's generated optimizer graphs (see ``OPTIMIZER_DEFAULTS``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from ftedge.errors import ExportError
from ftedge.export.conv_grad import decompositions
from ftedge.export.ep_portable import ep_portable_decompositions, ep_portable_graph
from ftedge.export.onnx_torch import GraphFunction
from ftedge.bundle.manifest import BATCH, TensorSpec

log = logging.getLogger(__name__)

TRACE_BATCH = 17  # a batch size unlikely to equal another dimension (symbolic tracing unifies equal sizes)

# What onnxruntime-training 1.19.2's generate_artifacts builds (onnxblock defaults: AdamW in adam_mode 1 with bias
# correction on the step size, decoupled decay after the update, no gradient clipping; SGD: p -= lr * g).
OPTIMIZER_DEFAULTS = {
    "adamw": {"betas": [0.9, 0.999], "eps": 1e-6, "weight_decay": 0.0, "bias_correction": True, "max_grad_norm": 0.0},
    "sgd": {"momentum": 0.0, "weight_decay": 0.0, "max_grad_norm": 0.0},
}


@dataclass
class StepSpec:
    """Names and shapes of the step graph's inputs, recorded in the manifest (``engines.portable``)."""

    params: list[str]
    buffers: list[str]
    optimizer: str
    masks: list[dict[str, Any]]  # {"name", "shape" (with "batch"), "ratio"}
    check: dict[str, Any] = field(default_factory=dict)  # step.onnx vs the eager PyTorch step

    def to_json(self) -> dict[str, Any]:
        return {"params": self.params, "buffers": self.buffers, "optimizer": self.optimizer, "masks": self.masks}


def per_sample_loss(loss: str, out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The bundle loss of each sample (mean over its non-batch elements)."""
    if loss == "cross-entropy":
        return F.cross_entropy(out, labels, reduction="none")
    if loss == "bce":
        per = F.binary_cross_entropy_with_logits(out, labels, reduction="none")
    elif loss == "mse":
        per = (out - labels) ** 2
    elif loss == "l1":
        per = (out - labels).abs()
    else:
        raise ExportError(f"unknown loss {loss!r}")
    return per.reshape(per.shape[0], -1).mean(dim=1)


def weighted_loss(loss: str, out: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (per_sample_loss(loss, out, labels) * weights).sum() / weights.sum()


def adamw_update(p, g, m, v, step_size, lr_wd, betas, eps):  # noqa: ANN001, ANN201
    """onnxruntime-training's AdamWOptimizer, adam_mode 1: bias correction folded into ``step_size``, eps added to
    sqrt(v), decoupled weight decay applied to the updated parameter."""
    b1, b2 = np.float32(betas[0]), np.float32(betas[1])
    m = m * float(b1) + g * float(np.float32(1) - b1)  # (1 - b1) in float32, as the kernel computes it
    v = v * float(b2) + g * g * float(np.float32(1) - b2)
    p = p - step_size * m / (torch.sqrt(v) + float(np.float32(eps)))
    return p - lr_wd * p, m, v


def adamw_all(params: list[torch.Tensor], grads: list[torch.Tensor], ms: list[torch.Tensor], vs: list[torch.Tensor],
              lr: torch.Tensor, lr_wd: torch.Tensor, max_norm: torch.Tensor
              ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Global-norm clipping (off for ``max_norm`` <= 0) then :func:`adamw_update` of every parameter with the
    default betas and eps: (parameters, first moments, second moments) after the step."""
    hyper = OPTIMIZER_DEFAULTS["adamw"]
    coef = clip_coefficient(grads, max_norm)
    out = [adamw_update(p, g * coef, m, v, lr, lr_wd, hyper["betas"], hyper["eps"])
           for p, g, m, v in zip(params, grads, ms, vs)]
    return [o[0] for o in out], [o[1] for o in out], [o[2] for o in out]


def clip_coefficient(grads: list[torch.Tensor], max_norm: torch.Tensor) -> torch.Tensor:
    """Global-norm clipping as ``torch.nn.utils.clip_grad_norm_`` (and ORT's InplaceClipGradNorm); off for <= 0."""
    total = torch.sqrt(sum((g * g).sum() for g in grads))
    coef = max_norm / (total + 1e-6)
    return torch.where((max_norm > 0) & (coef < 1), coef, torch.ones_like(coef))


def _example(spec: TensorSpec, batch: int, gen: torch.Generator) -> torch.Tensor:
    shape = spec.concrete_shape(batch)
    if spec.dtype.startswith("float"):
        return torch.randn(*shape, generator=gen)
    lo, hi = spec.value_range or (0, 2)
    t = torch.randint(lo, hi, shape, generator=gen)
    return t.bool() if spec.dtype == "bool" else t.to(getattr(torch, spec.dtype))


def _batch_axis(a: torch.Size, b: torch.Size) -> int:
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if len(a) != len(b) or len(diff) != 1:
        raise ExportError(f"a dropout in the trainable part has no single batch axis ({list(a)} vs {list(b)}); "
                          "use --engine ort-training or move the dropout out of the trainable part")
    return diff[0]


def eval_mode_head(model: onnx.ModelProto, overridable: list[str]) -> onnx.ModelProto:
    """The trainable graph as an inference graph: training Dropout → Identity, BatchNorm on running statistics,
    ``overridable`` initializers also graph inputs."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        if node.op_type == "Dropout":
            keep = node.input[0]
            node.op_type = "Identity"
            del node.input[:]
            node.input.append(keep)
            del node.output[1:]
            del node.attribute[:]
        elif node.op_type == "BatchNormalization":
            for a in node.attribute:
                if a.name == "training_mode":
                    a.i = 0
            del node.output[1:]
    inits = {i.name: i for i in out.graph.initializer}
    present = {i.name for i in out.graph.input}
    for name in overridable:
        if name in inits and name not in present:
            t = inits[name]
            out.graph.input.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
    return out


def _batch_symbolic(example: tuple, axes: list[int | None]) -> list[torch.Tensor]:
    """Fake copies of ``example`` whose batch axis (only) is symbolic: tracing with every size symbolic (make_fx's
    ``tracing_mode="symbolic"``) is several times slower and gains nothing, the other sizes being fixed."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
    out = []
    for t, axis in zip(example, axes):
        dyn = [DimDynamic.DYNAMIC if i == axis else DimDynamic.STATIC for i in range(t.dim())]
        out.append(mode.from_tensor(t, symbolic_context=StatelessSymbolicContext(dynamic_sizes=dyn)))
    return out


class _Wrapped(torch.nn.Module):
    def __init__(self, gm: torch.nn.Module) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, *a: torch.Tensor) -> Any:
        return self.gm(*a)


def build_step(head_model: onnx.ModelProto, head_inputs: list[TensorSpec], output_spec: TensorSpec,
               trainable: list[str], loss: str, optimizer: str, out_dir: Path) -> tuple[dict[str, Path], StepSpec]:
    """Write ``step.onnx``, ``head.onnx`` and ``init.safetensors`` for the trainable graph ``head_model``."""
    from safetensors.numpy import save_file
    from torch._decomp import core_aten_decompositions
    from torch.func import grad_and_value
    from torch.fx.experimental.proxy_tensor import make_fx

    bn = [n for n in head_model.graph.node if n.op_type == "BatchNormalization"
          and any(a.name == "training_mode" and a.i for a in n.attribute)]
    buffers = [n.input[k] for n in bn for k in (3, 4)]
    fn = GraphFunction(head_model, overridable=list(trainable) + buffers)
    missing = [t for t in trainable if t not in fn.initial]
    if missing:
        raise ExportError(f"trainable parameter(s) {', '.join(missing)} are not initializers of the trainable graph")
    names, n = list(trainable), len(trainable)
    adam = optimizer == "adamw"
    hyper = OPTIMIZER_DEFAULTS[optimizer]
    out_name = output_spec.name

    # Discovery: which training-mode dropouts there are and where their batch axis lies.
    gen = torch.Generator().manual_seed(0)
    shapes = {}
    for batch in (2, 3):
        feeds = {s.name: _example(s, batch, gen) for s in head_inputs}
        with torch.no_grad():
            _, trace = fn(feeds, dict(fn.initial), training=True)
        shapes[batch] = {k: v.shape for k, v in trace.dropout_inputs.items()}
    ratios = {}
    for node in head_model.graph.node:
        if node.op_type == "Dropout" and node.output[0] in shapes[2]:
            r = node.input[1] if len(node.input) > 1 else ""
            ratio = next((numpy_helper.to_array(i) for i in head_model.graph.initializer if i.name == r), None)
            if ratio is None:
                ratio = next((numpy_helper.to_array(a.t) for c in head_model.graph.node if c.op_type == "Constant"
                              and c.output[0] == r for a in c.attribute), np.array(0.5))
            ratios[node.output[0]] = float(ratio)
    masks = []
    for k, (site, shape2) in enumerate(shapes[2].items()):
        axis = _batch_axis(shape2, shapes[3][site])
        shape: list[Any] = list(shape2)
        shape[axis] = BATCH
        masks.append({"name": f"mask:{k}", "node": site, "shape": shape, "ratio": ratios.get(site, 0.5)})
    spec = StepSpec(params=names, buffers=buffers, optimizer=optimizer, masks=masks)

    def step(*a: torch.Tensor) -> tuple[torch.Tensor, ...]:
        i = 0
        params = list(a[i:i + n]); i += n
        if adam:
            ms, vs = list(a[i:i + n]), list(a[i + n:i + 2 * n]); i += 2 * n
        bufs = list(a[i:i + len(buffers)]); i += len(buffers)
        lr, lr_wd, clip = a[i:i + 3]; i += 3
        feeds = {s.name: a[i + j] for j, s in enumerate(head_inputs)}; i += len(head_inputs)
        labels, weights = a[i], a[i + 1]; i += 2
        mask_feeds = {m["node"]: a[i + j] for j, m in enumerate(masks)}
        fixed = dict(zip(buffers, bufs))

        def loss_fn(ps: list[torch.Tensor]) -> tuple[torch.Tensor, tuple]:
            outs, trace = fn(feeds, {**fixed, **dict(zip(names, ps))}, training=True, masks=mask_feeds)
            out = outs[out_name]
            return weighted_loss(loss, out, labels, weights), (out, [trace.buffers.get(b, fixed[b]) for b in buffers])

        grads, (value, (out, new_bufs)) = grad_and_value(loss_fn, has_aux=True)(params)
        coef = clip_coefficient(grads, clip)
        grads = [g * coef for g in grads]
        new_p, new_m, new_v = [], [], []
        for j, (p, g) in enumerate(zip(params, grads)):
            if adam:
                p2, m2, v2 = adamw_update(p, g, ms[j], vs[j], lr, lr_wd, hyper["betas"], hyper["eps"])
                new_m.append(m2)
                new_v.append(v2)
            else:
                p2 = p - lr * g - lr_wd * p
            new_p.append(p2)
        return (*new_p, *new_m, *new_v, *[b.detach() for b in new_bufs], value.detach(), out.detach())

    gen = torch.Generator().manual_seed(1)
    B = TRACE_BATCH
    p0 = [fn.initial[k].clone() for k in names]
    state = [*p0]
    in_names = [f"p:{k}" for k in names]
    if adam:  # distinct tensors: make_fx merges an input passed twice
        state += [torch.zeros_like(p) for p in p0] + [torch.zeros_like(p) for p in p0]
        in_names += [f"m:{k}" for k in names] + [f"v:{k}" for k in names]
    state += [fn.initial[b].clone() for b in buffers]
    in_names += [f"b:{b}" for b in buffers]
    scalars = [torch.tensor(1e-3), torch.tensor(1e-5), torch.tensor(float(hyper["max_grad_norm"]))]
    in_names += ["lr", "lr_wd", "max_grad_norm"]
    batch_in = [_example(s, B, gen) for s in head_inputs]
    in_names += [s.name for s in head_inputs]
    def labels_for(batch: int, g: torch.Generator) -> torch.Tensor:
        if loss == "cross-entropy":
            return torch.randint(0, output_spec.concrete_shape(1)[-1], (batch,), generator=g)
        return torch.rand(*output_spec.concrete_shape(batch), generator=g)

    labels = labels_for(B, gen)
    weights = torch.ones(B)
    mask_in = [torch.ones(*[B if d == BATCH else d for d in m["shape"]]) for m in masks]
    in_names += ["labels", "weights"] + [m["name"] for m in masks]
    example = (*state, *scalars, *batch_in, labels, weights, *mask_in)
    axes = [None] * (len(state) + len(scalars)) + [s.batch_axis for s in head_inputs] + [0, 0] + [
        m["shape"].index(BATCH) for m in masks]
    out_names = [f"{k}_out" for k in in_names[:len(state)]] + ["loss", out_name]

    torch_log = logging.getLogger("torch")
    level = torch_log.level
    torch_log.setLevel(logging.WARNING)  # symbolic tracing logs thousands of DEBUG records
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = make_fx(step, decomposition_table={**core_aten_decompositions(), **decompositions(),
                                                    **ep_portable_decompositions()},
                         tracing_mode="fake", _allow_non_fake_inputs=True)(*_batch_symbolic(example, axes))
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"tracing the training step failed: {type(exc).__name__}: {str(exc).splitlines()[0]}. "
                          "Use --engine ort-training for this model") from exc

    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    dyn: list[Any] = [None] * (len(state) + 3)
    for s in head_inputs:
        dyn.append({s.batch_axis: batch} if s.batch_axis is not None else None)
    dyn += [{0: batch}, {0: batch}]
    dyn += [{m["shape"].index(BATCH): batch} for m in masks]
    out_dir.mkdir(parents=True, exist_ok=True)
    step_path = out_dir / "step.onnx"
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            program = torch.onnx.export(_Wrapped(gm), example, dynamo=True, input_names=in_names,
                                        output_names=out_names, dynamic_shapes=(tuple(dyn),), optimize=True,
                                        verbose=False, report=False)
            program.save(os.fspath(step_path))
        onnx.save(ep_portable_graph(onnx.load(os.fspath(step_path))), os.fspath(step_path))
    except Exception as exc:
        cause = exc.__cause__ or exc
        raise ExportError(f"exporting the training-step graph failed: {type(cause).__name__}: "
                          f"{str(cause).splitlines()[0] if str(cause) else ''}. Use --engine ort-training for this model"
                          ) from exc
    finally:
        torch_log.setLevel(level)
    spec.check = _verify(step, [*state, *scalars], head_inputs, labels_for, masks, step_path, in_names, out_names)
    head_path = out_dir / "head.onnx"
    onnx.save(eval_mode_head(head_model, names + buffers), os.fspath(head_path))
    init_path = out_dir / "init.safetensors"
    save_file({k: np.ascontiguousarray(fn.initial[k].numpy()) for k in names + buffers}, os.fspath(init_path))
    return {"step": step_path, "head": head_path, "init": init_path}, spec


STEP_TOLERANCE = 1e-4


def _verify(step: Any, state: list[torch.Tensor], head_inputs: list[TensorSpec], labels_for: Any,
            masks: list[dict[str, Any]], path: Path, in_names: list[str], out_names: list[str]) -> dict[str, Any]:
    """Run ``step.onnx`` and the eager PyTorch step on the same random batches (5 and 2 samples, dropout masks,
    a large step size) and compare loss, output, gradients (AdamW's first moment, SGD's step), second moments and
    BatchNorm statistics, each relative to its largest value; raise listing each one that differs."""
    from ftedge.runtime.engines.ort_backend import InferenceModel

    sess = InferenceModel(path).session
    declared = {i.name for i in sess.get_inputs()}  # ep_portable_inputs dropped the inputs no node reads
    worst: dict[str, float] = {}
    failures = []
    for batch in (5, 2):
        g = torch.Generator().manual_seed(batch)
        args = list(state)
        args[-3:] = [torch.tensor(0.05), torch.tensor(5e-4), args[-1]]  # lr, lr_wd, max_grad_norm
        args += [_example(s, batch, g) for s in head_inputs]
        weights = torch.ones(batch)
        weights[-1] = 0.5
        args += [labels_for(batch, g), weights]
        for m in masks:
            shape = [batch if d == BATCH else d for d in m["shape"]]
            keep = 1 - m["ratio"]
            args.append((torch.rand(*shape, generator=g) < keep).float() / keep)
        ref = step(*args)
        got = sess.run(None, {k: a.numpy() for k, a in zip(in_names, args) if k in declared})
        feeds = dict(zip(in_names, args))
        lr = float(args[in_names.index("lr")])
        pairs = []
        for name, r, o in zip(out_names, ref, got):
            r = r.detach().numpy()
            if name.startswith("p:") and "m:" + name[2:-4] in feeds:
                continue  # AdamW: m_out (= (1 - b1) * gradient) and v_out carry the check; a near-zero gradient's
                          # update is +-lr whatever its size, so the parameters would compare rounding noise
            if name.startswith("p:"):  # SGD: compare the step taken, i.e. the gradient
                p0 = feeds[name[:-4]].numpy()
                r, o = (r - p0) / lr, (o - p0) / lr
            pairs.append((name, r, o))
        # State is compared relative to the largest value of its kind (all gradients, all second moments):
        # a gradient that is zero in exact arithmetic (a key bias under softmax, a bias before a norm) is noise
        group_max: dict[str, float] = {}
        for name, r, _ in pairs:
            kind = name[:2] if name[1:2] == ":" else name
            group_max[kind] = max(group_max.get(kind, 0.0), float(np.abs(r).max()) if r.size else 0.0)
        for name, r, o in pairs:
            scale = max(group_max[name[:2] if name[1:2] == ":" else name], 1e-6)
            diff = float(np.abs(r - o).max()) / scale if r.size else 0.0
            worst[name] = max(worst.get(name, 0.0), diff)
            if not diff <= STEP_TOLERANCE:
                failures.append(f"{name} (batch {batch}): {diff:.3g}")
    if failures:
        raise ExportError("the training-step graph disagrees with the PyTorch step it was traced from: "
                          + "; ".join(failures) + ". Report the model; use --engine ort-training meanwhile")
    return {"max_rel_diff": max(worst.values()), "tolerance": STEP_TOLERANCE, "batch_sizes": [5, 2],
            "reference": "pytorch step (torch.func.grad_and_value + optimizer update)"}
