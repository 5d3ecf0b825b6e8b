#!/usr/bin/env bash
# Runs Spill's tests and benchmarks on a GPU node from an offline bundle
# (deploy/make-bundle.sh --with-fio [--with-worker]), writing JSON lines and
# logs to OUTDIR.
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
#      nvme_vs_fio on the node's disk;
#   worker (bundles made --with-worker): worker_nccl_test and
#      worker_engine_test on the node's GPUs;
#   train (--with-worker; not in the default list: about 15 minutes):
#      zero3_train, GPT 1.3B and 6.7B with parameters and optimizer offloaded
#      to spilld (cpu/cpu, bf16) on 1 GPU and, with 2+ GPUs, on 2 through
#      python3 -m torch.distributed.run; each run bounded by
#      $SPILL_TRAIN_TIMEOUT seconds (default 540). $SPILL_TRAIN_RUNS picks
#      runs (default "1gpu-1.3B 1gpu-6.7B 2gpu-1.3B 2gpu-6.7B").
#   rtt (not in the default list): control_rtt, the control round trip over
#      spilld's Unix socket against a bare socketpair ping-pong and a bare
#      gRPC echo (1 client, 8 client threads, 8 client processes); runs
#      alternate: as shipped, with Abseil's deadlock check kept on
#      (SPILL_ABSL_DEADLOCK_CHECK=1), as shipped again, and with
#      GRPC_POLL_STRATEGY=poll.
#   nvgpu (not in the default list): nvme_gpu, a parameter prefetch NVMe ->
#      spilld's pinned tier -> GPU against O_DIRECT reads + cudaMemcpyAsync
#      on the node's disk (about 2 minutes at 1 GB/s).
#   deepspeed (not in the default list; needs WHEELS_DIR and a train step
#      before it): DeepSpeed's ZeRO-3 with the same offload, model and batch
#      as zero3_train runs of this invocation ($SPILL_DS_RUNS picks them);
#      zero3_vs_deepspeed lines.
#   largest (not in the default list; needs WHEELS_DIR): the largest GPT that
#      Spill and DeepSpeed each train on one GPU with this node's host memory
#      ($SPILL_LARGEST_SIZES, default "2.7B 6.7B 13B"); one largest_trainable
#      line.
#   $SPILL_NODE_STEPS (default "selftest tests optim python h2d nvme") picks
#   steps, e.g. SPILL_NODE_STEPS="selftest worker train".
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
ngpus=$(nvidia-smi -L 2>/dev/null | wc -l)  # every step counts the GPUs from this

log "machine"
{ nproc; lscpu | grep -E 'Model name|Flags' | cut -c1-200; nvidia-smi -L; df -h /var/tmp;
  echo "shmem THP: $(cat /sys/kernel/mm/transparent_hugepage/shmem_enabled 2>&1)";
  grep -E "HugePages_Total|Hugepagesize" /proc/meminfo; } \
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
# DeepSpeed from WHEELS_DIR into a scratch prefix, once. --target ignores what
# the environment has (torch, numpy): DeepSpeed and its dependencies go in
# without dependency resolution, with setuptools visible to its build.
install_deepspeed() {
  [ -n "$wheels" ] || return 0
  python3 -c 'import deepspeed' 2>/dev/null && return 0
  local target=$work/pydeps
  export PYTHONPATH=$target${PYTHONPATH:+:$PYTHONPATH} PATH=$target/bin:$PATH
  python3 -m pip install -q --no-index --find-links "$wheels" --target "$target" --no-deps \
    setuptools wheel >>"$out/run.log" 2>&1
  python3 -m pip install -q --no-index --find-links "$wheels" --target "$target" --no-deps \
    --no-build-isolation deepspeed hjson ninja packaging psutil py-cpuinfo pydantic \
    pydantic_core annotated_types typing_extensions typing_inspection msgpack tqdm einops \
    >>"$out/run.log" 2>&1 || echo "deepspeed install failed" | tee -a "$out/run.log"
  # DeepSpeed's CUDA op builders parse the architecture list as integers and
  # fail on Hopper's "9.0a", which these nodes' environment names: name the
  # GPUs' own (overriding it).
  if command -v nvidia-smi >/dev/null; then
    TORCH_CUDA_ARCH_LIST=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | sort -u |
                           paste -sd';')
    export TORCH_CUDA_ARCH_LIST
  fi
  # libaio for DeepSpeed's async_io op (NVMe offload), when the node has none:
  # g++ finds the header and libaio.so through CPATH / LIBRARY_PATH, the
  # dynamic loader libaio.so.1 through LD_LIBRARY_PATH.
  if ! ldconfig -p | grep -q 'libaio\.so\.1 ' && ls "$wheels"/aio/*.deb >/dev/null 2>&1; then
    local aio=$work/aio deb lib=$work/aio/usr/lib/x86_64-linux-gnu
    for deb in "$wheels"/aio/*.deb; do dpkg -x "$deb" "$aio"; done
    export CPATH=$aio/usr/include${CPATH:+:$CPATH}
    export LIBRARY_PATH=$lib${LIBRARY_PATH:+:$LIBRARY_PATH}
    export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    echo "libaio for DeepSpeed's async_io: $lib" | tee -a "$out/run.log"
  fi
}
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
  install_deepspeed
  "$py" "$root/share/spill/bench/optim_vs_baselines.py" --threads "$threads" \
    --lib "$root/lib/libspill_optim_c.so" --params $((128 << 20)) 2>>"$out/run.log" \
    | tee -a "$out/bench.jsonl"
fi

if want h2d && [ -x "$root/bin/h2d_shm" ]; then
  log "h2d_shm"
  "$root/bin/h2d_shm" 2>>"$out/run.log" | tee -a "$out/bench.jsonl"
fi

if want rtt && [ -x "$root/bin/control_rtt" ]; then
  log "control_rtt"
  # Variants name their metrics (control_rtt's header says how); the
  # second as-shipped run shows the drift between runs on this node.
  for variant in "" SPILL_ABSL_DEADLOCK_CHECK=1 "" GRPC_POLL_STRATEGY=poll; do
    env $variant "$root/bin/control_rtt" --seconds=3 2>>"$out/run.log" |
      tee -a "$out/bench.jsonl"
  done
fi

if want nvgpu && [ -x "$root/bin/nvme_gpu" ]; then
  log "nvme_gpu"
  "$root/bin/nvme_gpu" --dir=/var/tmp/spill-nvme-gpu-bench --total=$((4 << 30)) --repeat=2 \
    2>>"$out/run.log" | tee -a "$out/bench.jsonl"
fi

mkdir -p /var/tmp/spill-nvme-bench
if want nvme && [ ! -x "$root/bin/fio" ]; then
  log "nvme_vs_fio skipped: the bundle has no fio (make it with deploy/make-bundle.sh --with-fio)"
elif want nvme; then
  log "nvme_vs_fio"
  "$root/bin/nvme_vs_fio" --dir=/var/tmp/spill-nvme-bench --size=$((1 << 30)) --cells=quick \
    --repeat="${SPILL_NVME_REPEAT:-1}" --fio="$root/bin/fio" 2>>"$out/run.log" | tee -a "$out/bench.jsonl"
fi
if want nvme && [ -x "$root/bin/optim_nvme_step" ]; then
  log "optim_nvme_step"
  "$root/bin/optim_nvme_step" --dir=/var/tmp/spill-nvme-bench --params=$((256 << 20)) \
    --sub-group=$((16 << 20)) --threads="$threads" 2>>"$out/run.log" | tee -a "$out/bench.jsonl"
fi

# A worker test program on the GPUs; PASS/FAIL into run.log.
run_worker_test() {
  local name=$1
  if [ ! -x "$root/bin/$name" ]; then
    echo "SKIP $name: not in the bundle (make it with --with-worker)" | tee -a "$out/run.log"
    return
  fi
  if timeout 600 "$root/bin/$name" >"$out/worker-$name.log" 2>&1; then
    echo "PASS $name $(grep -E '^\[  (PASSED|SKIPPED) ' "$out/worker-$name.log" | tr '\n' ' ')"
  else
    echo "FAIL $name: see worker-$name.log; its end:"
    tail -n 25 "$out/worker-$name.log"
  fi | tee -a "$out/run.log"
}
if want worker; then
  log "worker tests on $ngpus GPU(s)"
  run_worker_test worker_nccl_test
  run_worker_test worker_engine_test
  run_worker_test worker_engine_api_test
  run_worker_test worker_gpt_test
fi

# One zero3_train run: NAME GPUS ARGS...; JSON lines into bench.jsonl.
# Each rank's share of the cores for LibTorch's CPU threads (torchrun would
# set OMP_NUM_THREADS=1): nproc / ranks, at least 1.
omp_share() {
  local n=$(($(nproc) / $1))
  echo $((n > 0 ? n : 1))
}
train_run() {
  local name=$1 gpus=$2 launcher=()
  shift 2
  [[ " ${SPILL_TRAIN_RUNS:-1gpu-1.3B 1gpu-1.3B-noclip 1gpu-6.7B 2gpu-1.3B 2gpu-6.7B} " == *" $name "* ]] || return 0
  if [ "$gpus" -gt "$ngpus" ]; then
    echo "SKIP zero3_train $name: $ngpus GPU(s) here" | tee -a "$out/run.log"
    return 0
  fi
  if [ "$gpus" -gt 1 ]; then
    launcher=(env OMP_NUM_THREADS="$(omp_share "$gpus")" python3 -m torch.distributed.run
              --nproc-per-node="$gpus" --no-python)
  fi
  log "zero3_train $name: $*"
  # spilld recovers the jobs an NVMe directory's manifest names: each run
  # starts from an empty one.
  rm -rf /var/tmp/spill-zero3-nvme && mkdir -p /var/tmp/spill-zero3-nvme
  # $SPILL_TRAIN_EXTRA: flags added to every run (later flags win), e.g. --steps=12.
  # shellcheck disable=SC2086
  timeout --kill-after=30 "${SPILL_TRAIN_TIMEOUT:-540}" "${launcher[@]}" "$root/bin/zero3_train" "$@" \
    ${SPILL_TRAIN_EXTRA:-} 2>>"$out/train-$name.log" | tee -a "$out/bench.jsonl"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "zero3_train $name: exit $rc (124: timed out); see train-$name.log";
                       tail -n 15 "$out/train-$name.log"; } | tee -a "$out/run.log"
}
# A train_run with --profile: per rank, the timeline of its last two steps
# (timeline-NAME.rankR.txt, bench/zero3_timeline.py) and the gzipped trace.
prof_run() {
  local name=$1 f rank
  train_run "$@" --profile="$out/prof-$name"
  for f in "$out/prof-$name".rank*.steps.json; do
    [ -e "$f" ] || continue
    rank=${f##*.rank}
    rank=${rank%%.*}
    python3 "$root/share/spill/bench/zero3_timeline.py" "$out/prof-$name" --rank="$rank" \
      >"$out/timeline-$name.rank$rank.txt" 2>&1
    gzip -f "$out/prof-$name.rank$rank.json"
  done
}
if want train; then
  if [ ! -x "$root/bin/zero3_train" ]; then
    echo "SKIP train: zero3_train is not in the bundle (make it with --with-worker)" | tee -a "$out/run.log"
  else
    args13=(--preset=1.3B --bf16 --micro-batch=4 --steps=6 --warmup=2)
    args67=(--preset=6.7B --bf16 --micro-batch=2 --steps=3 --warmup=1)
    train_run 1gpu-1.3B 1 "${args13[@]}"
    train_run 1gpu-6.7B 1 "${args67[@]}"
    train_run 1gpu-2.7B 1 --preset=2.7B --bf16 --micro-batch=4 --steps=4 --warmup=2
    # Without clipping each layer's optimizer step overlaps the rest of backward.
    train_run 1gpu-1.3B-noclip 1 "${args13[@]}" --clip=0
    # The same with 1 and 4 optimizer steps in flight (default 2), and with
    # spilld's optimizer threads at the same priority as everything else.
    # Timelines of 1.3B and 6.7B on 1 GPU and 1.3B on 2 GPUs.
    prof_run 1gpu-1.3B-noclip-prof 1 "${args13[@]}" --clip=0
    prof_run 1gpu-6.7B-noclip-prof 1 "${args67[@]}" --clip=0
    prof_run 2gpu-1.3B-noclip-prof 2 "${args13[@]}" --clip=0
    # With clipping: no layer steps before the global norm is known, unless
    # speculatively (the default guesses from the previous step: here every
    # step is clipped, so none is). --speculative=always: every layer step
    # goes out during backward and spilld rescales it after (the cost of a
    # wrong guess). --clip=100: clipping on but never triggered, as in most
    # steps of a settled run: the steps after the first are speculative.
    prof_run 1gpu-1.3B-prof 1 "${args13[@]}"
    train_run 1gpu-1.3B-spec 1 "${args13[@]}" --speculative=always
    train_run 1gpu-1.3B-clip100 1 "${args13[@]}" --clip=100
    train_run 1gpu-1.3B-clip100-nospec 1 "${args13[@]}" --clip=100 --speculative=never
    train_run 1gpu-6.7B-clip100 1 "${args67[@]}" --clip=100
    train_run 2gpu-1.3B-clip100 2 "${args13[@]}" --clip=100
    # Parameter pins asked for at each gather instead of ahead.
    train_run 1gpu-1.3B-noclip-ahead0 1 "${args13[@]}" --clip=0 --acquire-ahead=0
    train_run 1gpu-1.3B-noclip-w1 1 "${args13[@]}" --clip=0 --steps-in-flight=1
    train_run 1gpu-1.3B-noclip-w4 1 "${args13[@]}" --clip=0 --steps-in-flight=4
    train_run 1gpu-1.3B-noclip-nice0 1 "${args13[@]}" --clip=0 --optim-nice=0
    # spilld's optimizer on one thread per physical core of a 2-way SMT host.
    train_run 1gpu-1.3B-noclip-t16 1 "${args13[@]}" --clip=0 --optim-threads=16
    # Activation checkpointing, its checkpoints on the GPU and in host memory.
    train_run 1gpu-1.3B-noclip-ckpt 1 "${args13[@]}" --clip=0 --gradient-checkpointing
    train_run 1gpu-1.3B-noclip-cpuckpt 1 "${args13[@]}" --clip=0 --cpu-checkpointing
    train_run 1gpu-6.7B-noclip 1 "${args67[@]}" --clip=0
    train_run 2gpu-1.3B 2 "${args13[@]}"
    train_run 2gpu-1.3B-noclip 2 "${args13[@]}" --clip=0
    train_run 2gpu-6.7B 2 "${args67[@]}"
    train_run 2gpu-6.7B-noclip 2 "${args67[@]}" --clip=0
    # ZeRO-Infinity: parameters on the node's disk through spilld's NVMe
    # tier, 1e8 elements (of 1.3e9) cached in pinned memory. train_run
    # gives each run an empty /var/tmp/spill-zero3-nvme.
    nvparam=(--clip=0 --offload-param=nvme --nvme-dir=/var/tmp/spill-zero3-nvme
             --max-in-cpu=100000000)
    train_run 1gpu-1.3B-noclip-nvparam 1 "${args13[@]}" "${nvparam[@]}" --steps=4
    prof_run 1gpu-1.3B-noclip-nvparam-prof 1 "${args13[@]}" "${nvparam[@]}" --steps=4
    # ZeRO-Infinity with the optimizer states on the disk too (about 24 bytes
    # of disk traffic per parameter and step): 350M, so that a step takes
    # seconds, not tens of seconds, on a 1 GB/s disk.
    train_run 1gpu-350M-noclip-nvall 1 --preset=350M --bf16 --micro-batch=4 --steps=3 \
      --warmup=1 "${nvparam[@]}" --offload-optimizer=nvme
    # The largest preset whose states fit a 64 GB disk (about 14 bytes per
    # parameter: fp32 master and moments, 16-bit parameters).
    train_run 1gpu-2.7B-noclip-nvall 1 --preset=2.7B --bf16 --micro-batch=4 --steps=2 \
      --warmup=1 "${nvparam[@]}" --offload-optimizer=nvme
    # The largest preset: 13B needs about 210 GiB of pinned host memory.
    train_run 1gpu-13B-noclip 1 --preset=13B --bf16 --micro-batch=1 --steps=3 --warmup=1 --clip=0
  fi
fi
# DeepSpeed's ZeRO-3 on the same GPT and configuration as a zero3_train run
# of this invocation (bench/zero3_deepspeed.py): NAME GPUS ARGS... The
# comparison line goes to bench.jsonl; DeepSpeed's own log (it writes to
# stdout) to deepspeed-NAME.log.
ds_run() {
  local name=$1 gpus=$2 launcher=(python3)
  shift 2
  [[ " ${SPILL_DS_RUNS:-ds-1gpu-1.3B ds-1gpu-1.3B-noclip} " == *" $name "* ]] || return 0
  if [ "$gpus" -gt "$ngpus" ]; then
    echo "SKIP deepspeed $name: fewer than $gpus GPUs here" | tee -a "$out/run.log"
    return 0
  fi
  # torchrun sets OMP_NUM_THREADS=1 when it is unset, which would leave
  # DeepSpeed's CPU Adam one thread per rank: give each rank its share.
  [ "$gpus" -gt 1 ] && launcher=(env OMP_NUM_THREADS="$(omp_share "$gpus")" python3 -m
                                 torch.distributed.run --nproc-per-node="$gpus")
  log "deepspeed $name: $*"
  rm -rf /var/tmp/spill-ds-nvme && mkdir -p /var/tmp/spill-ds-nvme
  timeout --kill-after=30 "${SPILL_TRAIN_TIMEOUT:-540}" "${launcher[@]}" \
    "$root/share/spill/bench/zero3_deepspeed.py" "$@" --ours="$out/bench.jsonl" \
    >"$out/deepspeed-$name.log" 2>&1
  local rc=$?
  grep '^{"bench"' "$out/deepspeed-$name.log" | tee -a "$out/bench.jsonl"
  [ "$rc" -eq 0 ] || { echo "deepspeed $name: exit $rc (124: timed out)";
                       tail -n 15 "$out/deepspeed-$name.log"; } | tee -a "$out/run.log"
}
if want deepspeed; then
  install_deepspeed
  ds_run ds-1gpu-1.3B 1 --preset=1.3B --bf16 --micro-batch=4 --steps=6 --warmup=2
  ds_run ds-1gpu-1.3B-noclip 1 --preset=1.3B --bf16 --micro-batch=4 --steps=6 --warmup=2 --clip=0
  ds_run ds-1gpu-2.7B 1 --preset=2.7B --bf16 --micro-batch=4 --steps=4 --warmup=2
  ds_run ds-2gpu-1.3B 2 --preset=1.3B --bf16 --micro-batch=4 --steps=6 --warmup=2
  ds_run ds-2gpu-1.3B-noclip 2 --preset=1.3B --bf16 --micro-batch=4 --steps=6 --warmup=2 --clip=0
  # ZeRO-Infinity against zero3_train's 1gpu-350M-noclip-nvall and
  # 1gpu-1.3B-noclip-nvparam (parameters, and optimizer states, on the disk).
  # DeepSpeed swaps each parameter tensor through a buffer of its own, and
  # the small (persistent) ones keep theirs: 5 and 32 buffers of 3e8
  # elements stopped it in step 2. 256 buffers of 6e7 (the 350M embedding's
  # 5.1e7 fits) were not tried yet.
  dsnv=(--clip=0 --offload-param=nvme --nvme-dir=/var/tmp/spill-ds-nvme --max-in-cpu=100000000
        --nvme-buffer-count="${SPILL_DS_NVME_BUFFERS:-256}"
        --nvme-buffer-size="${SPILL_DS_NVME_BUFFER_SIZE:-60000000}")
  ds_run ds-1gpu-350M-noclip-nvall 1 --preset=350M --bf16 --micro-batch=4 --steps=3 --warmup=1 \
    "${dsnv[@]}" --offload-optimizer=nvme
  ds_run ds-1gpu-1.3B-noclip-nvparam 1 --preset=1.3B --bf16 --micro-batch=4 --steps=4 --warmup=2 \
    "${dsnv[@]}" --nvme-buffer-count=128 --nvme-buffer-size=110000000
fi
# The largest GPT each of Spill and DeepSpeed trains on one GPU of this node
# (bench/largest_trainable.py): sizes from $SPILL_LARGEST_SIZES, smallest
# first; each attempt bounded by $SPILL_TRAIN_TIMEOUT seconds.
if want largest; then
  install_deepspeed
  log "largest_trainable: ${SPILL_LARGEST_SIZES:-2.7B 6.7B 13B}"
  python3 "$root/share/spill/bench/largest_trainable.py" --zero3-train="$root/bin/zero3_train" \
    --sizes="${SPILL_LARGEST_SIZES:-2.7B 6.7B 13B}" --timeout="${SPILL_TRAIN_TIMEOUT:-540}" \
    --log-dir="$out" 2>>"$out/run.log" | tee -a "$out/bench.jsonl"
fi
rm -rf /var/tmp/spill-nvme-bench /var/tmp/spill-zero3-nvme /var/tmp/spill-ds-nvme "$work"
