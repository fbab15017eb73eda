"""Present any model as ``forward(*inputs) -> one tensor`` for the ONNX exporter."""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn as nn

from ftedge.errors import ExportError

PREFIX = "model."


def _pick(result: Any, name: str | None) -> tuple[torch.Tensor, str]:
    if isinstance(result, torch.Tensor):
        if name not in (None, "output", "logits"):
            raise ExportError(f"--output {name!r} given but the model returns a single tensor; drop --output")
        return result, name or "logits"
    if isinstance(result, dict) or hasattr(result, "keys"):  # dict and HF ModelOutput
        keys = list(result.keys())
        key = name or ("logits" if "logits" in keys else keys[0])
        if key not in keys:
            raise ExportError(f"--output {key!r} is not among the model's outputs {keys}; pick one of them")
        value = result[key]
        if not isinstance(value, torch.Tensor):
            raise ExportError(f"model output {key!r} is a {type(value).__name__}, not a tensor")
        return value, key
    if isinstance(result, (tuple, list)):
        if name is None:
            return _pick(result[0], None)[0], "logits"
        if name.isdigit() and int(name) < len(result):
            return result[int(name)], f"output_{name}"
        raise ExportError(f"the model returns a {len(result)}-tuple; --output must be an index 0..{len(result) - 1}")
    raise ExportError(f"the model returns a {type(result).__name__}; ftedge needs a tensor, tuple, dict or ModelOutput")


class OutputSelector(nn.Module):
    """Wraps the user model; names its parameters ``model.<name>`` (stripped after export)."""

    def __init__(self, model: nn.Module, input_names: list[str], output: str | None) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.output = output
        self.output_key = "logits"
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            params = {}
        # HF-style models take named inputs (input_ids=…, attention_mask=…).
        self._by_keyword = len(input_names) > 1 and all(n in params for n in input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self._by_keyword:
            result = self.model(**dict(zip(self.input_names, inputs)))
        else:
            result = self.model(*inputs)
        tensor, self.output_key = _pick(result, self.output)
        return tensor
