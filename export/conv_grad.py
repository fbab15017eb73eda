"""Decompositions that make a traced training step exportable to ONNX.

``aten.convolution_backward`` as forward convolutions, so a trainable Conv's gradient exports to ONNX.

torch.onnx has no translation for ``convolution_backward``. Given to ``make_fx`` as a decomposition, it is
traced as: the input gradient, a transposed convolution of the output gradient; the weight gradient, a
convolution of the input (batch and channels swapped, grouped) with the output gradient as its kernel; the
bias gradient, a sum.
"""

from __future__ import annotations

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
        n, cin = x.shape[0], x.shape[1]
        cout = w.shape[0]
        cin_g, cout_g = cin // groups, cout // groups
        sp, osp = list(x.shape[2:]), list(grad_out.shape[2:])
        # input as (cin_g, groups*N, *sp): "batch" = input channel within its group, "channels" = (group, sample)
        xi = x.reshape(n, groups, cin_g, *sp).permute(2, 1, 0, *range(3, 3 + nd)).reshape(cin_g, groups * n, *sp)
        # output gradient as kernels (groups*cout_g, N, *osp)
        go = grad_out.reshape(n, groups, cout_g, *osp).permute(1, 2, 0, *range(3, 3 + nd)).reshape(cout, n, *osp)
        gw = aten.convolution(xi, go, None, dilation, padding, stride, False, [0] * nd, groups)
        gw = gw[(slice(None), slice(None), *[slice(0, ki) for ki in k])]
        g_w = gw.transpose(0, 1)  # (cout, cin_g, *k)
    if output_mask[2]:
        g_b = grad_out.sum(dim=[0, *range(2, 2 + nd)])
    return g_in, g_w, g_b


def _empty_permuted(size: list[int], physical_layout: list[int], **kw: Any) -> torch.Tensor:
    # uninitialized memory (BCE-with-logits' backward) has no ONNX op: zeros have the same meaning once written
    return aten.zeros(size, dtype=kw.get("dtype"), device=kw.get("device"))


def decompositions() -> dict[Any, Callable]:
    return {aten.convolution_backward.default: _conv_backward, aten.empty_permuted.default: _empty_permuted}
