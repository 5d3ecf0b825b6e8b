// The lane bound's arithmetic and the CPU-measurable lanes of zero3_train.
#include "bench/zero3_lanes.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "gtest/gtest.h"
#include "worker/config.h"

namespace spill::bench {
namespace {

using worker::DeepSpeedConfig;
using worker::OffloadDevice;

DeepSpeedConfig Mode(OffloadDevice optimizer, OffloadDevice param, bool bf16, int64_t gas) {
  DeepSpeedConfig c;
  c.zero.offload_optimizer.device = optimizer;
  c.zero.offload_param.device = param;
  c.bf16_enabled = bf16;
  c.gradient_accumulation_steps = gas;
  return c;
}

TEST(Zero3LanesTest, TrafficFollowsTheOffloadMode) {
  // 1000 parameters over 2 ranks: 500 per rank.
  StepTraffic cpu = TrafficPerStep(Mode(OffloadDevice::kCpu, OffloadDevice::kCpu, true, 2), 1000, 7, 2);
  EXPECT_DOUBLE_EQ(cpu.flops, 7);
  EXPECT_DOUBLE_EQ(cpu.h2d_bytes, 2 * 2 * 500 * 2);  // Forward and backward gathers per micro-step.
  EXPECT_DOUBLE_EQ(cpu.d2h_bytes, 2 * 500 * 2);      // A gradient shard per micro-step.
  EXPECT_DOUBLE_EQ(cpu.optimizer_params, 1000);      // One spilld steps the whole node.
  EXPECT_DOUBLE_EQ(cpu.nvme_bytes, 0);

  StepTraffic opt_only = TrafficPerStep(Mode(OffloadDevice::kCpu, OffloadDevice::kNone, false, 1), 1000, 7, 2);
  EXPECT_DOUBLE_EQ(opt_only.h2d_bytes, 500 * 4);
  EXPECT_DOUBLE_EQ(opt_only.d2h_bytes, 500 * 4);

  StepTraffic none = TrafficPerStep(Mode(OffloadDevice::kNone, OffloadDevice::kNone, true, 1), 1000, 7, 2);
  EXPECT_DOUBLE_EQ(none.h2d_bytes + none.d2h_bytes + none.optimizer_params + none.nvme_bytes, 0);

  // Optimizer states on NVMe: read and written once a step (24 bytes per
  // parameter). NVMe parameters that all fit the pinned cache add nothing
  // (their write-back is asynchronous); with a cache of 2 x (100 + 2 x 50) =
  // 400 elements the other 600 are written back once and read by each of
  // the 2 passes.
  DeepSpeedConfig nvme_config = Mode(OffloadDevice::kNvme, OffloadDevice::kNvme, true, 1);
  StepTraffic nvme = TrafficPerStep(nvme_config, 1000, 7, 2);
  EXPECT_DOUBLE_EQ(nvme.nvme_bytes, 24 * 1000);
  nvme_config.zero.offload_param.max_in_cpu = 100;
  nvme_config.zero.offload_param.buffer_count = 2;
  nvme_config.zero.offload_param.buffer_size = 50;
  nvme = TrafficPerStep(nvme_config, 1000, 7, 2);
  EXPECT_DOUBLE_EQ(nvme.nvme_bytes, 24 * 1000 + 600 * 2 + 2 * 600 * 2);
}

TEST(Zero3LanesTest, BoundIsTheSlowestLane) {
  StepTraffic t{.flops = 100, .h2d_bytes = 10, .d2h_bytes = 20, .optimizer_params = 50,
                .nvme_bytes = 0};
  LaneRates r{.gemm_flops_per_s = 100, .h2d_bytes_per_s = 10, .d2h_bytes_per_s = 10,
              .optimizer_params_per_s = 10, .nvme_bytes_per_s = 0};
  LaneTimes l = LaneTimesFor(t, r);
  EXPECT_DOUBLE_EQ(l.gpu_compute_s, 1);
  EXPECT_DOUBLE_EQ(l.pcie_s, 3);
  EXPECT_DOUBLE_EQ(l.cpu_optimizer_s, 5);
  EXPECT_DOUBLE_EQ(l.nvme_s, 0);  // No traffic, no lane.
  EXPECT_DOUBLE_EQ(l.bound_s, 5);
  EXPECT_EQ(l.bound_lane, "cpu_optimizer");
}

TEST(Zero3LanesTest, MeasuredRatesArePositive) {
  absl::StatusOr<double> gemm = MeasureGemm(at::Device(at::kCPU), at::kFloat, 64, 32, 0.05);
  ASSERT_TRUE(gemm.ok()) << gemm.status();
  EXPECT_GT(*gemm, 0);
  absl::StatusOr<double> optim = MeasureOptimizerStep(1 << 16, 2, true);
  ASSERT_TRUE(optim.ok()) << optim.status();
  EXPECT_GT(*optim, 0);
  const std::string dir = std::filesystem::temp_directory_path() /
                          ("zero3_lanes_test_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  absl::StatusOr<double> nvme = MeasureNvme(dir, 16 << 20, 4);
  // tmpfs has no O_DIRECT: then the error names the path.
  if (nvme.ok()) {
    EXPECT_GT(*nvme, 0);
  } else {
    EXPECT_NE(std::string(nvme.status().message()).find(dir), std::string::npos) << nvme.status();
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir));  // The probe file is removed either way.
  std::filesystem::remove_all(dir);
}

TEST(Zero3LanesTest, BadInputIsRefused) {
  EXPECT_EQ(MeasureGemm(at::Device(at::kCPU), at::kFloat, 0, 32, 0.05).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MeasureOptimizerStep(0, 2, true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MeasureNvme("/var/tmp", 1 << 20, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::StatusOr<double> missing = MeasureNvme("/nonexistent-zero3-dir", 1 << 20, 1);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(std::string(missing.status().message()).find("/nonexistent-zero3-dir"), std::string::npos);
}

}  // namespace
}  // namespace spill::bench
