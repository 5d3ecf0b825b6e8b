#include "client/stream_driver.h"

#include <algorithm>
#include <utility>

namespace spill::client::internal {
namespace {

using SteadyClock = std::chrono::steady_clock;

gpr_timespec Now() { return gpr_now(GPR_CLOCK_MONOTONIC); }

gpr_timespec After(std::chrono::nanoseconds d) {
  return gpr_time_add(Now(), gpr_time_from_nanos(std::max<int64_t>(d.count(), 0), GPR_TIMESPAN));
}

// How long the background thread stays in the queue at a time while it
// drives; a waiter wakes it out sooner with the alarm.
constexpr std::chrono::milliseconds kBackgroundSlice{100};
// Events handled by one Poll at most.
constexpr int kPollBatch = 64;

}  // namespace

StreamDriver::StreamDriver(Callbacks callbacks) : callbacks_(std::move(callbacks)) {}

std::shared_ptr<StreamDriver> StreamDriver::Start(v1::Worker::Stub* stub, Callbacks callbacks) {
  std::shared_ptr<StreamDriver> d(new StreamDriver(std::move(callbacks)));
  // The stream's headers go out with its first request (the attach): the
  // call's start is then no operation of its own, which would have to
  // complete before the first write could start.
  d->context_.set_initial_metadata_corked(true);
  d->stream_ = stub->PrepareAsyncSession(&d->context_, &d->cq_);
  d->stream_->StartCall(nullptr);
  // One read is always in flight until the stream ends.
  d->stream_->Read(&d->event_, &d->tag_read_);
  d->background_ = std::thread([raw = d.get()] { raw->BackgroundLoop(); });
  return d;
}

StreamDriver::~StreamDriver() { Close(std::chrono::milliseconds(0)); }

bool StreamDriver::Write(v1::StreamRequest request) {
  std::unique_lock<std::mutex> lock(mu_);
  if (half_close_ || write_failed_ || finished_ || closed_) return false;
  if (write_in_flight_) {
    queued_.push_back(std::move(request));
    // The write in flight must be seen done for this one to start.
    if (!driving_ && waiters_ == 0) background_cv_.notify_one();
    return true;
  }
  write_in_flight_ = true;
  // Under mu_, so that Close cannot shut the queue down between the checks
  // above and the write's start. Serialized here: the request need not
  // outlive the call.
  stream_->Write(request, &tag_write_);
  return true;
}

bool StreamDriver::Outstanding() const {
  return !finished_ &&
         (write_in_flight_ || !queued_.empty() || half_close_ || callbacks_.has_pending());
}

void StreamDriver::ReleaseRole() {
  driving_ = false;
  background_driving_ = false;
  if (waiters_ > 0) {
    role_cv_.notify_all();  // Their Work may be done; one of them drives next.
  } else if (Outstanding()) {
    background_cv_.notify_one();
  }
}

void StreamDriver::WakeDriver() {
  if (wake_pending_ || closed_) return;
  wake_pending_ = true;
  wake_.Set(&cq_, Now(), &tag_wake_);  // Due at once: its event ends the driver's wait.
}

void StreamDriver::Interrupt() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (driving_) WakeDriver();
  }
  role_cv_.notify_all();
}

bool StreamDriver::WaitUntil(const std::function<bool()>& done,
                             SteadyClock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (done()) return true;
    if (finished_ || closed_) return false;
    const auto now = SteadyClock::now();
    if (now >= deadline) return false;
    if (!driving_) {
      driving_ = true;
      lock.unlock();
      const bool got = DriveUntil(done, deadline);
      lock.lock();
      ReleaseRole();
      if (got) return true;
      continue;
    }
    if (background_driving_) WakeDriver();  // It leaves the queue to us.
    ++waiters_;
    role_cv_.wait_until(lock, deadline);
    --waiters_;
  }
}

void StreamDriver::Poll() {
  std::unique_lock<std::mutex> lock(mu_);
  if (driving_ || finished_ || closed_) return;
  driving_ = true;
  lock.unlock();
  for (int i = 0; i < kPollBatch && DriveOnce(Now()); ++i) {
  }
  lock.lock();
  ReleaseRole();
}

bool StreamDriver::DriveUntil(const std::function<bool()>& done,
                              SteadyClock::time_point deadline) {
  for (;;) {
    DriveOnce(After(deadline - SteadyClock::now()));
    std::lock_guard<std::mutex> lock(mu_);
    if (done()) return true;
    // The event may have been another waiter's answer.
    if (waiters_ > 0) role_cv_.notify_all();
    if (finished_ || closed_ || SteadyClock::now() >= deadline) return false;
  }
}

bool StreamDriver::DriveOnce(gpr_timespec deadline) {
  void* tag = nullptr;
  bool ok = false;
  if (cq_.AsyncNext(&tag, &ok, deadline) != grpc::CompletionQueue::GOT_EVENT) return false;
  Handle(tag, ok);
  return true;
}

void StreamDriver::Handle(void* tag, bool ok) {
  if (tag == &tag_read_) {
    if (ok) {
      v1::StreamEvent event;
      event.Swap(&event_);
      stream_->Read(&event_, &tag_read_);
      callbacks_.on_event(std::move(event));
      return;
    }
    // Nothing more will be read: collect the stream's status.
    stream_->Finish(&finish_status_, &tag_finish_);
  } else if (tag == &tag_write_) {
    OnWriteDone(ok);
  } else if (tag == &tag_writes_done_) {
    std::lock_guard<std::mutex> lock(mu_);
    write_in_flight_ = false;
  } else if (tag == &tag_finish_) {
    callbacks_.on_end(finish_status_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      finished_ = true;
      queued_.clear();
    }
    role_cv_.notify_all();
    background_cv_.notify_all();
  } else if (tag == &tag_wake_) {
    std::lock_guard<std::mutex> lock(mu_);
    wake_pending_ = false;
  }
}

void StreamDriver::OnWriteDone(bool ok) {
  std::unique_ptr<v1::StreamRequest> next;
  bool writes_done = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    write_in_flight_ = false;
    if (!ok) {
      // The stream is broken; its read ends too and on_end says why. The
      // queued requests' Works fail then.
      write_failed_ = true;
      queued_.clear();
      return;
    }
    if (!queued_.empty()) {
      next = std::make_unique<v1::StreamRequest>(std::move(queued_.front()));
      queued_.pop_front();
      write_in_flight_ = true;
    } else if (half_close_ && !half_closed_) {
      half_closed_ = true;
      write_in_flight_ = true;
      writes_done = true;
    }
  }
  if (next != nullptr) {
    stream_->Write(*next, &tag_write_);
  } else if (writes_done) {
    stream_->WritesDone(&tag_writes_done_);
  }
}

void StreamDriver::BackgroundLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    if (driving_ || waiters_ > 0 || finished_) {
      background_cv_.wait_for(lock, kIdleTick);
      continue;
    }
    gpr_timespec deadline = After(kBackgroundSlice);
    if (!Outstanding()) {
      background_cv_.wait_for(lock, kIdleTick);
      if (stopping_ || driving_ || waiters_ > 0 || finished_) continue;
      // Still idle: only pick up what has arrived (spilld ending the stream).
      if (!Outstanding()) deadline = Now();
    }
    driving_ = true;
    background_driving_ = true;
    lock.unlock();
    DriveOnce(deadline);
    lock.lock();
    ReleaseRole();
  }
}

void StreamDriver::Close(std::chrono::milliseconds grace) {
  bool writes_done = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_ || stream_ == nullptr) return;
    half_close_ = true;
    if (!write_in_flight_ && !write_failed_ && !half_closed_ && !finished_) {
      half_closed_ = true;
      write_in_flight_ = true;
      writes_done = true;
    }
  }
  if (writes_done) stream_->WritesDone(&tag_writes_done_);
  auto ended = [this] { return finished_; };  // Called under mu_.
  if (!WaitUntil(ended, SteadyClock::now() + grace)) {
    context_.TryCancel();  // The stream's read fails, and Finish follows.
    WaitUntil(ended, SteadyClock::now() + std::chrono::hours(24));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    if (driving_) WakeDriver();  // The background thread, most likely.
  }
  background_cv_.notify_all();
  if (background_.joinable()) background_.join();
  {
    std::unique_lock<std::mutex> lock(mu_);
    closed_ = true;
    ++waiters_;
    role_cv_.wait(lock, [this] { return !driving_; });  // A Poll or a waiter returning.
    --waiters_;
  }
  role_cv_.notify_all();
  // What is left (write and alarm completions) is dropped.
  cq_.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq_.Next(&tag, &ok)) {
  }
}

}  // namespace spill::client::internal
