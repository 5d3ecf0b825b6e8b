// Registry: objects with home kNvme, routed through the TierManager; jobs
// recovered from its manifest; DropJob. See registry.h.
#include "server/registry.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/status_macros.h"
#include "server/registry_internal.h"

namespace spill::server {

void Registry::RunDeferred() {
  std::vector<std::function<void()>> work;
  {
    std::lock_guard<std::mutex> lock(mu_);
    work.swap(deferred_);
  }
  for (auto& fn : work) fn();
}

absl::StatusOr<ObjectRecord> Registry::RegisterNvmeLocked(Job& job, ObjectRecord record,
                                                          uint64_t bytes) {
  if (!job.tiered) {
    storage::JobOptions options;
    options.uid = job.uid;
    options.arena_owner = job.arena_key;
    SPILL_RETURN_IF_ERROR(tiers_->RegisterJob(job.id, options));
    job.tiered = true;
  }
  record.id = next_object_id_;
  storage::ObjectSpec spec;
  spec.id = record.id;
  spec.name = record.name;
  spec.kind = record.kind;
  spec.dtype = record.dtype;
  spec.num_elements = record.num_elements;
  spec.bytes = bytes;
  spec.home = storage::Home::kNvme;
  // No callback runs: CreateObject allocates nothing for a kNvme object.
  SPILL_RETURN_IF_ERROR(tiers_->CreateObject(job.id, spec));
  ++next_object_id_;
  job.names.emplace(record.name, record.id);
  job.objects.emplace(record.id, record);
  ++job.nvme_objects;
  return record;
}

bool Registry::MayWait(uint64_t session_id, uint64_t object_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<StreamTarget> target = StreamTargetLocked(session_id, object_id);
  return target.ok() && target->object->home == storage::Home::kNvme;
}

absl::StatusOr<size_t> Registry::SetAccessOrder(uint64_t session_id,
                                                const std::vector<uint64_t>& object_ids) {
  std::string job_id;
  std::vector<uint64_t> tiered;
  {
    std::lock_guard<std::mutex> lock(mu_);
    SPILL_ASSIGN_OR_RETURN(Session * session, StreamSessionLocked(session_id));
    job_id = session->job_id;
    Job& job = *jobs_.at(job_id);
    for (uint64_t id : object_ids) {
      absl::StatusOr<ObjectRecord*> object = FindObjectLocked(job, id);
      if (!object.ok()) {
        return absl::Status(object.status().code(),
                            absl::StrCat("access order: ", object.status().message()));
      }
      if ((*object)->home == storage::Home::kNvme) tiered.push_back(id);
    }
    if (tiers_ == nullptr || !job.tiered) return size_t{0};
  }
  SPILL_RETURN_IF_ERROR(tiers_->SetAccessOrder(job_id, tiered));
  return tiered.size();
}

void Registry::AcquireAsync(uint64_t session_id, uint64_t object_id, bool for_write,
                            RecordDone done) {
  std::string job_id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    absl::StatusOr<StreamTarget> target = StreamTargetLocked(session_id, object_id);
    if (!target.ok()) {
      done(target.status());
      return;
    }
    if (target->object->home == storage::Home::kNvme) job_id = target->session->job_id;
  }
  if (job_id.empty()) {
    done(Acquire(session_id, object_id));
    return;
  }
  tiers_->Acquire(job_id, object_id,
                  for_write ? storage::AcquireMode::kWrite : storage::AcquireMode::kRead,
                  [this, session_id, object_id, job_id,
                   done = std::move(done)](absl::StatusOr<storage::Extent> extent) {
                    if (!extent.ok()) {
                      done(extent.status());
                      return;
                    }
                    absl::StatusOr<ObjectRecord> record =
                        FinishTierAcquire(session_id, object_id, job_id, *extent);
                    if (!record.ok()) tiers_->Release(job_id, object_id).IgnoreError();
                    done(std::move(record));
                  });
}

absl::StatusOr<ObjectRecord> Registry::FinishTierAcquire(uint64_t session_id, uint64_t object_id,
                                                         const std::string& job_id,
                                                         const storage::Extent& extent) {
  std::lock_guard<std::mutex> lock(mu_);
  SPILL_ASSIGN_OR_RETURN(StreamTarget target, StreamTargetLocked(session_id, object_id));
  auto [session, object] = target;
  if (session->job_id != job_id) {
    return absl::AbortedError(absl::StrCat("job '", job_id, "' was freed during the acquire"));
  }
  if (object->pin_count == std::numeric_limits<uint32_t>::max()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("object '", object->name, "' has the maximum number of pins"));
  }
  ++object->pin_count;
  ++session->pins[object_id];
  jobs_.at(job_id)->acquired_bytes += extent.size;
  ObjectRecord record = *object;
  record.extent = extent;
  return record;
}

void Registry::PrefetchAsync(uint64_t session_id, uint64_t object_id, RecordDone done) {
  std::string job_id;
  ObjectRecord record;
  {
    std::lock_guard<std::mutex> lock(mu_);
    absl::StatusOr<StreamTarget> target = StreamTargetLocked(session_id, object_id);
    if (!target.ok()) {
      done(target.status());
      return;
    }
    record = *target->object;
    if (record.home == storage::Home::kNvme) job_id = target->session->job_id;
  }
  if (job_id.empty()) {
    done(record);
    return;
  }
  tiers_->Prefetch(job_id, object_id,
                   [record, done = std::move(done)](absl::Status status) mutable {
                     if (!status.ok()) {
                       done(status);
                     } else {
                       done(std::move(record));
                     }
                   });
}

absl::StatusOr<ObjectRecord> Registry::NvmeWriteBack(uint64_t session_id, uint64_t object_id,
                                                     uint64_t version) {
  std::string job_id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    SPILL_ASSIGN_OR_RETURN(Session * session, StreamSessionLocked(session_id));
    job_id = session->job_id;
  }
  // Starts the asynchronous write; durability is reported by Flush.
  SPILL_RETURN_IF_ERROR(tiers_->MarkWritten(job_id, object_id, version));
  std::lock_guard<std::mutex> lock(mu_);
  SPILL_ASSIGN_OR_RETURN(StreamTarget target, StreamTargetLocked(session_id, object_id));
  ObjectRecord* object = target.object;
  object->version = std::max(object->version, version);
  jobs_.at(job_id)->written_back_bytes += DTypeSize(object->dtype) * object->num_elements;
  return *object;
}

void Registry::Flush(uint64_t session_id, const Token& token,
                     std::function<void(absl::Status)> done) {
  std::string job_id;
  bool tiered = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    absl::StatusOr<Session*> session = AuthLocked(session_id, token);
    if (!session.ok()) {
      done(session.status());
      return;
    }
    job_id = (*session)->job_id;
    tiered = jobs_.at(job_id)->tiered && tiers_ != nullptr;
  }
  if (!tiered) {
    done(absl::OkStatus());  // Nothing of the job is on NVMe.
    return;
  }
  tiers_->Flush(job_id, std::move(done));
}

absl::Status Registry::AddRecoveredJobs(const std::vector<storage::RecoveredJob>& jobs) {
  if (jobs.empty()) return absl::OkStatus();
  if (tiers_ == nullptr) return absl::FailedPreconditionError("recovered jobs need a TierManager");
  std::lock_guard<std::mutex> lock(mu_);
  for (const storage::RecoveredJob& r : jobs) {
    if (jobs_.count(r.job_id) != 0) {
      return absl::AlreadyExistsError(absl::StrCat("recovered job '", r.job_id, "' exists"));
    }
  }
  const auto deadline = clock_() + options_.job_grace;
  for (const storage::RecoveredJob& r : jobs) {
    auto job = std::make_unique<Job>();
    job->id = r.job_id;
    job->arena_key = absl::StrCat(r.job_id, "#", next_job_instance_++);
    job->uid = r.uid;
    job->tiered = true;
    job->recovered = true;
    job->grace_deadline = deadline;
    storage::JobOptions options;
    options.uid = r.uid;
    options.arena_owner = job->arena_key;
    // The recovered job has no resident object yet, so this cannot fail.
    SPILL_RETURN_IF_ERROR(tiers_->SetJobOptions(r.job_id, options));
    for (size_t i = 0; i < r.objects.size(); ++i) {
      const storage::ObjectSpec& spec = r.objects[i];
      ObjectRecord record;
      record.id = spec.id;
      record.name = spec.name;
      record.kind = spec.kind;
      record.dtype = spec.dtype;
      record.num_elements = spec.num_elements;
      record.version = i < r.versions.size() ? r.versions[i] : 0;
      record.home = storage::Home::kNvme;
      next_object_id_ = std::max(next_object_id_, spec.id + 1);
      job->names.emplace(record.name, record.id);
      job->objects.emplace(record.id, std::move(record));
      ++job->nvme_objects;
    }
    jobs_.emplace(r.job_id, std::move(job));
  }
  return absl::OkStatus();
}

absl::Status Registry::DropJob(const std::string& job_id, uid_t caller_uid) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) {
      return absl::NotFoundError(absl::StrCat("no job '", job_id, "'"));
    }
    const Job& job = *it->second;
    if (caller_uid != 0 && caller_uid != job.uid) {
      return absl::PermissionDeniedError(absl::StrCat("job '", job_id, "' belongs to uid ",
                                                      job.uid, "; caller is uid ", caller_uid,
                                                      " (only root or the job's uid may drop it)"));
    }
    if (job.compute_pins != 0 || !job.pending_names.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job '", job_id, "' has an optimizer step or a registration in progress; retry"));
    }
    FreeJobLocked(job_id);
  }
  RunDeferred();
  return absl::OkStatus();
}

}  // namespace spill::server
