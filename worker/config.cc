// Reading a DeepSpeed config: one function per section. "auto" values are
// recorded here and resolved in config_resolve.cc.
#include "worker/config.h"

#include <cerrno>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/config_internal.h"
#include "worker/config_reader.h"

namespace spill::worker {
namespace {

using internal::ReadContext;
using internal::Section;
using nlohmann::json;

constexpr int64_t kMaxInt = std::numeric_limits<int64_t>::max();
constexpr double kMaxDouble = std::numeric_limits<double>::max();

absl::Status ReadOffloadDevice(Section& s, OffloadDevice* out) {
  std::string device;
  SPILL_RETURN_IF_ERROR(s.String("device", &device));
  if (!s.Has("device")) return absl::OkStatus();
  std::string lower = absl::AsciiStrToLower(device);
  if (lower == "none") {
    *out = OffloadDevice::kNone;
  } else if (lower == "cpu") {
    *out = OffloadDevice::kCpu;
  } else if (lower == "nvme") {
    *out = OffloadDevice::kNvme;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(s.Key("device"), ": \"", device,
                                                   "\" is not one of none, cpu, nvme"));
  }
  return absl::OkStatus();
}

absl::Status CheckNvmePath(Section& s, OffloadDevice device, const std::string& path) {
  if (device == OffloadDevice::kNvme && path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        s.Key("nvme_path"), ": required when ", s.Key("device"), " is \"nvme\""));
  }
  return absl::OkStatus();
}

absl::Status ReadOffloadOptimizer(Section& s, OffloadOptimizerConfig* c) {
  SPILL_RETURN_IF_ERROR(ReadOffloadDevice(s, &c->device));
  SPILL_RETURN_IF_ERROR(s.String("nvme_path", &c->nvme_path));
  SPILL_RETURN_IF_ERROR(s.Bool("pin_memory", &c->pin_memory));
  SPILL_RETURN_IF_ERROR(s.Int("buffer_count", &c->buffer_count, 1, 1 << 20));
  SPILL_RETURN_IF_ERROR(s.Bool("fast_init", &c->fast_init));
  s.Unsupported("pipeline_read", "spilld always overlaps NVMe reads with the optimizer step");
  s.Unsupported("pipeline_write", "spilld always overlaps NVMe writes with the optimizer step");
  s.Unsupported("pipeline", "spilld always pipelines NVMe traffic");
  s.Unsupported("ratio", "partial optimizer offload (ZeRO++ Twin-Flow) is not implemented");
  s.Finish();
  return CheckNvmePath(s, c->device, c->nvme_path);
}

absl::Status ReadOffloadParam(Section& s, OffloadParamConfig* c) {
  SPILL_RETURN_IF_ERROR(ReadOffloadDevice(s, &c->device));
  SPILL_RETURN_IF_ERROR(s.String("nvme_path", &c->nvme_path));
  SPILL_RETURN_IF_ERROR(s.Bool("pin_memory", &c->pin_memory));
  SPILL_RETURN_IF_ERROR(s.Int("buffer_count", &c->buffer_count, 1, 1 << 20));
  SPILL_RETURN_IF_ERROR(s.Int("buffer_size", &c->buffer_size, 1, kMaxInt));
  SPILL_RETURN_IF_ERROR(s.Int("max_in_cpu", &c->max_in_cpu, 0, kMaxInt));
  s.Finish();
  return CheckNvmePath(s, c->device, c->nvme_path);
}

// Old (pre-0.4) spellings and stage 1/2-only or experimental knobs.
void NoteUnsupportedZeroKeys(Section& z) {
  const char* kStage12 = "applies to ZeRO stages 1 and 2 only; spill-train runs stage 3";
  z.Unsupported("allgather_partitions", kStage12);
  z.Unsupported("round_robin_gradients", kStage12);
  z.Unsupported("load_from_fp32_weights", "checkpoints always hold fp32 master weights");
  z.Unsupported("elastic_checkpoint", kStage12);
  z.Unsupported("legacy_stage1", kStage12);
  z.Unsupported("ignore_unused_parameters", "every parameter of the built-in model is used");
  z.Unsupported("cpu_offload", "old spelling: use offload_optimizer.device");
  z.Unsupported("cpu_offload_params", "old spelling: use offload_param.device");
  z.Unsupported("cpu_offload_use_pin_memory", "old spelling: use offload_*.pin_memory");
  z.Unsupported("zero_quantized_weights", "ZeRO++ quantized weights are not implemented");
  z.Unsupported("zero_quantized_nontrainable_weights", "ZeRO++ quantization is not implemented");
  z.Unsupported("zero_quantized_gradients", "ZeRO++ quantized gradients are not implemented");
  z.Unsupported("zero_hpz_partition_size", "ZeRO++ hierarchical partitioning is not implemented");
  z.Unsupported("mics_shard_size", "MiCS sharding is not implemented");
  z.Unsupported("mics_hierarchical_params_gather", "MiCS sharding is not implemented");
  z.Unsupported("memory_efficient_linear", "the built-in model uses plain linear layers");
  z.Unsupported("stage3_module_granularity_threshold", "leaf-module grouping is not implemented");
  z.Unsupported("stage3_use_all_reduce_for_fetch_params", "parameters are always all-gathered");
  z.Unsupported("log_trace_cache_warnings", "trace changes are always reported");
}

absl::Status ReadGather16Bit(Section& z, ZeroConfig* c) {
  constexpr char kNew[] = "stage3_gather_16bit_weights_on_model_save";
  constexpr char kOld[] = "stage3_gather_fp16_weights_on_model_save";
  bool new_value = false, old_value = false;
  SPILL_RETURN_IF_ERROR(z.Bool(kNew, &new_value));
  SPILL_RETURN_IF_ERROR(z.Bool(kOld, &old_value));
  if (z.Has(kNew) && z.Has(kOld) && new_value != old_value) {
    return absl::InvalidArgumentError(absl::StrCat(
        z.Key(kNew), "=", new_value ? "true" : "false", " conflicts with its old name ",
        z.Key(kOld), "=", old_value ? "true" : "false"));
  }
  if (z.Has(kOld)) {
    z.ctx()->warnings.push_back(
        absl::StrCat("'", z.Key(kOld), "' is the old name of '", z.Key(kNew), "'"));
    c->stage3_gather_16bit_weights_on_model_save = old_value;
  }
  if (z.Has(kNew)) c->stage3_gather_16bit_weights_on_model_save = new_value;
  return absl::OkStatus();
}

absl::Status ReadAio(Section& a, AioConfig* c) {
  SPILL_RETURN_IF_ERROR(a.Int("block_size", &c->block_size, 1, 1LL << 30));
  SPILL_RETURN_IF_ERROR(a.Int("queue_depth", &c->queue_depth, 1, 1 << 16));
  SPILL_RETURN_IF_ERROR(a.Int("thread_count", &c->thread_count, 1, 1024));
  SPILL_RETURN_IF_ERROR(a.Int("intra_op_parallelism", &c->thread_count, 1, 1024));
  SPILL_RETURN_IF_ERROR(a.Bool("single_submit", &c->single_submit));
  SPILL_RETURN_IF_ERROR(a.Bool("overlap_events", &c->overlap_events));
  a.Unsupported("use_gds", "GPUDirect Storage is not used; NVMe goes through spilld's arena");
  a.Finish();
  return absl::OkStatus();
}

absl::Status ReadZero(Section& z, ZeroConfig* c, AioConfig* aio) {
  int64_t stage = 0;
  SPILL_RETURN_IF_ERROR(z.Int("stage", &stage, 0, 3));
  c->stage = static_cast<int>(stage);
  c->overlap_comm = c->stage == 3;  // DeepSpeed's default.
  Section child(nullptr, "", z.ctx());
  SPILL_RETURN_IF_ERROR(z.Child("offload_optimizer", &child));
  SPILL_RETURN_IF_ERROR(ReadOffloadOptimizer(child, &c->offload_optimizer));
  SPILL_RETURN_IF_ERROR(z.Child("offload_param", &child));
  SPILL_RETURN_IF_ERROR(ReadOffloadParam(child, &c->offload_param));
  if (c->offload_param.device != OffloadDevice::kNone && c->stage != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat(z.Key("offload_param.device"), "=\"",
                     OffloadDeviceName(c->offload_param.device), "\" needs ", z.Key("stage"),
                     "=3, not ", c->stage));
  }
  // DeepSpeed also accepts the aio block inside zero_optimization.
  SPILL_RETURN_IF_ERROR(z.Child("aio", &child));
  SPILL_RETURN_IF_ERROR(ReadAio(child, aio));
  SPILL_RETURN_IF_ERROR(z.Bool("overlap_comm", &c->overlap_comm));
  SPILL_RETURN_IF_ERROR(z.Bool("contiguous_gradients", &c->contiguous_gradients));
  SPILL_RETURN_IF_ERROR(z.Int("sub_group_size", &c->sub_group_size, 1, kMaxInt));
  SPILL_RETURN_IF_ERROR(z.Int("reduce_bucket_size", &c->reduce_bucket_size, 1, kMaxInt, true));
  SPILL_RETURN_IF_ERROR(z.Int("allgather_bucket_size", &c->allgather_bucket_size, 1, kMaxInt));
  SPILL_RETURN_IF_ERROR(z.Bool("reduce_scatter", &c->reduce_scatter));
  SPILL_RETURN_IF_ERROR(z.Int("stage3_prefetch_bucket_size", &c->stage3_prefetch_bucket_size,
                              0, kMaxInt, true));
  SPILL_RETURN_IF_ERROR(z.Int("stage3_param_persistence_threshold",
                              &c->stage3_param_persistence_threshold, 0, kMaxInt, true));
  SPILL_RETURN_IF_ERROR(z.Int("stage3_max_live_parameters", &c->stage3_max_live_parameters, 0,
                              kMaxInt));
  SPILL_RETURN_IF_ERROR(
      z.Int("stage3_max_reuse_distance", &c->stage3_max_reuse_distance, 0, kMaxInt));
  SPILL_RETURN_IF_ERROR(ReadGather16Bit(z, c));
  NoteUnsupportedZeroKeys(z);
  if (c->stage != 3) {
    z.ctx()->unsupported.push_back(absl::StrCat(
        z.Key("stage"), "=", c->stage,
        ": spill-train runs ZeRO stage 3 only (parameters, gradients and optimizer state "
        "partitioned); the config loads, but training runs as stage 3"));
  }
  z.Finish();
  return absl::OkStatus();
}

absl::Status ReadFp16(Section& s, Fp16Config* c) {
  SPILL_RETURN_IF_ERROR(s.Bool("enabled", &c->enabled, /*allow_auto=*/true));
  SPILL_RETURN_IF_ERROR(s.Double("loss_scale", &c->loss_scale, 0, kMaxDouble));
  SPILL_RETURN_IF_ERROR(s.Int("loss_scale_window", &c->loss_scale_window, 1, kMaxInt));
  SPILL_RETURN_IF_ERROR(s.Int("initial_scale_power", &c->initial_scale_power, 0, 127));
  SPILL_RETURN_IF_ERROR(s.Int("hysteresis", &c->hysteresis, 1, kMaxInt));
  SPILL_RETURN_IF_ERROR(s.Bool("consecutive_hysteresis", &c->consecutive_hysteresis));
  SPILL_RETURN_IF_ERROR(s.Double("min_loss_scale", &c->min_loss_scale, 0, kMaxDouble));
  s.Unsupported("auto_cast", "inputs are not cast; the model computes in the training dtype");
  s.Unsupported("fp16_master_weights_and_grads", "master weights are always fp32");
  s.Finish();
  return absl::OkStatus();
}

absl::Status ReadOptimizer(Section& s, OptimizerConfig* c) {
  std::string type;
  SPILL_RETURN_IF_ERROR(s.String("type", &type));
  std::string lower = absl::AsciiStrToLower(type);
  if (lower == "adamw") {
    c->type = OptimizerType::kAdamW;
  } else if (lower == "adam") {
    c->type = OptimizerType::kAdam;
  } else if (s.Has("type")) {
    return absl::InvalidArgumentError(absl::StrCat(
        s.Key("type"), ": \"", type, "\" is not supported (spill-train implements Adam and AdamW)"));
  } else {
    return absl::InvalidArgumentError(absl::StrCat(s.Key("type"), ": required"));
  }
  Section p(nullptr, "", s.ctx());
  SPILL_RETURN_IF_ERROR(s.Child("params", &p));
  SPILL_RETURN_IF_ERROR(p.Double("lr", &c->lr, 0, kMaxDouble, true));
  SPILL_RETURN_IF_ERROR(internal::ReadBetas(p, c));
  SPILL_RETURN_IF_ERROR(p.Double("eps", &c->eps, 0, kMaxDouble, true));
  SPILL_RETURN_IF_ERROR(p.Double("weight_decay", &c->weight_decay, 0, kMaxDouble, true));
  SPILL_RETURN_IF_ERROR(p.Bool("adam_w_mode", &c->adam_w_mode));
  bool flag = false;
  SPILL_RETURN_IF_ERROR(p.Bool("amsgrad", &flag));
  if (flag) {
    return absl::InvalidArgumentError(
        absl::StrCat(p.Key("amsgrad"), "=true is not supported (no AMSGrad variant)"));
  }
  p.Unsupported("torch_adam", "the optimizer runs in spilld (or torch fused AdamW without offload)");
  p.Unsupported("fused", "the optimizer implementation is chosen by the offload mode");
  p.Unsupported("bias_correction", "bias correction is always applied");
  p.Finish();
  s.Unsupported("legacy_fusion", "no effect");
  s.Finish();
  return absl::OkStatus();
}

absl::Status ReadScheduler(Section& s, SchedulerConfig* c) {
  std::string type;
  SPILL_RETURN_IF_ERROR(s.String("type", &type));
  if (type == "WarmupLR") {
    c->type = SchedulerType::kWarmupLR;
  } else if (type == "WarmupDecayLR") {
    c->type = SchedulerType::kWarmupDecayLR;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(s.Key("type"), ": \"", type,
                     "\" is not supported (spill-train implements WarmupLR and WarmupDecayLR)"));
  }
  Section p(nullptr, "", s.ctx());
  SPILL_RETURN_IF_ERROR(s.Child("params", &p));
  SPILL_RETURN_IF_ERROR(p.Double("warmup_min_lr", &c->warmup_min_lr, 0, kMaxDouble, true));
  SPILL_RETURN_IF_ERROR(p.Double("warmup_max_lr", &c->warmup_max_lr, 0, kMaxDouble, true));
  SPILL_RETURN_IF_ERROR(p.Int("warmup_num_steps", &c->warmup_num_steps, 0, kMaxInt, true));
  if (c->type == SchedulerType::kWarmupDecayLR) {
    SPILL_RETURN_IF_ERROR(p.Int("total_num_steps", &c->total_num_steps, 1, kMaxInt, true));
  } else {
    p.Unsupported("total_num_steps", "WarmupLR does not decay; only WarmupDecayLR uses it");
  }
  std::string warmup_type = "log";
  SPILL_RETURN_IF_ERROR(p.String("warmup_type", &warmup_type));
  if (warmup_type == "log") {
    c->warmup_type = WarmupType::kLog;
  } else if (warmup_type == "linear") {
    c->warmup_type = WarmupType::kLinear;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(p.Key("warmup_type"), ": \"", warmup_type,
                                                   "\" is not one of log, linear"));
  }
  p.Unsupported("last_batch_iteration", "resume restores the step from the checkpoint");
  p.Finish();
  s.Finish();
  return absl::OkStatus();
}

absl::Status ReadActivationCheckpointing(Section& s, ActivationCheckpointingConfig* c) {
  SPILL_RETURN_IF_ERROR(s.Bool("partition_activations", &c->partition_activations));
  SPILL_RETURN_IF_ERROR(s.Bool("cpu_checkpointing", &c->cpu_checkpointing));
  SPILL_RETURN_IF_ERROR(
      s.Bool("contiguous_memory_optimization", &c->contiguous_memory_optimization));
  const json* n = s.Raw("number_checkpoints");
  if (n != nullptr && !n->is_null()) {
    int64_t value = 0;
    SPILL_RETURN_IF_ERROR(s.Int("number_checkpoints", &value, 1, kMaxInt));
    c->number_checkpoints = value;
  }
  s.Consume("number_checkpoints");
  SPILL_RETURN_IF_ERROR(
      s.Bool("synchronize_checkpoint_boundary", &c->synchronize_checkpoint_boundary));
  SPILL_RETURN_IF_ERROR(s.Bool("profile", &c->profile));
  s.Finish();
  return absl::OkStatus();
}

absl::Status ReadCommDType(Section& root, CommDType* out) {
  const json* v = root.Raw("communication_data_type");
  root.Consume("communication_data_type");
  if (v == nullptr || v->is_null()) return absl::OkStatus();
  std::string name;
  SPILL_RETURN_IF_ERROR(root.String("communication_data_type", &name));
  std::string lower = absl::AsciiStrToLower(name);
  if (lower == "fp32" || lower == "float32") {
    *out = CommDType::kFp32;
  } else if (lower == "fp16" || lower == "float16") {
    *out = CommDType::kFp16;
  } else if (lower == "bf16" || lower == "bfloat16") {
    *out = CommDType::kBf16;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("communication_data_type: \"", name,
                                                   "\" is not one of fp32, fp16, bf16"));
  }
  return absl::OkStatus();
}

absl::Status ReadBlocks(Section& root, DeepSpeedConfig* c) {
  Section s(nullptr, "", root.ctx());
  SPILL_RETURN_IF_ERROR(root.Child("fp16", &s));
  SPILL_RETURN_IF_ERROR(ReadFp16(s, &c->fp16));
  for (const char* name : {"bf16", "bfloat16"}) {
    SPILL_RETURN_IF_ERROR(root.Child(name, &s));
    SPILL_RETURN_IF_ERROR(s.Bool("enabled", &c->bf16_enabled, /*allow_auto=*/true));
    s.Unsupported("immediate_grad_update", "gradients are reduced per layer as they come");
    s.Unsupported("check_grad_overflow", "bf16 training never checks for overflow");
    s.Finish();
  }
  SPILL_RETURN_IF_ERROR(root.Child("optimizer", &s));
  c->optimizer_from_file = root.Has("optimizer");
  if (c->optimizer_from_file) SPILL_RETURN_IF_ERROR(ReadOptimizer(s, &c->optimizer));
  SPILL_RETURN_IF_ERROR(root.Child("scheduler", &s));
  if (root.Has("scheduler")) SPILL_RETURN_IF_ERROR(ReadScheduler(s, &c->scheduler));
  SPILL_RETURN_IF_ERROR(root.Child("aio", &s));
  SPILL_RETURN_IF_ERROR(ReadAio(s, &c->aio));
  SPILL_RETURN_IF_ERROR(root.Child("zero_optimization", &s));
  SPILL_RETURN_IF_ERROR(ReadZero(s, &c->zero, &c->aio));
  SPILL_RETURN_IF_ERROR(root.Child("activation_checkpointing", &s));
  SPILL_RETURN_IF_ERROR(ReadActivationCheckpointing(s, &c->activation_checkpointing));
  SPILL_RETURN_IF_ERROR(root.Child("checkpoint", &s));
  SPILL_RETURN_IF_ERROR(s.Bool("load_universal", &c->checkpoint_load_universal));
  s.Unsupported("tag_validation", "checkpoint tags are always validated across ranks");
  s.Unsupported("use_node_local_storage", "every rank writes to the given directory");
  s.Unsupported("parallel_write", "checkpoint writes are not pipelined");
  s.Finish();
  SPILL_RETURN_IF_ERROR(internal::ReadAmp(root));
  return ReadCommDType(root, &c->communication_data_type);
}

absl::Status ReadRoot(Section& root, DeepSpeedConfig* c) {
  SPILL_RETURN_IF_ERROR(root.Int("train_batch_size", &c->train_batch_size, 1, kMaxInt, true));
  SPILL_RETURN_IF_ERROR(root.Int("train_micro_batch_size_per_gpu",
                                 &c->train_micro_batch_size_per_gpu, 1, kMaxInt, true));
  SPILL_RETURN_IF_ERROR(root.Int("gradient_accumulation_steps", &c->gradient_accumulation_steps,
                                 1, kMaxInt, true));
  SPILL_RETURN_IF_ERROR(
      root.Double("gradient_clipping", &c->gradient_clipping, 0, kMaxDouble, true));
  SPILL_RETURN_IF_ERROR(root.Int("steps_per_print", &c->steps_per_print, 1, kMaxInt));
  SPILL_RETURN_IF_ERROR(root.Bool("wall_clock_breakdown", &c->wall_clock_breakdown));
  SPILL_RETURN_IF_ERROR(ReadBlocks(root, c));
  internal::NoteUnsupportedRootKeys(root);
  root.Finish();
  return absl::OkStatus();
}

// "config:3:14: ..." from nlohmann's byte offset.
std::string SyntaxErrorMessage(const std::string& text, const std::string& source,
                               const json::parse_error& e) {
  size_t line = 1, column = 1;
  size_t end = std::min<size_t>(e.byte == 0 ? 0 : e.byte - 1, text.size());
  for (size_t i = 0; i < end; ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  std::string what = e.what();
  size_t colon = what.find(": ");
  if (colon != std::string::npos) what = what.substr(colon + 2);
  return absl::StrCat(source, ":", line, ":", column, ": JSON syntax error: ", what);
}

}  // namespace

const char* OffloadDeviceName(OffloadDevice device) {
  switch (device) {
    case OffloadDevice::kCpu: return "cpu";
    case OffloadDevice::kNvme: return "nvme";
    default: return "none";
  }
}

absl::StatusOr<LoadedConfig> ParseDeepSpeedConfig(const std::string& json_text,
                                                  const TrainingArgs& args,
                                                  const std::string& source) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::parse_error& e) {
    return absl::InvalidArgumentError(SyntaxErrorMessage(json_text, source, e));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": the config must be a JSON object, got ",
                     internal::DescribeJson(root)));
  }
  ReadContext ctx;
  Section top(&root, "", &ctx);
  DeepSpeedConfig config;
  absl::Status read = ReadRoot(top, &config);
  if (!read.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", read.message()));
  }
  absl::Status resolved = internal::ResolveAutoValues(ctx, args, &config);
  if (!resolved.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", resolved.message()));
  }
  LoadedConfig loaded;
  loaded.config = std::move(config);
  loaded.warnings = std::move(ctx.warnings);
  loaded.unsupported = std::move(ctx.unsupported);
  return loaded;
}

absl::StatusOr<LoadedConfig> LoadDeepSpeedConfigFile(const std::string& path,
                                                     const TrainingArgs& args) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    int err = errno;
    return absl::ErrnoToStatus(err, absl::StrCat("cannot read DeepSpeed config ", path));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return ParseDeepSpeedConfig(buffer.str(), args, path);
}

}  // namespace spill::worker
