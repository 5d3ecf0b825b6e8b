// "auto" resolution (the Hugging Face integration's rules), batch size
// derivation (DeepSpeed's), and printing the resolved config.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/config.h"
#include "worker/config_internal.h"

namespace spill::worker {
namespace internal {
namespace {

using nlohmann::json;

// HF TrainingArguments defaults, used when "auto" meets an absent argument.
constexpr double kHfLearningRate = 5e-5;
constexpr double kHfBeta1 = 0.9;
constexpr double kHfBeta2 = 0.999;
constexpr double kHfEpsilon = 1e-8;
constexpr double kHfWeightDecay = 0;
constexpr double kHfMaxGradNorm = 1.0;
constexpr int64_t kHfPerDeviceBatch = 8;
constexpr int64_t kHfGradAccum = 1;
constexpr int64_t kHfWarmupSteps = 0;

std::string Text(double v) { return FormatNumber(v); }
std::string Text(int64_t v) { return absl::StrCat(v); }
std::string Text(bool v) { return v ? "true" : "false"; }

// One "auto"-able key: fills it, or records a conflict with an explicitly
// given argument, or (key absent, argument given) takes the argument.
class Resolver {
 public:
  Resolver(const ReadContext& ctx) : ctx_(ctx) {}

  template <typename T>
  bool Fill(const std::string& key, T* field, const std::optional<T>& arg, T hf_default,
            const std::string& hf_name) {
    if (ctx_.autos.count(key) != 0) {
      *field = arg.value_or(hf_default);
      return true;
    }
    if (ctx_.present.count(key) != 0) {
      if (arg.has_value() && *arg != *field) {
        mismatches_.push_back(absl::StrCat("- ds ", key, "=", Text(*field), " vs hf ", hf_name,
                                           "=", Text(*arg)));
      }
      return true;
    }
    if (arg.has_value()) {
      *field = *arg;
      return true;
    }
    return false;
  }

  bool IsAuto(const std::string& key) const { return ctx_.autos.count(key) != 0; }
  bool IsPresent(const std::string& key) const { return ctx_.present.count(key) != 0; }
  void Mismatch(std::string line) { mismatches_.push_back(std::move(line)); }

  absl::Status Status() const {
    if (mismatches_.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("these DeepSpeed config values conflict with the training arguments "
                     "(fix the file or drop the argument, or set the value to \"auto\"):\n",
                     absl::StrJoin(mismatches_, "\n")));
  }

 private:
  const ReadContext& ctx_;
  std::vector<std::string> mismatches_;
};

absl::Status CheckArgs(const TrainingArgs& a) {
  auto positive = [](const char* name, const std::optional<int64_t>& v) -> absl::Status {
    if (v.has_value() && *v < 1) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, "=", *v, " must be >= 1"));
    }
    return absl::OkStatus();
  };
  if (a.world_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("world size ", a.world_size, " must be >= 1"));
  }
  SPILL_RETURN_IF_ERROR(positive("per_device_train_batch_size", a.per_device_train_batch_size));
  SPILL_RETURN_IF_ERROR(positive("gradient_accumulation_steps", a.gradient_accumulation_steps));
  SPILL_RETURN_IF_ERROR(positive("max_steps", a.max_steps));
  SPILL_RETURN_IF_ERROR(positive("hidden_size", a.hidden_size));
  if (a.warmup_steps.has_value() && *a.warmup_steps < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--warmup_steps=", *a.warmup_steps, " must be >= 0"));
  }
  if (a.fp16.value_or(false) && a.bf16.value_or(false)) {
    return absl::InvalidArgumentError("--fp16 and --bf16 are mutually exclusive");
  }
  return absl::OkStatus();
}

void ResolveOptimizer(Resolver& r, const TrainingArgs& a, DeepSpeedConfig* c) {
  OptimizerConfig& o = c->optimizer;
  if (!c->optimizer_from_file) {  // HF Trainer: AdamW from the arguments.
    o.type = OptimizerType::kAdamW;
    o.lr = a.learning_rate.value_or(kHfLearningRate);
    o.beta1 = a.adam_beta1.value_or(kHfBeta1);
    o.beta2 = a.adam_beta2.value_or(kHfBeta2);
    o.eps = a.adam_epsilon.value_or(kHfEpsilon);
    o.weight_decay = a.weight_decay.value_or(kHfWeightDecay);
    return;
  }
  r.Fill("optimizer.params.lr", &o.lr, a.learning_rate, kHfLearningRate, "learning_rate");
  r.Fill("optimizer.params.eps", &o.eps, a.adam_epsilon, kHfEpsilon, "adam_epsilon");
  r.Fill("optimizer.params.weight_decay", &o.weight_decay, a.weight_decay, kHfWeightDecay,
         "weight_decay");
  const std::string betas = "optimizer.params.betas";
  if (r.IsAuto(betas)) {
    o.beta1 = a.adam_beta1.value_or(kHfBeta1);
    o.beta2 = a.adam_beta2.value_or(kHfBeta2);
  } else if (r.IsPresent(betas)) {
    if ((a.adam_beta1 && *a.adam_beta1 != o.beta1) || (a.adam_beta2 && *a.adam_beta2 != o.beta2)) {
      r.Mismatch(absl::StrCat("- ds ", betas, "=[", Text(o.beta1), ", ", Text(o.beta2),
                              "] vs hf adam_beta1+adam_beta2=[",
                              Text(a.adam_beta1.value_or(o.beta1)), ", ",
                              Text(a.adam_beta2.value_or(o.beta2)), "]"));
    }
  } else {
    o.beta1 = a.adam_beta1.value_or(o.beta1);
    o.beta2 = a.adam_beta2.value_or(o.beta2);
  }
}

absl::Status ResolveScheduler(Resolver& r, const TrainingArgs& a, DeepSpeedConfig* c) {
  SchedulerConfig& s = c->scheduler;
  if (s.type == SchedulerType::kNone) return absl::OkStatus();
  r.Fill("scheduler.params.warmup_min_lr", &s.warmup_min_lr, std::optional<double>(), 0.0,
         "warmup_min_lr");
  r.Fill("scheduler.params.warmup_max_lr", &s.warmup_max_lr, a.learning_rate, kHfLearningRate,
         "learning_rate");
  r.Fill("scheduler.params.warmup_num_steps", &s.warmup_num_steps, a.warmup_steps,
         kHfWarmupSteps, "warmup_steps");
  if (s.type != SchedulerType::kWarmupDecayLR) return absl::OkStatus();
  const std::string total = "scheduler.params.total_num_steps";
  if (r.IsAuto(total) && !a.max_steps.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat(total, " is \"auto\", which needs --max_steps (the number of training "
                            "steps)"));
  }
  if (!r.Fill(total, &s.total_num_steps, a.max_steps, int64_t{0}, "max_steps")) {
    return absl::InvalidArgumentError(
        absl::StrCat(total, ": required for WarmupDecayLR (or give --max_steps)"));
  }
  return absl::OkStatus();
}

absl::Status ResolveHiddenSizeAutos(Resolver& r, const TrainingArgs& a, ZeroConfig* z) {
  struct Rule {
    const char* key;
    int64_t* field;
    int64_t value;
  };
  int64_t h = a.hidden_size.value_or(0);
  const Rule rules[] = {
      {"zero_optimization.reduce_bucket_size", &z->reduce_bucket_size, h * h},
      {"zero_optimization.stage3_prefetch_bucket_size", &z->stage3_prefetch_bucket_size,
       static_cast<int64_t>(0.9 * static_cast<double>(h) * static_cast<double>(h))},
      {"zero_optimization.stage3_param_persistence_threshold",
       &z->stage3_param_persistence_threshold, 10 * h},
  };
  for (const Rule& rule : rules) {
    if (!r.IsAuto(rule.key)) continue;
    if (!a.hidden_size.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          rule.key, " is \"auto\", which needs the model's hidden size (none was given)"));
    }
    *rule.field = rule.value;
  }
  return absl::OkStatus();
}

// DeepSpeed's _set_batch_related_parameters and _batch_assertion.
absl::Status DeriveBatch(bool has_tbs, bool has_micro, bool has_gas, int world,
                         DeepSpeedConfig* c) {
  int64_t& tbs = c->train_batch_size;
  int64_t& micro = c->train_micro_batch_size_per_gpu;
  int64_t& gas = c->gradient_accumulation_steps;
  if (has_tbs && has_micro && has_gas) {
  } else if (has_tbs && has_micro) {
    gas = tbs / micro / world;
  } else if (has_tbs && has_gas) {
    micro = tbs / world / gas;
  } else if (has_micro && has_gas) {
    tbs = micro * gas * world;
  } else if (has_tbs) {
    gas = 1;
    micro = tbs / world;
  } else if (has_micro) {
    gas = 1;
    tbs = micro * world;
  } else {
    return absl::InvalidArgumentError(
        "either train_batch_size or train_micro_batch_size_per_gpu must be given (in the "
        "config, or --per_device_train_batch_size)");
  }
  if (micro < 1 || gas < 1 || tbs != micro * gas * world) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train_batch_size must equal train_micro_batch_size_per_gpu * "
        "gradient_accumulation_steps * world_size: ",
        tbs, " != ", micro, " * ", gas, " * ", world));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ResolveAutoValues(const ReadContext& ctx, const TrainingArgs& a,
                               DeepSpeedConfig* c) {
  SPILL_RETURN_IF_ERROR(CheckArgs(a));
  Resolver r(ctx);
  bool has_micro = r.Fill("train_micro_batch_size_per_gpu", &c->train_micro_batch_size_per_gpu,
                          a.per_device_train_batch_size, kHfPerDeviceBatch,
                          "per_device_train_batch_size");
  bool has_gas = r.Fill("gradient_accumulation_steps", &c->gradient_accumulation_steps,
                        a.gradient_accumulation_steps, kHfGradAccum,
                        "gradient_accumulation_steps");
  // "auto" = micro * gas * world, derived below from the resolved values.
  bool has_tbs = r.IsPresent("train_batch_size");
  if (r.IsAuto("train_batch_size")) {
    has_micro = true;
    has_gas = true;
  }
  r.Fill("gradient_clipping", &c->gradient_clipping, a.max_grad_norm, kHfMaxGradNorm,
         "max_grad_norm");
  r.Fill("fp16.enabled", &c->fp16.enabled, a.fp16, false, "fp16");
  bool bf16_auto = r.IsAuto("bf16.enabled") || r.IsAuto("bfloat16.enabled");
  if (bf16_auto) {
    c->bf16_enabled = a.bf16.value_or(false);
  } else {
    std::string key = r.IsPresent("bfloat16.enabled") ? "bfloat16.enabled" : "bf16.enabled";
    r.Fill(key, &c->bf16_enabled, a.bf16, false, "bf16");
  }
  ResolveOptimizer(r, a, c);
  SPILL_RETURN_IF_ERROR(r.Status());
  SPILL_RETURN_IF_ERROR(ResolveScheduler(r, a, c));
  SPILL_RETURN_IF_ERROR(r.Status());
  SPILL_RETURN_IF_ERROR(ResolveHiddenSizeAutos(r, a, &c->zero));
  if (c->fp16.enabled && c->bf16_enabled) {
    return absl::InvalidArgumentError("fp16.enabled and bf16.enabled are both true; pick one");
  }
  c->world_size = a.world_size;
  if (!has_tbs && !has_micro) {
    // Neither in the file nor given: the HF Trainer's per-device default
    // (accelerate fills a missing train_micro_batch_size_per_gpu the same way).
    c->train_micro_batch_size_per_gpu = kHfPerDeviceBatch;
    has_micro = true;
  }
  return DeriveBatch(has_tbs, has_micro, has_gas, a.world_size, c);
}

absl::Status ReadBetas(Section& p, OptimizerConfig* c) {
  const nlohmann::json* v = p.Raw("betas");
  p.Consume("betas");
  if (v == nullptr) return absl::OkStatus();
  if (v->is_string() && v->get<std::string>() == "auto") {
    p.ctx()->autos.insert(p.Key("betas"));
    return absl::OkStatus();
  }
  if (!v->is_array() || v->size() != 2 || !(*v)[0].is_number() || !(*v)[1].is_number()) {
    return absl::InvalidArgumentError(absl::StrCat(
        p.Key("betas"), ": expected [beta1, beta2] (two numbers), got ", DescribeJson(*v)));
  }
  double b1 = (*v)[0].get<double>(), b2 = (*v)[1].get<double>();
  if (!(b1 >= 0 && b1 < 1) || !(b2 >= 0 && b2 < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat(p.Key("betas"), ": ", v->dump(), " must lie in [0, 1)"));
  }
  p.ctx()->present.insert(p.Key("betas"));
  c->beta1 = b1;
  c->beta2 = b2;
  return absl::OkStatus();
}

absl::Status ReadAmp(Section& root) {
  Section amp(nullptr, "", root.ctx());
  SPILL_RETURN_IF_ERROR(root.Child("amp", &amp));
  if (!root.Has("amp")) return absl::OkStatus();
  bool enabled = false;
  SPILL_RETURN_IF_ERROR(amp.Bool("enabled", &enabled, /*allow_auto=*/true));
  if (enabled) {
    return absl::InvalidArgumentError(
        "amp.enabled=true: apex AMP is not supported; use fp16 or bf16 instead");
  }
  amp.Consume("opt_level");
  root.ctx()->unsupported.push_back(
      "amp: apex AMP is not supported; the block loads with enabled false or \"auto\" (which "
      "resolves to false), use fp16 or bf16");
  amp.Finish();
  return absl::OkStatus();
}

void NoteUnsupportedRootKeys(Section& root) {
  const char* kNoEffect = "a DeepSpeed feature spill-train does not implement; no effect";
  for (const char* key :
       {"prescale_gradients", "gradient_predivide_factor", "sparse_gradients", "moe",
        "pipeline", "compression_training", "data_efficiency", "curriculum_learning",
        "sparse_attention", "flops_profiler", "autotuning", "elasticity", "tensorboard", "wandb",
        "csv_monitor", "comet", "comms_logger", "dump_state", "eigenvalue",
        "progressive_layer_drop", "hybrid_engine", "nebula", "zero_allow_untested_optimizer",
        "zero_force_ds_cpu_optimizer", "torch_autocast", "data_types", "seq_parallel_communication_data_type",
        "sequence_parallel_size", "memory_breakdown", "disable_allgather", "dataloader_drop_last",
        "timers", "graph_harvesting", "use_data_before_expert_parallelism",
        "compile", "fp8"}) {
    root.Unsupported(key, kNoEffect);
  }
}

}  // namespace internal

namespace {

const char* CommDTypeName(CommDType t) {
  switch (t) {
    case CommDType::kFp32: return "fp32";
    case CommDType::kFp16: return "fp16";
    case CommDType::kBf16: return "bf16";
    default: return nullptr;
  }
}

nlohmann::json ZeroJson(const ZeroConfig& z) {
  nlohmann::json j;
  j["stage"] = z.stage;
  const OffloadOptimizerConfig& oo = z.offload_optimizer;
  j["offload_optimizer"] = {{"device", OffloadDeviceName(oo.device)},
                            {"nvme_path", oo.nvme_path},
                            {"pin_memory", oo.pin_memory},
                            {"buffer_count", oo.buffer_count},
                            {"fast_init", oo.fast_init}};
  const OffloadParamConfig& op = z.offload_param;
  j["offload_param"] = {{"device", OffloadDeviceName(op.device)}, {"nvme_path", op.nvme_path},
                        {"pin_memory", op.pin_memory},           {"buffer_count", op.buffer_count},
                        {"buffer_size", op.buffer_size},         {"max_in_cpu", op.max_in_cpu}};
  j["overlap_comm"] = z.overlap_comm;
  j["contiguous_gradients"] = z.contiguous_gradients;
  j["sub_group_size"] = z.sub_group_size;
  j["reduce_bucket_size"] = z.reduce_bucket_size;
  j["allgather_bucket_size"] = z.allgather_bucket_size;
  j["reduce_scatter"] = z.reduce_scatter;
  j["stage3_prefetch_bucket_size"] = z.stage3_prefetch_bucket_size;
  j["stage3_param_persistence_threshold"] = z.stage3_param_persistence_threshold;
  j["stage3_max_live_parameters"] = z.stage3_max_live_parameters;
  j["stage3_max_reuse_distance"] = z.stage3_max_reuse_distance;
  j["stage3_gather_16bit_weights_on_model_save"] = z.stage3_gather_16bit_weights_on_model_save;
  return j;
}

nlohmann::json TrainingJson(const DeepSpeedConfig& c) {
  nlohmann::json j;
  j["train_batch_size"] = c.train_batch_size;
  j["train_micro_batch_size_per_gpu"] = c.train_micro_batch_size_per_gpu;
  j["gradient_accumulation_steps"] = c.gradient_accumulation_steps;
  j["gradient_clipping"] = c.gradient_clipping;
  j["steps_per_print"] = c.steps_per_print;
  j["wall_clock_breakdown"] = c.wall_clock_breakdown;
  j["world_size"] = c.world_size;
  const Fp16Config& f = c.fp16;
  j["fp16"] = {{"enabled", f.enabled},
               {"loss_scale", f.loss_scale},
               {"loss_scale_window", f.loss_scale_window},
               {"initial_scale_power", f.initial_scale_power},
               {"hysteresis", f.hysteresis},
               {"consecutive_hysteresis", f.consecutive_hysteresis},
               {"min_loss_scale", f.min_loss_scale}};
  j["bf16"] = {{"enabled", c.bf16_enabled}};
  const OptimizerConfig& o = c.optimizer;
  j["optimizer"] = {{"type", o.type == OptimizerType::kAdam ? "Adam" : "AdamW"},
                    {"params",
                     {{"lr", o.lr},
                      {"betas", {o.beta1, o.beta2}},
                      {"eps", o.eps},
                      {"weight_decay", o.weight_decay},
                      {"adam_w_mode", o.adam_w_mode}}}};
  return j;
}

}  // namespace

std::string DeepSpeedConfigToJson(const DeepSpeedConfig& c) {
  nlohmann::json j = TrainingJson(c);
  const SchedulerConfig& s = c.scheduler;
  if (s.type == SchedulerType::kNone) {
    j["scheduler"] = nullptr;  // Constant learning rate.
  } else {
    nlohmann::json params = {{"warmup_min_lr", s.warmup_min_lr},
                             {"warmup_max_lr", s.warmup_max_lr},
                             {"warmup_num_steps", s.warmup_num_steps},
                             {"warmup_type", s.warmup_type == WarmupType::kLog ? "log" : "linear"}};
    if (s.type == SchedulerType::kWarmupDecayLR) params["total_num_steps"] = s.total_num_steps;
    j["scheduler"] = {
        {"type", s.type == SchedulerType::kWarmupLR ? "WarmupLR" : "WarmupDecayLR"},
        {"params", params}};
  }
  j["zero_optimization"] = ZeroJson(c.zero);
  j["aio"] = {{"block_size", c.aio.block_size},
              {"queue_depth", c.aio.queue_depth},
              {"thread_count", c.aio.thread_count},
              {"single_submit", c.aio.single_submit},
              {"overlap_events", c.aio.overlap_events}};
  const char* comm = CommDTypeName(c.communication_data_type);
  j["communication_data_type"] = comm == nullptr ? nlohmann::json(nullptr) : nlohmann::json(comm);
  const ActivationCheckpointingConfig& a = c.activation_checkpointing;
  j["activation_checkpointing"] = {
      {"partition_activations", a.partition_activations},
      {"cpu_checkpointing", a.cpu_checkpointing},
      {"contiguous_memory_optimization", a.contiguous_memory_optimization},
      {"number_checkpoints", a.number_checkpoints.has_value()
                                 ? nlohmann::json(*a.number_checkpoints)
                                 : nlohmann::json(nullptr)},
      {"synchronize_checkpoint_boundary", a.synchronize_checkpoint_boundary},
      {"profile", a.profile}};
  j["checkpoint"] = {{"load_universal", c.checkpoint_load_universal}};
  return j.dump(2);
}

}  // namespace spill::worker
