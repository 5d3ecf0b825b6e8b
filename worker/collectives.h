// Collectives for the ZeRO-3 engine: all-gather, reduce-scatter, all-reduce,
// broadcast, barrier, following PyTorch c10d's model: each call returns at
// once with a Work handle; Wait() reports the collective's outcome.
//
//   absl::StatusOr<RendezvousInfo> info = RendezvousFromEnv();
//   absl::StatusOr<std::unique_ptr<Collectives>> c = CreateGlooCollectives(*info);
//   at::Tensor full = at::empty({shard.numel() * (*c)->world_size()}, shard.options());
//   absl::Status s = (*c)->AllGather(full, shard)->Wait(std::chrono::seconds(60));
//
// Implementations: Gloo through LibTorch's c10d::ProcessGroupGloo (CPU
// tensors; collectives_gloo.cc), NCCL called directly on a CUDA stream of the
// engine's (collectives_nccl.cc), and a fake with a fault switch for tests
// (FaultyCollectives). Every rank must issue the same collectives in the same
// order with matching sizes.
//
// Tensors must stay alive and untouched until their Work completes. Calls on
// one Collectives object are made from one thread at a time; Work handles may
// be waited on from any thread.
#ifndef SPILL_WORKER_COLLECTIVES_H_
#define SPILL_WORKER_COLLECTIVES_H_

#include <ATen/core/Tensor.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/rendezvous.h"

namespace spill::worker {

enum class ReduceOp { kSum, kAvg };

// An outstanding collective.
class Work {
 public:
  virtual ~Work() = default;
  // True once the collective finished (successfully or not). Never blocks.
  virtual bool IsCompleted() = 0;
  // Blocks until the collective finished or the timeout passed. OK: output
  // tensors hold the result. DeadlineExceeded when the timeout passed (the
  // collective may still complete later); Internal / Unavailable with the
  // backend's message when it failed (a peer died, a timeout inside the
  // backend). Calling it again returns the same result. For NCCL, OK means
  // the collective completed on its stream.
  virtual absl::Status Wait(std::chrono::milliseconds timeout) = 0;
  // Orders the collective before later work of the calling thread's current
  // stream without blocking the host where the backend can (NCCL: the
  // current CUDA stream waits on the collective's event; an error already
  // known is returned). Backends without device streams block like
  // Wait(timeout).
  virtual absl::Status StreamWait(std::chrono::milliseconds timeout) { return Wait(timeout); }
};

// A Work that is already finished with `status`.
std::shared_ptr<Work> CompletedWork(absl::Status status);

class Collectives {
 public:
  virtual ~Collectives() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // "gloo", "nccl", "fake".
  virtual std::string backend() const = 0;

  // Gathers every rank's `input` (n elements, contiguous) into `output`
  // (n * world_size elements of the same dtype, contiguous): rank r's input
  // lands at [r*n, (r+1)*n). A Work failed with InvalidArgument (nothing
  // sent) for mismatched sizes, dtypes or devices.
  virtual std::shared_ptr<Work> AllGather(const at::Tensor& output, const at::Tensor& input) = 0;

  // Reduces `input` (n * world_size elements) over ranks and leaves slice r
  // ([r*n, (r+1)*n)) in rank r's `output` (n elements). With comm_dtype set
  // and different from the tensors' dtype, the values are converted to
  // comm_dtype, reduced in it and converted back (DeepSpeed's
  // communication_data_type). kAvg divides by world_size after the sum.
  // InvalidArgument Work for mismatched sizes or dtypes.
  virtual std::shared_ptr<Work> ReduceScatter(const at::Tensor& output, const at::Tensor& input,
                                              ReduceOp op,
                                              std::optional<at::ScalarType> comm_dtype) = 0;

  // Reduces `tensor` in place over all ranks.
  virtual std::shared_ptr<Work> AllReduce(const at::Tensor& tensor, ReduceOp op) = 0;

  // Copies root's `tensor` into every rank's. InvalidArgument Work for a
  // root outside [0, world_size).
  virtual std::shared_ptr<Work> Broadcast(const at::Tensor& tensor, int root) = 0;

  // Returns once every rank has called Barrier, or DeadlineExceeded /
  // the backend's error.
  virtual absl::Status Barrier(std::chrono::milliseconds timeout) = 0;
};

// Checks the arguments shared by every implementation. InvalidArgument
// naming the mismatch.
absl::Status CheckAllGatherArgs(const at::Tensor& output, const at::Tensor& input, int world);
absl::Status CheckReduceScatterArgs(const at::Tensor& output, const at::Tensor& input, int world);

// Connects to the job's c10d::TCPStore (rank 0 hosts it at
// master_addr:master_port) and builds a ProcessGroupGloo on it; rank 0
// binds to master_addr's interface too. Blocks until every rank joined or
// `timeout` passed. Unavailable with the address and c10d's message when the
// store or the group cannot be set up.
absl::StatusOr<std::unique_ptr<Collectives>> CreateGlooCollectives(
    const RendezvousInfo& info,
    std::chrono::milliseconds timeout = std::chrono::milliseconds(60'000));

// Whether this build has the NCCL implementation (CUDA toolkit with NCCL
// found at configure time).
bool NcclAvailable();

// ", gpu N: allocated X GiB (peak Y GiB)" from LibTorch's caching allocator
// for a CUDA device; empty when built without CUDA or for device < 0.
std::string DeviceMemorySummary(int device);
// The caching allocator's peak of allocated bytes on `device` since the
// process started; -1 without CUDA or for device < 0.
int64_t DevicePeakBytes(int device);

// NCCL communicator over all ranks (unique id from rank 0 through the
// TCPStore), bound to CUDA device `device` and issuing every collective on
// `stream` (a cudaStream_t of the engine, passed as void* so this header
// needs no CUDA headers; nullptr means a new non-blocking stream owned by the
// object). Tensors must be CUDA tensors on `device`. FailedPrecondition
// when built without NCCL or no CUDA device is present; Unavailable for
// rendezvous or NCCL init errors, with NCCL's message.
absl::StatusOr<std::unique_ptr<Collectives>> CreateNcclCollectives(
    const RendezvousInfo& info, int device, void* stream = nullptr,
    std::chrono::milliseconds timeout = std::chrono::milliseconds(60'000));

// Wraps another implementation for tests. While fail_next is > 0 each call
// decrements it and returns a Work failed with Unavailable ("injected
// fault"), sending nothing; otherwise the call is forwarded.
class FaultyCollectives : public Collectives {
 public:
  explicit FaultyCollectives(std::unique_ptr<Collectives> inner) : inner_(std::move(inner)) {}
  std::atomic<int> fail_next{0};

  int rank() const override { return inner_->rank(); }
  int world_size() const override { return inner_->world_size(); }
  std::string backend() const override { return "fake(" + inner_->backend() + ")"; }
  std::shared_ptr<Work> AllGather(const at::Tensor& output, const at::Tensor& input) override;
  std::shared_ptr<Work> ReduceScatter(const at::Tensor& output, const at::Tensor& input,
                                      ReduceOp op,
                                      std::optional<at::ScalarType> comm_dtype) override;
  std::shared_ptr<Work> AllReduce(const at::Tensor& tensor, ReduceOp op) override;
  std::shared_ptr<Work> Broadcast(const at::Tensor& tensor, int root) override;
  absl::Status Barrier(std::chrono::milliseconds timeout) override;

 private:
  bool Fail();
  std::unique_ptr<Collectives> inner_;
};

}  // namespace spill::worker

#endif  // SPILL_WORKER_COLLECTIVES_H_
