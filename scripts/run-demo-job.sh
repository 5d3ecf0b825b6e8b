#!/usr/bin/env bash
# The demo job, on binaries that are already built:
#   1. start spilld on a private socket in a new temporary directory, with a
#      small pinned pool, and wait until it answers `spillctl health`;
#   2. run spill_demo: it offloads tensors into spilld's pinned tier, fetches
#      them back and verifies every byte;
#   3. train a small GPT for $SPILL_TRAIN_STEPS steps with ZeRO-3, parameters
#      and optimizer offloaded to this spilld: 2 ranks on the CPU (Gloo), or
#      up to 2 GPUs (NCCL) when nvidia-smi lists any; the loss falls;
#   4. print `spillctl stats`;
#   5. stop spilld with SIGTERM and require exit status 0.
# The temporary directory goes away on any exit, and spilld with it.
#
# Binaries: $SPILLD, $SPILLCTL and $SPILL_DEMO when set, else those next to
# this script, else those on PATH. scripts/demo.sh builds them and calls this;
# the offline bundle ships it as bin/spill-demo-job.
#
# Environment (all optional):
#   SPILL_PINNED_BYTES   pinned pool size       (default 256MiB)
#   SPILL_SEGMENT_BYTES  memfd segment size     (default 64MiB)
#   SPILL_START_TIMEOUT  seconds to wait for spilld to answer      (default 30)
#   SPILL_STOP_TIMEOUT   seconds to wait for it to exit on SIGTERM (default 30)
#   SPILLD_ARGS          more spilld flags, e.g. "--huge-pages=off"
#   SPILL_DEMO_ARGS      more spill_demo flags, e.g. "--tensors=32 --mib=4"
#   SPILL_TRAIN          spill-train to run in step 3 ("none": skip the step)
#   SPILL_TRAIN_STEPS    training steps (default 40)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pinned_bytes=${SPILL_PINNED_BYTES:-256MiB}
segment_bytes=${SPILL_SEGMENT_BYTES:-64MiB}
start_timeout=${SPILL_START_TIMEOUT:-30}
stop_timeout=${SPILL_STOP_TIMEOUT:-30}

step() { printf '\n==> %s\n' "$*"; }
fail() {
  printf '\nFAILED: %s\n' "$*" >&2
  exit 1
}
shown() {  # Prints a command, then runs it.
  printf '    $ %s\n' "$*"
  "$@"
}

find_tool() {  # find_tool VARIABLE NAME
  local value=${!1:-}
  if [ -z "$value" ] && [ -x "$here/$2" ]; then value=$here/$2; fi
  if [ -z "$value" ]; then value=$(command -v "$2" || true); fi
  if [ -z "$value" ] || [ ! -x "$value" ]; then
    fail "$2 not found (set $1, or put it on PATH)"
  fi
  printf '%s' "$value"
}
spilld=$(find_tool SPILLD spilld)
spillctl=$(find_tool SPILLCTL spillctl)
spill_demo=$(find_tool SPILL_DEMO spill_demo)
spill_train=${SPILL_TRAIN:-}
if [ -z "$spill_train" ]; then spill_train=$(find_tool SPILL_TRAIN spill-train 2>/dev/null || echo none); fi

workdir=$(mktemp -d "${TMPDIR:-/tmp}/spill-demo.XXXXXX")
socket=$workdir/spilld.sock
log=$workdir/spilld.log
spilld_pid=
rank_pids=()  # spill-train ranks still running

# A TCP port on 127.0.0.1 for the ranks' rendezvous store, from below the
# kernel's ephemeral range: one from inside it can be handed to another
# socket's outgoing connection before rank 0 binds it.
free_port() {
  python3 - <<'PY'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for port in random.sample(range(10000, low), min(100, max(0, low - 10000))) if low > 11000 else []:
    with socket.socket() as s:
        try:
            s.bind(("", port))  # the store listens on every address
        except OSError:
            continue
    print(port)
    break
else:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])
PY
}

# True while spilld runs (an exited child stays a zombie until waited for,
# and kill -0 would still find it).
spilld_running() {
  local stat
  [ -n "$spilld_pid" ] || return 1
  stat=$(cat "/proc/$spilld_pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

show_log() {
  [ -s "$log" ] || return 0
  echo "    --- spilld's log ---"
  sed 's/^/    | /' "$log"
}

cleanup() {
  local rc=$?
  # A rank's shell killed between its fork and its exec can run these traps
  # too (bash resets them in the child only then): only the script's own
  # shell cleans up, or a stopped rank would take spilld and the logs with it.
  [ "$BASHPID" = "$$" ] || return "$rc"
  if [ ${#rank_pids[@]} -gt 0 ]; then
    kill -KILL "${rank_pids[@]}" 2>/dev/null || true
  fi
  if spilld_running; then
    echo "    killing spilld (pid $spilld_pid) left running by the failure above" >&2
    kill -KILL "$spilld_pid" 2>/dev/null || true
    wait "$spilld_pid" 2>/dev/null || true
  fi
  if [ $rc -ne 0 ]; then show_log >&2; fi
  rm -rf "$workdir"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "1/5 start spilld on a private socket (pool $pinned_bytes in $segment_bytes segments)"
echo "    working directory $workdir (removed on exit)"
read -r -a extra_args <<<"${SPILLD_ARGS:-}"
spilld_cmd=("$spilld" --socket="$socket" --pinned-bytes="$pinned_bytes"
  --segment-bytes="$segment_bytes" "${extra_args[@]}")
printf '    $ %s 2>%s &\n' "${spilld_cmd[*]}" "$log"
"${spilld_cmd[@]}" 2>"$log" &
spilld_pid=$!
echo "    spilld pid $spilld_pid; waiting up to ${start_timeout}s for it to answer health"
deadline=$((SECONDS + start_timeout))
until "$spillctl" --socket="$socket" --timeout=1s health >/dev/null 2>&1; do
  if ! spilld_running; then
    status=0
    wait "$spilld_pid" || status=$?
    spilld_pid=
    fail "spilld exited with status $status before answering"
  fi
  [ $SECONDS -lt $deadline ] || fail "spilld did not answer within ${start_timeout}s"
  sleep 0.1
done
shown "$spillctl" --socket="$socket" health

step "2/5 run the demo client: offload tensors, fetch them back, verify them"
read -r -a extra_args <<<"${SPILL_DEMO_ARGS:-}"
shown "$spill_demo" --socket="$socket" "${extra_args[@]}" || fail "spill_demo failed (status $?)"

step "3/5 ZeRO-3 training with parameters and optimizer offloaded to spilld"
if [ "$spill_train" = none ] || [ ! -x "$spill_train" ]; then
  echo "    skipped: spill-train was not built (it needs LibTorch: pip's torch in python3 or .venv)"
else
  device=cpu
  ranks=2
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  if [ "${gpus:-0}" -ge 1 ]; then
    device=cuda
    ranks=$((gpus < 2 ? gpus : 2))
  fi
  cat >"$workdir/ds_config.json" <<'JSON'
{
  "train_micro_batch_size_per_gpu": 4,
  "gradient_accumulation_steps": 2,
  "gradient_clipping": 1.0,
  "steps_per_print": 5,
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "betas": [0.9, 0.95], "weight_decay": 0.01}},
  "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0, "warmup_max_lr": 3e-3,
                                              "warmup_num_steps": 5, "warmup_type": "linear"}},
  "zero_optimization": {"stage": 3,
                        "offload_optimizer": {"device": "cpu", "pin_memory": true},
                        "offload_param": {"device": "cpu", "pin_memory": true}}
}
JSON
  port=$(free_port)
  echo "    $ (for each of $ranks ranks) RANK=r WORLD_SIZE=$ranks MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \\"
  echo "        $spill_train --deepspeed ds_config.json --device $device --spill-socket $socket --job demo-train \\"
  echo "        --layers 2 --hidden 64 --heads 4 --seq_len 64 --max_steps ${SPILL_TRAIN_STEPS:-40}"
  for ((r = 0; r < ranks; r++)); do
    # Made here, not by the rank's redirection: a rank stopped before that
    # ran still has a (empty) log to show.
    : >"$workdir/train.$r.log"
    MASTER_ADDR=127.0.0.1 MASTER_PORT=$port WORLD_SIZE=$ranks RANK=$r LOCAL_RANK=$r \
      "$spill_train" --deepspeed "$workdir/ds_config.json" --device "$device" \
      --spill-socket "$socket" --job demo-train --layers 2 --hidden 64 --heads 4 --seq_len 64 \
      --max_steps "${SPILL_TRAIN_STEPS:-40}" >"$workdir/train.$r.log" 2>&1 &
    rank_pids+=($!)
  done
  train_rc=0
  # The first rank to fail stops the others (they would wait out the
  # rendezvous or a collective), as torchrun does.
  # (spilld is this shell's job too: wait only for the ranks.)
  while [ ${#rank_pids[@]} -gt 0 ]; do
    finished=
    s=0
    wait -n -p finished "${rank_pids[@]}" || s=$?
    [ -n "$finished" ] || break
    left=()
    for pid in "${rank_pids[@]}"; do [ "$pid" = "$finished" ] || left+=("$pid"); done
    rank_pids=("${left[@]}")
    if [ $s -ne 0 ] && [ $train_rc -eq 0 ]; then
      train_rc=$s
      if [ ${#rank_pids[@]} -gt 0 ]; then kill "${rank_pids[@]}" 2>/dev/null || true; fi
    fi
  done
  # (Nothing matches when a rank failed at start: not an error here.)
  grep -E '^step|^spill-train: (rank|warning|not supported|building|model built)' \
    "$workdir/train.0.log" | sed 's/^/    /' || true
  if [ $train_rc -ne 0 ]; then
    for ((r = 0; r < ranks; r++)); do sed "s/^/    [rank $r] /" "$workdir/train.$r.log" | tail -20; done
    fail "spill-train failed (status $train_rc)"
  fi
  first=$(sed -n 's/^step 1 loss \([0-9.]*\).*/\1/p' "$workdir/train.0.log")
  last=$(sed -n 's/^step [0-9]* loss \([0-9.]*\).*/\1/p' "$workdir/train.0.log" | tail -1)
  python3 -c "import sys; sys.exit(0 if float('$last') < float('$first') else 1)" ||
    fail "the loss did not fall (step 1: $first, last: $last)"
  echo "    loss fell from $first to $last over ${SPILL_TRAIN_STEPS:-40} steps ($ranks ranks, $device)"
fi

step "4/5 spilld's tier stats"
shown "$spillctl" --socket="$socket" stats || fail "spillctl stats failed (status $?)"

step "5/5 stop spilld with SIGTERM"
kill -TERM "$spilld_pid"
deadline=$((SECONDS + stop_timeout))
while spilld_running; do
  if [ $SECONDS -ge $deadline ]; then
    kill -KILL "$spilld_pid"
    fail "spilld did not exit within ${stop_timeout}s of SIGTERM (killed it)"
  fi
  sleep 0.1
done
status=0
wait "$spilld_pid" || status=$?
spilld_pid=
show_log
[ $status -eq 0 ] || fail "spilld exited with status $status after SIGTERM (expected 0)"
echo "    spilld exited with status 0"

printf '\nDEMO OK: spilld served the demo client and the training job and stopped cleanly.\n'
