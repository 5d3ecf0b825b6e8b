# Spill's environment. Source it (bash, zsh, dash):  . /opt/spill/env.sh
#
# Puts the bundle's programs on PATH, its libraries on LD_LIBRARY_PATH (gRPC,
# protobuf, abseil, ... as built on Debian 12: the node needs only glibc,
# libstdc++, zlib and the NVIDIA driver), the bundle on CMAKE_PREFIX_PATH for
# find_package(Spill CONFIG), and sets SPILL_SPILLD and SPILL_TEST_CLIENT for
# the bundled benchmarks and tests (and, with the worker programs, the node's
# torch libraries, SPILL_TRAIN and SPILL_TRAIN_DATA). Sourcing it twice adds
# nothing twice.

# install.sh writes the install prefix here; bash and zsh find it themselves.
SPILL_HOME_DEFAULT=
if [ -n "${BASH_VERSION:-}" ]; then
  eval 'SPILL_HOME=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)'
elif [ -n "${ZSH_VERSION:-}" ]; then
  eval 'SPILL_HOME=${${(%):-%x}:A:h}'
else
  SPILL_HOME=$SPILL_HOME_DEFAULT
fi

if [ -z "$SPILL_HOME" ] || [ ! -x "$SPILL_HOME/bin/spilld" ]; then
  echo "env.sh: cannot tell where Spill is: source this file from bash or zsh," \
    "or install the bundle with its install.sh" >&2
  unset SPILL_HOME SPILL_HOME_DEFAULT
  return 1 2>/dev/null || exit 1
fi
export SPILL_HOME

# _spill_add VARIABLE DIR front|back: adds DIR to a ':'-list unless it is there.
_spill_add() {
  eval "_spill_list=\${$1:-}"
  case ":$_spill_list:" in
    *":$2:"*) ;;
    *) if [ -z "$_spill_list" ]; then eval "$1=\$2"
       elif [ "$3" = front ]; then eval "$1=\$2:\$_spill_list"
       else eval "$1=\$_spill_list:\$2"; fi
       eval "export $1" ;;
  esac
  unset _spill_list
}
_spill_add PATH "$SPILL_HOME/bin" front
_spill_add LD_LIBRARY_PATH "$SPILL_HOME/lib" front
_spill_add CMAKE_PREFIX_PATH "$SPILL_HOME" front
# The spilld (and test client) that the bundled benchmarks and tests start.
SPILL_SPILLD=$SPILL_HOME/bin/spilld
export SPILL_SPILLD
if [ -x "$SPILL_HOME/bin/spill_test_client" ]; then
  SPILL_TEST_CLIENT=$SPILL_HOME/bin/spill_test_client
  export SPILL_TEST_CLIENT
fi
# Programs built against the shared CUDA runtime (benchmarks, GPU tests) need
# libcudart: after everything else, the toolkit's when the loader would not
# find one itself.
_spill_cudart='@SPILL_CUDART@'  # Empty when no program needs it.
if [ -n "$_spill_cudart" ] && ! /sbin/ldconfig -p 2>/dev/null | grep -qF "$_spill_cudart"; then
  for _spill_cuda in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
    if [ -n "$_spill_cuda" ] && [ -e "$_spill_cuda/lib64/$_spill_cudart" ]; then
      _spill_add LD_LIBRARY_PATH "$_spill_cuda/lib64" back
      break
    fi
  done
  unset _spill_cuda
fi
# The worker programs (spill-train, the worker tests, zero3_train; bundles
# made with --with-worker) link LibTorch, CUDA and NCCL, which the bundle does
# not carry: they come from the node's torch package (python3's, or
# $SPILL_TORCH_PYTHON's): torch/lib and the wheel's nvidia/*/lib, after
# everything else. SPILL_TORCH_LIBS names those directories.
if [ -s "$SPILL_HOME/share/spill/torch-libs.txt" ]; then
  SPILL_TORCH_LIBS=$("${SPILL_TORCH_PYTHON:-python3}" \
    "$SPILL_HOME/share/spill/torch-libdirs.py" 2>/dev/null) || SPILL_TORCH_LIBS=
  export SPILL_TORCH_LIBS
  if [ -z "$SPILL_TORCH_LIBS" ]; then
    echo "env.sh: ${SPILL_TORCH_PYTHON:-python3} has no torch package: the worker programs" \
      "(spill-train, zero3_train, worker_*_test) will not start; set SPILL_TORCH_PYTHON" >&2
  fi
  _spill_rest=$SPILL_TORCH_LIBS
  while [ -n "$_spill_rest" ]; do
    _spill_dir=${_spill_rest%%:*}
    case $_spill_rest in *:*) _spill_rest=${_spill_rest#*:} ;; *) _spill_rest= ;; esac
    _spill_add LD_LIBRARY_PATH "$_spill_dir" back
  done
  unset _spill_rest _spill_dir
fi
# What the worker tests start: spill-train, and the training text it reads
# by default.
if [ -x "$SPILL_HOME/bin/spill-train" ]; then
  SPILL_TRAIN=$SPILL_HOME/bin/spill-train
  export SPILL_TRAIN
fi
if [ -f "$SPILL_HOME/share/spill/data/corpus.txt" ]; then
  SPILL_TRAIN_DATA=$SPILL_HOME/share/spill/data/corpus.txt
  export SPILL_TRAIN_DATA
fi
unset -f _spill_add
unset SPILL_HOME_DEFAULT _spill_cudart
