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

void Ring::Enqueue(const std::vector<IoUnit*>& units) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.insert(pending_.end(), units.begin(), units.end());
  }
  Pump();
}

absl::Status Ring::WithSubmitLock(const std::function<absl::Status(IoBackend*)>& f) {
  std::lock_guard<std::mutex> lock(submit_mu_);
  return f(backend_.get());
}

void Ring::Pump() {
  std::vector<std::pair<IoUnit*, absl::Status>> rejected;
  {
    std::lock_guard<std::mutex> submit_lock(submit_mu_);
    std::vector<IoUnit*> batch;
    std::vector<IoRequest> requests;
    for (;;) {
      batch.clear();
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!overlap_ && in_flight_ > 0) break;
        const size_t room = depth_ - in_flight_;
        while (batch.size() < room && !pending_.empty()) {
          batch.push_back(pending_.front());
          pending_.pop_front();
        }
        if (batch.empty()) break;
        in_flight_ += static_cast<uint32_t>(batch.size());
      }
      requests.clear();
      for (IoUnit* u : batch) {
        if (u->done == 0 && u->retries == 0) u->op->Prepare(u);
        requests.push_back(IoRequest{u->op->write, static_cast<int>(u->file),
                                     u->file_offset + u->done, u->buf + u->done,
                                     u->len - u->done, u->slot,
                                     reinterpret_cast<uint64_t>(u)});
        tier_->requests_.fetch_add(1, std::memory_order_relaxed);
        if (u->slot >= 0) tier_->fixed_requests_.fetch_add(1, std::memory_order_relaxed);
      }
      absl::Status status = backend_->Submit(requests);
      if (status.ok()) {
        cv_.notify_one();
        continue;
      }
      if (status.code() == absl::StatusCode::kInvalidArgument ||
          status.code() == absl::StatusCode::kResourceExhausted) {
        // Rejected before anything was queued.
        std::lock_guard<std::mutex> lock(mu_);
        in_flight_ -= static_cast<uint32_t>(batch.size());
        for (IoUnit* u : batch) rejected.emplace_back(u, status);
        continue;
      }
      // The kernel refused io_uring_submit: the entries stay queued in the
      // ring and complete once a later submit goes through.
      flush_needed_.store(true);
      cv_.notify_one();
      break;
    }
  }
  for (auto& [u, status] : rejected) {
    u->op->Fail(status);
    u->op->UnitDone(u, EIO, false);
  }
}

void Ring::Loop() {
  std::vector<IoCompletion> cqes(depth_);
  struct Finished {
    IoUnit* unit;
    int err;
    bool eof;
  };
  std::vector<Finished> finished;
  std::vector<IoUnit*> again;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return in_flight_ > 0 || (stopping_ && pending_.empty()); });
      if (in_flight_ == 0) return;  // stopping, nothing left
    }
    if (flush_needed_.exchange(false)) {
      std::lock_guard<std::mutex> submit_lock(submit_mu_);
      if (!backend_->Submit({}).ok()) flush_needed_.store(true);
    }
    absl::StatusOr<int> n = backend_->Reap(cqes, /*wait=*/true);
    if (!n.ok()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      continue;
    }
    finished.clear();
    again.clear();
    for (int i = 0; i < *n; ++i) {
      auto* u = reinterpret_cast<IoUnit*>(cqes[i].user_data);
      const int32_t res = cqes[i].res;
      if ((res == -EAGAIN || res == -EINTR) && u->retries < kMaxRetries) {
        ++u->retries;
        tier_->retries_.fetch_add(1, std::memory_order_relaxed);
        again.push_back(u);
      } else if (res < 0) {
        finished.push_back({u, -res, false});
      } else if (res == 0) {
        finished.push_back({u, EIO, true});
      } else {
        u->done += static_cast<uint32_t>(res);
        if (u->done < u->len) {
          tier_->short_resubmits_.fetch_add(1, std::memory_order_relaxed);
          again.push_back(u);
        } else {
          finished.push_back({u, 0, false});
        }
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      in_flight_ -= static_cast<uint32_t>(*n);
      for (auto it = again.rbegin(); it != again.rend(); ++it) pending_.push_front(*it);
    }
    // Keep the device busy before checking CRCs and running callbacks.
    Pump();
    for (const Finished& f : finished) f.unit->op->UnitDone(f.unit, f.err, f.eof);
  }
}

}  // namespace spill::storage::internal
