"""Host side: turn a pretrained PyTorch model into a verified training bundle.

Needs the ``[export]`` extra (torch, onnx, onnxscript, onnxruntime).
"""

from ftedge.export.options import ExportOptions

__all__ = ["ExportOptions", "export_bundle"]


def export_bundle(options: ExportOptions, progress=None, sign_key=None):  # noqa: ANN001, ANN201 - lazy re-export
    """Export ``options.model`` to ``options.output``; returns the written manifest.

    ``progress(message)`` is told each stage; ``sign_key`` (an Ed25519 private key PEM) signs the manifest.
    """
    from ftedge.export.tasks.classify.exporter import export_bundle as _export

    return _export(options, **({"progress": progress} if progress else {}), sign_key=sign_key)
