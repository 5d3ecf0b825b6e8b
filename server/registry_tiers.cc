// Registry: objects with home kNvme, routed through the TierManager; jobs
// recovered from its manifest; DropJob. See registry.h.
#include "server/registry.h"

#include <algorithm>
#include <limits>
#include <tuple>
#include <utility>

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
    SPILL_RETURN_IF_ERROR(tiers_->RegisterJob(job.id, TierOptionsLocked(job)));
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
  spec.stream = StreamOfKind(record.kind);
  // No callback runs: CreateObject allocates nothing for a kNvme object.
  SPILL_RETURN_IF_ERROR(tiers_->CreateObject(job.id, spec));
  ++next_object_id_;
  job.names.emplace(record.name, record.id);
  job.objects.emplace(record.id, record);
  ++job.nvme_objects;
  return record;
}

storage::Stream StreamOfKind(int kind) {
  constexpr int kMaster = 3;  // spill.v1.OBJECT_KIND_MASTER
  constexpr int kMoment = 4;  // spill.v1.OBJECT_KIND_MOMENT
  return kind == kMaster || kind == kMoment ? storage::Stream::kOptimizer
                                            : storage::Stream::kParam;
}

std::string BudgetString(const std::optional<storage::OffloadBudget>& budget) {
  if (!budget.has_value()) return "unset";
  return absl::StrCat("buffer_count=", budget->buffer_count, " buffer_size=", budget->buffer_size,
                      " max_in_cpu=", budget->max_in_cpu);
}

storage::JobOptions Registry::TierOptionsLocked(const Job& job) const {
  storage::JobOptions options;
  options.uid = job.uid;
  options.arena_owner = job.arena_key;
  if (job.budgets.param.has_value()) options.param = *job.budgets.param;
  if (job.budgets.optimizer.has_value()) options.optimizer = *job.budgets.optimizer;
  return options;
}

absl::Status Registry::CheckBudgets(const JobBudgets& budgets) const {
  const uint64_t capacity = arena_->Stats().capacity_bytes;
  for (const auto& [name, budget] :
       {std::pair{"param_budget", &budgets.param}, std::pair{"optimizer_budget", &budgets.optimizer}}) {
    if (!budget->has_value()) continue;
    const storage::OffloadBudget& b = **budget;
    if (tiers_ == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          name, " is set but spilld runs without an NVMe tier (--nvme-dirs): the offload "
          "budgets govern objects with home NVME, which this spilld cannot hold"));
    }
    for (const auto& [field, value] : {std::pair{"buffer_count", uint64_t{b.buffer_count}},
                                       std::pair{"buffer_size", b.buffer_size},
                                       std::pair{"max_in_cpu", b.max_in_cpu}}) {
      if (value == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, ".", field, " is 0; it must be > 0 (leave the budget unset for "
                         "spilld's defaults)"));
      }
    }
    if (b.buffer_count > kMaxBufferCount) {
      return absl::InvalidArgumentError(absl::StrCat(name, ".buffer_count is ", b.buffer_count,
                                                     "; the limit is ", kMaxBufferCount));
    }
    if (b.buffer_size > capacity) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ".buffer_size is ", b.buffer_size, " bytes; the pinned pool holds ",
                       capacity, " bytes, so no object that large could be made resident"));
    }
    if (b.max_in_cpu < b.buffer_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, ".max_in_cpu (", b.max_in_cpu, " bytes) is below its buffer_size (",
          b.buffer_size, " bytes): an object of buffer_size could never be resident"));
    }
  }
  return absl::OkStatus();
}

namespace {
bool SameBudget(const std::optional<storage::OffloadBudget>& a,
                const std::optional<storage::OffloadBudget>& b) {
  if (a.has_value() != b.has_value()) return false;
  return !a.has_value() || (a->buffer_count == b->buffer_count &&
                            a->buffer_size == b->buffer_size && a->max_in_cpu == b->max_in_cpu);
}
}  // namespace

absl::Status Registry::JoinBudgetsLocked(Job& job, const JobBudgets& budgets,
                                         bool first_session) {
  if (first_session) {
    // A recovered job's objects must fit the budgets' buffer_size.
    for (const auto& [id, object] : job.objects) {
      const bool optimizer = StreamOfKind(object.kind) == storage::Stream::kOptimizer;
      const auto& budget = optimizer ? budgets.optimizer : budgets.param;
      const uint64_t bytes = DTypeSize(object.dtype) * object.num_elements;
      if (object.home == storage::Home::kNvme && budget.has_value() &&
          bytes > budget->buffer_size) {
        return absl::FailedPreconditionError(absl::StrCat(
            "job '", job.id, "' has object '", object.name, "' of ", bytes, " bytes, more than ",
            optimizer ? "optimizer_budget" : "param_budget", ".buffer_size ",
            budget->buffer_size));
      }
    }
    JobBudgets previous = job.budgets;
    job.budgets = budgets;
    if (!job.tiered || tiers_ == nullptr) return absl::OkStatus();
    absl::Status status = tiers_->SetJobOptions(job.id, TierOptionsLocked(job));
    if (!status.ok()) job.budgets = previous;
    return status;
  }
  for (const auto& [name, have, want] :
       {std::tuple{"param_budget", &job.budgets.param, &budgets.param},
        std::tuple{"optimizer_budget", &job.budgets.optimizer, &budgets.optimizer}}) {
    if (!want->has_value() || SameBudget(*have, *want)) continue;
    return absl::FailedPreconditionError(absl::StrCat(
        "job '", job.id, "' has ", name, " ", BudgetString(*have), " (set by its first session); "
        "this session asked for ", BudgetString(*want)));
  }
  return absl::OkStatus();
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
    // The recovered job has no resident object yet, so this cannot fail.
    SPILL_RETURN_IF_ERROR(tiers_->SetJobOptions(r.job_id, TierOptionsLocked(*job)));
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
