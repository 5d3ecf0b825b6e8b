#include "worker/engine.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace spill::worker {
namespace {

using client::DType;
using client::ObjectInfo;
using client::ObjectKind;
using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

absl::Status SpilldError(const absl::Status& s, const std::string& what) {
  return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
}

std::optional<at::ScalarType> ToScalarType(CommDType d) {
  switch (d) {
    case CommDType::kFp32: return at::kFloat;
    case CommDType::kFp16: return at::kHalf;
    case CommDType::kBf16: return at::kBFloat16;
    case CommDType::kDefault: break;
  }
  return std::nullopt;
}

absl::Status CheckModes(const DeepSpeedConfig& c) {
  const OffloadDevice opt = c.zero.offload_optimizer.device, param = c.zero.offload_param.device;
  const bool cpu = opt == OffloadDevice::kCpu && param == OffloadDevice::kCpu;
  const bool none = opt == OffloadDevice::kNone && param == OffloadDevice::kNone;
  if (!cpu && !none) {
    return absl::UnimplementedError(absl::StrCat(
        "zero_optimization.offload_optimizer.device=", OffloadDeviceName(opt),
        " with zero_optimization.offload_param.device=", OffloadDeviceName(param),
        ": this build of the engine runs cpu/cpu (spilld) or none/none (plain ZeRO-3)"));
  }
  if (c.fp16.enabled) {
    return absl::UnimplementedError(
        "fp16.enabled=true: dynamic loss scaling is not implemented yet; use bf16 or fp32");
  }
  if (c.gradient_accumulation_steps < 1) {
    return absl::InvalidArgumentError(absl::StrCat("gradient_accumulation_steps must be >= 1, got ",
                                                   c.gradient_accumulation_steps));
  }
  return absl::OkStatus();
}

client::OptimizerParams ToClientParams(const OptimizerConfig& o, double lr) {
  client::OptimizerParams p;
  // Adam with adam_w_mode (DeepSpeed's default) is AdamW.
  p.type = (o.type == OptimizerType::kAdamW || o.adam_w_mode) ? client::OptimizerType::kAdamW
                                                                : client::OptimizerType::kAdam;
  p.lr = static_cast<float>(lr);
  p.beta1 = static_cast<float>(o.beta1);
  p.beta2 = static_cast<float>(o.beta2);
  p.eps = static_cast<float>(o.eps);
  p.weight_decay = static_cast<float>(o.weight_decay);
  return p;
}

}  // namespace

struct Engine::LayerState {
  int64_t numel = 0;
  int64_t shard = 0;  // Elements per rank; padded = shard * world.
  ObjectInfo param_object;
  ObjectInfo grad_object;
  uint64_t group_id = 0;
  // Offload none: the shard and its optimizer state on the compute device.
  at::Tensor master, exp_avg, exp_avg_sq, state_step;  // fp32
  at::Tensor param;  // master in the compute dtype (the same tensor in fp32)
  at::Tensor grad;   // fp32 accumulator over micro-steps
};

Engine::Engine(const EngineOptions& options, Collectives* collectives, GptModel model,
               LrSchedule schedule)
    : options_(options),
      collectives_(collectives),
      model_(std::move(model)),
      schedule_(std::move(schedule)),
      dtype_(options.config.bf16_enabled ? at::kBFloat16 : at::kFloat),
      local_(options.config.zero.offload_optimizer.device == OffloadDevice::kNone) {}

Engine::~Engine() {
  if (session_ != nullptr) session_->Close().IgnoreError();
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options,
                                                       Collectives* collectives) {
  if (collectives == nullptr) return absl::InvalidArgumentError("Engine needs collectives");
  SPILL_RETURN_IF_ERROR(CheckModes(options.config));
  SPILL_ASSIGN_OR_RETURN(GptModel model, GptModel::Create(options.shape));
  SPILL_ASSIGN_OR_RETURN(LrSchedule schedule,
                         LrSchedule::Create(options.config.scheduler, options.config.optimizer.lr));
  std::unique_ptr<Engine> e(new Engine(options, collectives, std::move(model), std::move(schedule)));
  SPILL_RETURN_IF_ERROR(e->Build());
  return e;
}

namespace {
template <typename W>
absl::Status WaitFor(const W& work, std::chrono::milliseconds timeout, const char* what) {
  absl::Status s = work->Wait(timeout);
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
  return absl::OkStatus();
}
}  // namespace

absl::Status Engine::Wait(const std::shared_ptr<Work>& work, const char* what) {
  return WaitFor(work, options_.timeout, what);
}

absl::Status Engine::Wait(const std::shared_ptr<client::Work>& work, const char* what) {
  return WaitFor(work, options_.timeout, what);
}

absl::Status Engine::Build() {
  client::SessionOptions so = options_.session;
  so.rank = collectives_->rank();
  so.world_size = collectives_->world_size();
  so.register_with_cuda = options_.device.is_cuda();
  layers_.resize(model_.layers().size());
  if (local_) {
    for (size_t i = 0; i < layers_.size(); ++i) SPILL_RETURN_IF_ERROR(BuildLayer(i));
    return absl::OkStatus();
  }
  SPILL_ASSIGN_OR_RETURN(session_, client::Session::Open(so));
  // Other ranks' sessions create the job too; only this rank's objects tell
  // that an earlier run left its shards there.
  SPILL_ASSIGN_OR_RETURN(std::vector<ObjectInfo> existing, session_->List());
  const std::string mine = absl::StrCat("rank", so.rank, "/");
  for (const ObjectInfo& o : existing) {
    if (o.name.rfind(mine, 0) == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "spilld already holds '", o.name, "' of job '", so.job_id,
          "' (resuming a job is not implemented yet): pick another job id or remove it"));
    }
  }
  for (size_t i = 0; i < layers_.size(); ++i) SPILL_RETURN_IF_ERROR(BuildLayer(i));
  return absl::OkStatus();
}

absl::Status Engine::BuildLayer(size_t i) {
  const Layer& layer = *model_.layers()[i];
  LayerState& ls = layers_[i];
  const int world = collectives_->world_size(), rank = collectives_->rank();
  ls.numel = layer.numel();
  ls.shard = (ls.numel + world - 1) / world;
  // One layer at a time in fp32 on the CPU: the full model never exists here.
  at::Tensor flat = at::zeros({ls.shard * world}, at::kFloat);
  SPILL_RETURN_IF_ERROR(layer.Initialize(flat.narrow(0, 0, ls.numel), options_.seed));
  if (local_) {
    at::Tensor f32 = flat.narrow(0, rank * ls.shard, ls.shard).to(options_.device, at::kFloat,
                                                                   false, /*copy=*/true);
    ls.master = f32;
    ls.exp_avg = at::zeros_like(f32);
    ls.exp_avg_sq = at::zeros_like(f32);
    ls.state_step = at::zeros({1}, f32.options());
    ls.param = dtype_ == at::kFloat ? f32 : f32.to(dtype_);
    return absl::OkStatus();
  }
  at::Tensor mine = flat.narrow(0, rank * ls.shard, ls.shard).to(dtype_);
  const std::string base = absl::StrCat("rank", rank, "/", layer.name());
  const DType dt = dtype_ == at::kBFloat16 ? DType::kBFloat16 : DType::kFloat32;
  client::Session& s = *session_;
  SPILL_ASSIGN_OR_RETURN(ls.param_object, s.Register(base + "/param", ObjectKind::kParamShard, dt, ls.shard));
  SPILL_ASSIGN_OR_RETURN(ls.grad_object, s.Register(base + "/grad", ObjectKind::kGradShard, dt, ls.shard));
  SPILL_ASSIGN_OR_RETURN(ObjectInfo pinned, s.Acquire(ls.param_object.object_id)->Get(options_.timeout));
  SPILL_ASSIGN_OR_RETURN(absl::Span<uint8_t> bytes, s.Bytes(pinned));
  std::memcpy(bytes.data(), mine.data_ptr(), bytes.size());
  SPILL_RETURN_IF_ERROR(Wait(s.WriteBack(ls.param_object.object_id, 0), "write back initial shard"));
  SPILL_RETURN_IF_ERROR(Wait(s.Release(ls.param_object.object_id), "release initial shard"));
  client::GroupSpec spec;
  spec.name = base;
  spec.params = ToClientParams(options_.config.optimizer, schedule_.LrAt(0));
  spec.gradient_accumulation_steps =
      static_cast<uint32_t>(options_.config.gradient_accumulation_steps);
  spec.members.push_back({ls.param_object.object_id, ls.grad_object.object_id});
  absl::StatusOr<client::GroupInfo> group = s.CreateGroup(spec);
  if (!group.ok()) return SpilldError(group.status(), "optimizer group " + base);
  ls.group_id = group->group_id;
  // spilld copied the master from the 16-bit shard; DeepSpeed's master is
  // the fp32 initialisation itself.
  if (dtype_ != at::kFloat && !group->members.empty()) {
    SPILL_RETURN_IF_ERROR(WriteMaster(group->members[0].master_object_id,
                                      flat.narrow(0, rank * ls.shard, ls.shard)));
  }
  return absl::OkStatus();
}

absl::Status Engine::WriteMaster(uint64_t master_id, const at::Tensor& fp32_shard) {
  client::Session& s = *session_;
  SPILL_ASSIGN_OR_RETURN(ObjectInfo pinned, s.Acquire(master_id)->Get(options_.timeout));
  SPILL_ASSIGN_OR_RETURN(absl::Span<float> master, s.Data<float>(pinned));
  absl::Status st = static_cast<int64_t>(master.size()) == fp32_shard.numel()
                        ? absl::OkStatus()
                        : absl::InternalError(absl::StrCat("master object ", master_id, " has ",
                                                           master.size(), " elements, expected ",
                                                           fp32_shard.numel()));
  if (st.ok()) {
    std::memcpy(master.data(), fp32_shard.contiguous().data_ptr(), master.size() * sizeof(float));
    st = Wait(s.WriteBack(master_id, 0), "write back fp32 master");
  }
  absl::Status rel = Wait(s.Release(master_id), "release fp32 master");
  SPILL_RETURN_IF_ERROR(st);
  return rel;
}

// Acquire the shard, copy it to the compute device, release, all-gather.
absl::StatusOr<at::Tensor> Engine::GatherLayer(size_t i, StepStats& stats) {
  LayerState& ls = layers_[i];
  at::Tensor shard = ls.param;
  if (!local_) {
    client::Session& s = *session_;
    Clock::time_point t0 = Clock::now();
    SPILL_ASSIGN_OR_RETURN(ObjectInfo pinned,
                           s.Acquire(ls.param_object.object_id)->Get(options_.timeout));
    stats.spilld_wait_s += Since(t0);
    SPILL_ASSIGN_OR_RETURN(absl::Span<uint8_t> bytes, s.Bytes(pinned));
    at::Tensor view = at::from_blob(bytes.data(), {ls.shard}, at::TensorOptions().dtype(dtype_));
    shard = view.to(options_.device, /*non_blocking=*/false, /*copy=*/true);
    t0 = Clock::now();
    SPILL_RETURN_IF_ERROR(Wait(s.Release(ls.param_object.object_id), "release parameter shard"));
    stats.spilld_wait_s += Since(t0);
  }
  at::Tensor full = at::empty({ls.shard * collectives_->world_size()}, shard.options());
  SPILL_RETURN_IF_ERROR(Wait(collectives_->AllGather(full, shard), "all-gather parameters"));
  return full;
}

absl::StatusOr<double> Engine::MicroStep(const MicroBatch& mb, uint32_t micro, StepStats& stats,
                                         double& sum_squares) {
  const size_t n = layers_.size();
  std::vector<at::Tensor> full(n);
  at::Tensor x = mb.tokens.to(options_.device), wte;
  Clock::time_point t0 = Clock::now();
  for (size_t i = 0; i < n; ++i) {
    SPILL_ASSIGN_OR_RETURN(full[i], GatherLayer(i, stats));
    full[i].requires_grad_(true);
    const Layer& layer = *model_.layers()[i];
    std::vector<at::Tensor> params = layer.Unflatten(full[i].narrow(0, 0, layers_[i].numel));
    if (i == 0) wte = params[GptModel::kTiedParam];
    // The autograd graph keeps what backward needs of full[i]; the head keeps
    // the embedding's wte (tied).
    x = layer.Forward(x, params, i + 1 == n ? wte : at::Tensor());
  }
  at::Tensor loss = GptModel::Loss(x, mb.targets.to(options_.device));
  const double loss_value = loss.item<double>();
  stats.forward_s += Since(t0);
  t0 = Clock::now();
  (loss / static_cast<double>(options_.config.gradient_accumulation_steps)).backward();
  stats.backward_s += Since(t0);
  x = at::Tensor();
  wte = at::Tensor();
  sum_squares = 0;
  for (size_t i = n; i-- > 0;) {
    at::Tensor g = full[i].grad();
    if (!g.defined()) g = at::zeros_like(full[i]);
    full[i] = at::Tensor();  // Free the gathered parameters.
    SPILL_RETURN_IF_ERROR(ReduceGradient(i, g, micro, stats, sum_squares));
  }
  return loss_value;
}

absl::StatusOr<std::vector<at::Tensor>> Engine::GatherParameters() {
  StepStats unused;
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < layers_.size(); ++i) {
    SPILL_ASSIGN_OR_RETURN(at::Tensor full, GatherLayer(i, unused));
    out.push_back(full.narrow(0, 0, layers_[i].numel).to(at::kCPU, at::kFloat).clone());
  }
  return out;
}

// Reduce-scatter (avg) layer i's flat gradient into this rank's shard, copy
// it into the gradient object and tell spilld (GradReady).
absl::Status Engine::ReduceGradient(size_t i, const at::Tensor& full_grad, uint32_t micro,
                                    StepStats& stats, double& sum_squares) {
  LayerState& ls = layers_[i];
  client::Session& s = *session_;
  Clock::time_point t0 = Clock::now();
  at::Tensor shard = at::empty({ls.shard}, full_grad.options());
  SPILL_RETURN_IF_ERROR(Wait(collectives_->ReduceScatter(shard, full_grad.contiguous(),
                                                         ReduceOp::kAvg,
                                                         ToScalarType(options_.config.communication_data_type)),
                             "reduce-scatter gradients"));
  stats.reduce_s += Since(t0);
  if (local_) {
    at::Tensor g = shard.to(at::kFloat);
    ls.grad = micro == 0 ? g : ls.grad.add_(g);
    sum_squares += ls.grad.square().sum().item<double>();
    return absl::OkStatus();
  }
  t0 = Clock::now();
  SPILL_ASSIGN_OR_RETURN(ObjectInfo pinned, s.Acquire(ls.grad_object.object_id)->Get(options_.timeout));
  SPILL_ASSIGN_OR_RETURN(absl::Span<uint8_t> bytes, s.Bytes(pinned));
  at::Tensor cpu = shard.to(at::kCPU).contiguous();
  std::memcpy(bytes.data(), cpu.data_ptr(), bytes.size());
  std::shared_ptr<client::Work> ready = s.GradReady(ls.group_id, ls.grad_object.object_id,
                                            static_cast<uint64_t>(step_ + 1), micro);
  absl::Status st = Wait(ready, "gradient ready");
  absl::Status rel = Wait(s.Release(ls.grad_object.object_id), "release gradient shard");
  stats.spilld_wait_s += Since(t0);
  SPILL_RETURN_IF_ERROR(st);
  SPILL_RETURN_IF_ERROR(rel);
  sum_squares += ready->sum_squares();
  return absl::OkStatus();
}

absl::Status Engine::Optimize(double sum_squares, StepStats& stats) {
  Clock::time_point t0 = Clock::now();
  at::Tensor total = at::full({1}, sum_squares, at::TensorOptions().dtype(at::kDouble));
  if (options_.device.is_cuda()) total = total.to(options_.device);
  SPILL_RETURN_IF_ERROR(Wait(collectives_->AllReduce(total, ReduceOp::kSum), "all-reduce norm"));
  stats.reduce_s += Since(t0);
  // Hook for fp16: loss_scale and an overflow flag (all-reduced) go here.
  const double loss_scale = 1.0;
  const bool overflow = false;
  stats.grad_norm = std::sqrt(total.item<double>()) / loss_scale;
  const double max_norm = options_.config.gradient_clipping;
  stats.clip = max_norm > 0 ? std::min(1.0, max_norm / (stats.grad_norm + 1e-6)) : 1.0;
  stats.lr = schedule_.LrAt(step_);
  const uint64_t step = static_cast<uint64_t>(step_ + 1);
  t0 = Clock::now();
  if (local_) {
    LocalStep(stats.lr, stats.clip / loss_scale);
    stats.optimizer_s += Since(t0);
    return absl::OkStatus();
  }
  std::vector<std::shared_ptr<client::Work>> works;
  for (const LayerState& ls : layers_) {
    works.push_back(session_->OptimizerStep(ls.group_id, step, static_cast<float>(stats.lr),
                                            static_cast<float>(stats.clip / loss_scale), overflow));
  }
  absl::Status first;
  for (size_t i = 0; i < works.size(); ++i) {
    absl::Status s = Wait(works[i], "optimizer step");
    if (s.ok() && !works[i]->step_outcome().applied) {
      s = absl::InternalError(absl::StrCat("optimizer step ", step, " of layer ",
                                           model_.layers()[i]->name(), " was not applied"));
    }
    if (first.ok()) first = s;
  }
  stats.optimizer_s += Since(t0);
  return first;
}

// Offload none: torch's fused AdamW (Adam) kernel over every local shard.
void Engine::LocalStep(double lr, double grad_scale) {
  std::vector<at::Tensor> p, g, m, v, t;
  for (LayerState& ls : layers_) {
    p.push_back(ls.master);
    g.push_back(grad_scale == 1.0 ? ls.grad : ls.grad * grad_scale);
    m.push_back(ls.exp_avg);
    v.push_back(ls.exp_avg_sq);
    ls.state_step.add_(1);  // torch.optim increments the step before the kernel.
    t.push_back(ls.state_step);
  }
  const OptimizerConfig& o = options_.config.optimizer;
  if (o.type == OptimizerType::kAdamW || o.adam_w_mode) {
    at::_fused_adamw_(p, g, m, v, {}, t, lr, o.beta1, o.beta2, o.weight_decay, o.eps,
                      /*amsgrad=*/false, /*maximize=*/false);
  } else {
    at::_fused_adam_(p, g, m, v, {}, t, lr, o.beta1, o.beta2, o.weight_decay, o.eps,
                     /*amsgrad=*/false, /*maximize=*/false);
  }
  for (LayerState& ls : layers_) {
    if (dtype_ != at::kFloat) ls.param = ls.master.to(dtype_);
  }
}

absl::StatusOr<StepStats> Engine::TrainStep(const std::vector<MicroBatch>& micro_batches) {
  const int64_t gas = options_.config.gradient_accumulation_steps;
  if (static_cast<int64_t>(micro_batches.size()) != gas) {
    return absl::InvalidArgumentError(absl::StrCat("TrainStep got ", micro_batches.size(),
                                                   " micro-batches, gradient_accumulation_steps=",
                                                   gas));
  }
  for (const MicroBatch& mb : micro_batches) {
    if (!mb.tokens.defined() || mb.tokens.dim() != 2 || mb.tokens.scalar_type() != at::kLong ||
        !mb.targets.defined() || !mb.targets.sizes().equals(mb.tokens.sizes()) ||
        mb.tokens.size(1) > options_.shape.seq_len) {
      return absl::InvalidArgumentError(absl::StrCat(
          "micro-batch tokens and targets must be int64 [B, T] with T <= seq_len ",
          options_.shape.seq_len));
    }
  }
  StepStats stats;
  double loss_sum = 0, sum_squares = 0;
  for (int64_t k = 0; k < gas; ++k) {
    // The sums of squares that count are the last micro-step's (spilld's
    // accumulated gradient).
    const MicroBatch& mb = micro_batches[k];
    SPILL_ASSIGN_OR_RETURN(double loss,
                           MicroStep(mb, static_cast<uint32_t>(k), stats, sum_squares));
    loss_sum += loss;
    stats.tokens += mb.tokens.numel() * collectives_->world_size();
  }
  SPILL_RETURN_IF_ERROR(Optimize(sum_squares, stats));
  at::Tensor loss = at::full({1}, loss_sum / static_cast<double>(gas), at::kDouble);
  if (options_.device.is_cuda()) loss = loss.to(options_.device);
  SPILL_RETURN_IF_ERROR(Wait(collectives_->AllReduce(loss, ReduceOp::kSum), "all-reduce loss"));
  stats.loss = loss.item<double>() / collectives_->world_size();
  stats.step = ++step_;
  return stats;
}

}  // namespace spill::worker
