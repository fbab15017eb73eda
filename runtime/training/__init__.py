"""What every task's training run shares: the train-option declarations (``options.py``), the run directory
(``run_dir.py``: open, resume, checkpoints, ``metrics.jsonl``), the result schema (``result.py``), the
learning-rate schedule and the personalized ``model.onnx`` writer."""
