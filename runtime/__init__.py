"""Torch-free device runtime: bundle loading and verification, ORT backend.

Importing this package never imports torch (a test proves it).
"""

from ftedge.bundle.loader import Bundle, load_bundle
from ftedge.bundle.manifest import SCHEMA_VERSION, TensorSpec

__all__ = ["Bundle", "load_bundle", "SCHEMA_VERSION", "TensorSpec"]
