#!/usr/bin/env python3
"""Checks a `zero3_train --profile=PATH` run (ctest): PATH.rank0.json and
PATH.rank0.steps.json exist, bench/zero3_timeline.py finds the expected number
of steps on one time line, each with forward and backward, spilld optimizer
steps in flight inside it and the engine's gathers waiting on spilld.

  check_zero3_timeline.py PATH STEPS
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zero3_timeline  # noqa: E402


def main():
    path, want = sys.argv[1], int(sys.argv[2])
    lanes, host, spans, _ = zero3_timeline.load(path, 0)
    windows = zero3_timeline.step_windows(host)
    errors = []
    if len(windows) != want:
        errors.append(f"{len(windows)} steps in the timeline, expected {want}")
    if not spans:
        errors.append("no optimizer step spans")
    for k, (start, bstart, bend, end) in enumerate(windows):
        if not start < bstart < bend <= end:
            errors.append(f"step {k}: phases out of order {start} {bstart} {bend} {end}")
        if zero3_timeline.covered(lanes["optimizer"], start, end) <= 0:
            errors.append(f"step {k}: no spilld optimizer step in flight")
    if "spill::acquire_param" not in host:
        errors.append("no spill::acquire_param spans")
    if errors:
        sys.exit("timeline check failed: " + "; ".join(errors))
    print(f"timeline OK: {len(windows)} steps, {len(spans)} optimizer step spans")


if __name__ == "__main__":
    main()
