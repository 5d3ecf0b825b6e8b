#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: installs the Debian packages
# that are missing, configures and builds spilld, spillctl and spill_demo
# (preset dev, or $SPILL_PRESET) and, with LibTorch (installed into .venv
# when python3 lacks torch), spill-train; then runs the demo job (see
# scripts/run-demo-job.sh): spilld on a private socket with a small pinned
# pool, a demo client that offloads, fetches and verifies tensors, a short
# ZeRO-3 training of a small GPT with parameters and optimizer offloaded to
# spilld (2 ranks on the CPU with Gloo, or the node's GPUs with NCCL),
# `spillctl stats`, and a clean SIGTERM shutdown.
#
# Usage: scripts/demo.sh
# Environment: SPILL_PRESET (dev), SPILL_JOBS (nproc), and the settings that
# scripts/run-demo-job.sh documents (SPILL_PINNED_BYTES, SPILL_SEGMENT_BYTES,
# SPILLD_ARGS, SPILL_DEMO_ARGS, ...).
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

preset=${SPILL_PRESET:-dev}
case $preset in
  dev | release | asan) ;;
  *) spill_die "SPILL_PRESET must be dev, release or asan, not '$preset'" ;;
esac

spill_step "install missing Debian packages"
# shellcheck disable=SC2119  # No extra packages.
spill_ensure_deps

spill_step "LibTorch for the worker"
targets=(spilld spillctl spill_demo)
if [ "$preset" != asan ] && spill_ensure_torch; then targets+=(spill-train); fi

spill_step "configure and build ${targets[*]} (preset $preset, -j$SPILL_JOBS)"
spill_build_preset "$preset" "${targets[@]}" || spill_die "build failed"

build=$SPILL_ROOT/build/$preset
export SPILLD=$build/server/spilld
export SPILLCTL=$build/client/spillctl
export SPILL_DEMO=$build/client/spill_demo
if [ -x "$build/worker/spill-train" ]; then
  export SPILL_TRAIN=$build/worker/spill-train
else
  export SPILL_TRAIN=none  # run-demo-job.sh says why the training step is skipped
fi
exec "$SPILL_ROOT/scripts/run-demo-job.sh"
