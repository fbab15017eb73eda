"""The one exception hierarchy of ftedge.

Every message says what went wrong *and* what to do next; the CLI prints it as
``error: …`` and exits 1.
"""

from __future__ import annotations


class FtedgeError(Exception):
    """Base of every error ftedge raises on purpose."""

    exit_code = 1


class UsageError(FtedgeError):
    """A command-line argument is malformed (exit code 2, like argparse)."""

    exit_code = 2


class ModelLoadError(FtedgeError):
    """The MODEL spec cannot be imported or does not give an ``nn.Module``."""


class ExportError(FtedgeError):
    """The model cannot be turned into a training bundle."""


class GradientError(ExportError):
    """A trainable layer uses an operator ONNX Runtime cannot differentiate."""


class ParityError(ExportError):
    """The exported graphs disagree with PyTorch beyond the tolerance."""

    def __init__(self, message: str, failures: list[dict] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


class BundleError(FtedgeError):
    """A bundle is missing, tampered with, or of an unknown schema."""


class DataError(FtedgeError):
    """Training or evaluation data does not match the bundle's inputs."""


class RuntimeBackendError(FtedgeError):
    """ONNX Runtime (training) is missing or failed."""


class AgentError(FtedgeError):
    """The device agent's configuration or state is invalid."""
