#!/usr/bin/env bash
# An OpenVINO device venv: onnxruntime-openvino (which provides the `onnxruntime` module itself — never install
# plain onnxruntime beside it) + ftedge's [device] dependencies + ftedge without deps.
#   scripts/openvino-venv.sh [VENV] [PYTHON]      # defaults: /work/venv-ov, python3.11
set -euo pipefail
VENV=${1:-/work/venv-ov}
PY=${2:-python3.11}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OV_VERSION=1.24.1   # wheels: x86_64 Linux/Windows, CPython 3.10-3.13
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q "onnxruntime-openvino==$OV_VERSION"
# The [device] extra minus onnxruntime (pyproject.toml): installing ftedge[device] would pull plain onnxruntime.
"$VENV/bin/pip" install -q "onnx>=1.17" "ml_dtypes<0.7" "numpy>=1.24" "safetensors>=0.4" "paho-mqtt>=2.0,<3" \
    "tqdm>=4.60" "soxr>=0.3" "cryptography>=41" "tokenizers>=0.15" "pillow>=10" "pyyaml>=6"
"$VENV/bin/pip" install -q --no-deps -e "$ROOT"
if "$VENV/bin/pip" show -q onnxruntime 2>/dev/null; then
    echo "plain onnxruntime got installed beside onnxruntime-openvino in $VENV; remove both and rerun" >&2; exit 1
fi
"$VENV/bin/python" -c "import onnxruntime as o, sys; p = o.get_available_providers(); print(o.__version__, p); \
sys.exit(0 if 'OpenVINOExecutionProvider' in p else 1)"
