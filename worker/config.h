// spill-train's training configuration: a DeepSpeed JSON config
// (ds_config.json) read into typed structs, with "auto" values resolved from
// command-line training arguments the way the Hugging Face integration
// resolves them (HfTrainerDeepSpeedConfig.trainer_config_process/_finalize).
//
//   TrainingArgs args;
//   args.learning_rate = 3e-4;
//   args.world_size = 2;
//   args.hidden_size = 768;
//   absl::StatusOr<LoadedConfig> loaded = LoadDeepSpeedConfigFile("ds.json", args);
//   if (!loaded.ok()) { ... loaded.status().message() names the key ... }
//   for (const std::string& w : loaded->warnings) ...       // unknown keys
//   for (const std::string& u : loaded->unsupported) ...    // known, not implemented
//   std::cout << DeepSpeedConfigToJson(loaded->config);
//
// Defaults are DeepSpeed's. Numbers given in scientific notation (1e9) are
// accepted wherever an integer is expected, as long as they are integral.
// No LibTorch dependency.
#ifndef SPILL_WORKER_CONFIG_H_
#define SPILL_WORKER_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace spill::worker {

enum class OffloadDevice { kNone, kCpu, kNvme };
// "none", "cpu", "nvme".
const char* OffloadDeviceName(OffloadDevice device);

enum class OptimizerType { kAdamW, kAdam };
enum class SchedulerType { kNone, kWarmupLR, kWarmupDecayLR };
enum class WarmupType { kLog, kLinear };
// Data type of gradient reductions; kDefault follows the training precision.
enum class CommDType { kDefault, kFp32, kFp16, kBf16 };

struct Fp16Config {
  bool enabled = false;
  double loss_scale = 0;  // 0 = dynamic loss scaling.
  int64_t loss_scale_window = 1000;
  int64_t initial_scale_power = 16;
  int64_t hysteresis = 2;
  bool consecutive_hysteresis = false;
  double min_loss_scale = 1;
};

struct OptimizerConfig {
  OptimizerType type = OptimizerType::kAdamW;
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0;
  // Adam with adam_w_mode=true (DeepSpeed's default) is AdamW; kept as given.
  bool adam_w_mode = true;
};

struct SchedulerConfig {
  SchedulerType type = SchedulerType::kNone;
  double warmup_min_lr = 0;
  double warmup_max_lr = 0.001;
  int64_t warmup_num_steps = 1000;
  int64_t total_num_steps = 0;  // WarmupDecayLR only; required there.
  WarmupType warmup_type = WarmupType::kLog;
};

struct OffloadOptimizerConfig {
  OffloadDevice device = OffloadDevice::kNone;
  std::string nvme_path;
  bool pin_memory = false;
  int64_t buffer_count = 4;
  bool fast_init = false;
};

struct OffloadParamConfig {
  OffloadDevice device = OffloadDevice::kNone;
  std::string nvme_path;
  bool pin_memory = false;
  int64_t buffer_count = 5;
  int64_t buffer_size = 100'000'000;
  int64_t max_in_cpu = 1'000'000'000;
};

struct ZeroConfig {
  int stage = 0;
  OffloadOptimizerConfig offload_optimizer;
  OffloadParamConfig offload_param;
  bool overlap_comm = false;  // DeepSpeed: defaults to true for stage 3.
  bool contiguous_gradients = true;
  int64_t sub_group_size = 1'000'000'000;
  int64_t reduce_bucket_size = 500'000'000;
  int64_t allgather_bucket_size = 500'000'000;
  bool reduce_scatter = true;
  int64_t stage3_prefetch_bucket_size = 50'000'000;
  int64_t stage3_param_persistence_threshold = 100'000;
  int64_t stage3_max_live_parameters = 1'000'000'000;
  int64_t stage3_max_reuse_distance = 1'000'000'000;
  bool stage3_gather_16bit_weights_on_model_save = false;
};

struct AioConfig {
  int64_t block_size = 1'048'576;
  int64_t queue_depth = 8;
  int64_t thread_count = 1;
  bool single_submit = false;
  bool overlap_events = true;
};

struct ActivationCheckpointingConfig {
  bool partition_activations = false;
  bool cpu_checkpointing = false;
  bool contiguous_memory_optimization = false;
  std::optional<int64_t> number_checkpoints;
  bool synchronize_checkpoint_boundary = false;
  bool profile = false;
};

struct DeepSpeedConfig {
  int64_t train_batch_size = 0;
  int64_t train_micro_batch_size_per_gpu = 0;
  int64_t gradient_accumulation_steps = 1;
  double gradient_clipping = 0;  // 0 = no clipping.
  int64_t steps_per_print = 10;
  bool wall_clock_breakdown = false;
  Fp16Config fp16;
  bool bf16_enabled = false;
  // True when the file has an "optimizer" block; otherwise AdamW with the
  // training arguments (as the HF Trainer does).
  bool optimizer_from_file = false;
  OptimizerConfig optimizer;
  SchedulerConfig scheduler;
  ZeroConfig zero;
  AioConfig aio;
  CommDType communication_data_type = CommDType::kDefault;
  ActivationCheckpointingConfig activation_checkpointing;
  bool checkpoint_load_universal = false;
  int world_size = 1;  // The world size the batch sizes were resolved for.
};

// Command-line training arguments (names as the HF Trainer's). An absent
// optional was not given: "auto" then takes the HF default, and a file value
// is not compared against it. A given one must match a non-"auto" file value.
struct TrainingArgs {
  std::optional<double> learning_rate;  // HF default 5e-5
  std::optional<double> adam_beta1;     // 0.9
  std::optional<double> adam_beta2;     // 0.999
  std::optional<double> adam_epsilon;   // 1e-8
  std::optional<double> weight_decay;   // 0
  std::optional<double> max_grad_norm;  // 1.0
  std::optional<int64_t> per_device_train_batch_size;  // 8
  std::optional<int64_t> gradient_accumulation_steps;  // 1
  std::optional<int64_t> warmup_steps;                 // 0
  std::optional<int64_t> max_steps;  // needed for an "auto" total_num_steps
  std::optional<bool> fp16;
  std::optional<bool> bf16;
  int world_size = 1;
  // The model's hidden size, needed by the model-dependent "auto" values
  // (reduce_bucket_size, stage3_prefetch_bucket_size,
  // stage3_param_persistence_threshold).
  std::optional<int64_t> hidden_size;
};

struct LoadedConfig {
  DeepSpeedConfig config;
  // Keys nobody recognised ("unknown key 'zero_optimization.foo'").
  std::vector<std::string> warnings;
  // Keys DeepSpeed knows that spill-train does not implement, each with why
  // ("zero_optimization.stage=2: spill-train runs ZeRO stage 3 only").
  std::vector<std::string> unsupported;
};

// Parses and resolves a config. json_text is the file's contents; source
// names it in messages. Errors (InvalidArgument unless noted), each naming
// the key: a JSON syntax error (with line and column), a value of the wrong
// type or out of range, "auto" where no rule resolves it, a file value that
// conflicts with an explicitly given argument ("ds KEY=V vs hf ARG=W"), an
// inconsistent batch size (showing the numbers), and unsupported values
// that would change training (an optimizer or scheduler type we lack, fp16
// together with bf16, an nvme device without nvme_path).
absl::StatusOr<LoadedConfig> ParseDeepSpeedConfig(const std::string& json_text,
                                                  const TrainingArgs& args,
                                                  const std::string& source = "config");

// Reads the file and parses it. NotFound / PermissionDenied naming the path
// when it cannot be read; otherwise as ParseDeepSpeedConfig.
absl::StatusOr<LoadedConfig> LoadDeepSpeedConfigFile(const std::string& path,
                                                     const TrainingArgs& args);

// The resolved config as DeepSpeed-style JSON (every field, defaults
// included), indented.
std::string DeepSpeedConfigToJson(const DeepSpeedConfig& config);

}  // namespace spill::worker

#endif  // SPILL_WORKER_CONFIG_H_
