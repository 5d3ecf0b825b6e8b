#include "bench/zero3_flags.h"

#include <ATen/Context.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "worker/collectives.h"
#include "worker/testing/free_port.h"

namespace spill::bench {

const char kZero3Usage[] =
    "usage: zero3_train [flags]   (under torchrun for several GPUs)\n"
    "  --preset=125M|350M|1.3B|2.7B|6.7B|13B   model shape (default 1.3B)\n"
    "  --layers= --hidden= --heads= --vocab= --seq=   override the shape\n"
    "  --steps=N (10)  --warmup=N (2)  --micro-batch=N (1)  --gas=N (1)  --bf16\n"
    "  --gradient-checkpointing   recompute each layer in backward\n"
    "  --cpu-checkpointing   the same, its checkpoints kept in host memory\n"
    "  --offload-optimizer=cpu|none|nvme (cpu)  --offload-param=cpu|none|nvme (cpu)\n"
    "  --nvme-dir=DIR        NVMe tier directory (nvme modes)\n"
    "  --device=cuda|cpu     (default: cuda when a GPU is present)\n"
    "  --spilld=PATH         spilld binary (default $SPILL_SPILLD)\n"
    "  --optim-threads=N     spilld's optimizer threads (default: one per CPU)\n"
    "  --steps-in-flight=N   optimizer steps sent to spilld at once (default 2)\n"
    "  --acquire-ahead=N     parameter pins asked for ahead of their gathers (default 4)\n"
    "  --speculative=auto|always|never   layer steps before the clip coefficient is\n"
    "                        known (EngineOptions::speculative_steps; default auto)\n"
    "  --optim-nice=N        spilld's --optim-nice (default: spilld's)\n"
    "  --max-in-cpu=N        offload_param.max_in_cpu elements (nvme; default 1e9)\n"
    "  --profile=PATH        timeline of the last measured steps: PATH.rank<R>.json\n"
    "                        (LibTorch profiler) and PATH.rank<R>.steps.json (spilld's\n"
    "                        optimizer steps); bench/zero3_timeline.py reads both\n"
    "  --profile-steps=N     steps in the timeline (default 2)\n";

namespace {

absl::Status BadValue(const std::string& key, const std::string& value) {
  return absl::InvalidArgumentError(absl::StrCat("bad value for --", key, ": '", value, "'"));
}

absl::Status ParseNumber(const std::string& key, const std::string& v, Zero3Flags& f) {
  int64_t n = 0;
  if (!absl::SimpleAtoi(v, &n) || n < 0) return BadValue(key, v);
  const bool positive =
      key != "warmup" && key != "optim-threads" && key != "optim-nice" && key != "acquire-ahead";
  if (key == "optim-nice" && n > 19) return BadValue(key, v);
  if (positive && n < 1) return BadValue(key, v);
  if (key == "steps") f.steps = static_cast<int>(n);
  else if (key == "warmup") f.warmup = static_cast<int>(n);
  else if (key == "micro-batch") f.micro_batch = n;
  else if (key == "gas") f.gas = n;
  else if (key == "optim-threads") f.optim_threads = static_cast<uint32_t>(n);
  else if (key == "steps-in-flight") f.steps_in_flight = static_cast<int>(n);
  else if (key == "optim-nice") f.optim_nice = static_cast<int>(n);
  else if (key == "max-in-cpu") f.max_in_cpu = n;
  else if (key == "profile-steps") f.profile_steps = static_cast<int>(n);
  else if (key == "acquire-ahead") f.acquire_ahead = static_cast<int>(n);
  else f.shape[key] = n;  // layers, hidden, heads, vocab, seq
  return absl::OkStatus();
}

absl::Status ParseOne(const std::string& key, const std::string& v, Zero3Flags& f) {
  auto mode = [&](std::string& out) {
    if (v != "cpu" && v != "none" && v != "nvme") return BadValue(key, v);
    out = v;
    return absl::OkStatus();
  };
  if (key == "preset") f.preset = v;
  else if (key == "offload-optimizer") return mode(f.offload_optimizer);
  else if (key == "offload-param") return mode(f.offload_param);
  else if (key == "device") {
    if (v != "cuda" && v != "cpu") return BadValue(key, v);
    f.device = v;
  } else if (key == "spilld") f.spilld = v;
  else if (key == "nvme-dir") f.nvme_dir = v;
  else if (key == "profile") f.profile = v;
  else if (key == "speculative") {
    if (v != "auto" && v != "always" && v != "never") return BadValue(key, v);
    f.speculative = v;
  }
  else if (key == "clip") {
    if (!absl::SimpleAtod(v, &f.clip) || !(f.clip >= 0)) {
      return absl::InvalidArgumentError(absl::StrCat("--clip must be a number >= 0, got '", v, "'"));
    }
  }
  else if (key == "steps" || key == "warmup" || key == "micro-batch" || key == "gas" ||
           key == "optim-threads" || key == "steps-in-flight" || key == "optim-nice" || key == "max-in-cpu" ||
           key == "profile-steps" || key == "acquire-ahead" ||
           key == "layers" || key == "hidden" || key == "heads" ||
           key == "vocab" || key == "seq") {
    return ParseNumber(key, v, f);
  } else {
    return absl::InvalidArgumentError("unknown flag --" + key);
  }
  return absl::OkStatus();
}

absl::Status ResolveShape(const Zero3Flags& f, worker::GptShape& shape) {
  absl::StatusOr<worker::GptShape> p = worker::GptPreset(f.preset);
  if (!p.ok()) return p.status();
  shape = *p;
  for (const auto& [k, v] : f.shape) {
    shape.name = "custom";
    (k == "layers" ? shape.layers : k == "hidden" ? shape.hidden : k == "heads" ? shape.heads
     : k == "vocab" ? shape.vocab : shape.seq_len) = v;
  }
  return worker::ValidateGptShape(shape);
}

absl::Status ResolveRendezvous(worker::RendezvousInfo& info) {
  const bool lone = std::getenv("RANK") == nullptr && std::getenv("WORLD_SIZE") == nullptr;
  absl::StatusOr<worker::RendezvousInfo> r = worker::RendezvousFromEnv();
  if (!r.ok()) return r.status();
  info = *r;
  if (lone) info.master_port = worker::testing::FreePort();
  const char* local = std::getenv("LOCAL_WORLD_SIZE");
  if (local != nullptr && std::string(local) != std::to_string(info.world_size)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "zero3_train runs on one node: LOCAL_WORLD_SIZE=", local, " but WORLD_SIZE=", info.world_size));
  }
  return absl::OkStatus();
}

std::string ConfigJson(const Zero3Flags& f) {
  // NVMe parameters: buffers big enough for the 13B preset's embedding
  // shard (50257 x 5120 elements); DeepSpeed's default 1e8 is too small for
  // the tied embeddings of the larger presets.
  auto offload = [&](const std::string& device, bool param) {
    if (device != "nvme") return absl::StrCat(R"({"device": ")", device, R"("})");
    return absl::StrCat(R"({"device": "nvme", "nvme_path": ")", f.nvme_dir, R"(")",
                        param ? absl::StrCat(R"(, "buffer_count": 5, "buffer_size": 300000000,)",
                                             R"( "max_in_cpu": )", f.max_in_cpu)
                              : "",
                        "}");
  };
  return absl::StrCat(R"({"train_micro_batch_size_per_gpu": )", f.micro_batch,
                      R"(, "gradient_accumulation_steps": )", f.gas,
                      R"(, "gradient_clipping": )", f.clip, R"(, "steps_per_print": 1000000000,)",
                      R"( "bf16": {"enabled": )", f.bf16 ? "true" : "false", "},",
                      R"( "activation_checkpointing": {"cpu_checkpointing": )",
                      f.cpu_checkpointing ? "true" : "false", "},",
                      R"( "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.95],)",
                      R"( "eps": 1e-8, "weight_decay": 0.1}},)",
                      // HF's "auto": hidden^2 elements, i.e. one bucket per layer here.
                      R"( "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto",)",
                      R"( "offload_optimizer": )",
                      offload(f.offload_optimizer, false), R"(, "offload_param": )",
                      offload(f.offload_param, true),
                      "}}");
}

}  // namespace

absl::Status ParseZero3Flags(int argc, char** argv, Zero3Flags& f) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--bf16") {
      f.bf16 = true;
      continue;
    }
    if (a == "--gradient-checkpointing" || a == "--cpu-checkpointing") {
      f.gradient_checkpointing = true;
      f.cpu_checkpointing = f.cpu_checkpointing || a == "--cpu-checkpointing";
      continue;
    }
    const size_t eq = a.find('=');
    if (a.rfind("--", 0) != 0 || eq == std::string::npos) {
      return absl::InvalidArgumentError("expected --flag=value, got '" + a + "'");
    }
    absl::Status s = ParseOne(a.substr(2, eq - 2), a.substr(eq + 1), f);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status ResolveZero3(Zero3Flags& f, worker::RendezvousInfo& info, worker::GptShape& shape,
                          worker::DeepSpeedConfig& config) {
  absl::Status s = ResolveShape(f, shape);
  if (s.ok()) s = ResolveRendezvous(info);
  if (!s.ok()) return s;
  if ((f.offload_optimizer == "nvme" || f.offload_param == "nvme") && f.nvme_dir.empty()) {
    return absl::InvalidArgumentError("--offload-*=nvme needs --nvme-dir=DIR");
  }
  if (f.device.empty()) f.device = SPILL_ZERO3_CUDA && at::hasCUDA() ? "cuda" : "cpu";
  if (f.device == "cuda" && !(SPILL_ZERO3_CUDA && worker::NcclAvailable() && at::hasCUDA())) {
    return absl::InvalidArgumentError(
        "--device=cuda: this build has no CUDA and NCCL, or no GPU is present");
  }
  if (f.optim_threads == 0) f.optim_threads = std::max(1u, std::thread::hardware_concurrency());
  if (!f.spilld.empty()) setenv("SPILL_SPILLD", f.spilld.c_str(), 1);
  worker::TrainingArgs args;
  args.world_size = info.world_size;
  args.hidden_size = shape.hidden;
  absl::StatusOr<worker::LoadedConfig> loaded =
      worker::ParseDeepSpeedConfig(ConfigJson(f), args, "zero3_train flags");
  if (!loaded.ok()) return loaded.status();
  config = loaded->config;
  return absl::OkStatus();
}

}  // namespace spill::bench
