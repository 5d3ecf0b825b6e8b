#!/usr/bin/env bash
# Runs Spill's tests and benchmarks on a GPU node from an offline bundle
# (deploy/make-bundle.sh --with-fio), writing JSON lines and logs to OUTDIR.
#
#   bench/gpu-node-run.sh BUNDLE.tar.gz OUTDIR [WHEELS_DIR] [MACHINE_NAME]
#
# WHEELS_DIR (bench/fetch-bench-wheels.sh) lets the optimizer comparison
# install DeepSpeed offline into a scratch prefix; without it that
# comparison is skipped with a message. Steps:
#   1. unpack, spill-selftest;
#   2. every test program in the bundle (GPU ones included) against the
#      bundle's spilld;
#   3. optim_fused_adamw (vs triad), optim_vs_baselines.py (vs torch fused
#      AdamW and DeepSpeed's CPU Adam, same process and threads), h2d_shm,
#      nvme_vs_fio on the node's disk.
#   $SPILL_NODE_STEPS (default "selftest tests optim python h2d nvme") picks steps.
set -uo pipefail
steps=" ${SPILL_NODE_STEPS:-selftest tests optim python h2d nvme} "
want() { [[ $steps == *" $1 "* ]]; }
bundle=$1
out=$2
wheels=${3:-}
export SPILL_BENCH_MACHINE=${4:-${SPILL_BENCH_MACHINE:-$(hostname)}}
mkdir -p "$out"
work=$(mktemp -d /tmp/spill-node.XXXXXX)
tar xzf "$bundle" -C "$work"
root=$(echo "$work"/spill-bundle-*)
# shellcheck source=/dev/null
. "$root/env.sh"
log() { printf '\n==> %s\n' "$*" | tee -a "$out/run.log"; }

log "machine"
{ nproc; lscpu | grep -E 'Model name|Flags' | cut -c1-200; nvidia-smi -L; df -h /var/tmp; } \
  >>"$out/run.log" 2>&1

if want selftest; then
  log "spill-selftest"
  "$root/bin/spill-selftest" --no-example >>"$out/run.log" 2>&1 && echo "selftest OK" | tee -a "$out/run.log"
fi

export SPILL_SPILLD=$root/bin/spilld SPILL_TEST_CLIENT=$root/bin/spill_test_client
export SPILL_SPILLCTL=$root/bin/spillctl SPILL_DEMO=$root/bin/spill_demo
export SPILL_TEST_NVME_DIR=/var/tmp
want tests && log "test programs"
want tests && while IFS=$'\t' read -r name labels; do
  case $labels in *fuzz*) continue ;; esac
  [ -x "$root/bin/$name" ] || continue
  if timeout 600 "$root/bin/$name" >"$out/test-$name.log" 2>&1; then
    echo "PASS $name ($labels) $(grep -E '^\[  PASSED  \]' "$out/test-$name.log" | tail -1)"
  else
    echo "FAIL $name ($labels): see test-$name.log; its end:"
    tail -n 25 "$out/test-$name.log"
  fi
done <"$root/share/spill/tests.tsv" | tee -a "$out/run.log"

threads=$(nproc)
if want optim; then
  log "optim_fused_adamw ($threads threads)"
  "$root/bin/optim_fused_adamw" --threads "$threads" --params 268435456 --iters 5 \
    | tee -a "$out/bench.jsonl"
fi

if want python; then
  log "optim_vs_baselines"
  py=python3
  "$py" -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__)" 2>&1 \
    | tee -a "$out/run.log"
  if [ -n "$wheels" ] && ! "$py" -c 'import deepspeed' 2>/dev/null; then
    # --target ignores what the environment has (torch, numpy): install
    # DeepSpeed and its pure-Python dependencies without dependency
    # resolution, with setuptools visible to its build.
    target=$work/pydeps
    export PYTHONPATH=$target${PYTHONPATH:+:$PYTHONPATH} PATH=$target/bin:$PATH
    "$py" -m pip install -q --no-index --find-links "$wheels" --target "$target" --no-deps \
      setuptools wheel >>"$out/run.log" 2>&1
    "$py" -m pip install -q --no-index --find-links "$wheels" --target "$target" --no-deps \
      --no-build-isolation deepspeed hjson ninja packaging psutil py-cpuinfo pydantic \
      pydantic_core annotated_types typing_extensions typing_inspection msgpack tqdm einops \
      >>"$out/run.log" 2>&1 || echo "deepspeed install failed" | tee -a "$out/run.log"
  fi
  "$py" "$root/share/spill/bench/optim_vs_baselines.py" --threads "$threads" \
    --lib "$root/lib/libspill_optim_c.so" --params $((128 << 20)) 2>>"$out/run.log" \
    | tee -a "$out/bench.jsonl"
fi

if want h2d && [ -x "$root/bin/h2d_shm" ]; then
  log "h2d_shm"
  "$root/bin/h2d_shm" 2>>"$out/run.log" | tee -a "$out/bench.jsonl"
fi

mkdir -p /var/tmp/spill-nvme-bench
if want nvme; then
  log "nvme_vs_fio"
  "$root/bin/nvme_vs_fio" --dir=/var/tmp/spill-nvme-bench --size=$((1 << 30)) --cells=quick \
    --fio="$root/bin/fio" 2>>"$out/run.log" | tee -a "$out/bench.jsonl"
fi
if want nvme && [ -x "$root/bin/optim_nvme_step" ]; then
  log "optim_nvme_step"
  "$root/bin/optim_nvme_step" --dir=/var/tmp/spill-nvme-bench --params=$((256 << 20)) \
    --sub-group=$((16 << 20)) --threads="$threads" 2>>"$out/run.log" | tee -a "$out/bench.jsonl"
fi
rm -rf /var/tmp/spill-nvme-bench "$work"
