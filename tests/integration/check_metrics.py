#!/usr/bin/env python3
"""Checks a live spilld's /metrics with Prometheus' own text-format parser.

Scrapes once, runs spill_demo (real client work: registers, acquires, writes
back and frees N tensors of 1 MiB through the zero-copy path), scrapes again
and checks that the families exist with the right types and that the values
moved by what the demo did. Also checks 404/405, and that every metric a
Grafana dashboard's queries name is one spilld exports.

Exit status 0 when every check passed; 1 with the failures listed.
"""
import argparse
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

EXPECTED_TYPES = {
    "spill_build_info": "gauge",
    "spill_start_time_seconds": "gauge",
    "spill_uptime_seconds": "gauge",
    "spill_tier_capacity_bytes": "gauge",
    "spill_tier_used_bytes": "gauge",
    "spill_tier_free_bytes": "gauge",
    "spill_tier_segment_bytes": "gauge",
    "spill_tier_segments": "gauge",
    "spill_tier_free_segments": "gauge",
    "spill_tier_huge_pages": "gauge",
    "spill_jobs": "gauge",
    "spill_sessions": "gauge",
    "spill_objects": "gauge",
    "spill_pins": "gauge",
    "spill_job_used_bytes": "gauge",
    "spill_job_reserved_bytes": "gauge",
    "spill_job_quota_bytes": "gauge",
    "spill_job_objects": "gauge",
    "spill_job_sessions": "gauge",
    "spill_job_acquired_bytes_total": "counter",
    "spill_job_written_back_bytes_total": "counter",
    "spill_acquired_bytes_total": "counter",
    "spill_written_back_bytes_total": "counter",
    "spill_requests_total": "counter",
    "spill_request_duration_seconds": "histogram",
}

MIB = 1 << 20
failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
    return condition


def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        content_type = response.headers.get("Content-Type", "")
        check(content_type.startswith("text/plain; version=0.0.4"),
              f"Content-Type is {content_type!r}, not text format 0.0.4")
        return response.read().decode("utf-8")


def parse(text):
    """{exposed family name: (type, [samples])}. The parser drops a
    counter's _total from the family name; put it back."""
    families = {}
    for family in text_string_to_metric_families(text):
        name = family.name
        if family.type == "counter" and not name.endswith("_total"):
            name += "_total"
        families[name] = (family.type, family.samples)
    return families


def value(families, family, sample_name=None, **labels):
    """The one sample of family named sample_name (default: the family's own
    name) whose labels include labels; None when absent."""
    sample_name = sample_name or family
    found = [s for s in families.get(family, (None, []))[1]
             if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())]
    check(len(found) <= 1, f"{sample_name}{labels}: {len(found)} samples match")
    return found[0].value if found else None


def status_of(url, method):
    request = urllib.request.Request(url, method=method, data=b"x" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def check_histogram(families, method):
    samples = [s for s in families["spill_request_duration_seconds"][1]
               if s.labels.get("method") == method]
    buckets = [(float(s.labels["le"]), s.value) for s in samples
               if s.name == "spill_request_duration_seconds_bucket"]
    count = value(families, "spill_request_duration_seconds",
                  "spill_request_duration_seconds_count", method=method)
    total = value(families, "spill_request_duration_seconds",
                  "spill_request_duration_seconds_sum", method=method)
    if not check(buckets and count is not None and total is not None,
                 f"histogram for {method} lacks buckets, _count or _sum"):
        return
    buckets.sort()
    check(buckets[-1][0] == float("inf") and buckets[-1][1] == count,
          f"{method}: +Inf bucket {buckets[-1]} != _count {count}")
    check(all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])),
          f"{method}: bucket counts are not cumulative: {buckets}")
    check(total > 0, f"{method}: _sum is {total}")


def check_dashboard(path, exported):
    with open(path, encoding="utf-8") as f:
        dashboard = json.load(f)
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    check(len(exprs) >= 5, f"dashboard has only {len(exprs)} queries")
    for expr in exprs:
        names = set(re.findall(r"\bspill_[a-z0-9_]+", expr))
        check(names, f"dashboard query names no spill_ metric: {expr}")
        for name in names:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            check(name in exported or base in exported,
                  f"dashboard query uses {name}, which spilld does not export: {expr}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--demo", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--tensors", type=int, default=5)
    parser.add_argument("--pinned-bytes", type=int, required=True)
    parser.add_argument("--error-code", help="a code the caller caused (e.g. NOT_FOUND)")
    parser.add_argument("--dashboard")
    args = parser.parse_args()

    before = parse(scrape(args.url))
    demo = subprocess.run([args.demo, f"--socket={args.socket}", f"--job={args.job}",
                           f"--tensors={args.tensors}", "--mib=1", "--no-cuda"],
                          capture_output=True, text=True, timeout=120)
    if demo.returncode != 0:
        print(f"spill_demo failed ({demo.returncode}):\n{demo.stdout}{demo.stderr}")
        return 1
    after = parse(scrape(args.url))

    for name, kind in EXPECTED_TYPES.items():
        got = after.get(name, (None,))[0]
        check(got == kind, f"family {name}: type {got}, expected {kind}")

    n = args.tensors
    check(any(s.labels.get("version") for s in after["spill_build_info"][1]),
          "spill_build_info has no version label")
    check(value(after, "spill_uptime_seconds") > 0, "uptime is not positive")
    capacity = value(after, "spill_tier_capacity_bytes", tier="pinned")
    used = value(after, "spill_tier_used_bytes", tier="pinned")
    free = value(after, "spill_tier_free_bytes", tier="pinned")
    check(capacity == args.pinned_bytes, f"capacity {capacity} != {args.pinned_bytes}")
    check(used is not None and used + free == capacity, f"used {used} + free {free} != capacity")

    def delta(family, sample=None, **labels):
        a = value(after, family, sample, **labels) or 0
        b = value(before, family, sample, **labels) or 0
        return a - b

    # The demo acquires every tensor twice (before and after re-attaching)
    # and writes each back once.
    check(delta("spill_acquired_bytes_total") == 2 * n * MIB,
          f"acquired bytes moved by {delta('spill_acquired_bytes_total')}, expected {2 * n * MIB}")
    check(delta("spill_written_back_bytes_total") == n * MIB,
          f"written-back bytes moved by {delta('spill_written_back_bytes_total')}")
    job_acquired = value(after, "spill_job_acquired_bytes_total", job=args.job)
    job_written = value(after, "spill_job_written_back_bytes_total", job=args.job)
    check(job_acquired == 2 * n * MIB,
          f"job {args.job!r} acquired {job_acquired} (label escaping lost the job?)")
    check(job_written == n * MIB, f"job {args.job!r} wrote back {job_written}")
    check(value(after, "spill_job_objects", job=args.job) == 0, "the demo freed its objects")
    check(value(after, "spill_jobs", state="grace") >= 1, "the finished demo job is not in grace")
    for method, at_least in (("acquire", 2 * n), ("write_back", n), ("register", n),
                             ("open_session", 2), ("free", n)):
        moved = delta("spill_requests_total", method=method, code="OK")
        check(moved >= at_least, f"{method} OK requests moved by {moved}, expected >= {at_least}")
        check_histogram(after, method)
        check(delta("spill_request_duration_seconds", "spill_request_duration_seconds_count",
                    method=method) >= at_least, f"{method} histogram count did not move")
    if args.error_code:
        errors = [s for s in after["spill_requests_total"][1]
                  if s.labels.get("code") == args.error_code]
        check(errors and sum(s.value for s in errors) >= 1,
              f"no request counted with code {args.error_code}")

    base = args.url.rsplit("/metrics", 1)[0]
    check(status_of(base + "/", "GET") == 404, "GET / is not 404")
    check(status_of(base + "/metricsx", "GET") == 404, "GET /metricsx is not 404")
    check(status_of(args.url, "POST") == 405, "POST /metrics is not 405")
    check(status_of(args.url, "DELETE") == 405, "DELETE /metrics is not 405")

    if args.dashboard:
        exported = set(after)
        for _, samples in after.values():
            exported.update(s.name for s in samples)
        check_dashboard(args.dashboard, exported)

    if failures:
        print("metrics check failed:\n  " + "\n  ".join(f for f in failures if f))
        return 1
    print(f"metrics check passed: {len(after)} families")
    return 0


if __name__ == "__main__":
    sys.exit(main())
