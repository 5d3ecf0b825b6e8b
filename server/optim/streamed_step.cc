#include "server/optim/streamed_step.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "server/optim/kernels.h"

namespace spill::optim {
namespace {

// Completion bookkeeping shared with the store's callbacks.
class Pipeline {
 public:
  Pipeline(uint64_t pieces, std::function<void(StreamEvent, uint64_t)> observer)
      : read_(pieces, kPending), write_(pieces, kNone), observer_(std::move(observer)) {}

  void Event(StreamEvent e, uint64_t piece) {
    if (observer_) observer_(e, piece);
  }
  std::function<void(absl::Status)> Done(bool is_read, uint64_t piece) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++in_flight_;
      (is_read ? read_ : write_)[piece] = kPending;
    }
    return [this, is_read, piece](absl::Status s) {
      Event(is_read ? StreamEvent::kReadDone : StreamEvent::kWriteDone, piece);
      std::lock_guard<std::mutex> lock(mu_);
      (is_read ? read_ : write_)[piece] = s.ok() ? kOk : kFailed;
      if (!s.ok() && error_.ok()) error_ = std::move(s);
      --in_flight_;
      cv_.notify_all();
    };
  }
  // Waits until the read (or write) of piece is no longer pending; returns
  // the first error seen so far by any request.
  absl::Status Wait(bool is_read, uint64_t piece) {
    std::unique_lock<std::mutex> lock(mu_);
    const auto& v = is_read ? read_ : write_;
    cv_.wait(lock, [&] { return v[piece] != kPending || !error_.ok(); });
    return error_;
  }
  absl::Status Error() {
    std::lock_guard<std::mutex> lock(mu_);
    return error_;
  }
  void Drain() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return in_flight_ == 0; });
  }
  bool Written(uint64_t piece) {
    std::lock_guard<std::mutex> lock(mu_);
    return write_[piece] == kOk;
  }

 private:
  enum State : int8_t { kNone, kPending, kOk, kFailed };
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<State> read_, write_;
  int in_flight_ = 0;
  absl::Status error_;
  const std::function<void(StreamEvent, uint64_t)> observer_;
};

struct Plan {
  uint64_t n, sg, pieces;
  int states;
  std::span<float> buffer;
  uint64_t Begin(uint64_t i) const { return i * sg; }
  uint64_t Count(uint64_t i) const { return std::min(n, (i + 1) * sg) - i * sg; }
  float* Master(uint64_t i) const { return buffer.data() + (i % 3) * (1 + states) * sg; }
  void States(uint64_t i, float* out[2]) const {
    for (int s = 0; s < 2; ++s) out[s] = s < states ? Master(i) + (1 + s) * sg : nullptr;
  }
};

absl::Status Validate(const Hyper& h, const StepArgs& a, DType gd, const void* grad, DType pd,
                      uint64_t n, uint64_t sg, std::span<float> buffer) {
  float dummy = 0;
  ShardView v{gd, grad, &dummy, {&dummy, &dummy}, pd, nullptr, n};
  SPILL_RETURN_IF_ERROR(internal::ValidateStep(h, a, v));
  if (sg == 0) return absl::InvalidArgumentError("sub_group_size is 0");
  const uint64_t need = 3 * (1 + static_cast<uint64_t>(StateCount(h))) * sg;
  if (buffer.data() == nullptr || buffer.size() < need) {
    return absl::InvalidArgumentError(absl::StrCat("streaming buffer has ", buffer.size(),
                                                   " floats; ", need, " needed (3 sets of 1 + ",
                                                   StateCount(h), " arrays of sub_group_size)"));
  }
  return absl::OkStatus();
}

}  // namespace

const char* StreamEventName(StreamEvent e) {
  switch (e) {
    case StreamEvent::kReadIssued: return "read_issued";
    case StreamEvent::kReadDone: return "read_done";
    case StreamEvent::kUpdateBegin: return "update_begin";
    case StreamEvent::kUpdateEnd: return "update_end";
    case StreamEvent::kWriteIssued: return "write_issued";
    case StreamEvent::kWriteDone: return "write_done";
  }
  return "invalid";
}

absl::Status StreamedStep(const Hyper& h, const StepArgs& a, DType gd, const void* grad,
                          DType pd, void* param, uint64_t n, StateStore& store, uint64_t sg,
                          std::span<float> buffer, Executor& exec, uint32_t max_threads,
                          StreamedStepReport* report) {
  SPILL_RETURN_IF_ERROR(Validate(h, a, gd, grad, pd, n, sg, buffer));
  const Plan plan{n, sg, (n + sg - 1) / sg, StateCount(h), buffer};
  Pipeline pipe(plan.pieces, report ? report->observer : nullptr);
  const size_t gs = DTypeSize(static_cast<int>(gd)), ps = DTypeSize(static_cast<int>(pd));

  auto issue_read = [&](uint64_t i) {
    float* st[2];
    plan.States(i, st);
    pipe.Event(StreamEvent::kReadIssued, i);
    store.ReadAsync(plan.Begin(i), plan.Count(i), plan.Master(i), st, pipe.Done(true, i));
  };
  uint64_t updated = 0;
  absl::Status status;
  issue_read(0);
  for (uint64_t i = 0; i < plan.pieces; ++i) {
    if (status = pipe.Wait(true, i); !status.ok()) break;
    if (i + 1 < plan.pieces) {
      // Piece i+1 reuses the buffer set of piece i-2: its write must be done.
      if (i >= 2) {
        if (status = pipe.Wait(false, i - 2); !status.ok()) break;
      }
      issue_read(i + 1);
    }
    float* st[2];
    plan.States(i, st);
    ShardView v{gd, static_cast<const uint8_t*>(grad) + plan.Begin(i) * gs, plan.Master(i),
                {st[0], st[1]}, pd,
                param ? static_cast<uint8_t*>(param) + plan.Begin(i) * ps : nullptr,
                plan.Count(i)};
    pipe.Event(StreamEvent::kUpdateBegin, i);
    status = Step(h, a, v, exec, max_threads);
    pipe.Event(StreamEvent::kUpdateEnd, i);
    if (!status.ok()) break;  // not expected: arguments were validated
    updated = i + 1;
    if (status = pipe.Error(); !status.ok()) break;
    pipe.Event(StreamEvent::kWriteIssued, i);
    store.WriteAsync(plan.Begin(i), plan.Count(i), plan.Master(i), st, pipe.Done(false, i));
  }
  pipe.Drain();
  if (status.ok()) status = pipe.Error();
  if (report != nullptr) {
    report->pieces = plan.pieces;
    report->pieces_updated = updated;
    report->written.assign(plan.pieces, false);
    report->elements_written = 0;
    for (uint64_t i = 0; i < plan.pieces; ++i) {
      report->written[i] = pipe.Written(i);
      if (report->written[i]) report->elements_written += plan.Count(i);
    }
  }
  return status;
}

}  // namespace spill::optim
