// Engine internals shared by engine.cc, engine_fetch.cc and
// engine_backward.cc. Not a public header.
#ifndef SPILL_WORKER_ENGINE_INTERNAL_H_
#define SPILL_WORKER_ENGINE_INTERNAL_H_

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <c10/core/Event.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "spill/client.h"
#include "worker/collectives.h"
#include "worker/engine.h"

namespace spill::worker {

using EngineClock = std::chrono::steady_clock;

inline double SecondsSince(EngineClock::time_point t0) {
  return std::chrono::duration<double>(EngineClock::now() - t0).count();
}

// A span of the engine's host thread in a profiler trace (a user-scope
// RecordFunction, as torch.profiler.record_function makes): free when no
// profiler is active, and the name is only built when one is.
class TraceScope {
 public:
  explicit TraceScope(const char* name) : rf_(at::RecordScope::USER_SCOPE) {
    if (rf_.isActive()) rf_.before(name);
  }
  // "<name> <layer>".
  TraceScope(const char* name, size_t layer) : rf_(at::RecordScope::USER_SCOPE) {
    if (rf_.isActive()) rf_.before(std::string(name) + " " + std::to_string(layer));
  }
  TraceScope(const TraceScope&) = delete;
  TraceScope& operator=(const TraceScope&) = delete;

 private:
  at::RecordFunction rf_;
};

struct Engine::LayerState {
  int64_t numel = 0;
  int64_t shard = 0;  // Elements per rank; padded = shard * world.
  bool persistent = false;  // numel < stage3_param_persistence_threshold
  client::ObjectInfo param_object;
  client::ObjectInfo grad_object;
  uint64_t group_id = 0;
  client::GroupMember member;  // spilld's master and state objects
  // Offload none: the shard and its optimizer state on the compute device.
  at::Tensor master, exp_avg, exp_avg_sq, state_step;  // fp32
  at::Tensor param;  // master in the compute dtype (the same tensor in fp32)
  at::Tensor grad;   // fp32 accumulator over micro-steps
  // offload_param none with an offloaded optimizer: the device copy of the
  // parameter shard and the step it reflects.
  at::Tensor device_shard;
  int64_t device_shard_step = -1;
  // The gathered parameters: shard * world elements whose storage is
  // allocated for a gather and released after the last use.
  at::Tensor full;
  // The layer's parameters as autograd leaves (requires_grad), one per
  // Layer::params() entry: aliases of full's storage with their own version
  // counters, so the graph's saved tensors stay valid across the re-gather
  // before backward. Each gets its own gradient; FlushBucket joins them.
  // (Views of one flat leaf would cost, per parameter, a zero-filled
  // layer-sized gradient and an add in backward.)
  std::vector<at::Tensor> leaves;
  bool live = false;        // Storage allocated and a gather issued.
  bool prefetched = false;  // Issued by Prefetch and not yet required.
  std::shared_ptr<Work> gather;
  int last_pos = -1;  // Trace position of the latest Require.
  // The gradient object's pin, asked for before the layer's backward so the
  // round trip overlaps it; taken by ReduceLayer.
  std::shared_ptr<client::Work> grad_pin;
  // The parameter shard's pin, asked for ahead of its gather (AcquireAhead)
  // so the round trip overlaps the work before it; taken by SourceShard.
  std::shared_ptr<client::Work> param_pin;
};

// A pinned shard whose H2D copy must finish before spilld may unpin it.
struct Engine::PendingRelease {
  uint64_t object_id = 0;
  std::optional<c10::Event> copied;  // CUDA; none: already copied
};

// A reduced gradient shard on its way to spilld: D2H copy → GradReady →
// release (→ OptimizerStep when it may overlap backward).
struct Engine::PendingGrad {
  size_t layer = 0;
  uint32_t micro = 0;
  at::Tensor shard;                  // device; kept until the copy finished
  std::optional<c10::Event> copied;  // CUDA D2H done
  // Its sum of squares when GradSumOnDevice(): a double scalar in host
  // memory (on CUDA pinned, computed and copied on the D2H stream before
  // `copied`, so reading it after `copied` never synchronises the device).
  at::Tensor sum_squares;
  std::shared_ptr<client::Work> ready;  // GradReady, once sent
};

// A layer's input kept in host memory between forward and its
// recomputation (cpu_checkpointing).
struct Engine::HostActivation {
  at::Tensor host;                   // pinned on CUDA
  std::optional<c10::Event> copied;  // CUDA D2H done
  at::Tensor device;                 // brought back for backward
  std::optional<c10::Event> loaded;  // CUDA H2D done
};

// Releases the storage of `t` (every view of it keeps its metadata) and
// allocates it again with the storage's own allocator (on CUDA: the current
// stream's caching-allocator pool).
void ReleaseStorage(const at::Tensor& t);
void AllocateStorage(const at::Tensor& t);
// The layer's parameters as leaves aliasing full's storage (LayerState::leaves).
std::vector<at::Tensor> ParamLeaves(const Layer& layer, const at::Tensor& full);

absl::Status PrefixStatus(const absl::Status& s, const std::string& what);

}  // namespace spill::worker

#endif  // SPILL_WORKER_ENGINE_INTERNAL_H_
