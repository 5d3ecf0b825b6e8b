// TierManager: write-back, flush, manifest publishing and recovery.
#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "storage/tier_manager.h"
#include "storage/tier_manager_internal.h"

namespace spill::storage {
namespace {

std::string Name(const std::string& job, uint64_t id) {
  return absl::StrCat("object ", id, " of job ", job);
}

}  // namespace

TierManager::CopyPtr TierManager::MakeCopy(const std::string& job, NvmeExtent extent,
                                           std::vector<uint32_t> crcs, uint64_t bytes,
                                           uint64_t version) {
  NvmeTier* nvme = nvme_;
  auto* copy = new NvmeCopy{std::move(extent), std::move(crcs), bytes, version};
  return std::shared_ptr<NvmeCopy>(copy, [nvme, job](NvmeCopy* c) {
    nvme->Free(job, c->extent).IgnoreError();
    delete c;
  });
}

absl::Status TierManager::MarkWritten(const std::string& job, uint64_t id, uint64_t version,
                                      StatusDone durable) {
  Deferred deferred;
  std::lock_guard<std::mutex> lock(mu_);
  SPILL_ASSIGN_OR_RETURN(ObjectPtr obj, ObjectLocked(job, id));
  if (obj->pins == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(Name(job, id), " is not acquired; acquire it before writing it"));
  }
  if (version < obj->version) {
    return absl::InvalidArgumentError(absl::StrCat(Name(job, id), " is at version ", obj->version,
                                                   "; version ", version, " is older"));
  }
  if (obj->spec.home == Home::kPinned) {
    if (durable != nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          Name(job, id), " lives in pinned memory only and is never persisted"));
    }
    obj->version = version;
    return absl::OkStatus();
  }
  obj->version = version;
  if (obj->open_writes > 0) --obj->open_writes;
  obj->dirty = true;
  obj->acked = false;
  if (obj->writing) obj->discard_write = true;
  if (durable != nullptr) obj->durable_waiters.emplace_back(version, std::move(durable));
  QueueWriteBackLocked(obj);
  StartWriteBacksLocked(deferred);
  return absl::OkStatus();
}

void TierManager::QueueWriteBackLocked(const ObjectPtr& obj) {
  obj->retry = false;
  if (obj->queued || obj->writing) return;  // a running write re-queues when done
  obj->queued = true;
  writeback_queue_.push_back(obj);
}

void TierManager::StartWriteBacksLocked(Deferred& deferred) {
  while (!stopping_ && writebacks_in_flight_ < options_.max_writebacks &&
         !writeback_queue_.empty()) {
    ObjectPtr obj = std::move(writeback_queue_.front());
    writeback_queue_.pop_front();
    obj->queued = false;
    // A kWrite pin still open re-queues the object at its MarkWritten or Release.
    if (obj->freed || !obj->dirty || obj->writing || obj->open_writes > 0) continue;
    absl::StatusOr<NvmeExtent> extent = nvme_->Allocate(obj->job, obj->spec.bytes);
    if (!extent.ok()) {
      FailWriteLocked(*obj, extent.status(), deferred);
      continue;
    }
    obj->writing = true;
    obj->discard_write = false;
    ++writebacks_in_flight_;
    ++io_in_flight_;
    auto copy = std::const_pointer_cast<NvmeCopy>(
        MakeCopy(obj->job, *std::move(extent), {}, obj->spec.bytes, obj->version));
    const uint8_t* src = arena_->Data(*obj->extent);
    deferred.Add([this, obj, copy, src] {
      nvme_->Write(copy->extent, src, copy->bytes, &copy->crcs,
                   [this, obj, copy](absl::Status s) { OnWriteDone(obj, copy, std::move(s)); });
    });
  }
}

void TierManager::FailWriteLocked(Object& obj, const absl::Status& status, Deferred& deferred) {
  obj.write_error = status;
  obj.retry = true;
  auto job = jobs_.find(obj.job);
  if (job != jobs_.end()) {
    ++job->second.counters.write_errors;
    job->second.last_write_error =
        absl::StrCat(Name(obj.job, obj.spec.id), ": ", status.ToString());
  }
  for (auto& [v, done] : obj.durable_waiters) {
    deferred.Add([done = std::move(done), status] { done(status); });
  }
  obj.durable_waiters.clear();
  SettleFlushWaitersLocked(obj, &status, deferred);
}

void TierManager::OnWriteDone(const ObjectPtr& obj, std::shared_ptr<NvmeCopy> copy,
                              absl::Status status) {
  Deferred deferred;
  std::unique_lock<std::mutex> lock(mu_);
  --writebacks_in_flight_;
  --io_in_flight_;
  obj->writing = false;
  cv_.notify_all();
  if (obj->freed) {
    if (obj->extent.has_value()) arena_->Free(obj->arena_owner, *obj->extent).IgnoreError();
    obj->extent.reset();
  } else if (!status.ok()) {
    FailWriteLocked(*obj, status, deferred);
    if (obj->discard_write) QueueWriteBackLocked(obj);  // newer bytes: try those now
  } else {
    Job& job = jobs_.at(obj->job);
    ++job.counters.writes;
    job.counters.write_bytes += copy->bytes;
    if (!obj->discard_write) {
      obj->latest = std::move(copy);
      obj->write_error = absl::OkStatus();
      if (obj->latest->version == obj->version) obj->dirty = false;
      manifest_dirty_ = true;
      SettleFlushWaitersLocked(*obj, nullptr, deferred);
    }
    if (obj->dirty) QueueWriteBackLocked(obj);
  }
  obj->discard_write = false;
  // The next write first: a writer waiting behind an awaited write then
  // waits for that one too.
  StartWriteBacksLocked(deferred);
  if (!obj->freed) ProcessWaitersLocked(*obj, deferred);
  if (!parked_.empty() && !stopping_) RetryParkedLocked(lock, deferred);
}

void TierManager::SettleFlushWaitersLocked(Object& obj, const absl::Status* error,
                                           Deferred& deferred) {
  std::vector<std::pair<std::shared_ptr<FlushWaiter>, uint64_t>> keep;
  for (auto& [w, version] : obj.flush_waiters) {
    const bool written = obj.latest != nullptr && obj.latest->version >= version;
    if (error == nullptr && !obj.freed && !written) {
      keep.emplace_back(std::move(w), version);
      continue;
    }
    if (error != nullptr && w->first_error.ok()) w->first_error = *error;
    FlushWaiterDoneLocked(w);
  }
  obj.flush_waiters = std::move(keep);
}

void TierManager::FlushWaiterDoneLocked(const std::shared_ptr<FlushWaiter>& waiter) {
  if (--waiter->pending != 0) return;
  waiter->ticket = ++publish_ticket_;
  publish_waiters_.push_back(waiter);
  cv_.notify_all();
}

void TierManager::Flush(const std::string& job, StatusDone done) {
  Deferred deferred;
  std::lock_guard<std::mutex> lock(mu_);
  if (options_.manifest_dir.empty()) {
    deferred.Add([done = std::move(done)] {
      done(absl::FailedPreconditionError("no manifest directory is configured; nothing persists"));
    });
    return;
  }
  if (!job.empty() && !jobs_.contains(job)) {
    deferred.Add([done = std::move(done), job] {
      done(absl::NotFoundError(absl::StrCat("unknown job '", job, "'")));
    });
    return;
  }
  auto waiter = std::make_shared<FlushWaiter>();
  waiter->pending = 1;  // held until every object is registered
  waiter->done = std::move(done);
  for (auto& [name, j] : jobs_) {
    if (!job.empty() && name != job) continue;
    for (auto& [id, obj] : j.objects) {
      if (obj->spec.home != Home::kNvme || !obj->dirty) continue;
      ++waiter->pending;
      obj->flush_waiters.emplace_back(waiter, obj->version);
      QueueWriteBackLocked(obj);
    }
  }
  StartWriteBacksLocked(deferred);
  FlushWaiterDoneLocked(waiter);
}

void TierManager::RetryFailedWritesLocked(Deferred& deferred) {
  for (auto& [name, job] : jobs_) {
    for (auto& [id, obj] : job.objects) {
      if (obj->retry && obj->dirty) QueueWriteBackLocked(obj);
    }
  }
  StartWriteBacksLocked(deferred);
}

void TierManager::ThreadMain() {
  std::unique_lock<std::mutex> lock(mu_);
  const auto tick = std::min(options_.publish_interval, options_.retry_interval);
  while (!stopping_) {
    const auto now = std::chrono::steady_clock::now();
    const bool asked = !publish_waiters_.empty();
    const bool due = manifest_dirty_ && now - last_publish_ >= options_.publish_interval;
    if (!options_.manifest_dir.empty() && (asked || due)) {
      PublishOnce(lock);
      continue;
    }
    if (now - last_retry_ >= options_.retry_interval) {
      last_retry_ = now;
      Deferred deferred;
      RetryFailedWritesLocked(deferred);
      lock.unlock();
      deferred.Run();
      lock.lock();
      continue;
    }
    cv_.wait_for(lock, tick);
  }
}

Manifest TierManager::SnapshotLocked(std::vector<std::pair<ObjectPtr, CopyPtr>>* copies) const {
  Manifest m;
  for (const auto& [name, job] : jobs_) {
    ManifestJob mj{.job_id = name, .uid = job.options.uid, .objects = {}};
    for (const auto& [id, obj] : job.objects) {
      if (obj->latest == nullptr) continue;
      const NvmeCopy& c = *obj->latest;
      mj.objects.push_back({.id = id, .name = obj->spec.name, .kind = obj->spec.kind,
                            .dtype = obj->spec.dtype, .num_elements = obj->spec.num_elements,
                            .version = c.version, .extent = c.extent, .crcs = c.crcs,
                            .bytes = c.bytes});
      copies->emplace_back(obj, obj->latest);
    }
    m.jobs.push_back(std::move(mj));
  }
  return m;
}

void TierManager::PublishOnce(std::unique_lock<std::mutex>& lock) {
  std::vector<std::pair<ObjectPtr, CopyPtr>> copies;
  Manifest m = SnapshotLocked(&copies);
  m.generation = generation_ + 1;
  const uint64_t ticket = publish_ticket_;
  manifest_dirty_ = false;
  last_publish_ = std::chrono::steady_clock::now();
  lock.unlock();
  const absl::Status status = PublishManifest(options_.manifest_dir, m);
  lock.lock();
  Deferred deferred;
  if (status.ok()) {
    generation_ = m.generation;
    ++publishes_;
    published_.clear();
    for (auto& [obj, copy] : copies) {
      published_.push_back(copy);
      if (obj->latest != copy) continue;
      obj->acked = true;
      obj->acked_version = copy->version;
      std::vector<std::pair<uint64_t, StatusDone>> keep;
      for (auto& [v, done] : obj->durable_waiters) {
        if (v <= copy->version) {
          deferred.Add([done = std::move(done)] { done(absl::OkStatus()); });
        } else {
          keep.emplace_back(v, std::move(done));
        }
      }
      obj->durable_waiters = std::move(keep);
    }
  } else {
    // The new manifest may be on disk even so (a failed directory fsync):
    // keep its extents as well as the old ones.
    for (auto& [obj, copy] : copies) published_.push_back(copy);
    ++publish_errors_;
    last_publish_error_ = status.ToString();
    manifest_dirty_ = true;
  }
  std::vector<std::shared_ptr<FlushWaiter>> keep;
  for (auto& w : publish_waiters_) {
    if (w->ticket > ticket) {
      keep.push_back(std::move(w));
      continue;
    }
    const absl::Status result = w->first_error.ok() ? status : w->first_error;
    deferred.Add([w, result] { w->done(result); });
  }
  publish_waiters_ = std::move(keep);
  copies.clear();
  lock.unlock();
  deferred.Run();
  lock.lock();
}

absl::StatusOr<std::vector<RecoveredJob>> TierManager::Recover(
    const std::function<Stream(int kind)>& stream_of_kind) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!jobs_.empty()) {
    return absl::FailedPreconditionError("recovery must run before any job is registered");
  }
  if (options_.manifest_dir.empty()) return std::vector<RecoveredJob>{};
  absl::StatusOr<Manifest> m = LoadManifest(options_.manifest_dir);
  if (absl::IsNotFound(m.status())) return std::vector<RecoveredJob>{};
  SPILL_RETURN_IF_ERROR(m.status());
  if (nvme_ == nullptr && !m->jobs.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the manifest in ", options_.manifest_dir, " lists jobs but there is no NVMe tier"));
  }
  SPILL_RETURN_IF_ERROR(AdoptAllLocked(*m));
  std::vector<RecoveredJob> out;
  for (ManifestJob& mj : m->jobs) {
    Job& job = jobs_[mj.job_id];
    job.options.uid = mj.uid;
    RecoveredJob rj{.job_id = mj.job_id, .uid = mj.uid, .objects = {}, .versions = {}};
    for (ManifestObject& mo : mj.objects) {
      auto obj = std::make_shared<Object>();
      obj->spec = {.id = mo.id, .name = mo.name, .kind = mo.kind, .dtype = mo.dtype,
                   .num_elements = mo.num_elements, .bytes = mo.bytes, .home = Home::kNvme,
                   .stream = stream_of_kind ? stream_of_kind(mo.kind) : Stream::kParam};
      obj->job = mj.job_id;
      obj->arena_owner = mj.job_id;
      obj->version = mo.version;
      obj->latest = MakeCopy(mj.job_id, std::move(mo.extent), std::move(mo.crcs), mo.bytes,
                             mo.version);
      obj->acked = true;
      obj->acked_version = mo.version;
      published_.push_back(obj->latest);
      job.nvme_home_bytes += mo.bytes;
      rj.objects.push_back(obj->spec);
      rj.versions.push_back(mo.version);
      job.objects[mo.id] = std::move(obj);
    }
    out.push_back(std::move(rj));
  }
  generation_ = m->generation;
  return out;
}

absl::Status TierManager::AdoptAllLocked(const Manifest& m) {
  std::vector<std::pair<std::string, const NvmeExtent*>> adopted;
  absl::Status status;
  for (const ManifestJob& mj : m.jobs) {
    for (const ManifestObject& mo : mj.objects) {
      if (mo.bytes == 0 || mo.bytes > mo.extent.bytes) {
        status = absl::DataLossError(absl::StrCat(
            "manifest in ", options_.manifest_dir, ": ", Name(mj.job_id, mo.id), " has ",
            mo.bytes, " bytes in an extent of ", mo.extent.bytes));
      } else {
        status = nvme_->Adopt(mj.job_id, mo.extent);
        if (!status.ok()) {
          status = absl::Status(status.code(), absl::StrCat("recovering ", Name(mj.job_id, mo.id),
                                                            ": ", status.message()));
        }
      }
      if (!status.ok()) break;
      adopted.emplace_back(mj.job_id, &mo.extent);
    }
    if (!status.ok()) break;
  }
  if (status.ok()) return status;
  for (const auto& [job, extent] : adopted) nvme_->Free(job, *extent).IgnoreError();
  return status;
}

}  // namespace spill::storage
