#!/usr/bin/env python3
"""largest_trainable: the largest GPT that trains on this node's GPUs and host memory, with Spill
(bench/zero3_train, parameters and optimizer offloaded to spilld) against DeepSpeed's ZeRO-3
(bench/zero3_deepspeed.py, offload_param and offload_optimizer cpu, pin_memory) in the same run.

  python3 bench/largest_trainable.py --zero3-train=build/release/bench/zero3_train \\
      [--sizes="2.7B 6.7B 13B"] [--args="--bf16 --micro-batch=1 --steps=1 --warmup=1 --clip=0"] \\
      [--timeout=600] [--log-dir=DIR] [--engine=deepspeed|torch] [--gpus=N]

Each size (a preset name, or NAME:FLAGS for a custom shape, e.g. "tiny:--layers=2 --hidden=64
--heads=4 --vocab=256 --seq=32") is tried from the smallest up, with both engines; an engine
that fails a size is not tried on larger ones. A size trains when the program exits 0 and prints
its tokens_per_s line. Prints one JSON line (bench "largest_trainable", metric "params"): value
the parameters of Spill's largest, baseline DeepSpeed's, and each attempt with its exit status,
time and reason (zero3_train's does_not_fit message, or the end of DeepSpeed's output).
DESIGN.md's target: larger than DeepSpeed's on the same node.

--engine=torch runs zero3_deepspeed.py's torch loop instead of DeepSpeed (where DeepSpeed cannot
run, e.g. on a CPU); --gpus=N launches both under torch.distributed.run with N ranks.
"""
import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time

from optim_vs_baselines import emit, fail

HERE = os.path.dirname(os.path.abspath(__file__))


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zero3-train", required=True, help="the zero3_train program")
    p.add_argument("--deepspeed-script", default=os.path.join(HERE, "zero3_deepspeed.py"))
    p.add_argument("--sizes", default="2.7B 6.7B 13B",
                   help="sizes, smallest first: presets or NAME:FLAGS, separated by commas or "
                        "spaces (NAME:FLAGS only comma-separated)")
    p.add_argument("--args", default="--bf16 --micro-batch=1 --steps=1 --warmup=1 --clip=0",
                   help="flags both programs get for every size")
    p.add_argument("--spill-args", default="", help="flags only zero3_train gets")
    p.add_argument("--timeout", type=float, default=600, help="seconds per attempt")
    p.add_argument("--log-dir", default=".", help="where each attempt's output goes")
    p.add_argument("--engine", default="deepspeed", choices=["deepspeed", "torch"])
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--python", default=sys.executable)
    a = p.parse_args()
    a.sizes = parse_sizes(a.sizes)
    if a.gpus < 1:
        fail(f"--gpus must be at least 1, not {a.gpus}")
    for path, what in ((a.zero3_train, "--zero3-train"), (a.deepspeed_script, "--deepspeed-script")):
        if not os.path.isfile(path):
            fail(f"{what}: no file {path}")
    # Without DeepSpeed every baseline attempt would fail, and Spill would be
    # "larger" than nothing: refuse before trying anything.
    if a.engine == "deepspeed" and subprocess.run(
            [a.python, "-c", "import deepspeed"], capture_output=True, check=False).returncode:
        fail(f"{a.python} cannot import deepspeed (bench/fetch-bench-wheels.sh fetches it; "
             "--engine=torch runs the torch loop instead)")
    return a


def parse_sizes(text):
    """[(name, flags)] from "2.7B 6.7B" or "tiny:--layers=2 --hidden=64,6.7B 13B"."""
    sizes = []
    for item in text.split(","):
        name, colon, flags = item.strip().partition(":")
        names = [name] if colon else name.split()
        for n in names:
            if not n or any(c.isspace() or c == "/" for c in n) or (colon and not flags.strip()):
                fail(f"--sizes: bad size name {n!r} in {text!r} (presets, or NAME:FLAGS "
                     "separated by commas)")
            sizes.append((n, shlex.split(flags) if colon else [f"--preset={n}"]))
    if not sizes:
        fail(f"--sizes names no size: {text!r}")
    return sizes


def tokens_line(output, bench):
    """The program's tokens_per_s line of `bench`, or None."""
    for line in output.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and r.get("bench") == bench and r.get("metric") == "tokens_per_s":
            return r
    return None


def last_progress(errors):
    """The last progress line zero3_train or zero3_deepspeed.py printed, without its prefix."""
    for line in reversed(errors.splitlines()):
        for prefix in ("zero3_train: [", "zero3_deepspeed: ["):
            if line.startswith(prefix) and "] " in line:
                return line[len(prefix) - 1:].strip()
    return ""


def reason_of(output, errors, rc, timed_out):
    """Why an attempt did not train, in one line; for a killed or timed-out attempt, with the
    last progress line it printed (where it got to)."""
    got_to = last_progress(errors)
    after = f", after \"{got_to}\"" if got_to else ", before any progress line"
    if timed_out:
        return "timed out" + after
    for line in output.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and r.get("metric") in ("does_not_fit", "error"):
            return f"{r['metric']}: {r.get('reason', r.get('message', ''))}".strip()
    lines = [x for x in errors.splitlines() if x.strip()]
    # Killed by SIGKILL: itself, or (under torchrun) one of its ranks.
    if rc == -9 or any("exitcode: -9" in x or "Signal 9 (SIGKILL)" in x for x in lines):
        return "killed by SIGKILL (the kernel's OOM killer, most likely)" + after
    if rc < 0:
        return f"killed by signal {-rc}" + after
    for key in ("out of memory", "OutOfMemory", "can't allocate", "Cannot allocate",
                "not enough memory", "Error", "error:"):
        for line in reversed(lines):
            if key in line:
                return line.strip()[:300]
    return (lines[-1].strip()[:300] if lines else "") or f"exit {rc}"


def attempt(a, engine, name, flags):
    """Runs one engine on one size; returns the attempt's record."""
    common = shlex.split(a.args) + flags
    if engine == "spill":
        cmd = [a.zero3_train] + common + shlex.split(a.spill_args)
        bench = "zero3_train"
        launcher = [a.python, "-m", "torch.distributed.run", f"--nproc-per-node={a.gpus}",
                    "--no-python"]
    else:
        cmd = [a.deepspeed_script, f"--engine={a.engine}"] + common
        bench = "zero3_deepspeed"
        launcher = [a.python, "-m", "torch.distributed.run", f"--nproc-per-node={a.gpus}"]
    env = dict(os.environ)
    if a.gpus > 1:
        cmd = launcher + cmd
        # torchrun would leave OpenMP (DeepSpeed's CPU Adam) one thread per rank.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // a.gpus)))
    elif engine != "spill":
        cmd = [a.python] + cmd
    log = os.path.join(a.log_dir, f"largest-{engine}-{name}")
    t0 = time.monotonic()
    timed_out = False
    with open(log + ".out", "w") as out, open(log + ".err", "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=a.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            rc = None
        finally:
            # Whatever is left of its session goes too, whichever way it ended:
            # a spilld that outlived a killed zero3_train would keep its
            # pinned pool from the attempts after it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            if rc is None:
                rc = proc.wait()
    seconds = time.monotonic() - t0
    with open(log + ".out", errors="replace") as f:
        output = f.read()
    with open(log + ".err", errors="replace") as f:
        errors = f.read()
    line = tokens_line(output, bench)
    trained = rc == 0 and not timed_out and line is not None
    record = {"engine": engine, "size": name, "trained": trained, "exit": rc,
              "seconds": round(seconds, 1)}
    if trained:
        record["params"] = int(line.get("params", 0))
        record["tokens_per_s"] = line["value"]
    else:
        record["reason"] = reason_of(output, errors, rc, timed_out)
    print(f"largest_trainable: {json.dumps(record)}", file=sys.stderr, flush=True)
    return record


def main():
    a = parse()
    os.makedirs(a.log_dir, exist_ok=True)
    attempts, largest, alive = [], {"spill": None, "deepspeed": None}, {"spill", "deepspeed"}
    for name, flags in a.sizes:
        for engine in ("spill", "deepspeed"):
            if engine not in alive:
                continue
            r = attempt(a, engine, name, flags)
            attempts.append(r)
            if r["trained"]:
                largest[engine] = r
            else:
                alive.discard(engine)
        if not alive:
            break
    ours, theirs = largest["spill"], largest["deepspeed"]
    extra = {} if theirs or not ours else {"ratio": None}  # larger than nothing: no ratio
    emit("largest_trainable", "params", float(ours["params"]) if ours else 0.0, "parameters",
         f"{a.engine}_zero3" if a.engine == "deepspeed" else "torch_no_offload",
         float(theirs["params"]) if theirs else 0.0,
         {**extra, "ours_size": ours["size"] if ours else None,
          "baseline_size": theirs["size"] if theirs else None,
          "gpus": a.gpus, "args": a.args, "target": "larger than the baseline's",
          "attempts": attempts})


if __name__ == "__main__":
    main()
