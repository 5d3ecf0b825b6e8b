// Engine construction, the step's outer loop and the optimizer step.
// Gathers live in engine_fetch.cc, forward/backward and the gradient path in
// engine_backward.cc.
#include "worker/engine.h"

#include <ATen/ATen.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/checkpoint.h"
#include "worker/engine_internal.h"

namespace spill::worker {
namespace {

using client::DType;
using client::ObjectInfo;
using client::ObjectKind;

absl::Status CheckModes(const DeepSpeedConfig& c) {
  const OffloadDevice opt = c.zero.offload_optimizer.device, param = c.zero.offload_param.device;
  if (param != OffloadDevice::kNone && opt == OffloadDevice::kNone) {
    return absl::UnimplementedError(absl::StrCat(
        "zero_optimization.offload_param.device=", param == OffloadDevice::kNvme ? "nvme" : "cpu",
        " with offload_optimizer.device=none: the parameter shards would live in spilld while "
        "the optimizer runs on the GPU; offload the optimizer too (offload_optimizer.device=cpu "
        "or nvme) or keep parameters on the GPU"));
  }
  if (c.fp16.enabled && c.bf16_enabled) {
    return absl::InvalidArgumentError("fp16.enabled and bf16.enabled are both true");
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

at::ScalarType ComputeDType(const DeepSpeedConfig& c) {
  if (c.fp16.enabled) return at::kHalf;
  return c.bf16_enabled ? at::kBFloat16 : at::kFloat;
}

DType ToClientDType(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: return DType::kFloat32;
  }
}

template <typename W>
absl::Status WaitFor(const W& work, std::chrono::milliseconds timeout, const char* what) {
  absl::Status s = work->Wait(timeout);
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
  return absl::OkStatus();
}

}  // namespace

absl::Status PrefixStatus(const absl::Status& s, const std::string& what) {
  return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
}

Engine::Engine(const EngineOptions& options, Collectives* collectives, GptModel model,
               LrSchedule schedule, LossScaler scaler)
    : options_(options),
      collectives_(collectives),
      model_(std::move(model)),
      schedule_(std::move(schedule)),
      scaler_(scaler),
      dtype_(ComputeDType(options.config)),
      local_(options.config.zero.offload_optimizer.device == OffloadDevice::kNone),
      param_on_device_(!local_ &&
                       options.config.zero.offload_param.device == OffloadDevice::kNone),
      param_nvme_(options.config.zero.offload_param.device == OffloadDevice::kNvme) {}

Engine::~Engine() {
  // Copies in flight read or write memory this object owns or pinned.
  if (options_.device.is_cuda()) {
    if (copy_stream_) copy_stream_->synchronize();
    if (d2h_stream_) d2h_stream_->synchronize();
    SyncCompute();
  }
  grads_.clear();
  releases_.clear();
  StepStats unused;
  if (session_ != nullptr) FinishSteps(unused).IgnoreError();
  if (session_ != nullptr) session_->Close().IgnoreError();
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options,
                                                       Collectives* collectives) {
  if (collectives == nullptr) return absl::InvalidArgumentError("Engine needs collectives");
  if (options.acquire_ahead < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("acquire_ahead must be >= 0, got ", options.acquire_ahead));
  }
  if (options.max_steps_in_flight < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_steps_in_flight must be >= 1, got ",
                                                   options.max_steps_in_flight));
  }
  SPILL_RETURN_IF_ERROR(CheckModes(options.config));
  const ActivationCheckpointingConfig& ac = options.config.activation_checkpointing;
  if (collectives->rank() == 0 && ac.cpu_checkpointing && !options.gradient_checkpointing) {
    std::cerr << "spill-train: activation_checkpointing.cpu_checkpointing has no effect without "
                 "--gradient_checkpointing (no activation is checkpointed)\n";
  }
  if (collectives->rank() == 0 && ac.partition_activations) {
    std::cerr << "spill-train: activation_checkpointing.partition_activations: no model "
                 "parallelism here, so each checkpoint stays whole on its rank (DeepSpeed "
                 "splits them across the model-parallel group)\n";
  }
  SPILL_ASSIGN_OR_RETURN(GptModel model, GptModel::Create(options.shape));
  SPILL_ASSIGN_OR_RETURN(LrSchedule schedule,
                         LrSchedule::Create(options.config.scheduler, options.config.optimizer.lr));
  Fp16Config fp16 = options.config.fp16;
  if (!fp16.enabled) fp16.loss_scale = 1;  // A static scale of 1: no scaling.
  SPILL_ASSIGN_OR_RETURN(LossScaler scaler, LossScaler::Create(fp16));
  std::unique_ptr<Engine> e(new Engine(options, collectives, std::move(model), std::move(schedule),
                                       scaler));
  SPILL_RETURN_IF_ERROR(e->Build());
  return e;
}

absl::Status Engine::Wait(const std::shared_ptr<Work>& work, const char* what) {
  return WaitFor(work, options_.timeout, what);
}

absl::Status Engine::Wait(const std::shared_ptr<client::Work>& work, const char* what) {
  return WaitFor(work, options_.timeout, what);
}

void Engine::SyncCompute() {
  if (!options_.device.is_cuda()) return;
  TraceScope trace("spill::sync_compute");
  c10::impl::VirtualGuardImpl impl(options_.device.type());
  impl.getStream(options_.device).synchronize();
}

absl::Status Engine::SyncComputeHandingOffGrads(StepStats& stats) {
  if (!options_.device.is_cuda() || local_) {
    SyncCompute();
    return absl::OkStatus();
  }
  TraceScope trace("spill::sync_compute");
  c10::impl::VirtualGuardImpl impl(options_.device.type());
  const c10::Stream compute = impl.getStream(options_.device);
  while (!compute.query()) {
    SPILL_RETURN_IF_ERROR(PollGrads(/*wait_all=*/false, stats));
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  return absl::OkStatus();
}

absl::Status Engine::Build() {
  if (options_.device.is_cuda()) {
    c10::impl::VirtualGuardImpl impl(options_.device.type());
    // Storage allocations and stream lookups use the current device.
    impl.setDevice(options_.device);
    copy_stream_ = impl.getStreamFromGlobalPool(options_.device, /*isHighPriority=*/false);
    d2h_stream_ = impl.getStreamFromGlobalPool(options_.device, /*isHighPriority=*/false);
  }
  layers_.resize(model_.layers().size());
  if (!options_.resume_dir.empty()) SPILL_RETURN_IF_ERROR(OpenResume());
  if (local_) {
    for (size_t i = 0; i < layers_.size(); ++i) SPILL_RETURN_IF_ERROR(BuildLayer(i));
    resume_.reset();
    return absl::OkStatus();
  }
  client::SessionOptions so = options_.session;
  so.rank = collectives_->rank();
  so.world_size = collectives_->world_size();
  so.register_with_cuda = options_.device.is_cuda();
  if (param_nvme_) {
    SPILL_ASSIGN_OR_RETURN(so.param_budget, ParamBudget());
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
          "' (a job id is used once; resume from a checkpoint under a new job id)"));
    }
  }
  for (size_t i = 0; i < layers_.size(); ++i) SPILL_RETURN_IF_ERROR(BuildLayer(i));
  resume_.reset();
  return absl::OkStatus();
}

// offload_param's budget for spilld, which keeps one per job and node:
// DeepSpeed's per-rank counts times the ranks sharing the node's spilld, in
// bytes. DeepSpeed's pinned memory for parameters is its swap buffers
// (buffer_count x buffer_size) plus max_in_cpu elements kept in CPU memory;
// spilld's max_in_cpu bounds everything resident, so it gets the sum.
// InvalidArgument naming buffer_size when a layer's shard is larger
// (DeepSpeed requires buffer_size >= the largest parameter).
absl::StatusOr<client::OffloadBudget> Engine::ParamBudget() const {
  const OffloadParamConfig& c = options_.config.zero.offload_param;
  const int world = collectives_->world_size();
  const int64_t ranks = options_.ranks_per_node > 0 ? options_.ranks_per_node : world;
  const int64_t elem = static_cast<int64_t>(c10::elementSize(dtype_));
  for (const auto& layer : model_.layers()) {
    const int64_t shard = (layer->numel() + world - 1) / world;
    if (shard > c.buffer_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "zero_optimization.offload_param.buffer_size=", c.buffer_size, " is smaller than the ",
          shard, "-element parameter shard of layer ", layer->name(),
          " (each shard must fit one buffer)"));
    }
  }
  client::OffloadBudget b;
  b.buffer_count = static_cast<uint32_t>(c.buffer_count * ranks);
  b.buffer_size = static_cast<uint64_t>(c.buffer_size * elem);
  b.max_in_cpu =
      static_cast<uint64_t>((c.max_in_cpu + c.buffer_count * c.buffer_size) * elem * ranks);
  return b;
}

absl::Status Engine::BuildLayer(size_t i) {
  const Layer& layer = *model_.layers()[i];
  LayerState& ls = layers_[i];
  const int world = collectives_->world_size(), rank = collectives_->rank();
  const ZeroConfig& zero = options_.config.zero;
  ls.numel = layer.numel();
  ls.shard = (ls.numel + world - 1) / world;
  ls.persistent = ls.numel < zero.stage3_param_persistence_threshold;
  ls.full = at::empty({ls.shard * world}, at::TensorOptions().dtype(dtype_).device(options_.device));
  ReleaseStorage(ls.full);
  ls.leaves = ParamLeaves(layer, ls.full);
  SPILL_ASSIGN_OR_RETURN(at::Tensor mine32, InitialMaster(i));
  if (local_) {
    at::Tensor f32 = mine32.to(options_.device, at::kFloat, false, /*copy=*/true);
    ls.master = f32;
    ls.exp_avg = at::zeros_like(f32);
    ls.exp_avg_sq = at::zeros_like(f32);
    ls.state_step = at::full({1}, static_cast<double>(applied_steps_), f32.options());
    ls.param = dtype_ == at::kFloat ? f32 : f32.to(dtype_);
    return RestoreStates(i);
  }
  at::Tensor mine = mine32.to(dtype_);
  const std::string base = absl::StrCat("rank", rank, "/", layer.name());
  const DType dt = ToClientDType(dtype_);
  client::Session& s = *session_;
  SPILL_ASSIGN_OR_RETURN(ls.param_object,
                         s.Register(base + "/param", ObjectKind::kParamShard, dt, ls.shard,
                                    param_nvme_ ? client::ObjectHome::kNvme
                                                : client::ObjectHome::kPinned));
  SPILL_ASSIGN_OR_RETURN(ls.grad_object, s.Register(base + "/grad", ObjectKind::kGradShard, dt, ls.shard));
  SPILL_ASSIGN_OR_RETURN(ObjectInfo pinned,
                         AcquireParam(ls.param_object.object_id, /*for_write=*/true));
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
  spec.resume_step = static_cast<uint64_t>(step_);
  spec.resume_applied_steps = static_cast<uint64_t>(applied_steps_);
  if (zero.offload_optimizer.device == OffloadDevice::kNvme) {
    spec.states_on_nvme = true;
    spec.sub_group_size = static_cast<uint64_t>(zero.sub_group_size);
  }
  absl::StatusOr<client::GroupInfo> group = s.CreateGroup(spec);
  if (!group.ok()) return PrefixStatus(group.status(), "optimizer group " + base);
  if (group->members.size() != 1) {
    return absl::InternalError(absl::StrCat("optimizer group ", base, " has ",
                                            group->members.size(), " members, expected 1"));
  }
  ls.group_id = group->group_id;
  ls.member = group->members[0];
  if (param_on_device_) {
    ls.device_shard = mine.to(options_.device);
    ls.device_shard_step = step_;
  }
  // spilld copied the master from the 16-bit shard; DeepSpeed's master is
  // the fp32 initialisation itself (or the checkpoint's master).
  if (dtype_ == at::kFloat && resume_ == nullptr) return absl::OkStatus();
  if (spec.states_on_nvme) return RestoreNvmeStates(i, mine32);
  SPILL_RETURN_IF_ERROR(WriteObject(ls.member.master_object_id, mine32, "write fp32 master"));
  return RestoreStates(i);
}

absl::Status Engine::WriteObject(uint64_t object_id, const at::Tensor& values, const char* what) {
  client::Session& s = *session_;
  absl::StatusOr<ObjectInfo> pinned = s.Acquire(object_id, /*for_write=*/true)->Get(options_.timeout);
  if (!pinned.ok()) return PrefixStatus(pinned.status(), what);
  absl::StatusOr<absl::Span<uint8_t>> bytes = s.Bytes(*pinned);
  at::Tensor cpu = values.contiguous().to(at::kCPU);
  absl::Status st = bytes.status();
  if (st.ok() && bytes->size() != static_cast<size_t>(cpu.numel()) * cpu.element_size()) {
    st = absl::InternalError(absl::StrCat(what, ": object ", object_id, " has ", bytes->size(),
                                          " bytes, expected ", cpu.numel() * cpu.element_size()));
  }
  if (st.ok()) {
    std::memcpy(bytes->data(), cpu.data_ptr(), bytes->size());
    st = Wait(s.WriteBack(object_id, static_cast<uint64_t>(step_)), what);
  }
  absl::Status rel = Wait(s.Release(object_id), what);
  SPILL_RETURN_IF_ERROR(st);
  return rel;
}

absl::StatusOr<at::Tensor> Engine::ReadObject(uint64_t object_id, const char* what) {
  client::Session& s = *session_;
  absl::StatusOr<ObjectInfo> pinned = s.Acquire(object_id)->Get(options_.timeout);
  if (!pinned.ok()) return PrefixStatus(pinned.status(), what);
  absl::StatusOr<absl::Span<float>> data = s.Data<float>(*pinned);
  at::Tensor out;
  if (data.ok()) {
    out = at::from_blob(data->data(), {static_cast<int64_t>(data->size())}, at::kFloat).clone();
  }
  absl::Status rel = Wait(s.Release(object_id), what);
  if (!data.ok()) return PrefixStatus(data.status(), what);
  SPILL_RETURN_IF_ERROR(rel);
  return out;
}

void Engine::QueueStep(size_t i) {
  if (step_queued_.size() != layers_.size()) step_queued_.assign(layers_.size(), false);
  if (step_speculative_.size() != layers_.size()) step_speculative_.assign(layers_.size(), false);
  if (step_quick_commit_.size() != layers_.size()) step_quick_commit_.assign(layers_.size(), false);
  if (step_works_.size() != layers_.size()) step_works_.resize(layers_.size());
  step_queued_[i] = true;
}

void Engine::SendStep(size_t i) {
  step_queued_[i] = false;
  step_quick_commit_[i] = false;
  if (steps_speculate_) {
    step_speculative_[i] = true;
    step_works_[i] = session_->SpeculativeOptimizerStep(layers_[i].group_id, steps_step_,
                                                        steps_lr_, 1.0f);
    return;
  }
  // Queued until the coefficient was known: no speculation needed.
  step_speculative_[i] = false;
  step_works_[i] = session_->OptimizerStep(layers_[i].group_id, steps_step_, steps_lr_,
                                           steps_grad_scale_, steps_overflow_);
}

void Engine::SendCommit(size_t i) {
  step_speculative_[i] = false;
  step_quick_commit_[i] = steps_grad_scale_ == 1.0f;
  step_works_[i] =
      session_->CommitOptimizerStep(layers_[i].group_id, steps_step_, steps_grad_scale_);
}

bool Engine::Speculate() const {
  const DeepSpeedConfig& c = options_.config;
  // spilld rescales AdamW, and Adam without weight decay.
  const client::OptimizerParams p = ToClientParams(c.optimizer, 0);
  const bool rescalable = p.type == client::OptimizerType::kAdamW || p.weight_decay == 0;
  if (local_ || c.gradient_clipping <= 0 || c.fp16.enabled || !rescalable || states_on_nvme() ||
      options_.speculative_steps == EngineOptions::Speculation::kNever) {
    return false;
  }
  return options_.speculative_steps == EngineOptions::Speculation::kAlways ||
         (last_clip_.has_value() && *last_clip_ >= 1.0);
}

void Engine::PumpSteps() {
  // NVMe parameters: a step spilld refused for want of an offload_param
  // buffer changed nothing; it goes out again as soon as room allows rather
  // than when its layer's next gather needs it.
  for (size_t i = 0; param_nvme_ && i < step_works_.size(); ++i) {
    std::shared_ptr<client::Work>& w = step_works_[i];
    if (w != nullptr && w->IsCompleted() && absl::IsResourceExhausted(w->status())) {
      w = nullptr;
      step_queued_[i] = true;
      step_speculative_[i] = false;  // It did not run; it goes out again as it is due then.
      ++step_refusals_;
    }
  }
  // Commits that keep their step take no place in the window.
  int running = 0;
  for (size_t i = 0; i < step_works_.size(); ++i) {
    const std::shared_ptr<client::Work>& w = step_works_[i];
    running += w != nullptr && !w->IsCompleted() && !step_quick_commit_[i] ? 1 : 0;
  }
  // Lowest layer first, commits and steps alike: the next forward needs
  // layer 0 first. A speculative step's commit goes once it has completed
  // (a failed one is left for FinishStep to report). A commit that keeps
  // the step (the guess of 1 was right) costs spilld nothing and is
  // answered without waiting for the optimizer: every one goes at once,
  // outside the window; one that rescales is a pass and takes a place in it.
  const bool as_run = steps_grad_scale_ == 1.0f;
  for (size_t i = 0; i < step_queued_.size(); ++i) {
    const bool room = running < options_.max_steps_in_flight;
    if (CommitDue(i)) {
      const std::shared_ptr<client::Work>& w = step_works_[i];
      if (w != nullptr && (!w->IsCompleted() || !w->status().ok())) continue;
      if (!as_run && !room) continue;
      SendCommit(i);
      running += as_run ? 0 : 1;
      continue;
    }
    if (!step_queued_[i] || !room) continue;
    SendStep(i);
    ++running;
  }
}

absl::Status Engine::FinishStep(size_t i, StepStats& stats) {
  if (i < step_queued_.size() && step_queued_[i]) SendStep(i);
  PumpSteps();
  if (i < step_queued_.size() && step_queued_[i]) SendStep(i);  // PumpSteps re-queued it
  if (i >= step_works_.size()) return absl::OkStatus();
  // A speculative step already answered whose commit had no room to go.
  if (step_works_[i] == nullptr && CommitDue(i)) SendCommit(i);
  if (step_works_[i] == nullptr) return absl::OkStatus();
  std::shared_ptr<client::Work> work = std::move(step_works_[i]);
  TraceScope trace("spill::wait_step", i);
  EngineClock::time_point t0 = EngineClock::now();
  const EngineClock::time_point deadline = t0 + options_.timeout;
  absl::Status s = Wait(work, "optimizer step");
  // NVMe parameters: every offload_param buffer may be taken by this job's
  // gathers, prefetches and other steps; spilld then changed nothing, and
  // the same step is sent again once buffers free up.
  while (param_nvme_ && absl::IsResourceExhausted(s) && EngineClock::now() < deadline) {
    (void)PollReleases(/*wait_all=*/true);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ++step_refusals_;
    SendStep(i);
    work = std::move(step_works_[i]);
    s = Wait(work, "optimizer step");
  }
  // The layer's speculative step ran; its commit follows once the clip
  // coefficient is known (until then the layer is not used again: the next
  // forward comes after this step's Optimize).
  if (s.ok() && CommitDue(i)) {
    SendCommit(i);
    work = std::move(step_works_[i]);
    s = Wait(work, "optimizer step commit");
  }
  if (s.ok() && work->step_outcome().rescaled) ++steps_rescaled_;
  stats.optimizer_s += SecondsSince(t0);
  if (s.ok() && options_.record_optimizer_spans) {
    optimizer_spans_.push_back({i, steps_step_, work->sent_at(), work->completed_at()});
  }
  PumpSteps();
  if (s.ok() && work->step_outcome().applied == steps_overflow_) {
    s = absl::InternalError(absl::StrCat("optimizer step ", steps_step_, " of layer ",
                                         layer_name(i), " was ",
                                         steps_overflow_ ? "applied despite the overflow"
                                                         : "not applied"));
  }
  return s;
}

absl::Status Engine::FinishSteps(StepStats& stats) {
  absl::Status first;
  for (size_t i = 0; i < step_works_.size(); ++i) {
    absl::Status s = FinishStep(i, stats);
    if (first.ok()) first = s;
  }
  return first;
}

absl::Status Engine::WaitForOptimizer() {
  StepStats unused;
  return FinishSteps(unused);
}

absl::StatusOr<std::vector<at::Tensor>> Engine::GatherParameters() {
  StepStats unused;
  SPILL_RETURN_IF_ERROR(FinishSteps(unused));
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < layers_.size(); ++i) {
    LayerState& ls = layers_[i];
    if (!ls.live) SPILL_RETURN_IF_ERROR(IssueGather(i, unused));
    // The shard's pin goes before this rank waits for the others: with NVMe
    // parameters a rank that kept every layer's pin while blocked in the
    // all-gather could take all of the job's offload_param buffers, and a
    // peer waiting for one would never join it.
    SPILL_RETURN_IF_ERROR(PollReleases(/*wait_all=*/true));
    SPILL_RETURN_IF_ERROR(Wait(ls.gather, "all-gather parameters"));
    out.push_back(ls.full.detach().narrow(0, 0, ls.numel).to(at::kCPU, at::kFloat).clone());
    if (!ls.persistent) FreeGathered(i);
  }
  SPILL_RETURN_IF_ERROR(PollReleases(/*wait_all=*/true));
  return out;
}

bool Engine::OverlapStep() const {
  // A layer may step while backward runs when its step needs nothing from
  // the other layers (no clipping by the global norm, no overflow check),
  // or speculatively.
  return !local_ && !options_.config.fp16.enabled &&
         (options_.config.gradient_clipping <= 0 || speculate_);
}

absl::Status Engine::Optimize(StepStats& stats) {
  TraceScope trace("spill::optimize");
  EngineClock::time_point t0 = EngineClock::now();
  at::Tensor total;
  if (local_) {
    std::vector<at::Tensor> grads;
    for (const LayerState& ls : layers_) grads.push_back(ls.grad);
    total = at::stack(at::_foreach_norm(grads, 2)).to(at::kDouble).square().sum().reshape({1});
  } else {
    total = at::full({1}, sum_squares_, at::TensorOptions().dtype(at::kDouble));
    if (options_.device.is_cuda()) total = total.to(options_.device);
  }
  SPILL_RETURN_IF_ERROR(Wait(collectives_->AllReduce(total, ReduceOp::kSum), "all-reduce norm"));
  const double sq = total.item<double>();
  stats.reduce_s += SecondsSince(t0);
  const double scale = scaler_.scale();
  // Any rank's inf/nan makes the sum non-finite on every rank.
  const bool overflow = options_.config.fp16.enabled && !std::isfinite(sq);
  stats.grad_norm = std::sqrt(sq) / scale;
  const double max_norm = options_.config.gradient_clipping;
  stats.clip = max_norm > 0 && !overflow ? std::min(1.0, max_norm / (stats.grad_norm + 1e-6)) : 1.0;
  stats.skipped = overflow;
  if (!overflow) last_clip_ = stats.clip;
  const uint64_t step = static_cast<uint64_t>(step_ + 1);
  t0 = EngineClock::now();
  if (local_) {
    if (!overflow) LocalStep(stats.lr, stats.clip / scale);
  } else {
    // Steps of an earlier step still in flight (none normally: every layer's
    // gather waited for its own) finish first.
    if (!OverlapStep()) SPILL_RETURN_IF_ERROR(FinishSteps(stats));
    // Layers whose step was not already queued while backward ran. The
    // steps run in spilld while the next step's forward starts: a layer's
    // next gather waits for its own step (FinishStep).
    for (const auto& w : step_works_) {
      stats.steps_sent_in_backward += w != nullptr ? 1 : 0;
      stats.steps_done_in_backward += w != nullptr && w->IsCompleted() ? 1 : 0;
    }
    stats.step_refusals += step_refusals_;
    step_refusals_ = 0;
    stats.steps_rescaled += steps_rescaled_;
    steps_rescaled_ = 0;
    stats.speculative = speculate_;
    // Speculative steps sent so far wait for their commits (PumpSteps and
    // FinishStep send them); layers still queued go out as final steps.
    steps_speculate_ = false;
    steps_step_ = step;
    steps_overflow_ = overflow;
    steps_lr_ = static_cast<float>(stats.lr);
    steps_grad_scale_ = static_cast<float>(stats.clip / scale);
    for (size_t i = 0; i < layers_.size(); ++i) {
      const bool sent = i < step_works_.size() && step_works_[i] != nullptr;
      const bool queued = i < step_queued_.size() && step_queued_[i];
      if (!sent && !queued) QueueStep(i);
    }
    PumpSteps();
  }
  if (!overflow) ++applied_steps_;
  if (options_.config.fp16.enabled) scaler_.Update(overflow);
  // Persistent layers stayed gathered through the step; their values changed.
  for (size_t i = 0; i < layers_.size(); ++i) FreeGathered(i);
  stats.optimizer_s += SecondsSince(t0);
  return absl::OkStatus();
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
    if (dtype_ != at::kFloat) ls.param.copy_(ls.master);
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
  // Left by a micro-step that failed: its early pins may predate a step.
  if (!local_) DropEarlyPins();
  speculate_ = Speculate();
  StepStats stats;
  stats.lr = schedule_.LrAt(step_);
  stats.loss_scale = scaler_.scale();
  sum_squares_ = 0;
  at::Tensor loss_sum = at::zeros({1}, at::TensorOptions().dtype(at::kDouble).device(options_.device));
  for (int64_t k = 0; k < gas; ++k) {
    const MicroBatch& mb = micro_batches[k];
    SPILL_ASSIGN_OR_RETURN(at::Tensor loss, MicroStep(mb, static_cast<uint32_t>(k), stats));
    loss_sum.add_(loss.to(at::kDouble));
    stats.tokens += mb.tokens.numel() * collectives_->world_size();
  }
  SPILL_RETURN_IF_ERROR(Optimize(stats));
  SPILL_RETURN_IF_ERROR(Wait(collectives_->AllReduce(loss_sum, ReduceOp::kSum), "all-reduce loss"));
  stats.loss = loss_sum.item<double>() / static_cast<double>(gas * collectives_->world_size());
  stats.step = ++step_;
  return stats;
}

}  // namespace spill::worker
