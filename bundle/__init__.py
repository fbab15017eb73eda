"""The training-bundle format: manifest schema, loading and verification, hashing, signing, pack/unpack.

Both sides import this package — ``ftedge.export`` writes bundles, ``ftedge.runtime`` and
``ftedge.device_agent`` read, verify and install them — and it imports neither. See ARCHITECTURE.md.
"""

from ftedge.bundle.loader import Bundle, load_bundle
from ftedge.bundle.manifest import MANIFEST_NAME, SCHEMA_VERSION, TensorSpec

__all__ = ["Bundle", "load_bundle", "MANIFEST_NAME", "SCHEMA_VERSION", "TensorSpec"]
