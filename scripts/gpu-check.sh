#!/usr/bin/env bash
# The CUDA check, one command, on a machine with an NVIDIA GPU (~5-8 min, most of it the venv's first build):
#   scripts/gpu-check.sh [VENV]      # default .venv-gpu (kept: a second run skips the build)
# 1. a GPU venv: torch (scripts/dev.sh's pin; from PyPI on Linux x86_64 that is the CUDA build), ftedge's
#    [all] extras + pytest, then onnxruntime swapped for onnxruntime-gpu of the same version (both provide the one
#    `onnxruntime` module: never side by side), ftedge editable;
# 2. a CUDA session that really runs on the GPU (the CUDA and cuDNN libraries come from the nvidia-* wheels torch
#    brought, put on LD_LIBRARY_PATH here; without them ORT silently falls back to the CPU EP);
# 3. the EP test set: pytest -m gpu (tests/runtime/test_gpu.py; the default addopts deselect them everywhere else);
# 4. the step-time benchmark: python -m bench.gpu_step (portable step graph on the CUDA EP vs PyTorch on CUDA);
# then a compact summary. Exit 0 only when every part passed; 2 when this machine has no NVIDIA GPU.
# Knobs: PYTHON (default python3.11, else python3), ORT_GPU_VERSION (default: the onnxruntime version [all] resolved),
#        FTEDGE_GPU_WHEELS=DIR (install offline from a wheelhouse), GPU_CHECK_STEPS (bench steps, default 50).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-gpu}
TORCH_PIN=torch==2.13.0
BUILD_TIMEOUT=300 TEST_TIMEOUT=240 BENCH_TIMEOUT=180   # seconds (the build: per pip step); ~8 min in all
log() { printf '\033[1m[gpu-check]\033[0m %s\n' "$*" >&2; }

if ! command -v nvidia-smi >/dev/null 2>&1; then
    log "no nvidia-smi on this machine: the CUDA check needs an NVIDIA GPU and its driver; nothing was built or run"
    exit 2
fi
if ! GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1) \
        || [ -z "$GPU" ] || [[ "$GPU" == *"NVIDIA-SMI has failed"* ]]; then
    log "nvidia-smi cannot reach a GPU (${GPU:-no output}): check the driver (nvidia-smi alone), then rerun"
    exit 2
fi
log "GPU: $GPU"
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
PIP_ARGS=(-q)
[ -n "${FTEDGE_GPU_WHEELS:-}" ] && PIP_ARGS+=(--no-index --find-links "$FTEDGE_GPU_WHEELS")
STAMP="$VENV/.ftedge-gpu-stamp"

build() {
    log "building $VENV with $PY (torch CUDA build + onnxruntime-gpu)"
    "$PY" -m venv "$VENV"
    local pip=(timeout "$BUILD_TIMEOUT" "$VENV/bin/python" -m pip)   # each step bounded
    "${pip[@]}" install "${PIP_ARGS[@]}" --upgrade pip
    "${pip[@]}" install "${PIP_ARGS[@]}" "$TORCH_PIN"
    "${pip[@]}" install "${PIP_ARGS[@]}" -e '.[all]' pytest hypothesis
    local v=${ORT_GPU_VERSION:-$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("onnxruntime"))')}
    # the swap: remove plain onnxruntime, then write onnxruntime-gpu's files over the shared module folder
    "${pip[@]}" uninstall -q -y onnxruntime
    "${pip[@]}" install "${PIP_ARGS[@]}" --force-reinstall --no-deps "onnxruntime-gpu==$v"
    if "${pip[@]}" show -q onnxruntime >/dev/null 2>&1; then
        log "plain onnxruntime is still installed beside onnxruntime-gpu in $VENV: remove $VENV and rerun"; exit 1
    fi
    touch "$STAMP"
}
if [ ! -f "$STAMP" ]; then
    build || { log "building $VENV failed (see above); rm -rf $VENV and rerun"; exit 1; }
fi
VPY="$VENV/bin/python"

# CUDA / cuDNN from the nvidia-* wheels (torch's): onnxruntime-gpu loads them by name from LD_LIBRARY_PATH
NV_LIBS=$("$VPY" -c 'import glob, os, site
print(":".join(sorted(d for s in site.getsitepackages() for d in glob.glob(os.path.join(s, "nvidia", "*", "lib")))))')
export LD_LIBRARY_PATH="${NV_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

log "a CUDA session on a one-node model"
if ! VERSIONS=$("$VPY" - <<'EOF'
import sys
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 8
s = ort.InferenceSession(m.SerializeToString(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
if s.get_providers()[0] != "CUDAExecutionProvider" or not torch.cuda.is_available():
    sys.exit(f"no CUDA: the session runs on {s.get_providers()}, torch.cuda.is_available() = "
             f"{torch.cuda.is_available()}; ORT's log above names the library it could not load")
print(f"onnxruntime-gpu {ort.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda})")
EOF
); then
    log "the CUDA EP does not run here: see above"; exit 1
fi
log "$VERSIONS"

log "EP tests: pytest -m gpu"
set +e
timeout "$TEST_TIMEOUT" "$VPY" -m pytest -q -m gpu -p no:cacheprovider tests/runtime/test_gpu.py > /tmp/ftedge-gpu-tests.log 2>&1
TEST_RC=$?
log "step-time benchmark: python -m bench.gpu_step"
timeout "$BENCH_TIMEOUT" "$VPY" -m bench.gpu_step --steps "${GPU_CHECK_STEPS:-50}" > /tmp/ftedge-gpu-bench.log 2>&1
BENCH_RC=$?
set -e

echo
echo "== ftedge GPU check: $GPU; $VERSIONS"
echo "-- tests (pytest -m gpu, exit $TEST_RC): $(tail -n 1 /tmp/ftedge-gpu-tests.log)"
[ "$TEST_RC" -ne 0 ] && grep -E "^(FAILED|ERROR)" /tmp/ftedge-gpu-tests.log | head -n 10
echo "-- step time (bench.gpu_step, exit $BENCH_RC):"
if [ "$BENCH_RC" -eq 0 ]; then grep -E "^\||^Device" /tmp/ftedge-gpu-bench.log; else tail -n 15 /tmp/ftedge-gpu-bench.log; fi
echo "(full logs: /tmp/ftedge-gpu-tests.log, /tmp/ftedge-gpu-bench.log)"
[ "$TEST_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ]
