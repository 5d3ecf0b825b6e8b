#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "client/work_driver.h"
#include "client/work_table.h"
#include "spill/work.h"

namespace spill::client {
namespace {

// Longer than any real wait; also keeps steady_clock::now() + timeout from
// overflowing inside wait_for.
constexpr std::chrono::hours kForever(24 * 365);

}  // namespace

const char* WorkOpName(WorkOp op) {
  switch (op) {
    case WorkOp::kAttach: return "attach";
    case WorkOp::kAcquire: return "acquire";
    case WorkOp::kPrefetch: return "prefetch";
    case WorkOp::kRelease: return "release";
    case WorkOp::kWriteBack: return "write-back";
    case WorkOp::kPing: return "ping";
    case WorkOp::kGradReady: return "grad-ready";
    case WorkOp::kOptimizerStep: return "optimizer-step";
    case WorkOp::kAccessOrder: return "access-order";
  }
  return "unknown";
}

Work::Work(WorkOp op, uint64_t object_id, std::weak_ptr<internal::WorkDriver> driver)
    : op_(op),
      object_id_(object_id),
      sent_at_(std::chrono::steady_clock::now()),
      driver_(std::move(driver)) {}

Work::~Work() = default;

bool Work::Done() const {
  std::lock_guard<std::mutex> lock(mu_);
  return done_;
}

bool Work::IsCompleted() const {
  if (Done()) return true;
  if (std::shared_ptr<internal::WorkDriver> driver = driver_.lock()) {
    driver->Poll();
    return Done();
  }
  return false;
}

absl::Status Work::Wait(std::chrono::milliseconds timeout) const {
  const bool forever = timeout >= kForever;
  timeout = std::max(timeout, std::chrono::milliseconds(0));
  const auto deadline = std::chrono::steady_clock::now() + (forever ? kForever : timeout);
  // This thread drives the stream while it waits, unless another does.
  if (std::shared_ptr<internal::WorkDriver> driver = driver_.lock()) {
    driver->WaitUntil([this] { return Done(); }, deadline);
  }
  std::unique_lock<std::mutex> lock(mu_);
  auto is_done = [this] { return done_; };
  if (forever) {
    done_cv_.wait(lock, is_done);
  } else if (!done_cv_.wait_until(lock, deadline, is_done)) {
    return absl::DeadlineExceededError(
        std::string(WorkOpName(op_)) + " request not completed within " +
        std::to_string(timeout.count()) + " ms");
  }
  return status_;
}

absl::Status Work::status() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!done_) {
    return absl::FailedPreconditionError(std::string(WorkOpName(op_)) +
                                         " request not completed yet; call Wait()");
  }
  return status_;
}

const ObjectInfo& Work::object() const {
  static const ObjectInfo* const kEmpty = new ObjectInfo();
  std::lock_guard<std::mutex> lock(mu_);
  // result_ is written once, before done_ is set, and never again.
  return done_ && status_.ok() ? result_.object : *kEmpty;
}

double Work::sum_squares() const {
  std::lock_guard<std::mutex> lock(mu_);
  return done_ && status_.ok() ? result_.sum_squares : 0;
}

std::chrono::steady_clock::time_point Work::completed_at() const {
  std::lock_guard<std::mutex> lock(mu_);
  return completed_at_;
}

StepOutcome Work::step_outcome() const {
  std::lock_guard<std::mutex> lock(mu_);
  return done_ && status_.ok() ? result_.step : StepOutcome();
}

absl::StatusOr<ObjectInfo> Work::Get(std::chrono::milliseconds timeout) const {
  absl::Status status = Wait(timeout);
  if (!status.ok()) return status;
  return object();
}

bool Work::Complete(absl::Status status, WorkResult result) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return false;
    status_ = std::move(status);
    if (status_.ok()) result_ = std::move(result);
    completed_at_ = std::chrono::steady_clock::now();
    done_ = true;
  }
  done_cv_.notify_all();
  return true;
}

namespace internal {

void WorkTable::SetDriver(std::weak_ptr<WorkDriver> driver) {
  std::lock_guard<std::mutex> lock(mu_);
  driver_ = std::move(driver);
}

WorkTable::Started WorkTable::Start(WorkOp op, uint64_t object_id) {
  std::lock_guard<std::mutex> lock(mu_);
  std::shared_ptr<Work> work(new Work(op, object_id, driver_));
  if (shut_down_) {
    work->Complete(shutdown_status_, {});
    return {std::move(work), 0};
  }
  uint64_t tag = next_tag_++;
  pending_.emplace(tag, work);
  return {std::move(work), tag};
}

bool WorkTable::Complete(uint64_t tag, absl::Status status, WorkResult result) {
  std::shared_ptr<Work> work;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pending_.find(tag);
    if (it == pending_.end()) return false;
    work = std::move(it->second);
    pending_.erase(it);
  }
  // Waiters run after this returns; never call into a Work under mu_.
  return work->Complete(std::move(status), std::move(result));
}

void WorkTable::Shutdown(const absl::Status& status) {
  std::vector<std::shared_ptr<Work>> orphans;
  absl::Status final_status;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!shut_down_) {
      shut_down_ = true;
      shutdown_status_ = status;
    }
    final_status = shutdown_status_;
    orphans.reserve(pending_.size());
    for (auto& [tag, work] : pending_) orphans.push_back(std::move(work));
    pending_.clear();
  }
  for (auto& work : orphans) work->Complete(final_status, {});
}

std::shared_ptr<Work> WorkTable::Failed(WorkOp op, uint64_t object_id, absl::Status status) {
  std::shared_ptr<Work> work(new Work(op, object_id));
  work->Complete(std::move(status), {});
  return work;
}

size_t WorkTable::pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pending_.size();
}

bool WorkTable::shut_down() const {
  std::lock_guard<std::mutex> lock(mu_);
  return shut_down_;
}

}  // namespace internal
}  // namespace spill::client
