#include "worker/estimate.h"

#include <cmath>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/gpt_shape.h"

namespace spill::worker {
namespace {

using ::testing::HasSubstr;

double GiB(int64_t bytes) { return std::round(bytes / 1073741824.0 * 100) / 100; }

// DeepSpeed's documented example (docs/memory.rst): t5-3b (2851M params,
// 32M largest layer) on 1 node with 8 GPUs.
TEST(EstimateTest, MatchesDeepSpeedT5_3bExample) {
  EstimateInput in;
  in.total_params = 2851598336;
  in.largest_layer_params = 32899072;
  in.gpus_per_node = 8;
  auto rows = EstimateZero3(in);
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 9u);
  const double expected[6][2] = {{71.71, 0.12}, {127.48, 0.12}, {63.74, 0.79},
                                 {127.48, 0.79}, {1.47, 6.10},  {127.48, 6.10}};
  for (int i = 0; i < 6; ++i) {
    EXPECT_DOUBLE_EQ(GiB((*rows)[i].cpu_bytes), expected[i][0]) << "row " << i;
    EXPECT_DOUBLE_EQ(GiB((*rows)[i].gpu_bytes), expected[i][1]) << "row " << i;
  }
  std::string table = FormatEstimateTable(in, *rows);
  EXPECT_THAT(table, HasSubstr("HW: Setup with 1 node, 8 GPUs per node."));
  EXPECT_THAT(table, HasSubstr("SW: Model with 2851M total params, 32M largest layer params."));
  EXPECT_THAT(table, HasSubstr("   71.71GB |   0.12GB | offload_param=cpu , offload_optimizer=cpu , zero_init=1"));
  EXPECT_THAT(table, HasSubstr("    1.47GB |   6.10GB | offload_param=none, offload_optimizer=none, zero_init=1"));
}

// The output estimate_zero3_model_states_mem_needs_all_live prints for
// t5-small (60506624 params, 16449536 in the shared embedding) on 1 GPU.
TEST(EstimateTest, MatchesDeepSpeedT5SmallOutput) {
  EstimateInput in;
  in.total_params = 60506624;
  in.largest_layer_params = 16449536;
  auto rows = EstimateZero3(in);
  ASSERT_TRUE(rows.ok());
  const double expected[6][2] = {{1.52, 0.06}, {1.52, 0.06}, {1.35, 0.17},
                                 {1.35, 0.17}, {0.09, 1.08}, {0.34, 1.08}};
  for (int i = 0; i < 6; ++i) {
    EXPECT_DOUBLE_EQ(GiB((*rows)[i].cpu_bytes), expected[i][0]) << "row " << i;
    EXPECT_DOUBLE_EQ(GiB((*rows)[i].gpu_bytes), expected[i][1]) << "row " << i;
  }
}

TEST(EstimateTest, NvmeRowsMoveOptimizerAndParamBytes) {
  EstimateInput in;
  in.total_params = 1'000'000'000;
  in.largest_layer_params = 100'000'000;
  in.gpus_per_node = 2;
  in.nodes = 2;
  in.sub_group_size = 10'000'000;
  in.host_memory_bytes = 64LL << 30;
  auto rows = EstimateZero3(in);
  ASSERT_TRUE(rows.ok());
  const EstimateRow& cpu_param = (*rows)[6];
  const EstimateRow& nvme_param = (*rows)[7];
  const EstimateRow& gpu_param = (*rows)[8];
  EXPECT_EQ(cpu_param.offload_optimizer, OffloadDevice::kNvme);
  EXPECT_EQ(cpu_param.offload_param, OffloadDevice::kCpu);
  // Per node: 12 bytes/param of 500M params on NVMe; +2 with params there.
  EXPECT_EQ(cpu_param.nvme_bytes, 6'000'000'000);
  EXPECT_EQ(nvme_param.nvme_bytes, 7'000'000'000);
  const int64_t opt_buffers = 2 * 4 * 10'000'000LL * 4;
  const int64_t param_buffers = 2 * 5 * 100'000'000LL * 2;
  EXPECT_EQ(cpu_param.swap_buffer_bytes, opt_buffers);
  EXPECT_EQ(cpu_param.cpu_bytes, static_cast<int64_t>(500e6 * 6 * 1.5) + opt_buffers);
  EXPECT_EQ(nvme_param.cpu_bytes, static_cast<int64_t>(500e6 * 4 * 1.5) + opt_buffers + param_buffers);
  EXPECT_EQ(gpu_param.gpu_bytes, 400'000'000 + 2 * 1'000'000'000LL / 4);
  EXPECT_EQ(*cpu_param.host_left_bytes, (64LL << 30) - cpu_param.cpu_bytes);
  // NVMe always needs less host memory than the CPU-offload rows.
  EXPECT_LT(nvme_param.cpu_bytes, (*rows)[0].cpu_bytes);
}

TEST(EstimateTest, BadInputNamesTheField) {
  EstimateInput in;
  in.total_params = 10;
  in.largest_layer_params = 20;
  EXPECT_THAT(std::string(EstimateZero3(in).status().message()),
              HasSubstr("largest_layer_params=20 exceeds total_params=10"));
  in.largest_layer_params = 5;
  in.gpus_per_node = 0;
  EXPECT_THAT(std::string(EstimateZero3(in).status().message()), HasSubstr("gpus_per_node=0"));
}

TEST(EstimateTest, JsonHasEveryRow) {
  EstimateInput in;
  in.total_params = 1000;
  in.largest_layer_params = 100;
  auto rows = EstimateZero3(in);
  ASSERT_TRUE(rows.ok());
  nlohmann::json j = nlohmann::json::parse(EstimateJson(in, *rows));
  ASSERT_EQ(j["rows"].size(), 9u);
  EXPECT_EQ(j["rows"][0]["offload_param"], "cpu");
  EXPECT_EQ(j["rows"][8]["offload_optimizer"], "nvme");
  EXPECT_EQ(j["input"]["total_params"], 1000);
}

TEST(GptShapeTest, PresetParamCounts) {
  // 125M: 50257*768 + 2048*768 + 12 * (12*768^2 + 13*768) + 2*768.
  auto s = GptPreset("125M");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(GptTotalParams(*s), 50257LL * 768 + 2048 * 768 + 12 * (12LL * 768 * 768 + 13 * 768) + 2 * 768);
  EXPECT_NEAR(GptTotalParams(*s) / 1e6, 125, 5);
  struct Expect {
    const char* name;
    double billions;
  } presets[] = {{"350M", 0.35}, {"1.3B", 1.3}, {"2.7B", 2.7}, {"6.7B", 6.7}, {"13B", 13}};
  for (const Expect& e : presets) {
    auto p = GptPreset(e.name);
    ASSERT_TRUE(p.ok());
    EXPECT_NEAR(GptTotalParams(*p) / 1e9, e.billions, e.billions * 0.08) << e.name;
    EXPECT_TRUE(ValidateGptShape(*p).ok());
  }
  EXPECT_THAT(std::string(GptPreset("7B").status().message()), HasSubstr("unknown preset '7B'"));
  GptShape bad = *s;
  bad.heads = 7;
  EXPECT_THAT(std::string(ValidateGptShape(bad).message()), HasSubstr("heads=7 must divide"));
}

}  // namespace
}  // namespace spill::worker
