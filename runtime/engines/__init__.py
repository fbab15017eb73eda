"""Training engines and the onnxruntime adapters.

``engine.py`` holds the engine protocol and picks an engine for a bundle and this box; each engine is one
module (``portable.py`` on plain onnxruntime, ``ort_training.py`` on onnxruntime-training 1.19.2), with its
adapter (``ort_backend.py``, ``ort_training_backend.py``); ``providers.py`` parses ``--providers``;
``session.py`` opens a bundle's backbone and engine together.

A new engine: one module with a class taking ``(bundle, checkpoint, providers)``, one row below (its bundle
files are declared in :data:`ftedge.bundle.manifest.ENGINE_ROLES`). ``--engine`` choices are read from here.
"""

# name -> "module:class"; `--engine auto` takes the first this box can run and the bundle carries
ENGINES: dict[str, str] = {
    "portable": "ftedge.runtime.engines.portable:PortableEngine",
    "ort-training": "ftedge.runtime.engines.ort_training:OrtTrainingEngine",
}
