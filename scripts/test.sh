#!/usr/bin/env bash
# The test suite, from a fresh Debian 12 machine (this is what CI runs):
#   1. install the Debian packages that are missing;
#   2. preset dev:  configure, build, ctest everything but the gpu label;
#   3. preset asan: configure, build, ctest the unit and integration labels
#      under AddressSanitizer + UndefinedBehaviorSanitizer.
# A failed build skips that preset's tests; the other preset still runs. Exits
# non-zero when any step failed, after a summary.
#
# Usage: scripts/test.sh
# Environment: SPILL_JOBS (nproc) build and test parallelism; SPILL_TEST_TIMEOUT
# (600) default seconds per test; ASAN_OPTIONS / UBSAN_OPTIONS / LSAN_OPTIONS
# replace the defaults below. Logs go to build/test-logs/.
set -uo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

test_timeout=${SPILL_TEST_TIMEOUT:-600}
logs=$SPILL_ROOT/build/test-logs
summary=()
total_passed=0
total_failed=0
failed=0

# Runs ctest with the given arguments, tees its output to logs/NAME.log and
# adds its counts to the totals. Returns ctest's status.
run_ctest() {
  local name=$1
  shift
  local log=$logs/$name.log
  (cd "$SPILL_ROOT" && ctest "$@" -j "$SPILL_JOBS" --timeout "$test_timeout" \
    --no-tests=error) 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  # ctest's closing line: "98% tests passed, 1 tests failed out of 57".
  local line passed=0 bad=0 all=0
  line=$(grep -E '[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n 1)
  if [ -n "$line" ]; then
    all=$(sed -E 's/.* out of ([0-9]+).*/\1/' <<<"$line")
    bad=$(sed -E 's/.* ([0-9]+) tests? failed.*/\1/' <<<"$line")
    passed=$((all - bad))
  elif [ "$rc" -ne 0 ]; then
    bad=1  # ctest itself failed (no tests found, bad arguments).
  fi
  total_passed=$((total_passed + passed))
  total_failed=$((total_failed + bad))
  local failed_names
  failed_names=$(sed -n '/The following tests FAILED:/,$p' "$log" | grep -E '^\s+[0-9]+ - ' || true)
  summary+=("$(printf '%-5s %-30s %d passed, %d failed' "$name" "(ctest ${*:3})" "$passed" "$bad")")
  if [ -n "$failed_names" ]; then
    while IFS= read -r l; do summary+=("        failed: ${l#"${l%%[![:space:]]*}"}"); done <<<"$failed_names"
  fi
  return "$rc"
}

# test_preset PRESET CTEST_ARGS...: configure, build, run ctest.
test_preset() {
  local preset=$1
  shift
  spill_step "preset $preset: configure and build everything (-j$SPILL_JOBS)"
  if ! spill_build_preset "$preset" 2>&1 | tee "$logs/build-$preset.log"; then
    summary+=("$(printf '%-5s BUILD FAILED (log: build/test-logs/build-%s.log)' "$preset" "$preset")")
    failed=1
    return
  fi
  spill_step "preset $preset: ctest $*"
  run_ctest "$preset" --preset "$preset" "$@" || failed=1
}

spill_step "install missing Debian packages"
# shellcheck disable=SC2119  # No extra packages.
spill_ensure_deps || spill_die "could not install the build dependencies"
mkdir -p "$logs"

spill_step "LibTorch for the worker"
spill_ensure_torch || true

test_preset dev -LE gpu

# LeakSanitizer is on (ASan's default on Linux); halt on the first UB report.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
test_preset asan -L 'unit|integration'

spill_step "summary"
printf '    %s\n' "${summary[@]}"
echo
if [ $failed -ne 0 ]; then
  echo "TESTS FAILED (logs in build/test-logs/)"
else
  echo "ALL TESTS PASSED"
fi
echo "tests: $total_passed passed, $total_failed failed"
exit $failed
