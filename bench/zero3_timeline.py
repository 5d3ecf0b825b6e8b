#!/usr/bin/env python3
"""Where a ZeRO-3 training step's time goes, from `zero3_train --profile=PATH`.

Reads PATH.rank<R>.json (LibTorch profiler trace: the engine's spans on its
host thread, and on CUDA the kernels and copies) and PATH.rank<R>.steps.json
(spilld's optimizer steps as the engine saw them: sent, answered), puts both
on one time line and prints, per profiled step:

  - the phases (forward, backward, after backward) and their lengths;
  - for each lane the time it was busy in the step (union of its intervals):
    GPU kernels, H2D copies, D2H copies, spilld optimizer steps in flight;
  - the host thread's blocking waits by kind (spill::wait_step, ...);
  - a strip chart, one character per slice, one row per lane.

  python3 bench/zero3_timeline.py PATH [--rank=0] [--width=120] [--json]
"""
import argparse
import json
import sys

WAITS = ("spill::wait_step", "spill::acquire_param", "spill::acquire_grad", "spill::grad_ready",
         "spill::d2h_wait", "spill::release_wait", "spill::sync_compute", "spill::optimize")


def union(intervals):
    """Sorted, merged copy of [(start, end)]."""
    out = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def covered(intervals, lo, hi):
    """Length of the union of intervals inside [lo, hi]."""
    total = 0.0
    for s, e in union(intervals):
        s, e = max(s, lo), min(e, hi)
        if e > s:
            total += e - s
    return total


def load(path, rank):
    with open(f"{path}.rank{rank}.json") as f:
        trace = json.load(f)
    with open(f"{path}.rank{rank}.steps.json") as f:
        steps = json.load(f)
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    align = [e for e in events if e.get("name") == "spill::align"]
    if not align:
        sys.exit("no spill::align span in the trace: was it written by zero3_train --profile?")
    offset = float(align[0]["ts"]) - float(steps["align_us"])
    lanes = {"gpu": [], "h2d": [], "d2h": [], "optimizer": []}
    host = {}
    for e in events:
        s, e_end = float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))
        cat, name = e.get("cat", ""), e.get("name", "")
        if cat == "kernel":
            lanes["gpu"].append((s, e_end))
        elif cat == "gpu_memcpy":
            if "HtoD" in name:
                lanes["h2d"].append((s, e_end))
            elif "DtoH" in name:
                lanes["d2h"].append((s, e_end))
        elif cat == "user_annotation" and name.startswith("spill::"):
            host.setdefault(name.split(" ")[0], []).append((s, e_end, name))
    for st in steps["steps"]:
        lanes["optimizer"].append((st["sent_us"] + offset, st["answered_us"] + offset))
    return lanes, host, steps["steps"], offset


def step_windows(host):
    """[(start, backward_start, backward_end, end)] per step: a step starts at
    its first forward span and ends where the next one starts (the last at
    the end of its optimize span)."""
    fwd0 = sorted(s for s, _, n in host.get("spill::forward", []) if n == "spill::forward 0")
    bwd = sorted((s, e) for s, e, _ in host.get("spill::backward", []))
    opt = sorted((s, e) for s, e, _ in host.get("spill::optimize", []))
    out = []
    for k, start in enumerate(fwd0):
        end = fwd0[k + 1] if k + 1 < len(fwd0) else max([e for s, e in opt if s >= start] or [start])
        b = [x for x in bwd if start <= x[0] < end]
        out.append((start, b[0][0] if b else end, max(e for _, e in b) if b else end, end))
    return out


def strip(intervals, lo, hi, width, mark):
    row = []
    slice_us = (hi - lo) / width
    merged = union(intervals)
    for k in range(width):
        a, b = lo + k * slice_us, lo + (k + 1) * slice_us
        busy = covered(merged, a, b) / slice_us if slice_us > 0 else 0
        row.append(mark if busy >= 0.5 else ("." if busy > 0.05 else " "))
    return "".join(row)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--width", type=int, default=120)
    ap.add_argument("--json", action="store_true", help="one JSON object per step instead of text")
    args = ap.parse_args()
    lanes, host, _, _ = load(args.path, args.rank)
    for k, (start, bstart, bend, end) in enumerate(step_windows(host)):
        wall = end - start
        row = {"step": k, "wall_ms": wall / 1e3, "forward_ms": (bstart - start) / 1e3,
               "backward_ms": (bend - bstart) / 1e3, "after_backward_ms": (end - bend) / 1e3}
        for lane, iv in lanes.items():
            row[f"{lane}_busy_ms"] = covered(iv, start, end) / 1e3
            row[f"{lane}_busy_in_forward_ms"] = covered(iv, start, bstart) / 1e3
            row[f"{lane}_busy_in_backward_ms"] = covered(iv, bstart, bend) / 1e3
        for name in WAITS:
            row[f"host_{name[7:]}_ms"] = covered([(s, e) for s, e, _ in host.get(name, [])], start, end) / 1e3
        if args.json:
            print(json.dumps(row))
            continue
        print(f"step {k}: {wall / 1e3:.1f} ms = forward {row['forward_ms']:.1f} + backward "
              f"{row['backward_ms']:.1f} + after {row['after_backward_ms']:.1f}")
        for lane in lanes:
            print(f"  {lane:<10} busy {row[lane + '_busy_ms']:7.1f} ms ({row[lane + '_busy_ms'] * 1e3 / wall:4.0%})"
                  f"  in forward {row[lane + '_busy_in_forward_ms']:6.1f}  in backward "
                  f"{row[lane + '_busy_in_backward_ms']:6.1f}")
        waits = ", ".join(f"{n[7:]} {row['host_' + n[7:] + '_ms']:.1f}" for n in WAITS
                          if row["host_" + n[7:] + "_ms"] > 0)
        print(f"  host waits (ms): {waits}")
        marks = {"gpu": "K", "h2d": "H", "d2h": "D", "optimizer": "O"}
        phase = strip([(start, bstart)], start, end, args.width, "f")
        print(f"  {'phase':<10} |{phase.replace(' ', 'b')}|")
        for lane, iv in lanes.items():
            print(f"  {lane:<10} |{strip(iv, start, end, args.width, marks[lane])}|")
        for name in ("spill::wait_step", "spill::acquire_param", "spill::grad_ready", "spill::d2h_wait"):
            iv = [(s, e) for s, e, _ in host.get(name, [])]
            print(f"  {name[7:]:<10.10} |{strip(iv, start, end, args.width, 'w')}|")


if __name__ == "__main__":
    main()
