#!/usr/bin/env python3
"""optim_vs_torch_fused / optim_vs_deepspeed: our fused CPU AdamW against torch's fused CPU
AdamW (plain fp32) and against DeepSpeed's sequence for a bf16 model (grad cast to fp32,
DeepSpeedCPUAdam on the fp32 master, parameter copied back to bf16), in ONE process on the
same T threads (torch.set_num_threads(T), OMP_NUM_THREADS=T, our pool of T threads).

  OMP_NUM_THREADS=T python bench/optim_vs_baselines.py --threads T --params N \\
      --lib build/release/server/optim/libspill_optim_c.so

Prints JSON lines (bench, metric, value, unit, baseline, baseline_value, ratio, machine); the
machine is $SPILL_BENCH_MACHINE or "<cpu model> x<cpus>". Each figure is the best of --iters
timed steps after a warm-up. Exits non-zero, printing nothing, if torch or deepspeed cannot be
imported or DeepSpeed's CPU Adam cannot be built.
"""
import argparse
import ctypes
import json
import os
import sys
import time

FLOAT32, FLOAT16, BFLOAT16 = 1, 2, 3


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def machine():
    env = os.environ.get("SPILL_BENCH_MACHINE")
    if env:
        return env
    model = "unknown-cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} x{os.cpu_count()}"


def best(iters, fn):
    fn()
    t = 1e30
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        t = min(t, time.perf_counter() - t0)
    return t


def emit(bench, metric, value, unit, baseline, baseline_value, extra):
    r = {"bench": bench, "metric": metric, "value": value, "unit": unit, "baseline": baseline,
         "baseline_value": baseline_value, "ratio": value / baseline_value if baseline_value else 0.0,
         "machine": machine()}
    r.update(extra)
    print(json.dumps(r), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--params", type=int, default=64 << 20)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--lib", default="build/release/server/optim/libspill_optim_c.so")
    a = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # before torch/DeepSpeed load OpenMP
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        fail(f"cannot import torch ({e}); install torch to run this benchmark")
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
    except Exception as e:  # noqa: BLE001
        fail(f"cannot import deepspeed ({e}); see bench/fetch-bench-wheels.sh")
    if not os.path.exists(a.lib):
        fail(f"{a.lib} not found; build the spill_optim_c target (release preset)")
    lib = ctypes.CDLL(os.path.abspath(a.lib))
    lib.spill_optim_adamw_step.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_int, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_float, ctypes.c_float,
        ctypes.c_float, ctypes.c_float, ctypes.c_float, ctypes.c_int, ctypes.c_int,
        ctypes.c_uint64, ctypes.c_float]
    lib.spill_optim_last_error.restype = ctypes.c_char_p
    lib.spill_optim_target.restype = ctypes.c_char_p
    torch.set_num_threads(a.threads)
    if lib.spill_optim_set_threads(a.threads) != 0:
        fail(lib.spill_optim_last_error().decode())
    n, lr, b1, b2, eps, wd = a.params, 1e-3, 0.9, 0.999, 1e-8, 0.01
    extra = {"threads": a.threads, "params": n, "iters": a.iters,
             "simd": lib.spill_optim_target().decode(), "torch": torch.__version__}
    step = [0]

    def ours(grad_dtype, grad, master, m, v, param_dtype, param):
        step[0] += 1
        rc = lib.spill_optim_adamw_step(grad_dtype, grad.data_ptr(), master.data_ptr(), m.data_ptr(),
                                        v.data_ptr(), param_dtype,
                                        param.data_ptr() if param is not None else None, n, lr, b1,
                                        b2, eps, wd, 1, 1, step[0], 1.0)
        if rc != 0:
            fail(lib.spill_optim_last_error().decode())

    g = torch.randn(n) * 1e-3
    # (a) plain fp32: torch.optim.AdamW(fused=True) vs ours (fp32 grad, no 16-bit param).
    p_t = torch.randn(n)
    p_t.grad = g.clone()
    opt = torch.optim.AdamW([p_t], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, fused=True)
    t_torch = best(a.iters, opt.step)
    master, m, v = torch.randn(n), torch.zeros(n), torch.zeros(n)
    t_ours32 = best(a.iters, lambda: ours(FLOAT32, g, master, m, v, FLOAT32, None))
    emit("optim_vs_torch_fused", "fp32_adamw_step_rate", n / t_ours32 / 1e6, "Mparam/s",
         "torch.optim.AdamW(fused=True)", n / t_torch / 1e6, extra)
    del opt, p_t

    # (b) bf16 grad -> bf16 param: DeepSpeed's sequence vs ours fused.
    g16 = g.to(torch.bfloat16)
    param16 = torch.randn(n).to(torch.bfloat16)
    ds_master = param16.float()
    try:
        ds = DeepSpeedCPUAdam([ds_master], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd,
                              adamw_mode=True)
    except Exception as e:  # noqa: BLE001
        fail(f"DeepSpeedCPUAdam could not be built/loaded ({e})")

    ds_master.grad = torch.empty(n)  # preallocated fp32 gradient, as ZeRO-Offload keeps one

    def ds_sequence():
        ds_master.grad.copy_(g16)  # the cast pass
        ds.step()
        param16.copy_(ds_master)

    t_ds = best(a.iters, ds_sequence)
    t_ds_step = best(a.iters, ds.step)  # CPUAdam alone, for reading the ratio
    master, m, v = param16.float(), torch.zeros(n), torch.zeros(n)
    out16 = torch.empty(n, dtype=torch.bfloat16)
    t_ours16 = best(a.iters, lambda: ours(BFLOAT16, g16, master, m, v, BFLOAT16, out16))
    extra["deepspeed_step_only_mparam_s"] = n / t_ds_step / 1e6
    emit("optim_vs_deepspeed", "bf16_adamw_phase_rate", n / t_ours16 / 1e6, "Mparam/s",
         "deepspeed_cpu_adam_sequence", n / t_ds / 1e6, extra)


if __name__ == "__main__":
    main()
