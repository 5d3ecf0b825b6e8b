#!/usr/bin/env python3
"""zero3_vs_deepspeed: the GPT that zero3_train trains, trained by DeepSpeed's ZeRO-3 with the
same offload modes, batch, precision, clipping and optimizer, on the same GPUs in the same run;
its tokens/s is the baseline of zero3_train's line for the same configuration.

  python3 bench/zero3_deepspeed.py --preset=1.3B --bf16 --micro-batch=4 --steps=6 --warmup=2 \\
      [--clip=1.0] [--offload-param=cpu] [--offload-optimizer=cpu] [--no-pin-memory] \\
      [--nvme-dir=DIR] [--max-in-cpu=N] [--ours=bench.jsonl]
  python3 -m torch.distributed.run --nproc-per-node=2 bench/zero3_deepspeed.py ...   # 2 GPUs

The model is worker/gpt.h's: token and position embeddings, pre-LN blocks (causal attention
through scaled_dot_product_attention, GELU(tanh) MLP of width 4h), final LayerNorm and a head tied
to the token embedding; presets and the vocabulary/sequence defaults are worker/gpt_shape.cc's.
DeepSpeed's config is zero3_train's (bench/zero3_flags.cc ConfigJson) with HF's "auto" resolved
(reduce_bucket_size = hidden^2) and pin_memory on for both offloads (DeepSpeed's faster setting;
spilld always pins). NVMe offload (ZeRO-Infinity) takes zero3_train's offload_param settings
(buffer_count 5, buffer_size 3e8, max_in_cpu from --max-in-cpu) and DeepSpeed's default aio block
(block_size 1 MiB, queue_depth 8, thread_count 1, single_submit false, overlap_events true); it
needs DeepSpeed's async_io op, which builds against libaio (bench/gpu-node-run.sh brings it).

Prints a JSON line with DeepSpeed's tokens/s (bench "zero3_deepspeed", no baseline) and, when
--ours names a file holding zero3_train's tokens_per_s line for the same configuration, the
comparison (bench "zero3_vs_deepspeed": value ours, baseline DeepSpeed, ratio ours / DeepSpeed;
DESIGN.md's target is >= 1.3).

--engine=torch runs the same model and loop with torch.optim.AdamW and no DeepSpeed (a check of
the model and loop where DeepSpeed cannot run, e.g. on a CPU); --check-params prints the
parameter count and exits.
"""
import argparse
import contextlib
import json
import math
import os
import sys
import time

from optim_vs_baselines import emit, fail, machine

PRESETS = {"125M": (12, 768, 12), "350M": (24, 1024, 16), "1.3B": (24, 2048, 16),
           "2.7B": (32, 2560, 32), "6.7B": (32, 4096, 32), "13B": (40, 5120, 40)}


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="1.3B", choices=sorted(PRESETS))
    p.add_argument("--layers", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--gas", type=int, default=1)
    p.add_argument("--steps", type=int, default=6, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--offload-param", default="cpu", choices=["none", "cpu", "nvme"])
    p.add_argument("--offload-optimizer", default="cpu", choices=["none", "cpu", "nvme"])
    p.add_argument("--nvme-dir", default="/var/tmp/spill-ds-nvme",
                   help="nvme_path of both offloads (nvme modes)")
    p.add_argument("--max-in-cpu", type=int, default=1000000000,
                   help="offload_param.max_in_cpu elements (nvme)")
    p.add_argument("--nvme-buffer-count", type=int, default=5,
                   help="offload_param.buffer_count (nvme; zero3_train's 5 by default). "
                        "DeepSpeed swaps each parameter tensor through a buffer of its own, and "
                        "a parameter under stage3_param_persistence_threshold keeps its buffer: "
                        "with 5 and with 32, the 350M preset stopped in its second step with "
                        "'Not enough buffers 0 for swapping 1' (32 buffers held by small "
                        "parameters)")
    p.add_argument("--nvme-buffer-size", type=int, default=300000000,
                   help="offload_param.buffer_size elements (nvme; zero3_train's 3e8); at "
                        "least the largest parameter tensor")
    p.add_argument("--no-pin-memory", action="store_true")
    p.add_argument("--engine", default="deepspeed", choices=["deepspeed", "torch"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--ours", help="JSON lines holding zero3_train's results of this run")
    p.add_argument("--check-params", action="store_true")
    a = p.parse_args()
    a.custom = any(x is not None for x in (a.layers, a.hidden, a.heads)) or \
        (a.vocab, a.seq) != (50257, 2048)
    layers, hidden, heads = PRESETS[a.preset]
    a.layers = a.layers or layers
    a.hidden = a.hidden or hidden
    a.heads = a.heads or heads
    if a.hidden % a.heads:
        fail(f"--heads={a.heads} must divide --hidden={a.hidden}")
    if min(a.layers, a.vocab, a.seq, a.micro_batch, a.gas, a.steps) < 1 or a.warmup < 0:
        fail("--layers, --vocab, --seq, --micro-batch, --gas and --steps must be >= 1, "
             "--warmup >= 0")
    if a.ours and a.engine != "deepspeed":
        fail("--ours compares against DeepSpeed: it needs --engine=deepspeed")
    return a


def build_model(a, torch):
    nn, F = torch.nn, torch.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            h = a.hidden
            self.ln1 = nn.LayerNorm(h)
            self.qkv = nn.Linear(h, 3 * h)
            self.attn_out = nn.Linear(h, h)
            self.ln2 = nn.LayerNorm(h)
            self.fc = nn.Linear(h, 4 * h)
            self.mlp_out = nn.Linear(4 * h, h)

        def forward(self, x):
            b, t, h = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, a.heads, h // a.heads).unbind(2)
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                               v.transpose(1, 2), is_causal=True)
            x = x + self.attn_out(y.transpose(1, 2).reshape(b, t, h))
            return x + self.mlp_out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class TiedHead(nn.Module):
        """Logits against the token embedding. On CUDA the product runs on the weight padded
        with zero rows to a multiple of 64, as worker/gpt.cc's head does (cuBLAS is several
        times slower on an odd row count such as 50257), and the extra logits are dropped."""

        def __init__(self, weight):
            super().__init__()
            self.weight = weight

        def forward(self, x):
            vocab = self.weight.shape[0]
            pad = (-vocab) % 64 if x.is_cuda else 0
            if pad == 0:
                return F.linear(x, self.weight)
            return F.linear(x, F.pad(self.weight, (0, 0, 0, pad))).narrow(-1, 0, vocab)

    class Gpt(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(a.vocab, a.hidden)
            self.wpe = nn.Embedding(a.seq, a.hidden)
            self.blocks = nn.ModuleList(Block() for _ in range(a.layers))
            self.ln_f = nn.LayerNorm(a.hidden)
            self.head = TiedHead(self.wte.weight)  # tied, as worker/gpt.h's head

        def forward(self, tokens, labels):
            pos = torch.arange(tokens.shape[1], device=tokens.device)
            x = self.wte(tokens) + self.wpe(pos)
            for blk in self.blocks:
                x = blk(x)
            logits = self.head(self.ln_f(x))
            return F.cross_entropy(logits.float().view(-1, a.vocab), labels.view(-1))

    return Gpt


def initialize(model, a, torch, gathered):
    """worker/gpt.h's init: normal(0.02), wpe 0.01, output projections 0.02 / sqrt(2 * layers), LayerNorm
    1/0, biases 0. `gathered(params)` is a context that makes ZeRO-3 partitioned parameters whole
    for the block (one module at a time, so the whole model is never gathered)."""
    std, proj_std = 0.02, 0.02 / math.sqrt(2 * a.layers)
    for mod_name, mod in model.named_modules():
        params = list(mod.named_parameters(recurse=False))
        if not params or mod_name == "head":  # the head's weight is wte's
            continue
        with gathered([prm for _, prm in params]), torch.no_grad():
            for name, prm in params:
                full = f"{mod_name}.{name}"
                if name == "bias":
                    prm.zero_()
                elif isinstance(mod, torch.nn.LayerNorm):
                    prm.fill_(1.0)
                else:
                    prm.normal_(0.0, proj_std if full.endswith("out.weight")
                                else 0.01 if full == "wpe.weight" else std)


def expected_params(a):
    h = a.hidden
    return (a.vocab + a.seq) * h + a.layers * (12 * h * h + 13 * h) + 2 * h


def ds_config(a):
    def offload(device, param):
        out = {"device": device, "pin_memory": not a.no_pin_memory}
        if device == "nvme":
            out["nvme_path"] = a.nvme_dir
            if param:
                out.update(buffer_count=a.nvme_buffer_count, buffer_size=a.nvme_buffer_size,
                           max_in_cpu=a.max_in_cpu)
        return out
    nvme = "nvme" in (a.offload_param, a.offload_optimizer)
    return {
        "train_micro_batch_size_per_gpu": a.micro_batch,
        "gradient_accumulation_steps": a.gas,
        "gradient_clipping": a.clip,
        "steps_per_print": 1000000000,
        "bf16": {"enabled": a.bf16},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8,
                                                  "weight_decay": 0.1}},
        "zero_optimization": {"stage": 3, "reduce_bucket_size": a.hidden * a.hidden,
                              "offload_optimizer": offload(a.offload_optimizer, False),
                              "offload_param": offload(a.offload_param, True)},
        "wall_clock_breakdown": False,
        **({"aio": {"block_size": 1048576, "queue_depth": 8, "thread_count": 1,
                    "single_submit": False, "overlap_events": True}} if nvme else {}),
    }


def ours_line(path, a, world):
    """zero3_train's tokens_per_s line for this configuration, or None."""
    want = {"preset": "custom" if a.custom else a.preset, "micro_batch": a.micro_batch,
            "gas": a.gas, "bf16": a.bf16, "world_size": world, "seq": a.seq,
            "params": expected_params(a),
            "offload_param": a.offload_param, "offload_optimizer": a.offload_optimizer,
            "gradient_checkpointing": False, "cpu_checkpointing": False}
    found, count = None, 0
    with open(path, errors="replace") as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("bench") != "zero3_train" or r.get("metric") != "tokens_per_s":
                continue
            if all(r.get(k) == v for k, v in want.items()) and not r.get("tuned", False) and \
                    abs(float(r.get("gradient_clipping", -1)) - a.clip) < 1e-9:
                found, count = r, count + 1  # the last one: the run nearest in time
    if count > 1:
        print(f"warning: {path} holds {count} zero3_train lines of this configuration; "
              "comparing with the last", file=sys.stderr)
    return found


T0 = time.perf_counter()


def progress(what):
    """Rank 0's progress on stderr (flushed), as zero3_train reports its own: where a run that
    was killed got to."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"zero3_deepspeed: [{time.perf_counter() - T0:7.1f} s] {what}", file=sys.stderr,
              flush=True)


def main():
    a = parse()
    try:
        import torch
    except ImportError as e:
        fail(f"cannot import torch: {e}")
    Gpt = build_model(a, torch)
    if a.check_params:
        with torch.device("meta"):  # shapes only: 13B would not fit this host in fp32
            n = sum(p.numel() for p in Gpt().parameters())
        print(json.dumps({"params": n, "expected": expected_params(a)}))
        sys.exit(0 if n == expected_params(a) else 1)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if a.bf16 else torch.float32
    device = torch.device(a.device)
    world = 1
    if a.engine == "deepspeed":
        try:
            import deepspeed
        except ImportError as e:
            fail(f"cannot import deepspeed: {e}")
        for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                     "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533"}.items():
            os.environ.setdefault(k, v)
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        deepspeed.init_distributed(dist_backend="nccl")
        world = int(os.environ["WORLD_SIZE"])
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        cfg = ds_config(a)
        t0 = time.perf_counter()
        with deepspeed.zero.Init(config_dict_or_path=cfg,
                                 remote_device=a.offload_param if a.offload_param != "none"
                                 else None, pin_memory=not a.no_pin_memory):
            model = Gpt()
        progress("model built under deepspeed.zero.Init; initialising its weights")
        initialize(model, a, torch,
                   lambda ps: deepspeed.zero.GatheredParameters(ps, modifier_rank=0))
        progress("weights initialised; deepspeed.initialize")
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                               config=cfg)
        build_s = time.perf_counter() - t0
        progress(f"deepspeed.initialize done; training {a.warmup} warm-up and {a.steps} "
                 "measured steps")

        def step(tokens, labels, last):
            del last  # DeepSpeed steps at its own accumulation boundary
            loss = engine(tokens, labels)
            engine.backward(loss)
            engine.step()
            return loss
    else:
        t0 = time.perf_counter()
        model = Gpt()
        initialize(model, a, torch, lambda ps: contextlib.nullcontext())
        model = model.to(device=device, dtype=dtype)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8,
                                weight_decay=0.1)
        build_s = time.perf_counter() - t0
        progress(f"model built; training {a.warmup} warm-up and {a.steps} measured steps")

        def step(tokens, labels, last):
            loss = model(tokens, labels)
            (loss / a.gas).backward()
            if not last:
                return loss
            if a.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

    gen = torch.Generator().manual_seed(1234)
    batches = [torch.randint(0, min(a.vocab, 256), (a.micro_batch, a.seq + 1), generator=gen)
               for _ in range(4)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    losses, t_start = [], None
    for i in range(a.warmup + a.steps):
        if i == a.warmup:
            sync()
            t_start = time.perf_counter()
        for g in range(a.gas):
            b = batches[(i * a.gas + g) % len(batches)].to(device)
            loss = step(b[:, :-1].contiguous(), b[:, 1:].contiguous(), g == a.gas - 1)
        losses.append(loss.item())
        progress(f"step {i + 1} of {a.warmup + a.steps}: loss {losses[-1]:.4f}")
    sync()
    seconds = time.perf_counter() - t_start
    tokens = a.steps * a.gas * a.micro_batch * a.seq * world
    if not all(math.isfinite(x) for x in losses):
        fail(f"non-finite loss: {losses}")
    rate = tokens / seconds
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    info = {"preset": "custom" if a.custom else a.preset, "engine": a.engine,
            "micro_batch": a.micro_batch, "gas": a.gas, "seq": a.seq, "bf16": a.bf16,
            "gradient_clipping": a.clip,
            "offload_param": a.offload_param if a.engine == "deepspeed" else "none",
            "offload_optimizer": a.offload_optimizer if a.engine == "deepspeed" else "none",
            "pin_memory": not a.no_pin_memory,
            "world_size": world, "steps": a.steps, "step_s": seconds / a.steps,
            "build_s": build_s, "gpu_peak_gib": peak, "loss_first": losses[0],
            "loss_last": losses[-1], "params": expected_params(a)}
    if a.engine == "deepspeed":
        info["deepspeed"] = deepspeed.__version__
    if int(os.environ.get("RANK", "0")) != 0:
        return  # Under torchrun, rank 0 reports for all (tokens count every rank's).
    print(json.dumps({"bench": "zero3_deepspeed", "metric": "tokens_per_s", "value": rate,
                      "unit": "tokens/s", "machine": machine(), **info}), flush=True)
    if a.ours:
        r = ours_line(a.ours, a, world)
        if r is None:
            fail(f"{a.ours} holds no zero3_train tokens_per_s line for this configuration")
        emit("zero3_vs_deepspeed", "tokens_per_s", r["value"], "tokens/s",
             "deepspeed_zero3", rate,
             {**info, "target_ratio": ">= 1.3", "ours_step_s": r["value"] and
              a.micro_batch * a.gas * a.seq * world / r["value"],
              "ours_ratio_to_lane_bound": r.get("ratio")})


if __name__ == "__main__":
    main()
