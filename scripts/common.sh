# shellcheck shell=bash
# Helpers shared by scripts/*.sh and deploy/make-bundle.sh. Source it; it does
# nothing on its own.
#
# Every dependency comes from Debian 12 packages (nothing is vendored or
# downloaded at build time); spill_ensure_deps installs the ones missing.

# Build and test dependencies, by Debian package name.
SPILL_DEB_PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev liburing-dev libisal-dev nlohmann-json3-dev libhwy-dev
  libgtest-dev libgmock-dev libbenchmark-dev fio
  libcpp-httplib-dev
  python3-prometheus-client python3-yaml systemd
  python3-venv libgloo-dev
)

# LibTorch for the worker comes from the pip build of torch (what GPU nodes
# run), not from Debian.
SPILL_TORCH_VERSION=${SPILL_TORCH_VERSION:-2.11.0}

SPILL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Parallel build and test jobs; the CI machine has 2 cores.
SPILL_JOBS=${SPILL_JOBS:-$(nproc 2>/dev/null || echo 2)}

spill_step() { printf '\n==> %s\n' "$*"; }
spill_info() { printf '    %s\n' "$*"; }
spill_warn() { printf 'warning: %s\n' "$*" >&2; }
spill_die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# Runs a command as root: directly when we are root, else through sudo.
spill_as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    spill_die "need root to run '$*' and sudo is not installed"
  fi
}

# Installs whichever of SPILL_DEB_PACKAGES and the extra packages given as
# arguments are not installed yet. apt-get update runs only when something is
# missing; nothing asks a question.
# shellcheck disable=SC2120  # The extra packages are optional.
spill_ensure_deps() {
  local missing=() pkg
  if ! command -v dpkg-query >/dev/null 2>&1; then
    spill_warn "not a Debian system (no dpkg-query): install the equivalents of" \
      "${SPILL_DEB_PACKAGES[*]} $* yourself"
    return 0
  fi
  for pkg in "${SPILL_DEB_PACKAGES[@]}" "$@"; do
    if [ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" != installed ]; then
      missing+=("$pkg")
    fi
  done
  if [ ${#missing[@]} -eq 0 ]; then
    spill_info "all $((${#SPILL_DEB_PACKAGES[@]} + $#)) required Debian packages are installed"
    return 0
  fi
  spill_info "installing missing packages: ${missing[*]}"
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300)
  spill_as_root "${apt[@]}" update
  spill_as_root "${apt[@]}" install --no-install-recommends "${missing[@]}"
}

# Exports SPILL_PYTHON, a python that can import torch, for CMake to find
# LibTorch through (worker/CMakeLists.txt reads $SPILL_PYTHON). Tries
# $SPILL_PYTHON, python3 and $SPILL_ROOT/.venv in turn; when none has torch,
# creates .venv and pip-installs torch==$SPILL_TORCH_VERSION into it (the CUDA
# build, several GiB). Returns non-zero, with a warning, when that fails: the
# worker is then skipped and everything else still builds.
spill_ensure_torch() {
  local venv=$SPILL_ROOT/.venv py
  for py in "${SPILL_PYTHON:-}" "$(command -v python3 2>/dev/null)" "$venv/bin/python"; do
    if [ -n "$py" ] && [ -x "$py" ] && "$py" -c 'import torch' >/dev/null 2>&1; then
      export SPILL_PYTHON=$py
      spill_info "LibTorch: torch $("$py" -c 'import torch; print(torch.__version__)') via $py"
      return 0
    fi
  done
  spill_info "installing torch==$SPILL_TORCH_VERSION into $venv (pip; python3 cannot import torch)"
  if ! { [ -x "$venv/bin/python" ] || python3 -m venv "$venv"; } ||
    ! "$venv/bin/python" -m pip install -q "torch==$SPILL_TORCH_VERSION"; then
    spill_warn "could not install torch into $venv: the worker (spill-train) will be skipped"
    return 1
  fi
  export SPILL_PYTHON=$venv/bin/python
}

# Configures and builds a preset from CMakePresets.json (binary dir
# build/<preset>). Extra arguments are build targets; none builds everything.
spill_build_preset() {
  local preset=$1
  shift
  local targets=()
  [ $# -gt 0 ] && targets=(--target "$@")
  (cd "$SPILL_ROOT" && cmake --preset "$preset") || return 1
  (cd "$SPILL_ROOT" && cmake --build --preset "$preset" -j "$SPILL_JOBS" "${targets[@]}")
}
