#!/usr/bin/env python3
"""Checks bench/largest_trainable.py on the CPU: zero3_train against the torch loop of
zero3_deepspeed.py, a small shape that both train and a shape neither can hold.

  largest_trainable_test.py ZERO3_TRAIN
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = "--layers=2 --hidden=64 --heads=4 --vocab=256 --seq=32"
# A block of 1.08e14 parameters: spilld's pool cannot hold it (zero3_train says so before
# allocating), and its first fp32 weight (432 TB) is more than a process can even map, so
# torch's allocator refuses it at once whatever the host's overcommit policy.
HUGE = "--layers=1 --hidden=3000000 --heads=4 --vocab=8 --seq=8"


def run(zero3_train, sizes, log_dir, extra=()):
    cmd = [sys.executable, os.path.join(HERE, "largest_trainable.py"),
           f"--zero3-train={zero3_train}", "--engine=torch", f"--sizes={sizes}",
           "--args=--device=cpu --micro-batch=2 --steps=1 --warmup=1 --clip=0",
           "--spill-args=--optim-threads=2", "--timeout=300", f"--log-dir={log_dir}", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def expect(cond, what, p):
    if not cond:
        sys.exit(f"FAIL: {what}\nstdout: {p.stdout}\nstderr: {p.stderr}")


def check_sizes():
    sys.dont_write_bytecode = True  # nothing written into the source tree
    sys.path.insert(0, HERE)
    from largest_trainable import parse_sizes  # pylint: disable=import-outside-toplevel
    got = parse_sizes("2.7B 6.7B, tiny:--layers=2 --hidden=64,13B")
    want = [("2.7B", ["--preset=2.7B"]), ("6.7B", ["--preset=6.7B"]),
            ("tiny", ["--layers=2", "--hidden=64"]), ("13B", ["--preset=13B"])]
    if got != want:
        sys.exit(f"FAIL: parse_sizes gave {got}, want {want}")
    for bad in ("a/b", "x y:--layers=2", "tiny:", ",", ""):
        try:
            parse_sizes(bad)
        except SystemExit:
            continue
        sys.exit(f"FAIL: parse_sizes accepted {bad!r}")


def check_reasons():
    """A killed or timed-out attempt's reason names the last progress line it printed."""
    from largest_trainable import reason_of  # pylint: disable=import-outside-toplevel
    errors = ("noise\nzero3_deepspeed: [    3.0 s] model built under deepspeed.zero.Init\n"
              "zero3_deepspeed: [   41.5 s] weights initialised; deepspeed.initialize\nmore\n")
    cases = [
        ((errors, -9, False), "killed by SIGKILL (the kernel's OOM killer, most likely), after "
                              "\"[   41.5 s] weights initialised; deepspeed.initialize\""),
        (("zero3_train: [   12.0 s] step 1 of 2: 1.0 s\n", -15, False),
         "killed by signal 15, after \"[   12.0 s] step 1 of 2: 1.0 s\""),
        (("no progress at all\n", -9, False),
         "killed by SIGKILL (the kernel's OOM killer, most likely), before any progress line"),
        ((errors, None, True),
         "timed out, after \"[   41.5 s] weights initialised; deepspeed.initialize\""),
    ]
    for (err, rc, timed_out), want in cases:
        got = reason_of("", err, rc, timed_out)
        if got != want:
            sys.exit(f"FAIL: reason_of gave {got!r}, want {want!r}")


def main(zero3_train):
    check_sizes()
    check_reasons()
    with tempfile.TemporaryDirectory() as d:
        p = run(zero3_train, f"tiny:{TINY},huge:{HUGE}", d)
        expect(p.returncode == 0, f"exit {p.returncode}", p)
        r = json.loads(p.stdout.strip().splitlines()[-1])
        expect(r["bench"] == "largest_trainable" and r["metric"] == "params", "the line", p)
        tiny_params = (256 + 32) * 64 + 2 * (12 * 64 * 64 + 13 * 64) + 2 * 64
        expect(r["value"] == tiny_params and r["baseline_value"] == tiny_params,
               f"both engines' largest is tiny ({tiny_params} parameters)", p)
        expect(r["ours_size"] == "tiny" and r["baseline_size"] == "tiny", "sizes named", p)
        attempts = {(x["engine"], x["size"]): x for x in r["attempts"]}
        expect(len(attempts) == 4, "four attempts", p)
        spill_huge, torch_huge = attempts[("spill", "huge")], attempts[("deepspeed", "huge")]
        expect(not spill_huge["trained"] and "does_not_fit" in spill_huge["reason"],
               "zero3_train's refusal is the reason", p)
        expect(not torch_huge["trained"] and torch_huge["exit"] != 0 and torch_huge["reason"],
               "the torch loop's failure has a reason", p)

        # An engine that fails a size is not tried on a larger one: with huge first, the run
        # stops there and neither engine has a largest size.
        p = run(zero3_train, f"huge:{HUGE},tiny:{TINY}", d)
        expect(p.returncode == 0, f"exit {p.returncode}", p)
        r = json.loads(p.stdout.strip().splitlines()[-1])
        expect(r["value"] == 0 and r["baseline_value"] == 0 and r["ours_size"] is None,
               "nothing trains when the first size fails", p)
        expect(len(r["attempts"]) == 2, "no attempt after both failed", p)

        # Bad flags are named.
        p = run(zero3_train, "tiny:" + TINY, d, ["--gpus=0"])
        expect(p.returncode != 0 and "--gpus" in p.stderr, "bad --gpus is named", p)
        p = run(os.path.join(d, "missing"), "tiny:" + TINY, d)
        expect(p.returncode != 0 and "--zero3-train" in p.stderr, "a missing program is named", p)
        # DeepSpeed that cannot be imported stops the run before any attempt, naming it.
        if importlib.util.find_spec("deepspeed") is not None:
            print("largest_trainable_test: this Python has DeepSpeed; the missing-DeepSpeed "
                  "check is skipped")
            return
        p = run(zero3_train, "tiny:" + TINY, d, ["--engine=deepspeed", "--python=" + sys.executable,
                                                 f"--log-dir={d}/ds"])
        expect(p.returncode != 0 and "cannot import deepspeed" in p.stderr
               and not os.path.exists(f"{d}/ds"), "missing DeepSpeed is named first", p)


def run_all(zero3_train):
    main(zero3_train)
    print("largest_trainable_test: OK")


if __name__ == "__main__":
    run_all(sys.argv[1])
