// Activation checkpoints in host memory (activation_checkpointing.
// cpu_checkpointing with --gradient_checkpointing): each layer's input,
// the only activation checkpointing keeps from forward, is copied to pinned
// host memory on the D2H stream and its GPU memory released; backward
// brings it back on the copy stream one layer ahead of the recomputation.
#include <ATen/ATen.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include "worker/engine.h"
#include "worker/engine_internal.h"

namespace spill::worker {

bool Engine::CpuCheckpointing() const {
  return options_.gradient_checkpointing &&
         options_.config.activation_checkpointing.cpu_checkpointing;
}

void Engine::OffloadActivation(size_t i, const at::Tensor& x, StepStats& stats) {
  if (host_acts_.size() != layers_.size()) host_acts_.resize(layers_.size());
  HostActivation& a = host_acts_[i];
  a = HostActivation{};
  const auto bytes = static_cast<int64_t>(x.nbytes());
  stats.activation_host_bytes += bytes;
  if (!options_.device.is_cuda()) {
    a.host = x.clone();  // Already host memory: a copy of its own all the same.
    return;
  }
  c10::impl::VirtualGuardImpl impl(options_.device.type());
  const c10::Stream compute = impl.getStream(options_.device);
  c10::Event produced(options_.device.type());
  produced.record(compute);
  a.host = at::empty(x.sizes(), x.options().device(at::kCPU).pinned_memory(true));
  {
    c10::StreamGuard guard(*d2h_stream_);
    produced.block(*d2h_stream_);
    a.host.copy_(x, /*non_blocking=*/true);
    a.copied.emplace(options_.device.type());
    a.copied->record(*d2h_stream_);
  }
  // The D2H stream reads x after the caller drops it.
  impl.recordDataPtrOnStream(x.storage().data_ptr(), *d2h_stream_);
  stats.d2h_bytes += bytes;
}

void Engine::LoadActivation(size_t i, StepStats& stats) {
  if (i >= host_acts_.size()) return;
  HostActivation& a = host_acts_[i];
  if (a.device.defined() || !a.host.defined()) return;
  if (!options_.device.is_cuda()) {
    a.device = a.host;
    return;
  }
  c10::impl::VirtualGuardImpl impl(options_.device.type());
  // The block the copy stream allocates may have been freed by compute work
  // still queued: the copy waits for the compute stream's current point.
  c10::Event now(options_.device.type());
  now.record(impl.getStream(options_.device));
  c10::StreamGuard guard(*copy_stream_);
  now.block(*copy_stream_);
  if (a.copied) a.copied->block(*copy_stream_);
  a.device = at::empty(a.host.sizes(), a.host.options().device(options_.device).pinned_memory(false));
  a.device.copy_(a.host, /*non_blocking=*/true);
  a.loaded.emplace(options_.device.type());
  a.loaded->record(*copy_stream_);
  stats.h2d_bytes += static_cast<int64_t>(a.host.nbytes());
}

at::Tensor Engine::TakeActivation(size_t i, StepStats& stats) {
  LoadActivation(i, stats);
  HostActivation& a = host_acts_[i];
  at::Tensor x = std::move(a.device);
  if (options_.device.is_cuda()) {
    c10::impl::VirtualGuardImpl impl(options_.device.type());
    const c10::Stream compute = impl.getStream(options_.device);
    a.loaded->block(compute);
    // Allocated on the copy stream, used and freed on the compute stream.
    impl.recordDataPtrOnStream(x.storage().data_ptr(), compute);
  }
  a = HostActivation{};  // The pinned block returns to its pool once copied.
  return x;
}

}  // namespace spill::worker
