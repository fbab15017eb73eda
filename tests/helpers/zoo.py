"""Small architectures built in the tests (random weights, seeded): one per family ftedge must export.

Import as ``MODEL`` specs: ``tests/zoo.py:cnn`` etc.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class DepthwiseCNN(nn.Module):
    """Keyword-spotting style CNN: BatchNorm, depthwise-separable convs, global pooling."""

    def __init__(self, classes: int = 12) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.unsqueeze(1)).flatten(1))


class RecurrentNet(nn.Module):
    """GRU or LSTM over a sequence, linear head on the last step."""

    def __init__(self, cell: str = "gru", classes: int = 5) -> None:
        super().__init__()
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(input_size=8, hidden_size=24, num_layers=2, batch_first=True)
        self.head = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class TinyTransformer(nn.Module):
    """Token classifier: embedding + 2 encoder layers + mean pooling + head."""

    def __init__(self, vocab: int = 50, d: int = 32, classes: int = 3, batch_first: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=64, dropout=0.1, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.batch_first = batch_first
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        if not self.batch_first:
            h = self.encoder(h.transpose(0, 1)).transpose(0, 1)
        else:
            h = self.encoder(h)
        return self.head(h.mean(dim=1))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.Tanh())
        self.out = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


class TwoInputs(nn.Module):
    """A float feature vector and int64 category ids, fused."""

    def __init__(self) -> None:
        super().__init__()
        self.cat = nn.Embedding(10, 8)
        self.num = nn.Linear(6, 8)
        self.fuse = nn.Linear(16 + 8, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, feats: torch.Tensor, cats: torch.Tensor) -> torch.Tensor:
        c = self.cat(cats).mean(dim=1)
        h = torch.relu(self.fuse(torch.cat([self.num(feats), c, c], dim=-1)))
        return self.head(h)


class DictOutput(nn.Module):
    """Returns a dict; ``--output scores`` selects the tensor to train."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 16), nn.GELU())
        self.scores = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        return {"hidden": h, "scores": self.scores(h)}


class WithInstanceNorm(nn.Module):
    """InstanceNorm has no ORT gradient: training it must fail with a clear error."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3)
        self.norm = nn.InstanceNorm1d(8, affine=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.conv(x)).mean(-1))


def _seeded(cls, *args, **kwargs):  # noqa: ANN001, ANN202
    torch.manual_seed(0)
    return cls(*args, **kwargs)


def cnn() -> nn.Module:
    return _seeded(DepthwiseCNN)


def gru() -> nn.Module:
    return _seeded(RecurrentNet, "gru")


def lstm() -> nn.Module:
    return _seeded(RecurrentNet, "lstm")


def transformer() -> nn.Module:
    return _seeded(TinyTransformer)


def transformer_seq_first() -> nn.Module:
    return _seeded(TinyTransformer, batch_first=False)


def mlp() -> nn.Module:
    return _seeded(MLP)


def two_inputs() -> nn.Module:
    return _seeded(TwoInputs)


def dict_output() -> nn.Module:
    return _seeded(DictOutput)


def instance_norm() -> nn.Module:
    return _seeded(WithInstanceNorm)


not_a_module = 42


class BatchSizeBranch(nn.Module):
    """Python control flow on the batch size: tracing bakes one branch, so parity must fail."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        if x.shape[0] > 3:
            h = h * 2.0
        return self.head(h)


def batch_branch() -> nn.Module:
    return _seeded(BatchSizeBranch)


def broken_factory() -> nn.Module:
    raise RuntimeError("weights file not found")


class ConvBN(nn.Module):
    """Conv + BatchNorm with non-trivial running statistics, no dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3)
        self.bn = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 2)
        with torch.no_grad():
            self.bn.running_mean.fill_(0.5)
            self.bn.running_var.fill_(4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean(-1))


def conv_bn() -> nn.Module:
    return _seeded(ConvBN)


class Wav2Vec2StyleEncoder(nn.Module):
    """wav2vec2-style feature encoder on raw samples: strided Conv1d + GroupNorm + GELU blocks (GroupNorm has no
    onnxruntime-training gradient: only the portable engine trains it)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv0 = nn.Conv1d(1, 16, 10, stride=5, bias=False)
        self.norm0 = nn.GroupNorm(16, 16)
        self.conv1 = nn.Conv1d(16, 24, 3, stride=2, bias=False)
        self.norm1 = nn.GroupNorm(4, 24)
        self.head = nn.Linear(24, classes)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        h = nn.functional.gelu(self.norm0(self.conv0(waveform.unsqueeze(1))))
        h = nn.functional.gelu(self.norm1(self.conv1(h)))
        return self.head(h.mean(-1))


class MobileNetV3Block(nn.Module):
    """MobileNetV3-style inverted residual: 1x1 expand, BatchNorm, HardSwish, depthwise 3x3, squeeze-excite with
    HardSigmoid, 1x1 project (HardSwish has no onnxruntime-training gradient)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.Hardswish())
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16),
                                       nn.Hardswish())
        self.se_reduce, self.se_expand = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, classes)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        h = self.depthwise(self.expand(s))
        w = nn.functional.hardsigmoid(self.se_expand(torch.relu(self.se_reduce(h.mean((2, 3), keepdim=True)))))
        h = self.project(h * w) + s
        return self.head(h.mean((2, 3)))


def wav2vec2_encoder() -> nn.Module:
    return _seeded(Wav2Vec2StyleEncoder)


def mobilenet_v3_block() -> nn.Module:
    return _seeded(MobileNetV3Block)


class LastTokenPooling(nn.Module):
    """Decoder-style classifier: scores every token and keeps the last non-pad one, indexing rows with
    ``arange(batch)`` as Hugging Face's *ForSequenceClassification decoders do (that index is batch-shaped but not
    a per-sample value: it must never be cached as an embedding)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.body = nn.Linear(8, 8)
        self.score = nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.score(torch.tanh(self.body(self.embed(tokens))))
        last = (tokens != 0).sum(1) - 1
        return logits[torch.arange(tokens.shape[0]), last]


class BatchCentered(nn.Module):
    """Frozen features centred on their batch mean: each sample's value depends on the others in its batch."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.body(x))
        return self.head(h - h.mean(0, keepdim=True))


def last_token_pooling() -> nn.Module:
    return _seeded(LastTokenPooling)


def batch_centered() -> nn.Module:
    return _seeded(BatchCentered)


class BiRecurrent(nn.Module):
    """Two-layer bidirectional LSTM or GRU; only the top layer trains (onnxruntime-training has no gradient for a
    bidirectional recurrent layer: only the portable engine trains it)."""

    def __init__(self, cell: str = "lstm") -> None:
        super().__init__()
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(6, 12, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0].mean(1))


def bilstm() -> nn.Module:
    return _seeded(BiRecurrent, "lstm")


def bigru() -> nn.Module:
    return _seeded(BiRecurrent, "gru")


class SdpaAttention(nn.Module):
    """Two ``F.scaled_dot_product_attention`` layers as models call it: bidirectional with a boolean padding mask
    (its exported graph masks fully masked rows with ``IsNaN``/``Where``), then causal (``is_causal=True``)."""

    def __init__(self, vocab: int = 40, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.heads = heads
        self.qkv1, self.out1 = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.qkv2, self.out2 = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.head = nn.Linear(d, 3)

    def _attend(self, h: torch.Tensor, qkv: nn.Linear, out: nn.Linear, **kw) -> torch.Tensor:  # noqa: ANN003
        b, s, d = h.shape
        q, k, v = (t.reshape(b, s, self.heads, d // self.heads).transpose(1, 2) for t in qkv(h).chunk(3, -1))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, **kw)
        return h + out(a.transpose(1, 2).reshape(b, s, d))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        keep = tokens != 0  # token 0 pads
        h = self._attend(self.embed(tokens), self.qkv1, self.out1, attn_mask=keep[:, None, None, :])
        h = self._attend(h, self.qkv2, self.out2, is_causal=True)
        return self.head((h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1))


class MhaAttention(nn.Module):
    """``nn.MultiheadAttention`` both ways models call it: without weights (its SDPA path) under a key-padding mask
    and a boolean causal mask, and with averaged weights (its matmul + softmax path) under a key-padding mask."""

    def __init__(self, vocab: int = 40, d: int = 16, seq: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.attn1 = nn.MultiheadAttention(d, 2, batch_first=True)
        self.attn2 = nn.MultiheadAttention(d, 2, batch_first=True)
        self.register_buffer("causal", torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1), persistent=False)
        self.head = nn.Linear(d, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pad = (tokens == 0) & (torch.arange(tokens.shape[1]) > 0)  # position 0 holds BOS: no row is fully masked
        h = self.embed(tokens)
        h = h + self.attn1(h, h, h, key_padding_mask=pad, attn_mask=self.causal, need_weights=False)[0]
        a, w = self.attn2(h, h, h, key_padding_mask=pad, need_weights=True)
        return self.head((h + a).mean(1) + (w.mean(1, keepdim=True) @ h).squeeze(1))  # the weights reach the loss


class TopKPooling(nn.Module):
    """Top-2 pooling over time (ONNX ``TopK``): an operator the portable engine has no gradient for."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.pool = TopK()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.tanh(self.body(x))))


class TopK(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.topk(2, dim=1).values.mean(1)


def topk_pooling() -> nn.Module:
    return _seeded(TopKPooling)


def sdpa_attention() -> nn.Module:
    return _seeded(SdpaAttention)


def mha_attention() -> nn.Module:
    return _seeded(MhaAttention)


# Every architecture family the exporter must handle: (id, MODEL, extra CLI args).
FAMILIES = {
    "cnn-batchnorm-depthwise": ("cnn", ["--input", "x:float32:1,101,40", "--head", "classifier",
                                        "--labels", "yes,no,up,down"]),
    "gru": ("gru", ["--input", "x:float32:1,12,8"]),
    "lstm": ("lstm", ["--input", "x:float32:1,12,8", "--num-classes", "4"]),
    "transformer-last-block": ("transformer", ["--input", "tokens:int64:1,10:0-50",
                                               "--trainable", r"encoder\.layers\.1\.", "--trainable", "^head"]),
    "transformer-seq-first": ("transformer_seq_first", ["--input", "tokens:int64:1,10:0-50",
                                                        "--trainable", r"encoder\.layers\.1\.", "--trainable", "^head"]),
    "mlp-mse": ("mlp", ["--input", "x:float32:1,20", "--loss", "mse"]),
    "mlp-l1-sgd": ("mlp", ["--input", "x:float32:1,20", "--loss", "l1", "--optimizer", "sgd", "--lr", "0.05"]),
    "two-inputs-float-int64": ("two_inputs", ["--input", "feats:float32:1,6", "--input", "cats:int64:1,4:0-10"]),
    "dict-output-bce": ("dict_output", ["--input", "x:float32:1,10", "--output", "scores", "--loss", "bce"]),
    # attention in the training step, as models call it (tokens 0-4 include the pad id 0 often)
    "sdpa-masks": ("sdpa_attention", ["--input", "tokens:int64:1,8:0-40", "--trainable", r"^(qkv|out|head)"]),
    "mha-masks": ("mha_attention", ["--input", "tokens:int64:1,8:0-40", "--trainable", r"^(attn|head)"]),
}

# Families only the portable engine trains: a trainable GroupNorm block and a trainable HardSwish block.
PORTABLE_ONLY = {
    "groupnorm-block": ("wav2vec2_encoder", ["--input", "waveform:float32:1,400",
                                             "--trainable", r"^(conv1|norm1|head)\."]),
    "hardswish-block": ("mobilenet_v3_block", ["--input", "x:float32:1,3,16,16",
                                               "--trainable", r"^(expand|depthwise|se_|project|head)"]),
    "bilstm-top-layer": ("bilstm", ["--input", "x:float32:1,5,6", "--trainable", r"^rnn\..*_l1", "--trainable", "^head"]),
    "bigru-top-layer": ("bigru", ["--input", "x:float32:1,5,6", "--trainable", r"^rnn\..*_l1", "--trainable", "^head"]),
}


def gaussian_classes(n_per_class: int = 60, dims: int = 20, classes: int = 4, seed: int = 0, scale: float = 1.0):
    """SYNTHETIC data: ``classes`` Gaussian blobs in ``dims`` dimensions (x float32 [N, dims], y int64 [N])."""
    import numpy as np

    rng = np.random.default_rng(seed)
    means = np.random.default_rng(1234).standard_normal((classes, dims)).astype(np.float32) * scale
    y = np.repeat(np.arange(classes), n_per_class)
    x = (means[y] + rng.standard_normal((len(y), dims))).astype(np.float32)
    return x, y


def pretrained_mlp() -> nn.Module:
    """The MLP trained in PyTorch on ``gaussian_classes`` (a good head: the gate's baseline is high)."""
    torch.manual_seed(0)
    model = MLP()
    x, y = gaussian_classes(seed=99, scale=0.6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval()
