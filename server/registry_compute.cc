// Registry: pins for computations inside spilld (the optimizer) on
// parameters whose home may be kNvme. See registry.h.
#include <condition_variable>
#include <memory>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "server/registry.h"
#include "server/registry_internal.h"

namespace spill::server {
namespace {

// One TierManager::Acquire awaited by a compute thread. When the waiter
// gives up (an error elsewhere, or its deadline), a pin granted later is
// dropped by the callback itself.
struct TierWait {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  bool abandoned = false;
  absl::StatusOr<storage::Extent> result = absl::UnknownError("not completed");
};

std::shared_ptr<TierWait> StartAcquire(storage::TierManager* tiers, const std::string& job_id,
                                       uint64_t id, bool for_write) {
  auto wait = std::make_shared<TierWait>();
  tiers->Acquire(job_id, id, for_write ? storage::AcquireMode::kWrite : storage::AcquireMode::kRead,
                 [wait, tiers, job_id, id](absl::StatusOr<storage::Extent> extent) {
                   std::unique_lock<std::mutex> lock(wait->mu);
                   if (wait->abandoned) {
                     lock.unlock();
                     if (extent.ok()) tiers->Release(job_id, id).IgnoreError();
                     return;
                   }
                   wait->result = std::move(extent);
                   wait->done = true;
                   wait->cv.notify_all();
                 });
  return wait;
}

// The acquire's result, or DeadlineExceeded (then the wait is abandoned).
absl::StatusOr<storage::Extent> Await(TierWait& wait,
                                      std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(wait.mu);
  if (!wait.cv.wait_until(lock, deadline, [&] { return wait.done; })) {
    wait.abandoned = true;
    return absl::DeadlineExceededError("not resident in time");
  }
  return wait.result;
}

// Gives up a wait: a pin already granted is dropped now, a later one by the
// callback.
void Abandon(storage::TierManager* tiers, const std::string& job_id, uint64_t id,
             TierWait& wait) {
  std::unique_lock<std::mutex> lock(wait.mu);
  wait.abandoned = true;
  if (wait.done && wait.result.ok()) {
    lock.unlock();
    tiers->Release(job_id, id).IgnoreError();
  }
}

}  // namespace

absl::Status Registry::AcquireTierViews(const std::string& job_id,
                                        std::vector<ComputeView>& views, bool for_write,
                                        std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::vector<std::shared_ptr<TierWait>> waits(views.size());
  for (size_t i = 0; i < views.size(); ++i) {
    if (views[i].record.home == storage::Home::kNvme) {
      waits[i] = StartAcquire(tiers_, job_id, views[i].record.id, for_write);
    }
  }
  absl::Status status;
  for (size_t i = 0; i < views.size() && status.ok(); ++i) {
    if (waits[i] == nullptr) continue;
    absl::StatusOr<storage::Extent> extent = Await(*waits[i], deadline);
    if (!extent.ok()) {
      status = absl::Status(
          extent.status().code(),
          absl::StrCat("parameter '", views[i].record.name, "' (id ", views[i].record.id,
                       ", home NVME) could not be made resident",
                       absl::IsDeadlineExceeded(extent.status())
                           ? absl::StrCat(" within ", timeout.count(), " ms")
                           : "",
                       ": ", extent.status().message()));
      break;
    }
    views[i].record.extent = *extent;
    views[i].data = arena_->Data(*extent);
  }
  if (!status.ok()) {
    // Reads still in flight are waited for (up to the deadline), so a
    // failed pin leaves no pin behind when it returns; one that outlives
    // the deadline is dropped by its callback.
    for (size_t i = 0; i < views.size(); ++i) {
      if (waits[i] == nullptr) continue;
      {
        std::unique_lock<std::mutex> lock(waits[i]->mu);
        waits[i]->cv.wait_until(lock, deadline, [&] { return waits[i]->done; });
      }
      Abandon(tiers_, job_id, views[i].record.id, *waits[i]);
    }
  }
  return status;
}

absl::StatusOr<std::vector<ComputeView>> Registry::PinParamsForCompute(
    const std::string& job_id, const std::vector<uint64_t>& ids, bool for_write,
    std::chrono::milliseconds timeout) {
  std::vector<ComputeView> views;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("job '", job_id, "' is gone"));
    Job& job = *it->second;
    std::vector<ObjectRecord*> objects;
    for (uint64_t id : ids) {
      SPILL_ASSIGN_OR_RETURN(ObjectRecord * object, FindObjectLocked(job, id));
      if (object->home == storage::Home::kNvme && tiers_ == nullptr) {
        return absl::FailedPreconditionError(
            absl::StrCat("object '", object->name, "' has home NVME but there is no NVMe tier"));
      }
      objects.push_back(object);
    }
    for (ObjectRecord* object : objects) {
      ++object->compute_pins;
      ++job.compute_pins;
      const bool pinned = object->home == storage::Home::kPinned;
      views.push_back({*object, pinned ? arena_->Data(object->extent) : nullptr});
    }
  }
  absl::Status status = AcquireTierViews(job_id, views, for_write, timeout);
  if (!status.ok()) {
    UnpinCompute(job_id, ids, 0);
    return status;
  }
  return views;
}

absl::Status Registry::UnpinParams(const std::string& job_id,
                                   const std::vector<ComputeView>& views, uint64_t version) {
  std::vector<uint64_t> versions(views.size(), 0);
  if (version != 0) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(job_id);
    for (size_t i = 0; i < views.size() && it != jobs_.end(); ++i) {
      auto obj = it->second->objects.find(views[i].record.id);
      versions[i] = obj == it->second->objects.end() ? version
                                                     : std::max(version, obj->second.version);
    }
  }
  absl::Status status;
  std::vector<uint64_t> ids;
  for (size_t i = 0; i < views.size(); ++i) {
    const ObjectRecord& record = views[i].record;
    ids.push_back(record.id);
    if (record.home != storage::Home::kNvme) continue;
    if (versions[i] != 0) {
      absl::Status marked = tiers_->MarkWritten(job_id, record.id, versions[i]);
      if (!marked.ok() && status.ok()) {
        status = absl::InternalError(absl::StrCat("parameter '", record.name, "' (id ", record.id,
                                                  ") was stepped but not marked written: ",
                                                  marked.message()));
      }
    }
    tiers_->Release(job_id, record.id).IgnoreError();
  }
  UnpinCompute(job_id, ids, version);
  return status;
}

absl::StatusOr<std::vector<ObjectRecord>> Registry::Records(
    const std::string& job_id, const std::vector<uint64_t>& ids) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("job '", job_id, "' is gone"));
  std::vector<ObjectRecord> out;
  for (uint64_t id : ids) {
    SPILL_ASSIGN_OR_RETURN(ObjectRecord * object, FindObjectLocked(*it->second, id));
    out.push_back(*object);
  }
  return out;
}

}  // namespace spill::server
