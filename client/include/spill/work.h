// Work: the handle of one asynchronous request on a session's stream, in the
// spirit of c10d's Work. A request is sent when the Work is created; the Work
// completes exactly once, when spilld answers, when the session is closed, or
// when the connection to spilld is lost.
//
//   std::shared_ptr<Work> work = session->Acquire(object_id);
//   ...  // overlap something else
//   absl::Status s = work->Wait(std::chrono::seconds(30));
//   if (!s.ok()) return s;
//   const ObjectInfo& pinned = work->object();
//
// Thread-safe: any thread may call any method, any number of times. A Work
// may outlive its session; it is then completed (with the session's closing
// status if spilld had not answered).
#ifndef SPILL_CLIENT_WORK_H_
#define SPILL_CLIENT_WORK_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "spill/export.h"
#include "spill/object.h"
#include "spill/optimizer.h"

namespace spill::client {

namespace internal {
class WorkDriver;
class WorkTable;
}  // namespace internal

// The request a Work stands for.
enum class WorkOp : int {
  kAttach,
  kAcquire,
  kPrefetch,
  kRelease,
  kWriteBack,
  kPing,
  kGradReady,
  kOptimizerStep,
  kAccessOrder,
};
SPILL_CLIENT_EXPORT const char* WorkOpName(WorkOp op);

// What a successful answer carries, by request.
struct WorkResult {
  WorkResult() = default;
  // An answer that carries an object (implicit on purpose).
  WorkResult(ObjectInfo o) : object(std::move(o)) {}  // NOLINT(google-explicit-constructor)

  ObjectInfo object;         // acquire, prefetch, release, write-back
  double sum_squares = 0;    // grad-ready
  StepOutcome step;          // optimizer step
};

class SPILL_CLIENT_EXPORT Work {
 public:
  // Wait forever.
  static constexpr std::chrono::milliseconds kNoTimeout = std::chrono::milliseconds::max();

  Work(const Work&) = delete;
  Work& operator=(const Work&) = delete;
  ~Work();

  WorkOp op() const { return op_; }
  // The object the request names (the gradient for kGradReady); 0 for
  // kAttach, kPing and kOptimizerStep.
  uint64_t object_id() const { return object_id_; }

  // True once the request has an outcome (success or failure). Never blocks
  // for longer than a mutex; handles answers that have already arrived on
  // the session's stream when no other thread is doing so.
  bool IsCompleted() const;

  // Blocks until the request completes or timeout passes. Returns
  // DeadlineExceeded when the timeout passes first (the request stays in
  // flight and may still complete later); otherwise the request's status:
  // OK, the error spilld answered with, Cancelled when the session was closed
  // before the answer, Unavailable when the connection to spilld was lost.
  // A negative timeout is treated as zero.
  absl::Status Wait(std::chrono::milliseconds timeout = kNoTimeout) const;

  // The request's status once completed; FailedPrecondition ("not completed")
  // before that, so a caller that skipped Wait() cannot mistake it for OK.
  absl::Status status() const;

  // The object as spilld reported it with a successful answer (for acquire,
  // prefetch, release and write-back: its location, version and pin count).
  // Refers to an empty ObjectInfo until the Work completes successfully; the
  // reference stays valid and unchanged for the Work's lifetime after that.
  const ObjectInfo& object() const;

  // Wait(timeout), then object() on success.
  absl::StatusOr<ObjectInfo> Get(std::chrono::milliseconds timeout = kNoTimeout) const;

  // kGradReady: the sum of squares of the member's gradient accumulated so
  // far, in the gradient's own (loss-scaled) units; not finite when an
  // element is not (fp16 overflow). 0 until the Work completes successfully.
  double sum_squares() const;
  // kOptimizerStep: what spilld did. Empty until the Work completes
  // successfully.
  StepOutcome step_outcome() const;

  // When the request was sent (the Work created) and when it completed (its
  // answer arrived, or the session ended); completed_at() is the epoch of
  // steady_clock until then. For timelines of a training step.
  std::chrono::steady_clock::time_point sent_at() const { return sent_at_; }
  std::chrono::steady_clock::time_point completed_at() const;

 private:
  friend class internal::WorkTable;

  Work(WorkOp op, uint64_t object_id, std::weak_ptr<internal::WorkDriver> driver = {});
  bool Done() const;
  // Records the outcome and wakes waiters. Only the first call has an effect;
  // returns whether this call completed the Work.
  bool Complete(absl::Status status, WorkResult result);

  const WorkOp op_;
  const uint64_t object_id_;
  const std::chrono::steady_clock::time_point sent_at_;
  // The session's stream, which a waiting thread drives (client/work_driver.h).
  const std::weak_ptr<internal::WorkDriver> driver_;
  mutable std::mutex mu_;
  mutable std::condition_variable done_cv_;
  bool done_ = false;
  std::chrono::steady_clock::time_point completed_at_;
  absl::Status status_;
  WorkResult result_;
};

}  // namespace spill::client

#endif  // SPILL_CLIENT_WORK_H_
