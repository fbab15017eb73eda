"""Host side: turn a pretrained PyTorch model into a verified training bundle.

Needs the ``[export]`` extra (torch, onnx, onnxruntime-training).
"""

from ftedge.export.options import ExportOptions

__all__ = ["ExportOptions", "export_bundle"]


def export_bundle(options: ExportOptions):  # noqa: ANN201 - re-exported lazily
    """Export ``options.model`` to ``options.output``; returns the written manifest."""
    from ftedge.export.exporter import export_bundle as _export

    return _export(options)
