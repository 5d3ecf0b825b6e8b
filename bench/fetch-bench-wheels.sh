#!/usr/bin/env bash
# Downloads deepspeed and its pure-Python dependencies into DIR, for carrying
# to an offline GPU node where bench/optim_vs_baselines.py compares against
# DeepSpeedCPUAdam. torch is not downloaded (the node has its own).
#
#   bench/fetch-bench-wheels.sh DIR [PYTHON]      # on a machine with network
#
# On the offline node, in the environment that has torch:
#   pip install --no-index --find-links DIR --no-build-isolation deepspeed
# DeepSpeed ships as a source package; --no-build-isolation lets its setup
# see the installed torch. Its CPU Adam is compiled on first use (JIT) with
# the node's g++ and ninja (ninja comes from DIR), so the node needs a C++
# compiler and Python headers.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 DIR [PYTHON]" >&2
  exit 2
fi
dir=$1
python=${2:-python3}
mkdir -p "$dir"
# deepspeed's sdist plus its dependencies except torch (pinned by the node).
"$python" -m pip download --dest "$dir" --no-deps deepspeed
"$python" -m pip download --dest "$dir" \
  hjson ninja numpy packaging psutil py-cpuinfo pydantic msgpack tqdm einops
echo "downloaded into $dir:"
ls "$dir"
