#include "worker/config.h"

#include <algorithm>
#include <filesystem>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace spill::worker {
namespace {

using ::testing::HasSubstr;

TrainingArgs Args() {
  TrainingArgs a;
  a.world_size = 1;
  return a;
}

absl::StatusOr<LoadedConfig> Parse(const std::string& text, const TrainingArgs& args = Args()) {
  return ParseDeepSpeedConfig(text, args, "ds.json");
}

bool Contains(const std::vector<std::string>& list, const std::string& needle) {
  return std::any_of(list.begin(), list.end(),
                     [&](const std::string& s) { return s.find(needle) != std::string::npos; });
}

// --- every seed example loads ----------------------------------------------

TEST(ConfigTest, EverySeedExampleLoads) {
  TrainingArgs args = Args();
  args.max_steps = 100;     // the WarmupDecayLR example's "auto" total_num_steps
  args.hidden_size = 1024;  // model-dependent "auto" values
  int loaded = 0;
  for (const auto& entry : std::filesystem::directory_iterator(SPILL_WORKER_TESTDATA)) {
    std::string name = entry.path().filename().string();
    if (name.rfind("seed_", 0) != 0) continue;
    absl::StatusOr<LoadedConfig> c = LoadDeepSpeedConfigFile(entry.path().string(), args);
    EXPECT_TRUE(c.ok()) << name << ": " << c.status();
    if (c.ok()) EXPECT_TRUE(c->warnings.empty()) << name << ": " << c->warnings[0];
    ++loaded;
  }
  EXPECT_EQ(loaded, 16);
}

TEST(ConfigTest, SeedNvmeExampleResolvesLikeHf) {
  TrainingArgs args = Args();
  args.world_size = 4;
  args.hidden_size = 1024;
  args.learning_rate = 3e-4;
  args.per_device_train_batch_size = 2;
  args.gradient_accumulation_steps = 3;
  args.max_grad_norm = 0.5;
  args.adam_beta2 = 0.95;
  args.warmup_steps = 10;
  args.fp16 = true;
  auto c = LoadDeepSpeedConfigFile(std::string(SPILL_WORKER_TESTDATA) + "/seed_nvme.json", args);
  ASSERT_TRUE(c.ok()) << c.status();
  const DeepSpeedConfig& d = c->config;
  EXPECT_TRUE(d.fp16.enabled);
  EXPECT_EQ(d.fp16.loss_scale_window, 1000);
  EXPECT_EQ(d.fp16.initial_scale_power, 16);
  EXPECT_EQ(d.optimizer.type, OptimizerType::kAdamW);
  EXPECT_DOUBLE_EQ(d.optimizer.lr, 3e-4);
  EXPECT_DOUBLE_EQ(d.optimizer.beta1, 0.9);
  EXPECT_DOUBLE_EQ(d.optimizer.beta2, 0.95);
  EXPECT_DOUBLE_EQ(d.optimizer.eps, 1e-8);
  EXPECT_EQ(d.scheduler.type, SchedulerType::kWarmupLR);
  EXPECT_DOUBLE_EQ(d.scheduler.warmup_min_lr, 0);
  EXPECT_DOUBLE_EQ(d.scheduler.warmup_max_lr, 3e-4);
  EXPECT_EQ(d.scheduler.warmup_num_steps, 10);
  EXPECT_EQ(d.zero.stage, 3);
  EXPECT_EQ(d.zero.offload_optimizer.device, OffloadDevice::kNvme);
  EXPECT_EQ(d.zero.offload_optimizer.nvme_path, "/local_nvme");
  EXPECT_EQ(d.zero.offload_optimizer.buffer_count, 4);
  EXPECT_EQ(d.zero.offload_param.device, OffloadDevice::kNvme);
  EXPECT_EQ(d.zero.offload_param.buffer_count, 5);
  EXPECT_EQ(d.zero.offload_param.buffer_size, 100'000'000);
  EXPECT_EQ(d.zero.offload_param.max_in_cpu, 1'000'000'000);
  EXPECT_EQ(d.aio.block_size, 262144);
  EXPECT_EQ(d.aio.queue_depth, 32);
  EXPECT_FALSE(d.aio.single_submit);
  EXPECT_EQ(d.zero.sub_group_size, 1'000'000'000);
  EXPECT_EQ(d.zero.reduce_bucket_size, 1024 * 1024);
  EXPECT_EQ(d.zero.stage3_prefetch_bucket_size, static_cast<int64_t>(0.9 * 1024 * 1024));
  EXPECT_EQ(d.zero.stage3_param_persistence_threshold, 10 * 1024);
  EXPECT_EQ(d.zero.stage3_max_live_parameters, 1'000'000'000);
  EXPECT_TRUE(d.zero.stage3_gather_16bit_weights_on_model_save);
  EXPECT_EQ(d.train_micro_batch_size_per_gpu, 2);
  EXPECT_EQ(d.gradient_accumulation_steps, 3);
  EXPECT_EQ(d.train_batch_size, 2 * 3 * 4);
  EXPECT_DOUBLE_EQ(d.gradient_clipping, 0.5);
  EXPECT_EQ(d.steps_per_print, 2000);
}

TEST(ConfigTest, AutoTakesHfDefaultsWhenArgumentsAreAbsent) {
  TrainingArgs args = Args();
  args.world_size = 2;
  auto c = Parse(R"({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
                     "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
                     "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto",
                                   "eps": "auto", "weight_decay": "auto"}},
                     "bf16": {"enabled": "auto"}})",
                 args);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->config.train_micro_batch_size_per_gpu, 8);
  EXPECT_EQ(c->config.gradient_accumulation_steps, 1);
  EXPECT_EQ(c->config.train_batch_size, 16);
  EXPECT_DOUBLE_EQ(c->config.gradient_clipping, 1.0);
  EXPECT_DOUBLE_EQ(c->config.optimizer.lr, 5e-5);
  EXPECT_DOUBLE_EQ(c->config.optimizer.beta2, 0.999);
  EXPECT_FALSE(c->config.bf16_enabled);
}

TEST(ConfigTest, NoOptimizerBlockMeansAdamWFromArguments) {
  TrainingArgs args = Args();
  args.learning_rate = 1e-4;
  args.weight_decay = 0.1;
  auto c = Parse(R"({"train_micro_batch_size_per_gpu": 4})", args);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->config.optimizer_from_file);
  EXPECT_EQ(c->config.optimizer.type, OptimizerType::kAdamW);
  EXPECT_DOUBLE_EQ(c->config.optimizer.lr, 1e-4);
  EXPECT_DOUBLE_EQ(c->config.optimizer.weight_decay, 0.1);
  EXPECT_EQ(c->config.scheduler.type, SchedulerType::kNone);
}

TEST(ConfigTest, EmptyConfigTakesHfPerDeviceBatch) {
  auto c = Parse("{}");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->config.train_micro_batch_size_per_gpu, 8);
  EXPECT_EQ(c->config.train_batch_size, 8);
  EXPECT_EQ(c->config.zero.stage, 0);
}

// --- conflicts between the file and explicit arguments ---------------------

TEST(ConfigTest, ConflictNamesBothValues) {
  TrainingArgs args = Args();
  args.per_device_train_batch_size = 8;
  auto c = Parse(R"({"train_micro_batch_size_per_gpu": 4})", args);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("ds train_micro_batch_size_per_gpu=4 vs hf per_device_train_batch_size=8"));
}

TEST(ConfigTest, AllConflictsAreListedAtOnce) {
  TrainingArgs args = Args();
  args.learning_rate = 3e-4;
  args.adam_beta1 = 0.8;
  args.max_grad_norm = 2;
  auto c = Parse(R"({"gradient_clipping": 1.0,
                     "optimizer": {"type": "Adam", "params": {"lr": 0.001, "betas": [0.9, 0.95]}}})",
                 args);
  ASSERT_FALSE(c.ok());
  std::string m(c.status().message());
  EXPECT_THAT(m, HasSubstr("ds gradient_clipping=1 vs hf max_grad_norm=2"));
  EXPECT_THAT(m, HasSubstr("ds optimizer.params.lr=0.001 vs hf learning_rate=0.0003"));
  EXPECT_THAT(m, HasSubstr("ds optimizer.params.betas=[0.9, 0.95] vs hf adam_beta1+adam_beta2"));
}

TEST(ConfigTest, MatchingExplicitArgumentIsNoConflict) {
  TrainingArgs args = Args();
  args.per_device_train_batch_size = 4;
  args.fp16 = true;
  auto c = Parse(R"({"train_micro_batch_size_per_gpu": 4, "fp16": {"enabled": true}})", args);
  ASSERT_TRUE(c.ok()) << c.status();
}

TEST(ConfigTest, Fp16FlagConflictsWithDisabledFile) {
  TrainingArgs args = Args();
  args.fp16 = true;
  auto c = Parse(R"({"fp16": {"enabled": false}})", args);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("ds fp16.enabled=false vs hf fp16=true"));
}

TEST(ConfigTest, WarmupMaxLrConflictsWithLearningRate) {
  TrainingArgs args = Args();
  args.learning_rate = 1e-3;
  auto c = Parse(R"({"scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": 2e-3}}})", args);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("ds scheduler.params.warmup_max_lr=0.002 vs hf learning_rate=0.001"));
}

// --- batch sizes -----------------------------------------------------------

TEST(ConfigTest, BatchSizeInconsistencyShowsNumbers) {
  TrainingArgs args = Args();
  args.world_size = 2;
  auto c = Parse(R"({"train_batch_size": 30, "train_micro_batch_size_per_gpu": 4,
                     "gradient_accumulation_steps": 2})",
                 args);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("30 != 4 * 2 * 2"));
}

TEST(ConfigTest, BatchSizeDerivedLikeDeepSpeed) {
  TrainingArgs args = Args();
  args.world_size = 4;
  auto c = Parse(R"({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4})", args);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->config.gradient_accumulation_steps, 4);
  c = Parse(R"({"train_batch_size": 64, "gradient_accumulation_steps": 2})", args);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->config.train_micro_batch_size_per_gpu, 8);
  c = Parse(R"({"train_batch_size": 32})", args);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->config.train_micro_batch_size_per_gpu, 8);
  EXPECT_EQ(c->config.gradient_accumulation_steps, 1);
  c = Parse(R"({"train_batch_size": 30})", args);  // 30 / 4 does not divide.
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("30 != 7 * 1 * 4"));
}

TEST(ConfigTest, ExplicitArgumentsFillAbsentKeys) {
  TrainingArgs args = Args();
  args.per_device_train_batch_size = 3;
  args.gradient_accumulation_steps = 5;
  auto c = Parse(R"({"zero_optimization": {"stage": 3}})", args);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->config.train_batch_size, 15);
}

// --- "auto" rules that need inputs -----------------------------------------

TEST(ConfigTest, HiddenSizeAutoNeedsHiddenSize) {
  auto c = Parse(R"({"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto"}})");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("zero_optimization.reduce_bucket_size is \"auto\", which needs the "
                        "model's hidden size"));
}

TEST(ConfigTest, TotalNumStepsAutoNeedsMaxSteps) {
  auto c = Parse(R"({"scheduler": {"type": "WarmupDecayLR",
                                   "params": {"total_num_steps": "auto"}}})");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("--max_steps"));
  TrainingArgs args = Args();
  args.max_steps = 500;
  c = Parse(R"({"scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": "auto"}}})",
            args);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->config.scheduler.total_num_steps, 500);
}

TEST(ConfigTest, AutoWhereNoRuleResolvesItIsAnError) {
  auto c = Parse(R"({"zero_optimization": {"stage": 3, "sub_group_size": "auto"}})");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("zero_optimization.sub_group_size: \"auto\" is not accepted"));
}

// --- syntax, types, ranges, files ------------------------------------------

TEST(ConfigTest, SyntaxErrorHasLineAndColumn) {
  auto c = Parse("{\n  \"train_batch_size\": 8,\n  \"fp16\": {\"enabled\": tru}\n}");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("ds.json:3:"));
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("JSON syntax error"));
}

TEST(ConfigTest, TopLevelMustBeObject) {
  auto c = Parse("[1, 2]");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("must be a JSON object"));
}

TEST(ConfigTest, WrongTypesNameTheKey) {
  struct Case {
    const char* json;
    const char* message;
  } cases[] = {
      {R"({"zero_optimization": {"offload_param": {"device": "cpu", "pin_memory": "true"}}})",
       "zero_optimization.offload_param.pin_memory: expected true or false, got a string"},
      {R"({"zero_optimization": {"stage": "3"}})", "zero_optimization.stage: expected an integer"},
      {R"({"zero_optimization": {"sub_group_size": 1.5e3}})", "sub_group_size"},
      {R"({"zero_optimization": {"sub_group_size": 1.25}})",
       "zero_optimization.sub_group_size: expected an integer, got a number 1.25"},
      {R"({"zero_optimization": []})", "zero_optimization: expected an object"},
      {R"({"optimizer": {"type": "AdamW", "params": {"betas": [0.9]}}})",
       "optimizer.params.betas: expected [beta1, beta2]"},
      {R"({"optimizer": {"type": "AdamW", "params": {"lr": "0.1"}}})",
       "optimizer.params.lr: expected a number"},
      {R"({"steps_per_print": true})", "steps_per_print: expected an integer"},
  };
  for (const Case& k : cases) {
    auto c = Parse(k.json);
    if (std::string(k.json).find("1.5e3") != std::string::npos) {
      EXPECT_TRUE(c.ok()) << c.status();  // 1500 is integral: accepted.
      continue;
    }
    ASSERT_FALSE(c.ok()) << k.json;
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(k.message)) << k.json;
  }
}

TEST(ConfigTest, OutOfRangeValuesNameTheKey) {
  struct Case {
    const char* json;
    const char* message;
  } cases[] = {
      {R"({"zero_optimization": {"stage": 4}})", "zero_optimization.stage: 4 is out of range"},
      {R"({"train_micro_batch_size_per_gpu": 0})", "train_micro_batch_size_per_gpu: 0 is out"},
      {R"({"gradient_clipping": -1})", "gradient_clipping: -1 is out of range"},
      {R"({"aio": {"queue_depth": 0}})", "aio.queue_depth: 0 is out of range"},
      {R"({"optimizer": {"type": "Adam", "params": {"betas": [0.9, 1.5]}}})",
       "optimizer.params.betas: [0.9,1.5] must lie in [0, 1)"},
      {R"({"fp16": {"initial_scale_power": 200}})", "fp16.initial_scale_power: 200"},
      {R"({"zero_optimization": {"stage3_max_live_parameters": 1e30}})",
       "stage3_max_live_parameters: 1e+30 is out of range"},
  };
  for (const Case& k : cases) {
    auto c = Parse(k.json);
    ASSERT_FALSE(c.ok()) << k.json;
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(k.message)) << k.json;
  }
}

TEST(ConfigTest, ScientificNotationSizes) {
  auto c = Parse(R"({"zero_optimization": {"stage": 3, "sub_group_size": 1e9,
                     "reduce_bucket_size": 5e8, "stage3_prefetch_bucket_size": 5e7,
                     "offload_param": {"device": "cpu", "buffer_size": 1e8}}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->config.zero.sub_group_size, 1'000'000'000);
  EXPECT_EQ(c->config.zero.reduce_bucket_size, 500'000'000);
  EXPECT_EQ(c->config.zero.stage3_prefetch_bucket_size, 50'000'000);
  EXPECT_EQ(c->config.zero.offload_param.buffer_size, 100'000'000);
}

TEST(ConfigTest, MissingFileNamesPath) {
  auto c = LoadDeepSpeedConfigFile("/nonexistent/ds_config.json", Args());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("/nonexistent/ds_config.json"));
}

// --- unsupported values and keys -------------------------------------------

TEST(ConfigTest, UnsupportedValuesFail) {
  struct Case {
    const char* json;
    const char* message;
  } cases[] = {
      {R"({"optimizer": {"type": "Lamb"}})", "optimizer.type: \"Lamb\" is not supported"},
      {R"({"optimizer": {"params": {"lr": 1}}})", "optimizer.type: required"},
      {R"({"optimizer": {"type": "Adam", "params": {"amsgrad": true}}})", "amsgrad=true"},
      {R"({"scheduler": {"type": "OneCycle"}})", "scheduler.type: \"OneCycle\" is not supported"},
      {R"({"scheduler": {"type": "WarmupLR", "params": {"warmup_type": "cosine"}}})",
       "scheduler.params.warmup_type"},
      {R"({"scheduler": {"type": "WarmupDecayLR"}})", "total_num_steps: required"},
      {R"({"fp16": {"enabled": true}, "bf16": {"enabled": true}})", "pick one"},
      {R"({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme"}}})",
       "zero_optimization.offload_optimizer.nvme_path: required"},
      {R"({"zero_optimization": {"stage": 3, "offload_param": {"device": "gpu"}}})",
       "zero_optimization.offload_param.device: \"gpu\" is not one of none, cpu, nvme"},
      {R"({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}})",
       "needs zero_optimization.stage=3"},
      {R"({"communication_data_type": "int8"})", "communication_data_type: \"int8\""},
      {R"({"amp": {"enabled": true}})", "amp.enabled=true"},
      {R"({"zero_optimization": {"stage3_gather_16bit_weights_on_model_save": true,
                                 "stage3_gather_fp16_weights_on_model_save": false}})",
       "conflicts with its old name"},
  };
  for (const Case& k : cases) {
    auto c = Parse(k.json);
    ASSERT_FALSE(c.ok()) << k.json;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(k.message)) << k.json;
  }
}

TEST(ConfigTest, UnknownKeysAreWarnedByName) {
  auto c = Parse(R"({"train_batch_size": 8, "trian_micro_batch": 4,
                     "zero_optimization": {"stage": 3, "overlap_com": true,
                                           "offload_param": {"device": "cpu", "pinned": 1}}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(Contains(c->warnings, "unknown key 'trian_micro_batch'"));
  EXPECT_TRUE(Contains(c->warnings, "unknown key 'zero_optimization.overlap_com'"));
  EXPECT_TRUE(Contains(c->warnings, "unknown key 'zero_optimization.offload_param.pinned'"));
  EXPECT_EQ(c->warnings.size(), 3u);
}

TEST(ConfigTest, RecognisedButUnsupportedKeysAreListed) {
  auto c = Parse(R"({"zero_optimization": {"stage": 2, "round_robin_gradients": true,
                                           "zero_quantized_weights": true},
                     "moe": {"enabled": true}, "tensorboard": {"enabled": true}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->warnings.empty());
  EXPECT_TRUE(Contains(c->unsupported, "zero_optimization.stage=2: spill-train runs ZeRO stage 3"));
  EXPECT_TRUE(Contains(c->unsupported, "zero_optimization.round_robin_gradients=true"));
  EXPECT_TRUE(Contains(c->unsupported, "zero_optimization.zero_quantized_weights=true"));
  EXPECT_TRUE(Contains(c->unsupported, "moe="));
  EXPECT_TRUE(Contains(c->unsupported, "tensorboard="));
}

TEST(ConfigTest, OldGatherNameIsAcceptedWithAWarning) {
  auto c = Parse(R"({"zero_optimization": {"stage": 3,
                     "stage3_gather_fp16_weights_on_model_save": true}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->config.zero.stage3_gather_16bit_weights_on_model_save);
  EXPECT_TRUE(Contains(c->warnings, "old name"));
}

TEST(ConfigTest, Stage3Defaults) {
  auto c = Parse(R"({"zero_optimization": {"stage": 3}})");
  ASSERT_TRUE(c.ok()) << c.status();
  const ZeroConfig& z = c->config.zero;
  EXPECT_TRUE(z.overlap_comm);  // DeepSpeed: true for stage 3 unless given.
  EXPECT_TRUE(z.contiguous_gradients);
  EXPECT_EQ(z.stage3_prefetch_bucket_size, 50'000'000);
  EXPECT_EQ(z.stage3_param_persistence_threshold, 100'000);
  EXPECT_EQ(z.offload_optimizer.device, OffloadDevice::kNone);
  EXPECT_EQ(c->config.aio.block_size, 1'048'576);
  EXPECT_EQ(c->config.aio.queue_depth, 8);
  EXPECT_EQ(c->config.steps_per_print, 10);
  c = Parse(R"({"zero_optimization": {"stage": 2}})");
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->config.zero.overlap_comm);
}

TEST(ConfigTest, CommunicationDataTypeAndActivationCheckpointing) {
  auto c = Parse(R"({"communication_data_type": "fp32",
                     "activation_checkpointing": {"partition_activations": true,
                       "cpu_checkpointing": true, "number_checkpoints": 4, "profile": false}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->config.communication_data_type, CommDType::kFp32);
  EXPECT_TRUE(c->config.activation_checkpointing.partition_activations);
  EXPECT_EQ(c->config.activation_checkpointing.number_checkpoints, 4);
  c = Parse(R"({"communication_data_type": null})");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->config.communication_data_type, CommDType::kDefault);
}

TEST(ConfigTest, BadArgumentsAreRejected) {
  TrainingArgs args = Args();
  args.world_size = 0;
  EXPECT_THAT(std::string(Parse("{}", args).status().message()), HasSubstr("world size 0"));
  args = Args();
  args.per_device_train_batch_size = 0;
  EXPECT_THAT(std::string(Parse("{}", args).status().message()),
              HasSubstr("--per_device_train_batch_size=0"));
  args = Args();
  args.fp16 = true;
  args.bf16 = true;
  EXPECT_THAT(std::string(Parse("{}", args).status().message()), HasSubstr("mutually exclusive"));
}

TEST(ConfigTest, PrintedConfigIsJsonWithResolvedValues) {
  TrainingArgs args = Args();
  args.hidden_size = 64;
  args.learning_rate = 2e-4;
  auto c = Parse(R"({"optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
                     "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto"}})",
                 args);
  ASSERT_TRUE(c.ok()) << c.status();
  nlohmann::json j = nlohmann::json::parse(DeepSpeedConfigToJson(c->config));
  EXPECT_DOUBLE_EQ(j["optimizer"]["params"]["lr"].get<double>(), 2e-4);
  EXPECT_EQ(j["zero_optimization"]["reduce_bucket_size"].get<int64_t>(), 64 * 64);
  EXPECT_EQ(j["zero_optimization"]["offload_param"]["device"], "none");
  EXPECT_EQ(j["train_batch_size"].get<int64_t>(), 8);
  EXPECT_TRUE(j["scheduler"].is_null());
}

}  // namespace
}  // namespace spill::worker
