// Shared by the engine's test programs (worker_engine_test,
// worker_engine_api_test): the tiny model, its DeepSpeed config and helpers.
#ifndef SPILL_WORKER_TESTING_ENGINE_TEST_UTIL_H_
#define SPILL_WORKER_TESTING_ENGINE_TEST_UTIL_H_

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "worker/data.h"
#include "worker/engine.h"
#include "worker/gpt_shape.h"

namespace spill::worker::engine_testing {

inline constexpr int kWorld = 2;
inline constexpr int64_t kSteps = 4, kGas = 2, kMicro = 2;
inline constexpr uint64_t kSeed = 7;
inline const GptShape kShape{"custom", 2, 32, 4, 256, 16};

inline constexpr char kConfig[] = R"({
  "train_micro_batch_size_per_gpu": 2,
  "gradient_accumulation_steps": 2,
  "gradient_clipping": 0.5,
  "steps_per_print": 1,
  "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8,
                                           "weight_decay": 0.1}},
  "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 1e-4, "warmup_max_lr": 2e-3,
                                              "warmup_num_steps": 3, "warmup_type": "linear"}},
  "zero_optimization": {"stage": 3,
                        "stage3_param_persistence_threshold": 0,
                        "stage3_max_reuse_distance": 0,
                        "stage3_prefetch_bucket_size": 10000,
                        "offload_optimizer": {"device": "cpu"},
                        "offload_param": {"device": "cpu"}}
})";

// A directory on a file system with O_DIRECT for spilld's NVMe tier.
inline std::string NvmeBaseDir() {
  const char* env = std::getenv("SPILL_TEST_NVME_DIR");
  return env != nullptr && *env != 0 ? env : "/var/tmp";
}

inline int CudaDevices() { return torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count()) : 0; }

// Runs `steps` steps on fixed data; returns the final parameters and, in
// *stats, each step's statistics.
inline std::vector<at::Tensor> Train(Engine& engine, int steps, std::vector<StepStats>* stats) {
  ByteDataset data = *ByteDataset::Open(DefaultDataPath());
  for (int step = static_cast<int>(engine.step()); step < steps; ++step) {
    std::vector<MicroBatch> micro;
    for (int64_t k = 0; k < kGas; ++k) {
      TokenBatch b = *data.Batch(step * kGas + k, 0, kMicro, kShape.seq_len, kSeed);
      micro.push_back({at::tensor(b.tokens, at::kLong).view({kMicro, kShape.seq_len}),
                       at::tensor(b.targets, at::kLong).view({kMicro, kShape.seq_len})});
    }
    auto s = engine.TrainStep(micro);
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return {};
    if (stats != nullptr) stats->push_back(*s);
  }
  auto params = engine.GatherParameters();
  EXPECT_TRUE(params.ok()) << params.status();
  return params.ok() ? *params : std::vector<at::Tensor>{};
}

struct GatherCase {
  int64_t persistence, reuse, prefetch;
  int64_t gathers_per_micro;
};

}  // namespace spill::worker::engine_testing

#endif  // SPILL_WORKER_TESTING_ENGINE_TEST_UTIL_H_
