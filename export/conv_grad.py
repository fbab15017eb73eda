"""Decompositions that make a traced training step exportable to ONNX.

``aten.convolution_backward`` as forward convolutions, so a trainable Conv's gradient exports to ONNX.

torch.onnx has no translation for ``convolution_backward``. Given to ``make_fx`` as a decomposition, it is
traced as: the input gradient, a transposed convolution of the output gradient; the weight gradient, strided
slices of the padded input (one per kernel offset) contracted with the output gradient by a MatMul; the bias
gradient, a sum.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable

import torch

aten = torch.ops.aten


def _conv_backward(grad_out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, bias_sizes: Any, stride: list[int],
                   padding: list[int], dilation: list[int], transposed: bool, output_padding: list[int], groups: int,
                   output_mask: list[bool]) -> tuple[Any, Any, Any]:
    if transposed:
        return NotImplemented  # not needed for Conv layers; the default path reports it
    nd = w.dim() - 2
    k = list(w.shape[2:])
    g_in = g_w = g_b = None
    if output_mask[0]:
        out_pad = []
        for i in range(nd):
            full = (grad_out.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (k[i] - 1) + 1
            out_pad.append(x.shape[2 + i] - full)
        g_in = aten.convolution(grad_out, w, None, stride, padding, dilation, True, out_pad, groups)
    if output_mask[1]:
        g_w = _weight_grad(grad_out, x, k, stride, padding, dilation, groups)
    if output_mask[2]:
        g_b = grad_out.sum(dim=[0, *range(2, 2 + nd)])
    return g_in, g_w, g_b


def _weight_grad(grad_out: torch.Tensor, x: torch.Tensor, k: list[int], stride: list[int], padding: list[int],
                 dilation: list[int], groups: int) -> torch.Tensor:
    """dL/dw[co, ci, *kk] = sum over samples and output positions of grad_out[n, co, o] * x_pad[n, ci, o*s + kk*d].

    One strided slice of the padded input per kernel offset, stacked, then one batched MatMul per group: every
    tensor keeps its channel axes static. (A convolution of the input with the output gradient as its kernel
    would put the batch on the channel axis; OpenVINO's compiler cannot build such a Conv: issue 35,
    docs/openvino-probe.md.)
    """
    nd = len(k)
    n, cin = x.shape[0], x.shape[1]
    cout = grad_out.shape[1]
    cin_g, cout_g = cin // groups, cout // groups
    osp = list(grad_out.shape[2:])
    xp = _zero_pad(x, padding)
    slices = []
    for kk in itertools.product(*[range(ki) for ki in k]):
        t = xp
        for i in range(nd):
            start = kk[i] * dilation[i]
            t = aten.slice(t, 2 + i, start, start + stride[i] * (osp[i] - 1) + 1, stride[i])
        slices.append(t)
    kn, pn = len(slices), math.prod(osp)
    # (N, cin, K, *osp) -> (groups, N*P, cin_g*K): the contraction axis (samples x positions) alone is dynamic
    cols = torch.stack(slices, dim=2).reshape(n, groups, cin_g * kn, pn).permute(1, 0, 3, 2)
    cols = cols.reshape(groups, -1, cin_g * kn)
    go = grad_out.reshape(n, groups, cout_g, pn).permute(1, 2, 0, 3).reshape(groups, cout_g, -1)
    return torch.bmm(go, cols).reshape(cout, cin_g, *k)


def _zero_pad(x: torch.Tensor, padding: list[int]) -> torch.Tensor:
    """``x`` with ``padding[i]`` zeros before and after each spatial axis, as concatenations: under make_fx,
    ``constant_pad_nd`` specializes the symbolic batch size to the traced one."""
    for i, p in enumerate(padding):
        if p:
            shape = list(x.shape)
            shape[2 + i] = p
            zeros = x.new_zeros(shape)
            x = torch.cat([zeros, x, zeros], dim=2 + i)
    return x


def _empty_permuted(size: list[int], physical_layout: list[int], **kw: Any) -> torch.Tensor:
    # uninitialized memory (BCE-with-logits' backward) has no ONNX op: zeros have the same meaning once written
    return aten.zeros(size, dtype=kw.get("dtype"), device=kw.get("device"))


def decompositions() -> dict[Any, Callable]:
    return {aten.convolution_backward.default: _conv_backward, aten.empty_permuted.default: _empty_permuted}
