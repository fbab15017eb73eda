"""The ONNX operators the portable engine replays as PyTorch operations (``OPS``: op type -> function of its
inputs, attributes and run context), for :class:`ftedge.export.onnx_torch.GraphFunction`.

Shape arithmetic (``Shape`` → ``Gather`` → ``Concat`` → ``Reshape``) is kept as Python lists of (symbolic) ints
(:class:`Sh`), which keeps the batch dimension dynamic under symbolic tracing.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from ftedge.errors import ExportError
from ftedge.export.onnx_recurrent import gru, lstm


class Sh(list):
    """A small int64 tensor held as Python (sym)ints: the result of shape arithmetic."""

    def __init__(self, values: Any, scalar: bool = False) -> None:
        super().__init__(values)
        self.scalar = scalar


def _tensor(v: Any) -> torch.Tensor:
    if isinstance(v, Sh):
        if all(isinstance(x, bool) for x in v) and len(v):  # a comparison of shapes
            t = torch.tensor(list(v), dtype=torch.bool)
        elif all(isinstance(x, int) for x in v):
            t = torch.tensor(list(v), dtype=torch.int64)
        else:  # a symbolic size (the batch) must stay symbolic: int() would bake the tracing batch into the graph
            t = torch.stack([torch.scalar_tensor(x, dtype=torch.int64) for x in v]) if len(v) else \
                torch.zeros(0, dtype=torch.int64)
        return t.reshape(()) if v.scalar else t
    return v


def _ints(v: Any) -> list[int]:
    if isinstance(v, Sh):
        return list(v)
    return [int(x) for x in v.reshape(-1).tolist()]


_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 6: torch.int32, 7: torch.int64, 9: torch.bool,
           10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        out[a.name] = v
    return out


def _small_int(arr: np.ndarray) -> bool:
    return arr.dtype == np.int64 and arr.ndim <= 1 and arr.size <= 16


def _const(arr: np.ndarray) -> Any:
    if _small_int(arr):
        return Sh(arr.reshape(-1).tolist(), scalar=arr.ndim == 0)
    return torch.from_numpy(np.array(arr))

def _bin(fn: Callable) -> Callable:
    def op(ins, at, ctx):  # noqa: ANN001, ANN202
        a, b = ins[0], ins[1]
        if isinstance(a, Sh) and isinstance(b, Sh):
            if a.scalar or b.scalar or len(a) == len(b) or len(a) == 1 or len(b) == 1:
                n = max(len(a), len(b))
                aa, bb = (list(a) * n if len(a) == 1 else list(a)), (list(b) * n if len(b) == 1 else list(b))
                return Sh([fn(x, y) for x, y in zip(aa, bb)], scalar=a.scalar and b.scalar)
        return fn(_tensor(a), _tensor(b))
    return op


def _cmp(name: str) -> Callable:
    """A comparison or logical op: Python's on shape lists (a ``Where`` over shapes stays a shape), torch's on
    tensors."""
    py = {"eq": lambda a, b: a == b, "lt": lambda a, b: a < b, "gt": lambda a, b: a > b, "le": lambda a, b: a <= b,
          "ge": lambda a, b: a >= b, "logical_and": lambda a, b: bool(a) and bool(b),
          "logical_or": lambda a, b: bool(a) or bool(b), "logical_xor": lambda a, b: bool(a) != bool(b)}[name]
    th = getattr(torch, name)

    def op(ins, at, ctx):  # noqa: ANN001, ANN202
        return _bin(py if isinstance(ins[0], Sh) and isinstance(ins[1], Sh) else th)(ins, at, ctx)
    return op


def _div(a: Any, b: Any) -> Any:
    if isinstance(a, torch.Tensor) and not a.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a / b
    return a // b  # shape arithmetic: int64 division


def _axes(ins: list, at: dict, idx: int = 1) -> list[int] | None:
    if "axes" in at:
        return list(at["axes"])
    if len(ins) > idx and ins[idx] is not None:
        return _ints(ins[idx])
    return None


def _reduce(fn: str) -> Callable:
    def op(ins, at, ctx):  # noqa: ANN001, ANN202
        x = _tensor(ins[0])
        axes = _axes(ins, at)
        keep = bool(at.get("keepdims", 1))
        if not axes:
            if at.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        axes = [a % x.dim() for a in axes]
        if fn == "mean":
            return x.mean(dim=axes, keepdim=keep)
        if fn == "sum":
            return x.sum(dim=axes, keepdim=keep)
        y = x
        for a in sorted(axes, reverse=True):
            y = (y.amax if fn == "max" else y.amin)(dim=a, keepdim=keep)
        return y
    return op


def _pads(at: dict, nd: int) -> tuple[list[int], list[int]]:
    pads = list(at.get("pads", [0] * (2 * nd)))
    if at.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise ExportError(f"auto_pad={at['auto_pad']} is not supported by the portable engine; re-export with an "
                          "explicit padding")
    return pads[:nd], pads[nd:]


def _pad_input(x: torch.Tensor, begin: list[int], end: list[int], value: float = 0.0) -> torch.Tensor:
    flat: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        flat += [b, e]
    return F.pad(x, flat, value=value) if any(flat) else x


def _conv(ins, at, ctx):  # noqa: ANN001, ANN202
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    nd = w.dim() - 2
    begin, end = _pads(at, nd)
    stride = list(at.get("strides", [1] * nd))
    dil = list(at.get("dilations", [1] * nd))
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    if begin == end:
        return fn(x, w, b, stride, begin, dil, at.get("group", 1))
    return fn(_pad_input(x, begin, end), w, b, stride, 0, dil, at.get("group", 1))


def _pool(kind: str) -> Callable:
    def op(ins, at, ctx):  # noqa: ANN001, ANN202
        x = ins[0]
        k = list(at["kernel_shape"])
        nd = len(k)
        begin, end = _pads(at, nd)
        stride = list(at.get("strides", [1] * nd))
        ceil = bool(at.get("ceil_mode", 0))
        if kind == "max":
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
            if begin != end:
                return fn(_pad_input(x, begin, end, -math.inf), k, stride, 0, list(at.get("dilations", [1] * nd)), ceil)
            return fn(x, k, stride, begin, list(at.get("dilations", [1] * nd)), ceil)
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
        include = bool(at.get("count_include_pad", 0))
        if begin != end:
            return fn(_pad_input(x, begin, end), k, stride, 0, ceil, True)
        return fn(x, k, stride, begin, ceil, include)
    return op


def _batchnorm(ins, at, ctx):  # noqa: ANN001, ANN202
    x, scale, bias, mean, var = ins[:5]
    eps = float(at.get("epsilon", 1e-5))
    if not at.get("training_mode", 0):
        return F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)
    # Batch statistics from primitives (ONNX BatchNormalization in training mode is not computed by every runtime)
    dims = [0] + list(range(2, x.dim()))
    n = math.prod(x.shape[d] for d in dims)
    bmean = x.mean(dim=dims)
    bvar = ((x - bmean.reshape(1, -1, *[1] * (x.dim() - 2))) ** 2).mean(dim=dims)
    shape = (1, -1, *[1] * (x.dim() - 2))
    y = (x - bmean.reshape(shape)) / torch.sqrt(bvar.reshape(shape) + eps) * scale.reshape(shape) + bias.reshape(shape)
    m = float(at.get("momentum", 0.9))  # ONNX momentum: the weight of the running value (1 - PyTorch's)
    new_mean = mean * m + bmean.detach() * (1 - m)
    new_var = var * m + (bvar * (n / max(n - 1, 1))).detach() * (1 - m)  # PyTorch keeps the unbiased variance
    return y, new_mean, new_var


def _layernorm(ins, at, ctx):  # noqa: ANN001, ANN202
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    axis = at.get("axis", -1) % x.dim()
    return F.layer_norm(x, tuple(x.shape[axis:]), w, b, float(at.get("epsilon", 1e-5)))


def _groupnorm(ins, at, ctx):  # noqa: ANN001, ANN202
    x, w, b = ins[:3]
    g = int(at["num_groups"])
    c = x.shape[1]
    if w.numel() == g and g != c:  # opset 18's per-group scale and bias
        w, b = w.repeat_interleave(c // g), b.repeat_interleave(c // g)
    return F.group_norm(x, g, w, b, float(at.get("epsilon", 1e-5)))


def _reshape(ins, at, ctx):  # noqa: ANN001, ANN202
    x, shape = ins[0], list(_ints(ins[1]) if not isinstance(ins[1], Sh) else ins[1])
    if isinstance(x, Sh):
        return Sh(list(x))
    if not at.get("allowzero", 0):
        shape = [x.shape[i] if (isinstance(d, int) and d == 0) else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def _gather(ins, at, ctx):  # noqa: ANN001, ANN202
    data, idx = ins[0], ins[1]
    axis = at.get("axis", 0)
    if isinstance(data, Sh) and isinstance(idx, Sh):
        n = len(data)
        picked = [data[int(i) % n] for i in idx]
        return Sh(picked[0:1], scalar=True) if idx.scalar else Sh(picked)
    data = _tensor(data)
    axis %= data.dim()
    if isinstance(idx, Sh):
        if idx.scalar:
            return data.select(axis, int(idx[0]))
        idx = torch.tensor(list(idx), dtype=torch.int64)
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    flat = torch.index_select(data, axis, idx.reshape(-1))
    return flat.reshape(*data.shape[:axis], *idx.shape, *data.shape[axis + 1:])


def _unsqueeze(ins, at, ctx):  # noqa: ANN001, ANN202
    x, axes = ins[0], _axes(ins, at)
    if isinstance(x, Sh):
        return Sh(list(x))  # scalar -> [scalar]
    for a in sorted(a % (x.dim() + len(axes)) for a in axes):
        x = x.unsqueeze(a)
    return x


def _squeeze(ins, at, ctx):  # noqa: ANN001, ANN202
    x, axes = ins[0], _axes(ins, at)
    if isinstance(x, Sh):
        return Sh(list(x), scalar=True) if len(x) == 1 else x
    if axes is None:
        return x.squeeze()
    for a in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def _concat(ins, at, ctx):  # noqa: ANN001, ANN202
    ins = [i for i in ins if i is not None]
    if all(isinstance(i, Sh) for i in ins):
        return Sh([v for i in ins for v in i])
    return torch.cat([_tensor(i) for i in ins], dim=at["axis"])


def _slice(ins, at, ctx):  # noqa: ANN001, ANN202
    x = ins[0]
    if "starts" in at:  # opset < 10
        starts, ends, axes, steps = list(at["starts"]), list(at["ends"]), at.get("axes"), None
    else:
        starts, ends = _ints(ins[1]), _ints(ins[2])
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else None
        steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else None
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = steps or [1] * len(starts)
    if isinstance(x, Sh):
        return Sh(list(x)[slice(starts[0], ends[0] if ends[0] < 2 ** 62 else None, steps[0])])
    index = [slice(None)] * x.dim()
    for s, e, a, st in zip(starts, ends, axes, steps):
        big = 2 ** 62
        index[a % x.dim()] = slice(None if s in (-big, big) else s, None if abs(e) >= big else e, st)
    if any(st < 0 for st in steps):
        raise ExportError("Slice with a negative step is not supported by the portable engine")
    return x[tuple(index)]


def _split(ins, at, ctx):  # noqa: ANN001, ANN202
    x = ins[0]
    axis = at.get("axis", 0)
    sizes = list(at["split"]) if "split" in at else (_ints(ins[1]) if len(ins) > 1 and ins[1] is not None else None)
    if sizes is None:
        n = ctx["n_outputs"]
        sizes = [x.shape[axis] // n] * n
    return tuple(torch.split(x, sizes, dim=axis))


def _shape(ins, at, ctx):  # noqa: ANN001, ANN202
    x = ins[0]
    dims = list(x.shape) if not isinstance(x, Sh) else ([] if x.scalar else [len(x)])
    return Sh(dims[at.get("start", 0):at["end"]] if "end" in at else dims[at.get("start", 0):])


def _expand(ins, at, ctx):  # noqa: ANN001, ANN202
    x, shape = _tensor(ins[0]), _ints(ins[1])  # a tensor shape (a Where over shapes) gives plain ints too
    n = max(x.dim(), len(shape))
    xs = [1] * (n - x.dim()) + list(x.shape)
    ts = [1] * (n - len(shape)) + shape
    out = [a if (isinstance(b, int) and b == 1) else b for a, b in zip(xs, ts)]
    return x.reshape(xs).expand(out)


def _cast(ins, at, ctx):  # noqa: ANN001, ANN202
    x = ins[0]
    if isinstance(x, Sh):
        return x
    return x.to(_DTYPES[at["to"]])


def _constant_of_shape(ins, at, ctx):  # noqa: ANN001, ANN202
    value = at.get("value", np.zeros(1, np.float32))
    dims = list(ins[0])
    if value.dtype == np.int64 and len(dims) == 1 and isinstance(dims[0], int) and dims[0] <= 16:
        return Sh([int(value.reshape(-1)[0])] * dims[0])  # shape arithmetic (nn.MultiheadAttention's mask expand)
    return torch.full(list(ins[0]), float(value.reshape(-1)[0]) if value.dtype.kind == "f" else int(value.reshape(-1)[0]),
                      dtype=torch.from_numpy(np.array(value)).dtype)


def _dropout(ins, at, ctx):  # noqa: ANN001, ANN202
    x = ins[0]
    training = len(ins) > 2 and ins[2] is not None and bool(_tensor(ins[2]).reshape(-1)[0])
    if not training or not ctx["training"]:
        return x
    name = ctx["node_output"]
    ctx["trace"].dropout_inputs[name] = x
    mask = ctx["masks"].get(name)
    if mask is None:  # discovery run: no mask yet
        return x
    return x * mask


def _clip(ins, at, ctx):  # noqa: ANN001, ANN202
    x = ins[0]
    lo = ins[1] if len(ins) > 1 and ins[1] is not None else at.get("min")
    hi = ins[2] if len(ins) > 2 and ins[2] is not None else at.get("max")
    return torch.clamp(x, None if lo is None else float(_tensor(lo)) if not isinstance(lo, float) else lo,
                       None if hi is None else float(_tensor(hi)) if not isinstance(hi, float) else hi)


def _gemm(ins, at, ctx):  # noqa: ANN001, ANN202
    a, b = ins[0], ins[1]
    if at.get("transA", 0):
        a = a.t()
    if at.get("transB", 0):
        b = b.t()
    y = (a @ b) * at.get("alpha", 1.0) if at.get("alpha", 1.0) != 1.0 else a @ b
    if len(ins) > 2 and ins[2] is not None:
        c = ins[2]
        y = y + (c * at.get("beta", 1.0) if at.get("beta", 1.0) != 1.0 else c)
    return y


def _range(ins, at, ctx):  # noqa: ANN001, ANN202
    vals = [v[0] if isinstance(v, Sh) else v.item() for v in ins[:3]]
    return torch.arange(vals[0], vals[1], vals[2])


def _where(ins, at, ctx):  # noqa: ANN001, ANN202
    if all(isinstance(i, Sh) for i in ins) and not ins[0].scalar:
        n = max(len(i) for i in ins)
        c, a, b = ([*i] * n if len(i) == 1 else list(i) for i in ins)
        if len(c) == len(a) == len(b) == n:
            return Sh([x if k else y for k, x, y in zip(c, a, b)])
    return torch.where(_tensor(ins[0]), _tensor(ins[1]), _tensor(ins[2]))


def _unary(fn: Callable) -> Callable:
    return lambda ins, at, ctx: fn(_tensor(ins[0]))


def _isinf(ins, at, ctx):  # noqa: ANN001, ANN202
    x = _tensor(ins[0])
    pos, neg = at.get("detect_positive", 1), at.get("detect_negative", 1)
    if pos and neg:
        return torch.isinf(x)
    if pos:
        return torch.isposinf(x)
    return torch.isneginf(x) if neg else torch.zeros_like(x, dtype=torch.bool)


def _arg(fn: Callable) -> Callable:
    def op(ins, at, ctx):  # noqa: ANN001, ANN202
        x = _tensor(ins[0])
        axis, keep = at.get("axis", 0) % max(x.dim(), 1), bool(at.get("keepdims", 1))
        if at.get("select_last_index", 0):  # the last of equal extremes: search the reversed axis
            return x.size(axis) - 1 - fn(x.flip(axis), dim=axis, keepdim=keep)
        return fn(x, dim=axis, keepdim=keep)
    return op


def _variadic(fn: Callable) -> Callable:
    def op(ins, at, ctx):  # noqa: ANN001, ANN202
        out = _tensor(ins[0])
        for x in ins[1:]:
            out = fn(out, _tensor(x))
        return out
    return op


def _softmax(fn: Callable) -> Callable:
    return lambda ins, at, ctx: fn(ins[0], dim=at.get("axis", -1))


def _flatten(ins, at, ctx):  # noqa: ANN001, ANN202
    x = ins[0]
    axis = at.get("axis", 1) % max(x.dim(), 1)
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _pad(ins, at, ctx):  # noqa: ANN001, ANN202
    x = ins[0]
    if at.get("mode", "constant") != "constant":
        raise ExportError(f"Pad mode {at['mode']!r} is not supported by the portable engine")
    pads = _ints(ins[1]) if len(ins) > 1 else list(at["pads"])
    value = float(_tensor(ins[2]).reshape(-1)[0]) if len(ins) > 2 and ins[2] is not None else 0.0
    nd = x.dim()
    return _pad_input(x, pads[:nd], pads[nd:], value)


OPS: dict[str, Callable] = {
    "Add": _bin(lambda a, b: a + b), "Sub": _bin(lambda a, b: a - b), "Mul": _bin(lambda a, b: a * b),
    "Div": _bin(_div), "Pow": _bin(lambda a, b: torch.pow(a, b)),
    "Equal": _cmp("eq"), "Less": _cmp("lt"), "Greater": _cmp("gt"), "LessOrEqual": _cmp("le"),
    "GreaterOrEqual": _cmp("ge"), "And": _cmp("logical_and"), "Or": _cmp("logical_or"), "Xor": _cmp("logical_xor"),
    "IsNaN": _unary(torch.isnan), "IsInf": _isinf, "ArgMax": _arg(torch.argmax), "ArgMin": _arg(torch.argmin),
    "Mod": lambda ins, at, ctx: (torch.fmod if at.get("fmod", 0) else torch.remainder)(_tensor(ins[0]), _tensor(ins[1]))
    if not (isinstance(ins[0], Sh) and isinstance(ins[1], Sh)) else _bin(lambda a, b: a % b)(ins, at, ctx),
    "MatMul": lambda ins, at, ctx: torch.matmul(ins[0], ins[1]), "Gemm": _gemm,
    "Relu": _unary(torch.relu), "Tanh": _unary(torch.tanh), "Sigmoid": _unary(torch.sigmoid),
    "Erf": _unary(torch.erf), "Exp": _unary(torch.exp), "Log": _unary(torch.log), "Sqrt": _unary(torch.sqrt),
    "Neg": _unary(torch.neg), "Abs": _unary(torch.abs), "Reciprocal": _unary(torch.reciprocal),
    "Floor": _unary(torch.floor), "Ceil": _unary(torch.ceil), "Sin": _unary(torch.sin), "Cos": _unary(torch.cos),
    "Not": lambda ins, at, ctx: Sh([not x for x in ins[0]], ins[0].scalar) if isinstance(ins[0], Sh)
    else torch.logical_not(ins[0]), "Sign": _unary(torch.sign), "Softsign": _unary(F.softsign),
    "Softplus": _unary(F.softplus), "HardSwish": _unary(F.hardswish), "Mish": _unary(F.mish),
    "Selu": _unary(F.selu), "Identity": lambda ins, at, ctx: ins[0],
    "Gelu": lambda ins, at, ctx: F.gelu(ins[0], approximate=at.get("approximate", "none")),
    "LeakyRelu": lambda ins, at, ctx: F.leaky_relu(ins[0], at.get("alpha", 0.01)),
    "Elu": lambda ins, at, ctx: F.elu(ins[0], at.get("alpha", 1.0)),
    "HardSigmoid": lambda ins, at, ctx: torch.clamp(ins[0] * at.get("alpha", 0.2) + at.get("beta", 0.5), 0, 1),
    "PRelu": lambda ins, at, ctx: torch.where(ins[0] >= 0, ins[0], ins[0] * ins[1]),
    "Softmax": _softmax(torch.softmax), "LogSoftmax": _softmax(torch.log_softmax),
    "Min": _variadic(torch.minimum), "Max": _variadic(torch.maximum), "Sum": _variadic(torch.add),
    "ReduceMean": _reduce("mean"), "ReduceSum": _reduce("sum"), "ReduceMax": _reduce("max"), "ReduceMin": _reduce("min"),
    "GlobalAveragePool": lambda ins, at, ctx: ins[0].mean(dim=list(range(2, ins[0].dim())), keepdim=True),
    "GlobalMaxPool": lambda ins, at, ctx: ins[0].amax(dim=list(range(2, ins[0].dim())), keepdim=True),
    "AveragePool": _pool("avg"), "MaxPool": _pool("max"),
    "Conv": _conv, "LSTM": lstm, "GRU": gru, "BatchNormalization": _batchnorm, "LayerNormalization": _layernorm,
    "InstanceNormalization": lambda ins, at, ctx: F.instance_norm(ins[0], weight=ins[1], bias=ins[2],
                                                                 eps=float(at.get("epsilon", 1e-5))),
    "GroupNormalization": _groupnorm,
    "Flatten": _flatten, "Reshape": _reshape,
    "Transpose": lambda ins, at, ctx: ins[0].permute(*at["perm"]) if "perm" in at else ins[0].permute(
        *reversed(range(ins[0].dim()))),
    "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Concat": _concat, "Slice": _slice, "Split": _split,
    "Gather": _gather, "Shape": _shape, "Expand": _expand, "Cast": _cast, "CastLike": lambda ins, at, ctx: (
        ins[0] if isinstance(ins[0], Sh) else _tensor(ins[0]).to(_tensor(ins[1]).dtype)),
    "ConstantOfShape": _constant_of_shape, "Dropout": _dropout, "Clip": _clip, "Range": _range, "Where": _where,
    "Pad": _pad, "Tile": lambda ins, at, ctx: _tensor(ins[0]).repeat(*_ints(ins[1])),
    "Einsum": lambda ins, at, ctx: torch.einsum(at["equation"], *[_tensor(i) for i in ins]),
    "Size": lambda ins, at, ctx: Sh([math.prod(ins[0].shape)], scalar=True),
    "Trilu": lambda ins, at, ctx: (torch.triu if at.get("upper", 1) else torch.tril)(
        ins[0], int(_ints(ins[1])[0]) if len(ins) > 1 and ins[1] is not None else 0),
}
