// Ring: one IoBackend, a queue of units and the thread that reaps them.
#include <errno.h>

#include <chrono>
#include <thread>

#include "storage/nvme_ring.h"

namespace spill::storage::internal {
namespace {

// -EAGAIN/-EINTR are retried this many times per unit before the unit fails
// with that errno (a device that never stops saying "again" is broken).
constexpr uint32_t kMaxRetries = 1000;

}  // namespace

Ring::Ring(std::unique_ptr<IoBackend> backend, const NvmeOptions& options, NvmeTier* tier)
    : backend_(std::move(backend)),
      depth_(backend_->queue_depth() < options.queue_depth ? backend_->queue_depth()
                                                            : options.queue_depth),
      overlap_(options.overlap_events),
      tier_(tier) {
  thread_ = std::thread([this] { Loop(); });
}

Ring::~Ring() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Ring::Enqueue(const std::vector<IoUnit*>& units, bool pump_here) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.insert(pending_.end(), units.begin(), units.end());
  }
  if (pump_here) {
    Pump(/*ring_thread=*/false);
  } else {
    cv_.notify_one();
  }
}

absl::Status Ring::WithSubmitLock(const std::function<absl::Status(IoBackend*)>& f) {
  std::lock_guard<std::mutex> lock(submit_mu_);
  return f(backend_.get());
}

// Submits units (already counted in in_flight_). Returns false when the
// kernel refused the submit; rejected collects units the backend refused.
bool Ring::SubmitUnits(std::span<IoUnit* const> units,
                       std::vector<std::pair<IoUnit*, absl::Status>>* rejected) {
  if (units.empty()) return true;
  std::vector<IoRequest> requests;
  requests.reserve(units.size());
  for (IoUnit* u : units) {
    requests.push_back(IoRequest{u->op->write, static_cast<int>(u->file),
                                 u->file_offset + u->done, u->buf + u->done, u->len - u->done,
                                 u->slot, reinterpret_cast<uint64_t>(u)});
    tier_->requests_.fetch_add(1, std::memory_order_relaxed);
    if (u->slot >= 0) tier_->fixed_requests_.fetch_add(1, std::memory_order_relaxed);
  }
  absl::Status status = backend_->Submit(requests);
  if (status.ok()) {
    cv_.notify_one();
    return true;
  }
  if (status.code() == absl::StatusCode::kInvalidArgument ||
      status.code() == absl::StatusCode::kResourceExhausted) {
    // Rejected before anything was queued.
    std::lock_guard<std::mutex> lock(mu_);
    in_flight_ -= static_cast<uint32_t>(units.size());
    for (IoUnit* u : units) rejected->emplace_back(u, status);
    return true;
  }
  // The kernel refused io_uring_submit: the entries stay queued in the ring
  // and complete once a later submit goes through.
  flush_needed_.store(true);
  cv_.notify_one();
  return false;
}

void Ring::Pump(bool ring_thread) {
  std::vector<std::pair<IoUnit*, absl::Status>> rejected;
  std::vector<IoUnit*> to_sum;
  {
    std::lock_guard<std::mutex> submit_lock(submit_mu_);
    std::vector<IoUnit*> batch;
    for (bool kernel_ok = true; kernel_ok;) {
      batch.clear();
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!overlap_ && in_flight_ > 0) break;
        const size_t room = depth_ - in_flight_;
        while (batch.size() < room && !pending_.empty()) {
          // Write units are this ring's thread's: it sums them after
          // submitting and later completes them, so no other thread can
          // see a unit whose CRC is still being computed.
          if (!ring_thread && pending_.front()->op->write) break;
          batch.push_back(pending_.front());
          pending_.pop_front();
        }
        if (batch.empty()) break;
        in_flight_ += static_cast<uint32_t>(batch.size());
      }
      const size_t rejected_before = rejected.size();
      kernel_ok = SubmitUnits(batch, &rejected);
      if (rejected.size() != rejected_before) continue;
      for (IoUnit* u : batch) {
        if (u->op->write && u->crc_here && !u->crc_done) to_sum.push_back(u);
      }
    }
  }
  if (!ring_thread && !pending_empty()) cv_.notify_one();  // writes left for the ring thread
  // A block's CRC is computed from the source memory while the device
  // writes the same memory; it is needed only when the write completes,
  // which this thread handles after it returns.
  for (IoUnit* u : to_sum) {
    u->op->Prepare(u);
    u->crc_done = true;
  }
  for (auto& [u, status] : rejected) {
    u->op->Fail(status);
    u->op->UnitDone(u, EIO, false);
  }
}

bool Ring::pending_empty() {
  std::lock_guard<std::mutex> lock(mu_);
  return pending_.empty();
}

bool Ring::ReapAndPump(bool wait, std::deque<Finished>* finished) {
  absl::StatusOr<int> n = backend_->Reap(std::span(cqes_), wait);
  if (!n.ok()) return false;
  if (*n == 0) return true;
  std::vector<IoUnit*> again;
  for (int i = 0; i < *n; ++i) {
    auto* u = reinterpret_cast<IoUnit*>(cqes_[i].user_data);
    const int32_t res = cqes_[i].res;
    if ((res == -EAGAIN || res == -EINTR) && u->retries < kMaxRetries) {
      ++u->retries;
      tier_->retries_.fetch_add(1, std::memory_order_relaxed);
      again.push_back(u);
    } else if (res < 0) {
      finished->push_back({u, -res, false});
    } else if (res == 0) {
      finished->push_back({u, EIO, true});
    } else {
      u->done += static_cast<uint32_t>(res);
      if (u->done < u->len) {
        tier_->short_resubmits_.fetch_add(1, std::memory_order_relaxed);
        again.push_back(u);
      } else {
        finished->push_back({u, 0, false});
      }
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    in_flight_ -= static_cast<uint32_t>(*n);
    for (auto it = again.rbegin(); it != again.rend(); ++it) pending_.push_front(*it);
  }
  Pump(/*ring_thread=*/true);
  return true;
}

void Ring::Loop() {
  cqes_.resize(depth_);
  std::deque<Finished> finished;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return in_flight_ > 0 || !pending_.empty() || stopping_; });
      if (in_flight_ == 0 && pending_.empty()) return;  // stopping, nothing left
      if (in_flight_ == 0) {
        lock.unlock();
        Pump(/*ring_thread=*/true);  // work queued for this thread (writes)
        continue;
      }
    }
    bool wait = true;
    if (flush_needed_.exchange(false)) {
      std::lock_guard<std::mutex> submit_lock(submit_mu_);
      if (!backend_->Submit({}).ok()) {
        // Waiting could block forever on entries the kernel never got.
        flush_needed_.store(true);
        wait = false;
      }
    }
    if (!ReapAndPump(wait, &finished) || !wait) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    // Between the CRC checks and callbacks of finished units, reap and
    // resubmit without waiting, so the device stays busy.
    while (!finished.empty()) {
      const Finished f = finished.front();
      finished.pop_front();
      f.unit->op->UnitDone(f.unit, f.err, f.eof);
      (void)ReapAndPump(/*wait=*/false, &finished);
    }
  }
}

}  // namespace spill::storage::internal
