"""Torch-free device runtime: bundle loading and verification, ORT backend, the app's ActiveModel.

Importing this package never imports torch (a test proves it), nor numpy/onnxruntime: ``ActiveModel`` is
imported on first use (``from ftedge.runtime import ActiveModel``).
"""

from typing import Any

from ftedge.bundle.loader import Bundle, load_bundle
from ftedge.bundle.manifest import SCHEMA_VERSION, TensorSpec

__all__ = ["SCHEMA_VERSION", "ActiveModel", "Bundle", "TensorSpec", "load_bundle"]


def __getattr__(name: str) -> Any:
    if name == "ActiveModel":  # lazily: it imports numpy and, when a model opens, onnxruntime
        from ftedge.runtime.active_model import ActiveModel

        return ActiveModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
