"""Local data on the device: labelled samples (``samples.py``: folders, .npz, .csv), the decoders per
modality (``audio.py``, ``text.py``, ``image.py``) and the on-disk embedding cache (``cache.py``)."""
