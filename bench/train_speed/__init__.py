"""Personalization speed and memory: `ftedge train` (torch-free) vs PyTorch, and the two training engines, whole
processes, side by side.

Reproduce (repo root, host venv; 4-7 minutes on this 2-core box with the defaults, depending on its load):

    .venv/bin/python -m bench.train_speed                 # 1,024 samples, 10 epochs, batch 32, 3 repeats
    .venv/bin/python -m bench.train_speed --json          # + one JSON object on the last line
    .venv/bin/python -m bench.train_speed --samples 256 --epochs 3 --repeat 1    # quick check

Three venvs (paths fixed, see bench/_common.py): the host `.venv` (torch, plain onnxruntime: the parent, the
torch workers), the torch-free device venv `.venv-device` (plain onnxruntime, `pip install '.[device]'`: every
portable-engine ftedge run and the ORT reference pass) and the legacy venv `.venv-legacy` (onnxruntime-training
1.19.2 + onnx 1.17: the only one that can run the ort-training engine, and the exporter of `--engine all` bundles).
Without `.venv-legacy` the ort-training rows read "not measured (no onnxruntime-training venv)" and the bundles are
exported by the host venv (portable engine only).

ALL DATA IS SYNTHETIC: log-mel-shaped arrays x float32 [101, 40] = Gaussian noise + a class-dependent
level and spectro-temporal ripple under a random time envelope (`make_data`, data.py); nothing is recorded audio.
The model is a keyword-spotting style depthwise-separable CNN (`KWSNet`, ~97k parameters) with RANDOM
weights (torch seed 0) whose BatchNorm running statistics are calibrated on 256 unlabeled synthetic
samples; it is not pretrained (model.py). Only the head (`classifier`, a fresh Linear) trains.

Setup (host, torch): write the data .npz, the weights, and three bundles with the CLI
(`ftedge export ... --head classifier --labels ... --quiet --force`, run by the legacy venv with `--engine all` so
ONE bundle carries both engines — same backbone, same initial head — or by the host venv without it): split
(default), `--no-split`, and split + `--quantize-backbone int8-conv`. Then every contender runs as its own subprocess
(wall time of the whole process, including interpreter start and imports; peak RSS = the child's ru_maxrss from
os.wait4, taken in a tiny fork+exec launcher because ru_maxrss survives execve: a child forked straight from this
torch-holding parent would report at least the parent's RSS), all with OMP_NUM_THREADS=2 (torch.set_num_threads(2)
in the torch workers; ORT's default is one thread per core = 2 here), same data, same stratified 0.2 validation
split, same batch order, same AdamW (eps 1e-6, no weight decay, as in the ORT artifacts), same peak lr with ftedge's
10 % warm-up + cosine:

  (a)     ftedge cached  `python -m ftedge train SPLIT --mode cached --no-cache --engine portable`, device venv (no torch)
  (a-L)   (a) in the legacy venv (onnxruntime-training 1.19.2's InferenceSession, onnx 1.17): same runtime as (a-ort)
  (a-ort) (a) with `--engine ort-training`, legacy venv (ftedge imports its training API without torch)
  (b)     ftedge full    `--mode full --engine portable` on the --no-split bundle (backbone runs every step), device venv
  (b-ort) (b) with `--engine ort-training`, legacy venv
  (c)     torch eager    frozen backbone (eval), head in train mode, backbone forward on every step
  (d)     torch cached   backbone forward once under no_grad, head trained on the cached features
  (e)     ftedge int8    (a) with `--backbone int8` on the int8 bundle (portable, device venv)
  (ref)   ORT pass       plain onnxruntime InferenceSession on SPLIT/backbone.onnx over all samples, batch 64, device venv
  (ref-L) the same pass in the legacy venv (onnxruntime-training 1.19.2)

The full-mode contenders (b), (b-ort) run only in the first --full-repeat rounds (default 1): the ort-training
merged graph takes tens of seconds per run. Also measured once, untimed by the rest: the import time of `onnx` in the
device and legacy venvs (the trainer imports it to write and check model.onnx).

The ftedge runs do more than the torch workers: they verify bundle hashes, evaluate the untuned model,
evaluate on the validation split after every epoch, write two checkpoints per epoch (fsync), reload the
best checkpoint, evaluate it and write model.onnx. The torch workers evaluate once, at the end, and
write nothing. Each contender runs --repeat times (round-robin; fewer if another round would pass
--budget-s); the tables show medians and list every run's wall time. Progress goes to stderr; the report
(Markdown) to stdout, with --json followed by one JSON object on the last line.
"""
