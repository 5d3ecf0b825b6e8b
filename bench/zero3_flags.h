// zero3_train's command line: the model shape, the DeepSpeed config built
// from flags, the device and the rendezvous (torchrun's environment).
#ifndef SPILL_BENCH_ZERO3_FLAGS_H_
#define SPILL_BENCH_ZERO3_FLAGS_H_

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "worker/config.h"
#include "worker/gpt_shape.h"
#include "worker/rendezvous.h"

namespace spill::bench {

extern const char kZero3Usage[];

struct Zero3Flags {
  std::string preset = "1.3B";
  std::map<std::string, int64_t> shape;  // layers, hidden, heads, vocab, seq
  int steps = 10;
  int warmup = 2;
  std::string offload_optimizer = "cpu", offload_param = "cpu";
  bool bf16 = false;
  // --gradient-checkpointing; --cpu-checkpointing also keeps the
  // checkpoints in host memory (activation_checkpointing.cpu_checkpointing).
  bool gradient_checkpointing = false, cpu_checkpointing = false;
  double clip = 1.0;  // gradient_clipping (0: none; layers then step during backward)
  int64_t micro_batch = 1, gas = 1;
  std::string device;  // "cuda" or "cpu"; empty: cuda when a GPU is present
  std::string spilld;  // spilld binary; empty: $SPILL_SPILLD, else the build's
  std::string nvme_dir;
  uint32_t optim_threads = 0;  // 0: one per CPU
  int steps_in_flight = 2;     // EngineOptions::max_steps_in_flight
  int acquire_ahead = 4;       // EngineOptions::acquire_ahead
  std::string speculative = "auto";  // EngineOptions::speculative_steps
  int optim_nice = -1;         // spilld --optim-nice; -1: spilld's default
  int64_t max_in_cpu = 1'000'000'000;  // offload_param.max_in_cpu (nvme)
  // A timeline of the last profile_steps measured steps (bench/zero3_profile.h).
  std::string profile;
  int profile_steps = 2;
};

// Parses --key=value flags (and --bf16, --gradient-checkpointing, --cpu-checkpointing). InvalidArgument naming the flag for
// an unknown flag, a malformed or out-of-range number, or a bad choice.
absl::Status ParseZero3Flags(int argc, char** argv, Zero3Flags& flags);

// Resolves the shape (preset, then shape flags), the rendezvous (torchrun's
// environment; a lone process gets a free port) and the DeepSpeed config
// (parsed by worker/config.h from JSON built from the flags), fills in the
// device and thread defaults and points $SPILL_SPILLD at --spilld.
// InvalidArgument naming the problem: a bad shape, a bad environment, more
// than one node, nvme modes without --nvme-dir, --device=cuda without CUDA
// or NCCL in this build or without a GPU, or the config parser's error.
absl::Status ResolveZero3(Zero3Flags& flags, worker::RendezvousInfo& info,
                          worker::GptShape& shape, worker::DeepSpeedConfig& config);

}  // namespace spill::bench

#endif  // SPILL_BENCH_ZERO3_FLAGS_H_
