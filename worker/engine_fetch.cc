// Parameter gathers: acquire the shard from spilld, copy it to the device on
// the copy stream, all-gather on the communication stream; the access order
// (trace) recorded by the first micro-step drives the prefetch of the next
// ones, bounded by stage3_prefetch_bucket_size and stage3_max_live_parameters;
// stage3_max_reuse_distance and stage3_param_persistence_threshold decide
// what stays gathered after a use.
#include <ATen/ATen.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/TensorImpl.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine.h"
#include "worker/engine_internal.h"

namespace spill::worker {

void ReleaseStorage(const at::Tensor& t) {
  c10::StorageImpl* s = t.storage().unsafeGetStorageImpl();
  s->set_data_ptr_noswap(at::DataPtr(nullptr, t.device()));
  s->set_nbytes(0);
}

void AllocateStorage(const at::Tensor& t) {
  c10::StorageImpl* s = t.storage().unsafeGetStorageImpl();
  const size_t bytes = static_cast<size_t>(t.numel()) * t.element_size();
  s->set_data_ptr_noswap(s->allocator()->allocate(bytes));
  s->set_nbytes(bytes);
}

std::vector<at::Tensor> ParamLeaves(const Layer& layer, const at::Tensor& full) {
  std::vector<at::Tensor> leaves;
  leaves.reserve(layer.params().size());
  for (const ParamSpec& p : layer.params()) {
    // What set_() would make, without its size check against the storage,
    // which holds no bytes between gathers.
    auto impl = c10::make_intrusive<c10::TensorImpl>(c10::Storage(full.storage()),
                                                     full.key_set(), full.dtype());
    impl->set_storage_offset(p.offset);
    impl->set_sizes_contiguous(p.shape);
    leaves.emplace_back(std::move(impl));
    leaves.back().requires_grad_(true);
  }
  return leaves;
}

absl::StatusOr<at::Tensor> Engine::SourceShard(size_t i, StepStats& stats) {
  LayerState& ls = layers_[i];
  if (local_) return ls.param;
  if (param_on_device_ && ls.device_shard_step == step_) return ls.device_shard;
  // The previous step's optimizer pass over this layer must be done.
  SPILL_RETURN_IF_ERROR(FinishStep(i, stats));
  client::Session& s = *session_;
  EngineClock::time_point t0 = EngineClock::now();
  absl::StatusOr<client::ObjectInfo> pinned;
  {
    TraceScope trace("spill::acquire_param", i);
    std::shared_ptr<client::Work> early = std::move(ls.param_pin);
    stats.acquired_ahead += early != nullptr ? 1 : 0;
    pinned = early != nullptr ? early->Get(options_.timeout)
                              : AcquireParam(ls.param_object.object_id, false);
  }
  stats.spilld_wait_s += SecondsSince(t0);
  if (!pinned.ok()) return PrefixStatus(pinned.status(), "acquire parameter shard");
  PendingRelease release;
  release.object_id = ls.param_object.object_id;
  absl::StatusOr<absl::Span<uint8_t>> bytes = s.Bytes(*pinned);
  if (!bytes.ok()) {
    releases_.push_back(std::move(release));
    return bytes.status();
  }
  at::Tensor view = at::from_blob(bytes->data(), {ls.shard}, at::TensorOptions().dtype(dtype_));
  at::Tensor dst;
  if (options_.device.is_cuda()) {
    c10::StreamGuard guard(*copy_stream_);
    dst = at::empty({ls.shard}, view.options().device(options_.device));
    dst.copy_(view, /*non_blocking=*/true);
    release.copied.emplace(options_.device.type());
    release.copied->record(*copy_stream_);
  } else {
    dst = view.clone();
  }
  releases_.push_back(std::move(release));
  stats.h2d_bytes += static_cast<int64_t>(bytes->size());
  if (param_on_device_) {
    ls.device_shard = dst;
    ls.device_shard_step = step_;
  }
  return dst;
}

absl::StatusOr<client::ObjectInfo> Engine::AcquireParam(uint64_t object_id, bool for_write) {
  const EngineClock::time_point deadline = EngineClock::now() + options_.timeout;
  for (;;) {
    absl::StatusOr<client::ObjectInfo> pinned =
        session_->Acquire(object_id, for_write)->Get(options_.timeout);
    if (pinned.ok() || !param_nvme_ || !absl::IsResourceExhausted(pinned.status()) ||
        EngineClock::now() >= deadline) {
      return pinned;
    }
    // Every offload_param buffer is taken (pins of copies in flight, steps,
    // read-aheads): let this rank's finished copies go and try again.
    SPILL_RETURN_IF_ERROR(PollReleases(/*wait_all=*/true));
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void Engine::PrefetchFromNvme() {
  if (!param_nvme_ || recording_) return;
  // Half of this rank's buffers read ahead; the rest serve the gathers in
  // flight and spilld's steps.
  const size_t depth = static_cast<size_t>(
      std::max<int64_t>(1, options_.config.zero.offload_param.buffer_count / 2));
  nvme_prefetch_pos_ = std::max(nvme_prefetch_pos_, pos_);
  for (; nvme_prefetch_pos_ < trace_.size() && nvme_prefetch_pos_ < pos_ + depth;
       ++nvme_prefetch_pos_) {
    const LayerState& ls = layers_[trace_[nvme_prefetch_pos_]];
    if (ls.live) continue;
    nvme_prefetches_.push_back(session_->Prefetch(ls.param_object.object_id));
  }
  // Read-aheads are hints: a full budget (ResourceExhausted) skips one;
  // any other failure is this job's problem and shows at the next gather.
  size_t kept = 0;
  for (auto& w : nvme_prefetches_) {
    if (!w->IsCompleted()) nvme_prefetches_[kept++] = std::move(w);
  }
  nvme_prefetches_.resize(kept);
}

absl::Status Engine::IssueGather(size_t i, StepStats& stats) {
  LayerState& ls = layers_[i];
  // Shards coming from spilld are copied on the copy stream and gathered
  // after it; local shards are written by the optimizer on the compute
  // stream. The gathered storage is allocated on that same stream, so the
  // caching allocator never hands out a block another stream still uses.
  std::optional<c10::StreamGuard> guard;
  if (options_.device.is_cuda() && !local_) guard.emplace(*copy_stream_);
  SPILL_ASSIGN_OR_RETURN(at::Tensor src, SourceShard(i, stats));
  AllocateStorage(ls.full);
  // Written through an alias with its own version counter: a backend that
  // counts its write (Gloo) must not invalidate what autograd saved of the
  // previous gather of the same storage.
  at::Tensor out = at::empty({0}, ls.full.options());
  out.set_(ls.full.storage(), 0, {ls.full.numel()}, {1});
  ls.gather = collectives_->AllGather(out, src);
  ls.live = true;
  live_elems_ += ls.full.numel();
  ++stats.gathers;
  return absl::OkStatus();
}

void Engine::FreeGathered(size_t i) {
  LayerState& ls = layers_[i];
  if (!ls.live) return;
  if (options_.device.is_cuda()) {
    // The compute stream read it; the allocator reuses the block only after.
    c10::impl::VirtualGuardImpl impl(options_.device.type());
    impl.recordDataPtrOnStream(ls.full.storage().data_ptr(), impl.getStream(options_.device));
  } else if (ls.gather != nullptr && !ls.gather->IsCompleted()) {
    // Gloo writes the output from its own thread.
    ls.gather->Wait(options_.timeout).IgnoreError();
  }
  ReleaseStorage(ls.full);
  ls.live = false;
  ls.gather.reset();
  live_elems_ -= ls.full.numel();
  if (ls.prefetched) {
    ls.prefetched = false;
    inflight_elems_ -= ls.full.numel();
  }
}

absl::Status Engine::Require(size_t i, StepStats& stats) {
  LayerState& ls = layers_[i];
  if (!recording_ && (pos_ >= trace_.size() || trace_[pos_] != static_cast<int>(i))) {
    // Different control flow than the recorded step: never prefetch along a
    // stale order. Keep the common prefix and record the rest anew.
    if (collectives_->rank() == 0) {
      std::cerr << "spill-train: access order changed at position " << pos_ << " (expected "
                << (pos_ < trace_.size() ? model_.layers()[trace_[pos_]]->name() : "end")
                << ", got " << model_.layers()[i]->name() << "); re-recording it" << std::endl;
    }
    ++stats.trace_changes;
    recording_ = true;
    new_trace_.assign(trace_.begin(), trace_.begin() + static_cast<long>(pos_));
  }
  if (recording_) new_trace_.push_back(static_cast<int>(i));
  ls.last_pos = static_cast<int>(pos_++);
  if (!ls.live) {
    SPILL_RETURN_IF_ERROR(IssueGather(i, stats));
  } else if (ls.prefetched) {
    ls.prefetched = false;
    inflight_elems_ -= ls.full.numel();
  }
  if (!recording_) Prefetch(pos_, stats);
  AcquireAhead(pos_);
  PrefetchFromNvme();
  return PollReleases(/*wait_all=*/false);
}

bool Engine::StepSettled(size_t i) const {
  const bool queued = i < step_queued_.size() && step_queued_[i];
  const bool running = i < step_works_.size() && step_works_[i] != nullptr &&
                       !step_works_[i]->IsCompleted();
  // A speculative step is settled by its commit.
  const bool uncommitted = i < step_speculative_.size() && step_speculative_[i];
  return !queued && !running && !uncommitted;
}

void Engine::AcquireAhead(size_t from) {
  // NVMe parameters: a pin takes one of the job's offload_param buffers, so
  // they are taken only when a gather needs them.
  if (local_ || param_nvme_ || param_on_device_ || recording_) return;
  int ahead = 0;
  for (size_t q = from; q < trace_.size() && ahead < options_.acquire_ahead; ++q) {
    const size_t i = static_cast<size_t>(trace_[q]);
    LayerState& ls = layers_[i];
    if (ls.live) continue;
    ++ahead;
    // After the layer's optimizer step only (its answer arrived), so the pin
    // sees the stepped shard.
    if (ls.param_pin != nullptr || !StepSettled(i)) continue;
    ls.param_pin = session_->Acquire(ls.param_object.object_id, /*for_write=*/false);
  }
}

void Engine::DropEarlyPins() {
  for (LayerState& ls : layers_) {
    std::shared_ptr<client::Work> pin = std::move(ls.param_pin);
    if (pin == nullptr) continue;
    // Released once granted; a failed acquire left nothing to release.
    if (!pin->Wait(options_.timeout).ok()) continue;
    release_works_.push_back(session_->Release(ls.param_object.object_id));
  }
}

// Every rank must issue its gathers in the same order (Gloo and NCCL match
// collectives by order): what is prefetched may depend only on state that is
// the same on every rank (the trace, the bounds, what is live), never on
// timing such as whether an optimizer step has been answered yet. A version
// that stopped at a layer whose step was still running mismatched the
// ranks' all-gathers and broke the equivalence tests.
void Engine::Prefetch(size_t from, StepStats& stats) {
  const ZeroConfig& zero = options_.config.zero;
  for (size_t q = from; q < trace_.size(); ++q) {
    // DeepSpeed's rule: keep issuing while the elements in flight are under
    // the bucket (so one oversized layer still goes).
    if (inflight_elems_ >= zero.stage3_prefetch_bucket_size) return;
    LayerState& ls = layers_[trace_[q]];
    if (ls.live) continue;
    if (live_elems_ + ls.full.numel() > zero.stage3_max_live_parameters) return;
    if (!IssueGather(static_cast<size_t>(trace_[q]), stats).ok()) return;  // Demand retries.
    ls.prefetched = true;
    inflight_elems_ += ls.full.numel();
    ++stats.prefetched;
  }
}

absl::Status Engine::Ready(size_t i) {
  LayerState& ls = layers_[i];
  if (ls.gather == nullptr) {
    return absl::InternalError(absl::StrCat("layer ", model_.layers()[i]->name(), " not gathered"));
  }
  return PrefixStatus(ls.gather->StreamWait(options_.timeout), "all-gather parameters");
}

void Engine::Done(size_t i) {
  LayerState& ls = layers_[i];
  if (ls.persistent) return;
  if (!recording_ && ls.last_pos >= 0 && static_cast<size_t>(ls.last_pos) < next_use_.size()) {
    const int next = next_use_[ls.last_pos];
    if (next >= 0 && trace_elems_[next] - trace_elems_[ls.last_pos + 1] <=
                         options_.config.zero.stage3_max_reuse_distance) {
      return;  // Used again soon: keep it gathered.
    }
  }
  FreeGathered(i);
}

void Engine::EndMicroStep(StepStats& stats) {
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (!layers_[i].persistent) FreeGathered(i);
  }
  DropEarlyPins();
  if (!recording_ && pos_ != trace_.size()) {
    ++stats.trace_changes;  // Fewer gathers than recorded: record again.
    recording_ = true;
    new_trace_.assign(trace_.begin(), trace_.begin() + static_cast<long>(pos_));
  }
  if (recording_) {
    trace_ = std::move(new_trace_);
    new_trace_.clear();
    next_use_.assign(trace_.size(), -1);
    trace_elems_.assign(trace_.size() + 1, 0);
    for (size_t p = trace_.size(); p-- > 0;) {
      for (size_t q = p + 1; q < trace_.size(); ++q) {
        if (trace_[q] == trace_[p]) {
          next_use_[p] = static_cast<int>(q);
          break;
        }
      }
    }
    for (size_t p = 0; p < trace_.size(); ++p) {
      trace_elems_[p + 1] = trace_elems_[p] + layers_[trace_[p]].full.numel();
    }
    recording_ = false;
    if (session_ != nullptr && !param_on_device_) {
      // spilld's eviction hint: the parameter shards in the order of use.
      std::vector<uint64_t> order;
      for (int layer : trace_) order.push_back(layers_[layer].param_object.object_id);
      release_works_.push_back(session_->SetAccessOrder(std::move(order)));
    }
  }
  pos_ = 0;
  nvme_prefetch_pos_ = 0;
}

absl::Status Engine::PollReleases(bool wait_all) {
  size_t kept = 0;
  for (size_t k = 0; k < releases_.size(); ++k) {
    PendingRelease& r = releases_[k];
    if (r.copied) {
      if (!wait_all && !r.copied->query()) {
        if (kept != k) releases_[kept] = std::move(r);
        ++kept;
        continue;
      }
      r.copied->synchronize();
    }
    release_works_.push_back(session_->Release(r.object_id));
  }
  releases_.resize(kept);
  if (!wait_all) return absl::OkStatus();
  TraceScope trace("spill::release_wait");
  absl::Status first;
  for (const auto& w : release_works_) {
    absl::Status s = Wait(w, "release parameter shard or send the access order");
    if (first.ok()) first = s;
  }
  release_works_.clear();
  return first;
}

}  // namespace spill::worker
