#!/usr/bin/env bash
# Downloads deepspeed and its Python dependencies into DIR, for carrying to an
# offline GPU node where bench/optim_vs_baselines.py compares against
# DeepSpeedCPUAdam and bench/zero3_deepspeed.py trains the same GPT with
# DeepSpeed's ZeRO-3 offload. torch and numpy are not downloaded (the node has
# its own).
#
#   bench/fetch-bench-wheels.sh DIR [NODE_PYTHON_VERSION]   # default 3.12
#
# Binary dependencies (pydantic_core) are fetched for the node's Python
# version, not this machine's. On the offline node, in the environment that
# has torch, bench/gpu-node-run.sh installs them into a scratch prefix:
#   pip install --no-index --find-links DIR --no-build-isolation --no-deps ...
# DeepSpeed ships as a source package; --no-build-isolation lets its setup
# see the installed torch. Its CPU Adam is compiled on first use (JIT) with
# the node's g++ and ninja (ninja comes from DIR), so the node needs a C++
# compiler and Python headers. DeepSpeed's NVMe offload (ZeRO-Infinity) builds
# its async_io op against libaio, which GPU nodes may lack: Debian's libaio1
# and libaio-dev packages are fetched too (aio/), and gpu-node-run.sh unpacks
# them into its scratch prefix (a C library with no dependencies beyond
# libc; its header and libaio.so for the build, libaio.so.1 at run time).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 DIR [NODE_PYTHON_VERSION]" >&2
  exit 2
fi
dir=$1
pyver=${2:-3.12}
mkdir -p "$dir"
pip_dl() { python3 -m pip download -q --dest "$dir" "$@"; }
pip_dl --no-deps deepspeed
pip_dl --no-deps setuptools wheel
pip_dl --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  hjson ninja packaging psutil py-cpuinfo pydantic msgpack tqdm einops
mkdir -p "$dir/aio"
(cd "$dir/aio" && apt-get download libaio1 libaio-dev >/dev/null)
echo "downloaded into $dir:"
ls "$dir"
