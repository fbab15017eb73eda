#!/usr/bin/env bash
# Platform rigs: Debian root filesystems in which the device side is installed exactly as a user
# would (`pip install 'ftedge-*.whl[device]'` into a venv, no torch) and then run.
#   scripts/rigs.sh            # build/cache the rootfs, build the wheel, install it in every rig
#   scripts/rigs.sh --env      # the same, then print `export FTEDGE_RIGS=… FTEDGE_RIG_WHEEL=…`
#
# Rigs (docs/platforms.md): bookworm-arm64 (Debian 12, Python 3.11, aarch64 under qemu-user: a Pi 5 /
# Jetson class box) and trixie-amd64 (Debian 13, Python 3.13).
# Knobs:
#   FTEDGE_RIG_CACHE=DIR   where the rootfs live (default ~/.cache/ftedge-rigs); outside the repo
#   FTEDGE_RIGS_ONLY="trixie-amd64"   build/install only these rigs
#   FTEDGE_RIG_TOOLS=DIR   folder with make_rootfs.sh + in_rootfs.sh (default: rigs/ in the repo,
#                          else ../shared/rigs, else /work/shared/rigs)
#   PY=python              the host interpreter that builds the wheel (default .venv/bin/python)
#   FTEDGE_RIG_QEMU_CPU=cortex-a76   CPU model qemu-user emulates for arm64 rigs (a Raspberry Pi 5's core;
#                          `max` = qemu's default, which has SVE: onnxruntime's kernels then run ~12x
#                          slower under qemu 7.2, 7 s vs 0.6 s per 1 s clip for the kws backbone)
# Cached: make_rootfs.sh returns at once on a built tree (stamp in ROOTFS/etc/rig/stamp); the venv
# in a rig is re-installed only when the wheel's *content* hash changes (stamp
# ROOTFS/opt/ftedge-venv/.ftedge-wheel-sha256). Needs root (chroot, mount); uses sudo otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CACHE=${FTEDGE_RIG_CACHE:-$HOME/.cache/ftedge-rigs}
ALL_RIGS=("bookworm-arm64" "trixie-amd64")     # SUITE-ARCH
RIGS=(${FTEDGE_RIGS_ONLY:-${ALL_RIGS[@]}})
VENV_IN_RIG=/opt/ftedge-venv
PY=${PY:-$ROOT/.venv/bin/python}
EMIT_ENV=0
[ "${1:-}" = --env ] && { EMIT_ENV=1; shift; }

log() { printf '\033[1m[rigs %s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

TOOLS=""
for d in "${FTEDGE_RIG_TOOLS:-}" "$ROOT/rigs" "$ROOT/../shared/rigs" /work/shared/rigs; do
  [ -n "$d" ] && [ -x "$d/make_rootfs.sh" ] && [ -x "$d/in_rootfs.sh" ] && { TOOLS=$(readlink -f "$d"); break; }
done
[ -n "$TOOLS" ] || die "make_rootfs.sh / in_rootfs.sh not found (set FTEDGE_RIG_TOOLS=DIR)"
SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo -E)

# Phase timings, printed at the end and written to $CACHE/setup-times.json.
declare -A TIMES=()
ORDER=()
timed() {  # timed LABEL CMD... : run CMD, record its wall time under LABEL
  local label=$1; shift
  local t0; t0=$(date +%s.%N)
  "$@"
  TIMES[$label]=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  ORDER+=("$label")
  log "$label: ${TIMES[$label]} s"
}

mkdir -p "$CACHE"

# --- 1. root filesystems (make_rootfs.sh is idempotent: stamp + per-phase markers) ----------------
build_rootfs() {  # build_rootfs SUITE-ARCH
  local suite=${1%-*} arch=${1##*-} logf=$CACHE/$1.build.log
  if [ -f "$CACHE/$1/etc/rig/stamp" ]; then
    log "rootfs $1 cached ($(sed -n 's/^PYTHON=//p' "$CACHE/$1/etc/rig/stamp"))"; return 0
  fi
  log "building rootfs $1 (arm64 takes ~8 min: emulated second stage); log: $logf"
  if ! (cd "$TOOLS" && "${SUDO[@]}" ./make_rootfs.sh "$arch" "$suite" "$CACHE/$1") >"$logf" 2>&1; then
    tail -20 "$logf" >&2; die "make_rootfs.sh $arch $suite failed (full log: $logf)"
  fi
  tail -1 "$logf" >&2
}
for r in "${RIGS[@]}"; do timed "rootfs $r" build_rootfs "$r"; done

# --- 2. the wheel, built once from a clean copy of the package sources -------------------------
# (a copy: no stale build/ from earlier runs in the wheel, nothing written into the work tree)
WHEEL_DIR=$CACHE/wheel
build_wheel() {
  [ -x "$PY" ] || die "$PY not found: run scripts/dev.sh setup first (or set PY=)"
  local tmp; tmp=$(mktemp -d)
  mkdir -p "$tmp/src"
  for p in pyproject.toml README.md LICENSE src bundle mqtt runtime export device_agent fleet; do
    [ -e "$p" ] && cp -a "$p" "$tmp/src/"
  done
  find "$tmp/src" \( -name __pycache__ -o -name '*.egg-info' -o -name build \) -prune -exec rm -rf {} +
  "$PY" -m pip wheel -q --no-deps -w "$tmp/out" "$tmp/src" >"$tmp/log" 2>&1 \
    || { cat "$tmp/log" >&2; rm -rf "$tmp"; die "pip wheel failed"; }
  local whl; whl=$(ls "$tmp"/out/ftedge-*.whl)
  mkdir -p "$WHEEL_DIR"
  rm -f "$WHEEL_DIR"/ftedge-*.whl
  cp "$whl" "$WHEEL_DIR/"
  WHEEL=$WHEEL_DIR/$(basename "$whl")
  rm -rf "$tmp"
}
# Rebuilt only when the package sources changed (hash of every file that goes into it).
SRC_SHA=$(find pyproject.toml README.md src bundle mqtt runtime export device_agent fleet -type f \
            -not -path '*/__pycache__/*' -not -path '*.egg-info/*' -print0 2>/dev/null \
          | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)
WHEEL=$(ls "$WHEEL_DIR"/ftedge-*.whl 2>/dev/null | head -1 || true)
if [ -n "$WHEEL" ] && [ "$(cat "$WHEEL_DIR/.src-sha256" 2>/dev/null)" = "$SRC_SHA" ]; then
  log "wheel cached (sources unchanged): $WHEEL"
else
  timed "wheel" build_wheel
  echo "$SRC_SHA" > "$WHEEL_DIR/.src-sha256"
fi
# Content hash: member names + bytes, not the zip itself (which carries build-time mtimes).
WHEEL_SHA=$("$PY" - "$WHEEL" <<'EOF'
import hashlib, sys, zipfile
h = hashlib.sha256()
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in sorted(z.namelist()):
        h.update(name.encode() + b"\0" + hashlib.sha256(z.read(name)).digest())
print(h.hexdigest())
EOF
)
log "wheel $WHEEL (content sha256 ${WHEEL_SHA:0:16}…)"

# --- 3. a venv with ftedge[device] inside each rig ---------------------------------------------------
# Emulated arm64: a Cortex-A76 (Pi 5) CPU model and a matching /proc/cpuinfo (in_rootfs.sh's default
# fake one is a Cortex-A72). The tests read FTEDGE_RIG_QEMU_CPU / FTEDGE_RIG_CPUINFO from rigs.env.
QEMU_MODEL=${FTEDGE_RIG_QEMU_CPU:-cortex-a76}
[ "$QEMU_MODEL" = max ] && QEMU_MODEL=""
CPUINFO=""
if [ "$QEMU_MODEL" = cortex-a76 ]; then
  CPUINFO=$CACHE/cpuinfo-cortex-a76
  for (( i=0; i<$(nproc); i++ )); do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n' "$i"
    printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n'
  done > "$CPUINFO"
fi
in_rig() {  # in_rig RIG CMD... (wheel folder bind-mounted read-only at /src)
  local r=$1; shift
  local qenv=()
  if [ "${r##*-}" = arm64 ] && [ "$(dpkg --print-architecture)" != arm64 ] && [ -n "$QEMU_MODEL" ]; then
    qenv=(QEMU_CPU="$QEMU_MODEL" RIG_PASS_ENV=QEMU_CPU ${CPUINFO:+RIG_CPUINFO="$CPUINFO"})
  fi
  env "${qenv[@]}" SRC="$WHEEL_DIR" RIG_QUIET=1 "${SUDO[@]}" "$TOOLS/in_rootfs.sh" "$CACHE/$r" "$@"
}
install_in_rig() {  # install_in_rig RIG
  local r=$1 stamp=$CACHE/$1$VENV_IN_RIG/.ftedge-wheel-sha256 whl=/src/$(basename "$WHEEL")
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$WHEEL_SHA" ]; then
    log "$r: $VENV_IN_RIG already holds this wheel"; return 0
  fi
  log "$r: installing $(basename "$WHEEL")[device] into $VENV_IN_RIG$([ "${r##*-}" = arm64 ] && echo ' (emulated: slow)')"
  in_rig "$r" /bin/sh -euc '
    V=$1 W=$2
    [ -x "$V/bin/python" ] || python3 -m venv "$V"
    rm -f "$V/.ftedge-wheel-sha256"
    # Binary wheels only: a source build under qemu would take hours and means a platform gap.
    "$V/bin/python" -m pip install -q --only-binary=:all: "$W[device]"
    # Same version, new content: replace ftedge itself (its dependencies stay).
    "$V/bin/python" -m pip install -q --no-deps --force-reinstall "$W"
  ' sh "$VENV_IN_RIG" "$whl" 2> >(grep -v "^WARNING: Location 'file://" >&2) || die "$r: pip install of ${whl##*/}[device] failed (see above)"
  echo "$WHEEL_SHA" | "${SUDO[@]}" tee "$stamp" >/dev/null
}
check_rig() {  # check_rig RIG: no torch, plain onnxruntime, the CLI and the device modules import
  local r=$1 out
  out=$(in_rig "$r" "$VENV_IN_RIG/bin/python" -c '
import importlib.metadata as md, importlib.util as u, platform, sys
assert u.find_spec("torch") is None, "torch is importable in the rig venv"
assert u.find_spec("onnxruntime.training") is None, "onnxruntime.training present: not plain onnxruntime"
dists = {d.metadata["Name"].lower() for d in md.distributions()}
ort = sorted(d for d in dists if d.startswith("onnxruntime"))
assert ort == ["onnxruntime"], f"expected exactly plain onnxruntime, found {ort}"
import ftedge.runtime, ftedge.device_agent, onnxruntime
assert "torch" not in sys.modules, "importing the device side pulled in torch"
v = md.version("ftedge")
print(f"python {platform.python_version()} {platform.machine()}, onnxruntime {onnxruntime.__version__}, "
      f"providers {onnxruntime.get_available_providers()}, ftedge {v}")
') || die "$r: check failed: $out"
  in_rig "$r" "$VENV_IN_RIG/bin/ftedge" --help >/dev/null || die "$r: ftedge --help failed"
  log "$r: $out"
}
for r in "${RIGS[@]}"; do
  timed "install $r" install_in_rig "$r"
  timed "check $r" check_rig "$r"
done

# --- summary -------------------------------------------------------------------------------------
{
  printf '{"wheel": "%s", "wheel_sha256": "%s", "seconds": {' "$WHEEL" "$WHEEL_SHA"
  sep=""
  for k in "${ORDER[@]}"; do printf '%s"%s": %s' "$sep" "$k" "${TIMES[$k]}"; sep=", "; done
  printf '}, "note": "bookworm-arm64 runs emulated (qemu-user): its times are not native ARM times"}\n'
} > "$CACHE/setup-times.json"
printf 'FTEDGE_RIGS=%q\nFTEDGE_RIG_WHEEL=%q\nFTEDGE_RIG_TOOLS=%q\nFTEDGE_RIG_QEMU_CPU=%q\nFTEDGE_RIG_CPUINFO=%q\n' \
  "$CACHE" "$WHEEL" "$TOOLS" "${QEMU_MODEL:-max}" "$CPUINFO" > "$CACHE/rigs.env"
log "ready: ${RIGS[*]} in $CACHE (times: $CACHE/setup-times.json)"
if [ "$EMIT_ENV" = 1 ]; then
  sed 's/^/export /' "$CACHE/rigs.env"
fi
