// One micro-step: forward layer by layer over gathered parameters, then
// backward layer by layer in reverse (re-gathering what forward freed,
// recomputing the layer with activation checkpointing), each layer's
// gradient reduce-scattered as soon as its last use is done and handed to
// spilld (D2H on its own stream, GradReady, and the layer's optimizer step
// when it may overlap the rest of backward).
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/core/StreamGuard.h>

#include <optional>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine.h"
#include "worker/engine_internal.h"

namespace spill::worker {
namespace {

std::optional<at::ScalarType> ToScalarType(CommDType d) {
  switch (d) {
    case CommDType::kFp32: return at::kFloat;
    case CommDType::kFp16: return at::kHalf;
    case CommDType::kBf16: return at::kBFloat16;
    case CommDType::kDefault: break;
  }
  return std::nullopt;
}

// Sum of squares of a gradient shard, each square exact (bf16/fp16 in
// fp32, fp32 in double) and summed in double, as spilld's own pass does.
at::Tensor ShardSumSquares(const at::Tensor& shard) {
  const at::Tensor x = shard.to(shard.scalar_type() == at::kFloat ? at::kDouble : at::kFloat);
  return x.square().sum(at::kDouble);
}

// A layer's flat gradient of full's numel() elements: each leaf's gradient
// in params() order (zeros for a leaf that got none) and zeros for the
// padding. The leaves' gradients are reset for the next micro-step.
at::Tensor TakeLeafGrads(const std::vector<at::Tensor>& leaves, const at::Tensor& full) {
  std::vector<at::Tensor> parts;
  parts.reserve(leaves.size() + 1);
  int64_t n = 0;
  for (const at::Tensor& leaf : leaves) {
    const at::Tensor& g = leaf.grad();
    parts.push_back(g.defined() ? g.reshape({-1}) : at::zeros({leaf.numel()}, full.options()));
    n += leaf.numel();
    leaf.mutable_grad() = at::Tensor();
  }
  if (n < full.numel()) parts.push_back(at::zeros({full.numel() - n}, full.options()));
  return at::cat(parts);
}

}  // namespace

bool Engine::GradSumOnDevice() const {
  return options_.grad_sum_on_device && !local_ &&
         options_.config.gradient_accumulation_steps == 1;
}

// Gathers layer i (and, for the tied head, the embedding), runs it on x and
// returns its output; for the head, the micro-step's scaled loss, with the
// unscaled loss in *loss.
absl::StatusOr<at::Tensor> Engine::RunLayer(size_t i, const at::Tensor& x,
                                            const at::Tensor& targets, StepStats& stats) {
  const size_t n = layers_.size();
  const bool head = i + 1 == n;
  SPILL_RETURN_IF_ERROR(Require(i, stats));
  if (head) SPILL_RETURN_IF_ERROR(Require(0, stats));
  SPILL_RETURN_IF_ERROR(Ready(i));
  if (head) SPILL_RETURN_IF_ERROR(Ready(0));
  const Layer& layer = *model_.layers()[i];
  const at::Tensor tied = head ? layers_[0].leaves[GptModel::kTiedParam] : at::Tensor();
  at::Tensor out = layer.Forward(x, layers_[i].leaves, tied);
  if (head) out = GptModel::Loss(out, targets);
  return out;
}

absl::StatusOr<at::Tensor> Engine::MicroStep(const MicroBatch& mb, uint32_t micro,
                                             StepStats& stats) {
  const size_t n = layers_.size();
  const bool ckpt = options_.gradient_checkpointing;
  // cpu_checkpointing: the inputs of layers 1 .. n-2 wait in host memory
  // (the embedding's are the tokens; the head's is needed first).
  const bool to_host = CpuCheckpointing();
  auto on_host = [&](size_t i) { return to_host && i > 0 && i + 1 < n; };
  const double root_scale =
      scaler_.scale() / static_cast<double>(options_.config.gradient_accumulation_steps);
  at::Tensor tokens = mb.tokens.to(options_.device), targets = mb.targets.to(options_.device);
  bucket_.clear();  // Left over only by a micro-step that failed, as are
  for (LayerState& ls : layers_) {  // gradients of layers never flushed.
    for (const at::Tensor& leaf : ls.leaves) leaf.mutable_grad() = at::Tensor();
  }
  host_acts_.clear();
  bucket_elems_ = 0;
  std::vector<at::Tensor> inputs(n), outputs(n);
  at::Tensor loss;
  EngineClock::time_point t0 = EngineClock::now();
  {
    std::optional<at::NoGradGuard> no_grad;
    if (ckpt) no_grad.emplace();
    at::Tensor x = tokens;
    for (size_t i = 0; i < n; ++i) {
      // Each layer gets a leaf input, so backward runs layer by layer.
      inputs[i] = i == 0 ? tokens : ckpt ? x.detach() : x.detach().requires_grad_(true);
      TraceScope trace("spill::forward", i);
      SPILL_ASSIGN_OR_RETURN(at::Tensor out, RunLayer(i, inputs[i], targets, stats));
      if (on_host(i)) {
        OffloadActivation(i, inputs[i], stats);
        inputs[i] = at::Tensor();
      }
      Done(i);
      if (i + 1 == n) {
        Done(0);
        loss = out.detach();
        out = out * root_scale;
      }
      if (!ckpt) outputs[i] = out;
      x = out;
    }
  }
  SyncCompute();
  stats.forward_s += SecondsSince(t0);
  t0 = EngineClock::now();
  at::Tensor grad;
  for (size_t i = n; i-- > 0;) {
    const bool head = i + 1 == n;
    TraceScope trace("spill::backward", i);
    at::Tensor out;
    if (ckpt) {
      if (on_host(i)) inputs[i] = TakeActivation(i, stats);
      if (i > 1 && on_host(i - 1)) LoadActivation(i - 1, stats);  // Overlaps this layer.
      if (i > 0) inputs[i] = inputs[i].detach().requires_grad_(true);
      SPILL_ASSIGN_OR_RETURN(out, RunLayer(i, inputs[i], targets, stats));
      if (head) out = out * root_scale;
    } else {
      SPILL_RETURN_IF_ERROR(Require(i, stats));
      if (head) SPILL_RETURN_IF_ERROR(Require(0, stats));
      SPILL_RETURN_IF_ERROR(Ready(i));
      if (head) SPILL_RETURN_IF_ERROR(Ready(0));
      out = std::move(outputs[i]);
    }
    if (!local_) {
      layers_[i].grad_pin = session_->Acquire(layers_[i].grad_object.object_id, /*for_write=*/true);
    }
    if (grad.defined()) {
      out.backward(grad);
    } else {
      out.backward();
    }
    out = at::Tensor();
    grad = i > 0 ? inputs[i].grad() : at::Tensor();
    inputs[i] = at::Tensor();
    Done(i);
    if (head) Done(0);
    // Layer i's gradient is complete (the embedding's includes the tied
    // head's, which reached it first).
    SPILL_RETURN_IF_ERROR(ReduceLayer(i, micro, stats));
    SPILL_RETURN_IF_ERROR(PollGrads(/*wait_all=*/false, stats));
  }
  EndMicroStep(stats);
  SPILL_RETURN_IF_ERROR(SyncComputeHandingOffGrads(stats));
  stats.backward_s += SecondsSince(t0);
  t0 = EngineClock::now();
  SPILL_RETURN_IF_ERROR(PollGrads(/*wait_all=*/true, stats));
  if (!local_) SPILL_RETURN_IF_ERROR(PollReleases(/*wait_all=*/true));
  stats.reduce_s += SecondsSince(t0);
  return loss.to(at::kFloat);
}

// Layer i's gradient joins the reduce bucket (DeepSpeed's rule: a layer
// that would overflow reduce_bucket_size elements flushes the bucket first,
// so an oversized layer goes alone); a full bucket, or the last layer of
// backward (the embedding), is reduce-scattered at once.
absl::Status Engine::ReduceLayer(size_t i, uint32_t micro, StepStats& stats) {
  const int64_t padded = layers_[i].shard * collectives_->world_size();
  const int64_t limit = options_.config.zero.reduce_bucket_size;
  if (!bucket_.empty() && bucket_elems_ + padded > limit) {
    SPILL_RETURN_IF_ERROR(FlushBucket(micro, stats));
  }
  bucket_.push_back(i);
  bucket_elems_ += padded;
  if (i == 0 || bucket_elems_ >= limit) return FlushBucket(micro, stats);
  return absl::OkStatus();
}

// One reduce-scatter for the bucket's layers: rank r's chunk of the input
// is every layer's r-th shard side by side, so the output is this rank's
// shards of all of them, handed on layer by layer. Without overlap_comm the
// compute stream waits for it (DeepSpeed reduces in line then).
absl::Status Engine::FlushBucket(uint32_t micro, StepStats& stats) {
  if (bucket_.empty()) return absl::OkStatus();
  const int64_t world = collectives_->world_size();
  std::vector<size_t> layers = std::move(bucket_);
  bucket_.clear();
  bucket_elems_ = 0;
  std::vector<at::Tensor> grads;
  int64_t total = 0;
  for (size_t i : layers) {
    LayerState& ls = layers_[i];
    grads.push_back(TakeLeafGrads(ls.leaves, ls.full).view({world, ls.shard}));
    total += ls.shard;
  }
  at::Tensor input = grads.size() == 1 ? grads[0].view({-1}) : at::cat(grads, 1).view({-1});
  grads.clear();
  at::Tensor out = at::empty({total}, input.options());
  std::shared_ptr<Work> rs = collectives_->ReduceScatter(
      out, input, ReduceOp::kAvg, ToScalarType(options_.config.communication_data_type));
  if (!options_.config.zero.overlap_comm) {
    SPILL_RETURN_IF_ERROR(PrefixStatus(rs->StreamWait(options_.timeout), "reduce-scatter gradients"));
  }
  int64_t offset = 0;
  for (size_t i : layers) {
    at::Tensor shard = out.narrow(0, offset, layers_[i].shard);
    offset += layers_[i].shard;
    SPILL_RETURN_IF_ERROR(HandOffShard(i, micro, shard, rs, stats));
  }
  return absl::OkStatus();
}

// Layer i's reduced shard (rs writes it): into the local accumulator, or
// D2H into spilld's gradient object on the D2H stream.
absl::Status Engine::HandOffShard(size_t i, uint32_t micro, const at::Tensor& shard,
                                  const std::shared_ptr<Work>& rs, StepStats& stats) {
  LayerState& ls = layers_[i];
  if (local_) {
    SPILL_RETURN_IF_ERROR(PrefixStatus(rs->StreamWait(options_.timeout), "reduce-scatter gradients"));
    at::Tensor g32 = shard.to(at::kFloat);
    ls.grad = micro == 0 ? g32 : ls.grad.add_(g32);
    return absl::OkStatus();
  }
  PendingGrad p;
  p.layer = i;
  p.micro = micro;
  // Pin the gradient object now; the copy needs its address.
  EngineClock::time_point t0 = EngineClock::now();
  std::shared_ptr<client::Work> pin = std::move(ls.grad_pin);
  if (pin == nullptr) pin = session_->Acquire(ls.grad_object.object_id, /*for_write=*/true);
  absl::StatusOr<client::ObjectInfo> pinned;
  {
    TraceScope trace("spill::acquire_grad", i);
    pinned = pin->Get(options_.timeout);
  }
  stats.spilld_wait_s += SecondsSince(t0);
  if (!pinned.ok()) return PrefixStatus(pinned.status(), "acquire gradient shard");
  SPILL_ASSIGN_OR_RETURN(absl::Span<uint8_t> bytes, session_->Bytes(*pinned));
  at::Tensor dst = at::from_blob(bytes.data(), {ls.shard}, at::TensorOptions().dtype(dtype_));
  if (options_.device.is_cuda()) {
    c10::StreamGuard guard(*d2h_stream_);
    SPILL_RETURN_IF_ERROR(PrefixStatus(rs->StreamWait(options_.timeout), "reduce-scatter gradients"));
    dst.copy_(shard, /*non_blocking=*/true);
    if (GradSumOnDevice()) {
      // Into pinned host memory behind the gradient on the D2H stream, so
      // PollGrads reads it without a device synchronisation (item() of a
      // device tensor would wait for everything the compute stream holds,
      // stalling the gradients' way to spilld by the backward queued so far).
      p.sum_squares = at::empty(
          {}, at::TensorOptions().dtype(at::kDouble).device(at::kCPU).pinned_memory(true));
      p.sum_squares.copy_(ShardSumSquares(shard), /*non_blocking=*/true);
    }
    p.copied.emplace(options_.device.type());
    p.copied->record(*d2h_stream_);
    p.shard = shard;  // The copy reads it on the D2H stream.
  } else {
    SPILL_RETURN_IF_ERROR(Wait(rs, "reduce-scatter gradients"));
    dst.copy_(shard);
    if (GradSumOnDevice()) p.sum_squares = ShardSumSquares(shard);
  }
  stats.d2h_bytes += static_cast<int64_t>(bytes.size());
  grads_.push_back(std::move(p));
  return absl::OkStatus();
}

// Advances every pending gradient: copied → GradReady sent; answered →
// sum of squares kept, pin released (the answer checked by PollReleases),
// and on the last micro-step (when the step may overlap backward) the
// layer's optimizer step queued and the step window topped up at once.
// With wait_all every GradReady goes out before any answer is waited for.
absl::Status Engine::PollGrads(bool wait_all, StepStats& stats) {
  const uint32_t last_micro =
      static_cast<uint32_t>(options_.config.gradient_accumulation_steps - 1);
  const uint64_t step = static_cast<uint64_t>(step_ + 1);
  for (PendingGrad& p : grads_) {
    if (p.ready != nullptr || (p.copied && !wait_all && !p.copied->query())) continue;
    if (p.copied) {
      TraceScope trace("spill::d2h_wait", p.layer);
      p.copied->synchronize();
    }
    p.shard = at::Tensor();
    const LayerState& ls = layers_[p.layer];
    p.ready = p.sum_squares.defined()
                  ? session_->GradReadySummed(ls.group_id, ls.grad_object.object_id, step,
                                              p.sum_squares.item<double>())
                  : session_->GradReady(ls.group_id, ls.grad_object.object_id, step, p.micro);
    p.sum_squares = at::Tensor();
  }
  size_t kept = 0;
  absl::Status first;
  for (size_t k = 0; k < grads_.size(); ++k) {
    PendingGrad& p = grads_[k];
    LayerState& ls = layers_[p.layer];
    if (p.ready == nullptr || (!wait_all && !p.ready->IsCompleted())) {
      if (kept != k) grads_[kept] = std::move(p);
      ++kept;
      continue;
    }
    EngineClock::time_point t0 = EngineClock::now();
    absl::Status s;
    {
      TraceScope trace("spill::grad_ready", p.layer);
      s = Wait(p.ready, "gradient ready");
    }
    stats.spilld_wait_s += SecondsSince(t0);
    release_works_.push_back(session_->Release(ls.grad_object.object_id));
    if (s.ok() && p.micro == last_micro) {
      sum_squares_ += p.ready->sum_squares();
      if (OverlapStep()) {
        s = FinishStep(p.layer, stats);
        if (steps_step_ != step) {
          // The first layer step of this step: every layer's previous step
          // (and commit) was waited for by its gather in this forward.
          for (size_t j = 0; j < step_speculative_.size(); ++j) {
            if (step_speculative_[j] && s.ok()) {
              s = absl::InternalError(absl::StrCat("layer ", layer_name(j),
                                                   ": the speculative optimizer step ",
                                                   steps_step_, " was never committed"));
            }
          }
        }
        steps_speculate_ = speculate_;
        steps_step_ = step;
        steps_overflow_ = false;
        steps_lr_ = static_cast<float>(stats.lr);
        steps_grad_scale_ = 1.0f;
        QueueStep(p.layer);
        PumpSteps();
      }
    }
    if (first.ok()) first = s;
  }
  grads_.resize(kept);
  PumpSteps();
  return first;
}

}  // namespace spill::worker
