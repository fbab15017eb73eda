"""What the device must do to a raw sample before the model sees it, recorded in the manifest.

Audio is inferred from the model (a ``LogMel`` frontend in the graph, see ``exporter.audio_preprocessing``);
text and images are declared on the command line: ``--tokenizer``/``--max-length`` and
``--image-size``/``--mean``/``--std``. Both are checked against the ``--input`` specs here, before any
export work, so a mismatch fails early with what to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftedge.errors import UsageError
from ftedge.bundle.manifest import TensorSpec

TOKENIZER_FILE = "tokenizer.json"
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _int_dims(spec: TensorSpec) -> list[int]:
    return [int(d) for d in spec.sample_shape]


def text_preprocessing(tokenizer: Path, max_length: int | None, inputs: list[TensorSpec]) -> dict[str, Any]:
    """``{"type": "text", "tokenizer": "tokenizer.json", "max_length": L, "inputs": {role: input name}}``.

    The model's token inputs are found by name (``input_ids`` required; ``attention_mask`` and
    ``token_type_ids`` when present), must be integer ``[batch, L]``, and ``L`` is the padded length the
    device tokenizes to (legacy export bakes the sequence length into Reshape nodes).
    """
    if not tokenizer.is_file():
        raise UsageError(f"--tokenizer {tokenizer}: no such file; pass a Hugging Face tokenizer.json")
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise UsageError("--tokenizer needs the `tokenizers` package: pip install 'ftedge[export]'") from exc
    try:
        Tokenizer.from_file(str(tokenizer))
    except Exception as exc:  # noqa: BLE001 - the library raises a bare Exception on bad JSON
        raise UsageError(f"--tokenizer {tokenizer} is not a tokenizers JSON file ({exc})") from exc
    by_name = {s.name: s for s in inputs}
    roles = {r: r for r in TEXT_INPUTS if r in by_name}
    if "input_ids" not in roles:
        raise UsageError("--tokenizer needs an input named input_ids, e.g. --input input_ids:int64:1,128:0-30522 "
                         "(plus attention_mask / token_type_ids if the model takes them)")
    lengths = set()
    for role in roles:
        spec = by_name[role]
        if spec.dtype not in ("int64", "int32") or len(spec.sample_shape) != 1:
            raise UsageError(f"--input {role} must be int64 [batch, L] for a text bundle, got {spec.dtype} "
                             f"{spec.sample_shape}")
        lengths.add(_int_dims(spec)[0])
    if len(lengths) != 1:
        raise UsageError(f"the token inputs must share one length L, got {sorted(lengths)}")
    length = lengths.pop()
    if max_length is not None and max_length != length:
        raise UsageError(f"--max-length {max_length} differs from the inputs' length {length}: give the same L in "
                         f"--input (e.g. input_ids:int64:1,{max_length}:0-30522)")
    others = sorted(set(by_name) - set(roles))
    if others:
        raise UsageError(f"a text bundle's inputs come from the tokenizer ({', '.join(TEXT_INPUTS)}); "
                         f"{', '.join(others)} cannot be filled on the device")
    return {"type": "text", "tokenizer": TOKENIZER_FILE, "max_length": length, "inputs": roles}


def image_preprocessing(size: tuple[int, int], mean: list[float] | None, std: list[float] | None,
                        inputs: list[TensorSpec]) -> dict[str, Any]:
    """``{"type": "image", "input": name, "size": [H, W], "mean": [3], "std": [3], ...}``: decode, RGB,
    resize to H×W (bilinear), scale to [0, 1], ``(x - mean) / std`` per channel, NCHW float32."""
    if len(inputs) != 1:
        raise UsageError(f"--image-size needs a model with one image input, got {len(inputs)} inputs")
    spec = inputs[0]
    h, w = size
    if h < 1 or w < 1:
        raise UsageError(f"--image-size {h},{w}: both must be positive")
    if spec.dtype != "float32" or _int_dims(spec) != [3, h, w]:
        raise UsageError(f"--image-size {h},{w} needs --input {spec.name}:float32:1,3,{h},{w} "
                         f"(got {spec.dtype} {spec.sample_shape})")
    mean = list(IMAGENET_MEAN if mean is None else mean)
    std = list(IMAGENET_STD if std is None else std)
    if len(mean) != 3 or len(std) != 3:
        raise UsageError("--mean and --std take three comma-separated numbers (R,G,B)")
    if any(s <= 0 for s in std):
        raise UsageError("--std values must be positive")
    return {"type": "image", "input": spec.name, "size": [h, w], "mean": mean, "std": std, "channels": 3,
            "layout": "NCHW", "scale": 1 / 255, "resize": "bilinear"}
