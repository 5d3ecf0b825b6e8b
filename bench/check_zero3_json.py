#!/usr/bin/env python3
"""Checks zero3_train's output: every line a JSON object with the fields of
bench/bench_json.h, and every metric zero3_train prints present once.

  check_zero3_json.py OUTPUT.jsonl [--nvme]

--nvme: the run had states on spilld's NVMe tier; its lane line must carry
spilld's measured bytes and rate, count no more bytes than the model's, and
run at the better of the disk's measured rate and spilld's achieved one.
"""
import json
import math
import sys

METRICS = ["tokens_per_s", "tflops", "step_s", "forward_s", "backward_s", "reduce_s",
           "spilld_wait_s", "optimizer_s", "lane_gpu_compute_s", "lane_pcie_s",
           "lane_cpu_optimizer_s", "lane_nvme_s", "lane_bound_s"]


def check_nvme(path, row):
    read, written = row.get("spilld_read_bytes", -1), row.get("spilld_written_bytes", -1)
    if not (read > 0 and written > 0):
        sys.exit(f"{path}: lane_nvme_s has no spilld NVMe bytes: {row}")
    rates = (row.get("disk_bytes_per_s", 0), row.get("spilld_bytes_per_s", 0))
    if not (min(rates) > 0 and abs(row["bytes_per_s"] - max(rates)) <= 1e-6 * max(rates)):
        sys.exit(f"{path}: lane_nvme_s rate {row['bytes_per_s']} is not the better of the disk's "
                 f"and spilld's ({rates})")
    if not 0 < row["bytes"] <= row["model_bytes"] or row["bytes"] > read + written + 1:
        sys.exit(f"{path}: lane_nvme_s counts {row['bytes']} bytes, not min(model "
                 f"{row['model_bytes']}, spilld {read + written})")


def main(path, nvme):
    seen = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            row = json.loads(line)
            for key in ("bench", "metric", "value", "unit", "machine"):
                if key not in row:
                    sys.exit(f"{path}:{number}: no '{key}' in {line.strip()}")
            if row["bench"] != "zero3_train":
                sys.exit(f"{path}:{number}: bench is {row['bench']!r}")
            if not isinstance(row["value"], (int, float)) or not math.isfinite(row["value"]):
                sys.exit(f"{path}:{number}: value is not a finite number")
            if row["metric"] in seen:
                sys.exit(f"{path}:{number}: metric {row['metric']} printed twice")
            seen[row["metric"]] = row
    missing = [m for m in METRICS if m not in seen]
    if missing:
        sys.exit(f"{path}: metrics missing: {', '.join(missing)} (have {', '.join(seen)})")
    main_row = seen["tokens_per_s"]
    for key in ("baseline", "baseline_value", "ratio"):
        if key not in main_row:
            sys.exit(f"{path}: tokens_per_s has no '{key}'")
    if main_row["baseline"] != "lane_bound" or not main_row["value"] > 0 \
            or not main_row["baseline_value"] > 0:
        sys.exit(f"{path}: tokens_per_s needs a positive value and lane_bound baseline: {main_row}")
    pool, segment = main_row.get("spilld_pinned_gib", 0), main_row.get("spilld_segment_mib", 0)
    if not (segment > 0 and pool * 1024 >= 2 * segment):
        sys.exit(f"{path}: tokens_per_s needs spilld's pool and segment (two segments at least): "
                 f"pool {pool} GiB, segment {segment} MiB")
    if nvme:
        check_nvme(path, seen["lane_nvme_s"])
    print(f"{path}: {len(seen)} metrics, tokens/s {main_row['value']:.1f}, "
          f"lane bound {main_row['baseline_value']:.1f} ({main_row['bound_lane']}), "
          f"ratio {main_row['ratio']:.3f}")


if __name__ == "__main__":
    main(sys.argv[1], "--nvme" in sys.argv[2:])
