"""ftedge: fine-tune pretrained models on edge devices with ONNX Runtime training.

Subpackages: ``ftedge.export`` (host, needs torch), ``ftedge.runtime`` and
``ftedge.device_agent`` (device, torch-free), ``ftedge.fleet`` (collector).
"""

__version__ = "0.1.0"
