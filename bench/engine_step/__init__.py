"""Training-step time of the two engines, same bundle, same process: `portable` vs `ort-training` (issue 11).

Reproduce (repo root; needs the legacy venv, which has onnxruntime-training 1.19.2 and therefore runs BOTH engines:
onnxruntime-training includes the plain InferenceSession the portable engine uses; 3-7 minutes here, most of it
the five exports; `--workdir DIR --reuse` keeps and reuses the bundles):

    .venv-legacy/bin/python -m bench.engine_step --profile        # all cases, <= 20 x 30 timed steps per engine
    .venv-legacy/bin/python -m bench.engine_step --json           # + one JSON object on the last line
    .venv-legacy/bin/python -m bench.engine_step --cases cnn-head,tf-base --steps 20 --rounds 4   # quick

ALL INPUTS ARE SYNTHETIC and all weights random (nothing is pretrained; step time does not depend on it):

  cnn-head   bench/train_speed's KWSNet (DS-CNN, 96,904 params, BN calibrated on synthetic log-mels), split bundle,
             head only = Dropout(0.1) + Linear(128 -> 8) (1,032 trainable params) on cached backbone embeddings
             [32, 128] (the embeddings of synthetic log-mels). The per-step cost of bench/train_speed's (a).
  cnn-full   the same model as a --no-split bundle: every step runs the frozen backbone on raw [32, 101, 40] inputs
             (bench/train_speed's (b), `--mode full`).
  tf-tiny    tests/helpers/zoo.py `transformer` (Embedding(50, 32) + 2 TransformerEncoderLayer(d=32, 4 heads, ff 64, dropout
             0.1) + mean pool + Linear(32 -> 3)), 10 tokens, `--trainable 'encoder\\.layers\\.1\\.' --trainable
             '^head'` (the tests' transformer-last-block family); per-call overhead dominates.
  tf-base    the same architecture at a small-text-model size: Embedding(1000, 128) + 2 TransformerEncoderLayer(
             d=128, 4 heads, ff 512, GELU, dropout 0.1, batch_first) + mean pool + Linear(128 -> 8), 32 tokens; the
             last block + head train (199,304 of 525,576 params). THE CASE OF THE ISSUE'S TARGET (<= 1.2x).
  tf-wide    d=256, 8 heads, ff 1024, 64 tokens (same layout; 791,816 of 1,837,576 params train): compute-bound.

Every case: `ftedge export ... --engine all` (one bundle carries both engines: same backbone, same initial head),
then in a process of its own one `BundleSession(bundle, engine=...)` per engine on the same cached head inputs (the
backbone pass is done once, outside the timing), batch 32, AdamW, lr fixed. Both sessions stay open; the engines
alternate in --rounds blocks of up to --steps steps (ABBA order, so load drift hits both alike; slow cases run
smaller blocks so that a case's timing stays near --seconds-per-case), after --warmup untimed steps each.
Each step = one `session.train_step(head_feeds, labels)` (forward, loss, backward, optimizer update, loss back as a
Python float), timed alone with perf_counter; reported: median (and p10/p90) over all timed steps.

Breakdown of the portable step (same process, after the main timing), each median over --steps calls:
  mask     drawing the dropout masks with numpy (PortableEngine.train_step's loop)
  bare     session.run_with_iobinding on one IOBinding prepared once (state and batch already bound; outputs to
           fresh buffers): the graph's kernels plus ORT's per-run cost, no Python binding work
  run      StepSession.run (new IOBinding per step, binds ~3 x params + batch, copies loss/output to numpy)
  numpy    the step graph through plain session.run with numpy feeds (state copied in and out every step)
and, with --profile, onnxruntime's own session profile of step.onnx (a separate InferenceSession) and of the
ort-training Module's training graph: kernel time per op type, summed, per step.
ort-training's step is split into Module forward+backward / Optimizer.step / lazy_reset_grad.
"""
