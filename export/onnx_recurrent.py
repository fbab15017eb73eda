"""ONNX recurrent layers (LSTM, GRU) as PyTorch ops, for the portable engine's graph interpreter
(export/onnx_torch.py): unrolled over the (fixed) sequence length, so autograd differentiates them like any other
op, in every direction (onnxruntime-training's LSTMGrad/GRUGrad run the forward direction only)."""

from __future__ import annotations

import torch

from ftedge.errors import ExportError

_ACTS = {"Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Relu": torch.relu}


def _rnn_common(ins, at):  # noqa: ANN001, ANN202
    """ONNX LSTM/GRU inputs as time-major X, per-direction weights, initial states and directions."""
    x, w, r = ins[0], ins[1], ins[2]
    b = ins[3] if len(ins) > 3 and ins[3] is not None else None
    if len(ins) > 4 and ins[4] is not None:
        raise ExportError("the portable engine trains recurrent layers over whole sequences only (sequence_lens "
                          "given: a packed sequence); pad the inputs instead of packing them")
    if at.get("clip") is not None:
        raise ExportError("the portable engine cannot train a recurrent layer with cell clipping (clip)")
    if at.get("layout", 0):
        x = x.transpose(0, 1)
    direction = at.get("direction", "forward")
    dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    hidden = int(at["hidden_size"])
    acts = [a.decode() if isinstance(a, bytes) else a for a in at.get("activations", [])]
    return x, w, r, b, dirs, hidden, acts


def _rnn_outputs(ys, hs, extra, at, ctx):  # noqa: ANN001, ANN202
    y = torch.stack(ys, 1)  # [seq, num_directions, batch, hidden]
    h = torch.stack(hs, 0)
    if at.get("layout", 0):
        y, h = y.permute(2, 0, 1, 3), h.transpose(0, 1)
        extra = [e.transpose(0, 1) for e in extra]
    return (y, h, *extra)[:max(ctx["n_outputs"], 1)]


def lstm(ins, at, ctx):  # noqa: ANN001, ANN202
    """ONNX LSTM (opset 14 semantics, no sequence_lens / clip / input_forget) unrolled over the time steps."""
    x, w, r, b, dirs, hidden, acts = _rnn_common(ins, at)
    f, g, hact = (_ACTS[a] for a in (acts[:3] if acts else ["Sigmoid", "Tanh", "Tanh"]))
    h0 = ins[5] if len(ins) > 5 and ins[5] is not None else None
    c0 = ins[6] if len(ins) > 6 and ins[6] is not None else None
    p = ins[7] if len(ins) > 7 and ins[7] is not None else None
    if at.get("input_forget", 0):
        raise ExportError("the portable engine cannot train an LSTM with input_forget=1 (coupled gates)")
    seq, batch = x.shape[0], x.shape[1]
    ys, hs, cs = [], [], []
    for d, name in enumerate(dirs):
        wd, rd = w[d], r[d]
        bias = (b[d, :4 * hidden] + b[d, 4 * hidden:]) if b is not None else None
        h = h0[d] if h0 is not None else x.new_zeros(batch, hidden)
        c = c0[d] if c0 is not None else x.new_zeros(batch, hidden)
        xw = torch.matmul(x, wd.t())  # all time steps at once: [seq, batch, 4 * hidden]
        if bias is not None:
            xw = xw + bias
        out = [None] * seq
        for t in (range(seq) if name == "forward" else range(seq - 1, -1, -1)):
            z = xw[t] + h @ rd.t()
            i, o, fg, cc = z.split(hidden, dim=-1)  # ONNX gate order: input, output, forget, cell
            if p is not None:
                i, fg = i + p[d, :hidden] * c, fg + p[d, 2 * hidden:] * c
            i, fg, cc = f(i), f(fg), g(cc)
            c = fg * c + i * cc
            if p is not None:
                o = o + p[d, hidden:2 * hidden] * c
            h = f(o) * hact(c)
            out[t] = h
        ys.append(torch.stack(out, 0))
        hs.append(h)
        cs.append(c)
    return _rnn_outputs(ys, hs, [torch.stack(cs, 0)], at, ctx)


def gru(ins, at, ctx):  # noqa: ANN001, ANN202
    """ONNX GRU (either linear_before_reset) unrolled over the time steps."""
    x, w, r, b, dirs, hidden, acts = _rnn_common(ins, at)
    f, g = (_ACTS[a] for a in (acts[:2] if acts else ["Sigmoid", "Tanh"]))
    h0 = ins[5] if len(ins) > 5 and ins[5] is not None else None
    before_reset = at.get("linear_before_reset", 0)
    seq, batch = x.shape[0], x.shape[1]
    ys, hs = [], []
    for d, name in enumerate(dirs):
        wd, rd = w[d], r[d]
        wb = b[d, :3 * hidden] if b is not None else None
        rb = b[d, 3 * hidden:] if b is not None else None
        h = h0[d] if h0 is not None else x.new_zeros(batch, hidden)
        xw = torch.matmul(x, wd.t())
        if wb is not None:
            xw = xw + wb
        out = [None] * seq
        for t in (range(seq) if name == "forward" else range(seq - 1, -1, -1)):
            xz, xr, xh = xw[t].split(hidden, dim=-1)  # ONNX gate order: update, reset, hidden
            rz, rr, rh = rd.split(hidden, dim=0)
            bz, br, bh = rb.split(hidden) if rb is not None else (0, 0, 0)
            z = f(xz + h @ rz.t() + bz)
            rg = f(xr + h @ rr.t() + br)
            if before_reset:
                hh = g(xh + rg * (h @ rh.t() + bh))
            else:
                hh = g(xh + (rg * h) @ rh.t() + bh)
            h = (1 - z) * hh + z * h
            out[t] = h
        ys.append(torch.stack(out, 0))
        hs.append(h)
    return _rnn_outputs(ys, hs, [], at, ctx)
