// Optimizer step over states whose home is NVMe: master weights and states
// are streamed through a bounded set of pinned buffers in pieces of
// sub_group_size elements with a 3-stage pipeline,
//
//   read piece i+1  ‖  update piece i  ‖  write piece i-1,
//
// so that the step runs at the speed of the slower of I/O and compute.
//
//   NvmeStateStore store(...);                 // implements StateStore
//   StreamedStepReport report;
//   absl::Status s = StreamedStep(h, args, DType::kBFloat16, grad, DType::kBFloat16,
//                                 param, n, store, 1 << 24, pinned, exec, 8, &report);
#ifndef SPILL_SERVER_OPTIM_STREAMED_STEP_H_
#define SPILL_SERVER_OPTIM_STREAMED_STEP_H_

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "server/optim/optimizer.h"

namespace spill::optim {

// Where the master weights and optimizer states of one shard live. Elements
// are addressed by index in [0, n) of the shard; a request covers
// [begin, begin + count) with count <= sub_group_size.
class StateStore {
 public:
  virtual ~StateStore() = default;

  // Starts reading master and the StateCount(hyper) state arrays of elements
  // [begin, begin + count) into master[0, count) and state[s][0, count)
  // (state[s] is null for s >= StateCount; the pointer array itself is valid
  // only during the call, copy the pointers). The buffers stay valid and
  // untouched by the caller until done runs. Calls done exactly once, on any
  // thread (also synchronously, from inside ReadAsync), with OK once every
  // element is in the buffers (checksums verified), or the error
  // (DataLoss for a checksum mismatch, an errno status for I/O).
  // Thread-safety: called from one thread at a time, with up to two
  // requests of either kind in flight.
  virtual void ReadAsync(uint64_t begin, uint64_t count, float* master, float* state[2],
                         std::function<void(absl::Status)> done) = 0;

  // Starts writing master[0, count) and state[s][0, count) as the new
  // contents of elements [begin, begin + count). Calls done exactly once, on
  // any thread, with OK once the data is durable in the store, or the error.
  // As for ReadAsync, the state pointer array is valid only during the call.
  // After an error the piece may hold old data, new data or a mix, unless
  // the implementation guarantees otherwise (e.g. writes a new extent and
  // switches over only on success). Same threading as ReadAsync.
  virtual void WriteAsync(uint64_t begin, uint64_t count, const float* master,
                          float* const state[2], std::function<void(absl::Status)> done) = 0;
};

enum class StreamEvent {
  kReadIssued, kReadDone, kUpdateBegin, kUpdateEnd, kWriteIssued, kWriteDone
};
const char* StreamEventName(StreamEvent e);

// What a StreamedStep call did, for the caller to know which pieces of the
// store hold the new state when the call fails.
struct StreamedStepReport {
  // Input (optional): called for every pipeline event, from the calling
  // thread (issue/update events) or the store's completion threads (done
  // events); must be thread-safe and must not block for long.
  std::function<void(StreamEvent, uint64_t piece)> observer;

  // Output. Piece i is elements [i * sub_group_size, min(n, (i+1) * sub_group_size)).
  uint64_t pieces = 0;
  // Pieces updated in memory, in order [0, pieces_updated): their param
  // elements were written.
  uint64_t pieces_updated = 0;
  // written[i]: WriteAsync of piece i reported OK (the store holds step t).
  std::vector<bool> written;
  uint64_t elements_written = 0;
};

// Runs Step (same math, bit for bit) over [0, n), streaming master and
// states from store. grad and param are in memory (param may be null: not
// written). buffer is caller-provided (pinned) memory of at least
// 3 * (1 + StateCount(hyper)) * sub_group_size floats; it is overwritten.
//
// Returns OK when every piece was read, updated and written back. On the
// first failed read or write no further request is issued, every request in
// flight is waited for, and that first error is returned. The store then
// holds the new state for the pieces with report->written[i] (they may be
// any subset of [0, pieces_updated), not only a prefix, since two writes can
// be in flight) and the old state for the others, as far as the store's
// own contract allows; param holds new values for the pieces
// [0, pieces_updated). A caller that needs the step to be all-or-nothing
// makes its store write to new extents and commit them only on OK.
// InvalidArgument (nothing read or written) for the checks of Step, a null
// grad, n == 0, sub_group_size == 0 or a buffer too small.
// Thread-safety: one call per store at a time.
absl::Status StreamedStep(const Hyper& hyper, const StepArgs& args, DType grad_dtype,
                          const void* grad, DType param_dtype, void* param, uint64_t n,
                          StateStore& store, uint64_t sub_group_size, std::span<float> buffer,
                          Executor& exec, uint32_t max_threads = 0,
                          StreamedStepReport* report = nullptr);

}  // namespace spill::optim

#endif  // SPILL_SERVER_OPTIM_STREAMED_STEP_H_
