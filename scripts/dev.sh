#!/usr/bin/env bash
# ftedge developer entry point: sets everything up from a bare Debian machine, then runs.
#   scripts/dev.sh demo    # the main job end to end (export + torch-free fine-tuning)
#   scripts/dev.sh test    # the test suite (host venv + a torch-free [device] venv)
#   scripts/dev.sh setup   # only install
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3-venv python3-dev espeak-ng mosquitto mosquitto-clients openssl chromium)   # system packages the demo and tests need
VENV=.venv                                # host: torch + export + device + dev extras
DEVICE_VENV=.venv-device                  # edge box: only ftedge[device], no torch
TORCH_PIN=torch==2.13.0                   # CPU build; an unpinned torch pulls a multi-GB CUDA build

log() { printf '\033[1m[ftedge]\033[0m %s\n' "$*" >&2; }

pick_python() {
  for py in python3.12 python3.11 python3.10 python3; do
    if command -v "$py" >/dev/null 2>&1 &&
       "$py" -c 'import sys; sys.exit(not ((3,10) <= sys.version_info[:2] <= (3,12)))' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  log "error: onnxruntime-training 1.19.2 needs CPython 3.10-3.12 (x86_64); install one (Debian 12 ships 3.11)"
  exit 1
}

apt_install() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || { log "warning: no apt-get; make sure ${missing[*]} are installed"; return 0; }
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

stamp_ok() {  # $1 stamp file; newer than every input?
  [ -f "$1" ] || return 1
  [ -z "$(find pyproject.toml src runtime device_agent export fleet -newer "$1" -name '*.py' -o -newer "$1" -name pyproject.toml 2>/dev/null | head -1)" ]
}

setup() {
  apt_install
  local py; py=$(pick_python)
  if ! stamp_ok "$VENV/.ftedge-stamp"; then
    log "creating $VENV (host: torch CPU, export, device, dev extras)"
    [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q "$TORCH_PIN"
    "$VENV/bin/python" -m pip install -q -e '.[all,dev]'
    touch "$VENV/.ftedge-stamp"
  fi
  if ! stamp_ok "$DEVICE_VENV/.ftedge-stamp"; then
    log "creating $DEVICE_VENV (edge box: ftedge[device] only, no torch)"
    [ -x "$DEVICE_VENV/bin/python" ] || "$py" -m venv "$DEVICE_VENV"
    "$DEVICE_VENV/bin/python" -m pip install -q --upgrade pip
    "$DEVICE_VENV/bin/python" -m pip install -q --force-reinstall --no-deps .
    "$DEVICE_VENV/bin/python" -m pip install -q '.[device]'
    if "$DEVICE_VENV/bin/python" -c 'import torch' 2>/dev/null; then
      log "error: torch ended up in $DEVICE_VENV; the [device] extra must not depend on it"; exit 1
    fi
    touch "$DEVICE_VENV/.ftedge-stamp"
  fi
}

cmd=${1:-help}; shift || true
case "$cmd" in
  setup) setup ;;
  demo)  setup; exec "$VENV/bin/ftedge" demo "$@" ;;
  test)
    setup
    export FTEDGE_DEVICE_PYTHON="$PWD/$DEVICE_VENV/bin/python"
    set +e
    "$VENV/bin/python" -m pytest "$@"
    rc=$?
    # pytest exit 5 = no tests collected: that is a failure, never a pass.
    [ "$rc" -eq 5 ] && { log "error: pytest collected no tests"; exit 1; }
    exit "$rc" ;;
  *) echo "usage: scripts/dev.sh {demo|test|setup} [args…]" >&2; exit 2 ;;
esac
