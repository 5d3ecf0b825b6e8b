#!/usr/bin/env python3
"""Tests of bench/zero3_deepspeed.py that need torch but no GPU or DeepSpeed:

  zero3_deepspeed_test.py SPILL_ESTIMATE

- the Python GPT has, for every preset, the parameter count spill-estimate (the C++ model's
  count) reports;
- the torch engine trains a tiny shape on the CPU: a JSON line, finite losses, loss falls;
- --ours picks zero3_train's line of the same configuration, and only that one;
- NVMe offload gets zero3_train's offload_param settings and an aio block.
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "zero3_deepspeed.py")
sys.path.insert(0, HERE)
import zero3_deepspeed  # noqa: E402

ESTIMATE = None


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=300)


class Zero3DeepSpeedTest(unittest.TestCase):
    def test_params_match_the_cpp_model(self):
        for preset in zero3_deepspeed.PRESETS:
            est = subprocess.run([ESTIMATE, f"--preset={preset}", "--gpus-per-node=1", "--json"],
                                 capture_output=True, text=True, check=True)
            want = json.loads(est.stdout)["input"]["total_params"]
            r = run(f"--preset={preset}", "--check-params")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(json.loads(r.stdout)["params"], want, preset)

    def test_torch_engine_trains_on_cpu(self):
        r = run("--engine=torch", "--device=cpu", "--layers=2", "--hidden=64", "--heads=4",
                "--vocab=256", "--seq=32", "--micro-batch=4", "--steps=30", "--warmup=1")
        self.assertEqual(r.returncode, 0, r.stderr)
        line = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual((line["bench"], line["metric"], line["preset"]),
                         ("zero3_deepspeed", "tokens_per_s", "custom"))
        self.assertGreater(line["value"], 0)
        self.assertLess(line["loss_last"], line["loss_first"])

    def test_bad_input_is_named(self):
        r = run("--hidden=100", "--heads=3", "--check-params")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--heads=3 must divide --hidden=100", r.stderr)
        r = run("--engine=torch", "--ours=x.jsonl")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("needs --engine=deepspeed", r.stderr)

    def test_ours_picks_the_same_configuration(self):
        base = {"bench": "zero3_train", "metric": "tokens_per_s", "preset": "1.3B",
                "micro_batch": 4, "gas": 1, "bf16": True, "world_size": 1,
                "offload_param": "cpu", "offload_optimizer": "cpu",
                "gradient_checkpointing": False, "cpu_checkpointing": False,
                "gradient_clipping": 1.0, "value": 100.0, "seq": 2048, "params": 1315723264,
                "tuned": False}
        lines = [dict(base, value=1.0, gradient_clipping=0.0), dict(base, value=2.0, bf16=False),
                 dict(base, value=3.0, world_size=2), dict(base, value=4.0, metric="tflops"),
                 dict(base, value=5.0, gradient_checkpointing=True), dict(base, value=6.0),
                 dict(base, value=7.0, tuned=True), dict(base, value=8.0, seq=1024)]
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
            f.write("not json\n")
            for ln in lines:
                f.write(json.dumps(ln) + "\n")
        try:
            sys.argv = ["x", "--preset=1.3B", "--bf16", "--micro-batch=4", "--clip=1.0"]
            a = zero3_deepspeed.parse()
            self.assertEqual(zero3_deepspeed.ours_line(f.name, a, 1)["value"], 6.0)
            sys.argv = ["x", "--preset=1.3B", "--bf16", "--micro-batch=4", "--clip=0"]
            a = zero3_deepspeed.parse()
            self.assertEqual(zero3_deepspeed.ours_line(f.name, a, 1)["value"], 1.0)
            sys.argv = ["x", "--preset=2.7B", "--bf16"]
            self.assertIsNone(zero3_deepspeed.ours_line(f.name, zero3_deepspeed.parse(), 1))
        finally:
            os.unlink(f.name)

    def test_nvme_config_matches_zero3_train(self):
        sys.argv = ["x", "--preset=350M", "--bf16", "--clip=0", "--offload-param=nvme",
                    "--offload-optimizer=nvme", "--nvme-dir=/d", "--max-in-cpu=100000000"]
        cfg = zero3_deepspeed.ds_config(zero3_deepspeed.parse())
        zero = cfg["zero_optimization"]
        # bench/zero3_flags.cc ConfigJson's offload_param for nvme.
        self.assertEqual(zero["offload_param"],
                         {"device": "nvme", "pin_memory": True, "nvme_path": "/d",
                          "buffer_count": 5, "buffer_size": 300000000, "max_in_cpu": 100000000})
        self.assertEqual(zero["offload_optimizer"],
                         {"device": "nvme", "pin_memory": True, "nvme_path": "/d"})
        self.assertEqual(cfg["aio"]["block_size"], 1048576)
        sys.argv = ["x", "--preset=350M", "--bf16"]
        cfg = zero3_deepspeed.ds_config(zero3_deepspeed.parse())
        self.assertNotIn("aio", cfg)
        self.assertEqual(cfg["zero_optimization"]["offload_param"],
                         {"device": "cpu", "pin_memory": True})
        r = run("--offload-param=disk", "--check-params")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--offload-param", r.stderr)


if __name__ == "__main__":
    ESTIMATE = sys.argv.pop(1)
    unittest.main(verbosity=2)
