#include "storage/tier_manager.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "storage/tier_manager_internal.h"

namespace spill::storage {
namespace {

const char* StreamName(Stream s) {
  return s == Stream::kParam ? "offload_param" : "offload_optimizer";
}

std::string Label(const std::string& job, const ObjectSpec& spec) {
  return absl::StrCat("object ", spec.id, spec.name.empty() ? "" : " '", spec.name,
                      spec.name.empty() ? "" : "'", " of job ", job);
}

absl::Status ValidateBudget(const OffloadBudget& b, Stream s) {
  if (b.buffer_count != 0 && b.buffer_size == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        StreamName(s), ".buffer_count is ", b.buffer_count, " but buffer_size is not set"));
  }
  return absl::OkStatus();
}

absl::Status ValidateJobOptions(const JobOptions& options) {
  SPILL_RETURN_IF_ERROR(ValidateBudget(options.param, Stream::kParam));
  return ValidateBudget(options.optimizer, Stream::kOptimizer);
}

}  // namespace

TierManager::TierManager(PinnedArena* arena, NvmeTier* nvme, TierManagerOptions options)
    : arena_(arena), nvme_(nvme), options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<TierManager>> TierManager::Create(PinnedArena* arena,
                                                                 NvmeTier* nvme,
                                                                 TierManagerOptions options) {
  if (arena == nullptr) return absl::InvalidArgumentError("the tier manager needs a pinned arena");
  if (options.max_writebacks == 0) {
    return absl::InvalidArgumentError("max_writebacks must be at least 1");
  }
  std::unique_ptr<TierManager> tm(new TierManager(arena, nvme, std::move(options)));
  tm->last_retry_ = std::chrono::steady_clock::now();
  tm->last_publish_ = tm->last_retry_;
  tm->thread_ = std::thread([p = tm.get()] { p->ThreadMain(); });
  return tm;
}

TierManager::~TierManager() {
  std::vector<std::function<void()>> cancelled;
  {
    std::unique_lock<std::mutex> lock(mu_);
    stopping_ = true;
    cv_.notify_all();
  }
  thread_.join();
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return io_in_flight_ == 0; });
  const absl::Status status = absl::CancelledError("the tier manager is shutting down");
  for (auto& w : publish_waiters_) cancelled.push_back([w, status] { w->done(status); });
  for (auto& p : parked_) cancelled.push_back([done = std::move(p.done), status] { done(status); });
  parked_.clear();
  for (auto& [name, job] : jobs_) {
    for (auto& [id, obj] : job.objects) {
      for (auto& [v, done] : obj->durable_waiters) {
        cancelled.push_back([done, status] { done(status); });
      }
      for (auto& [w, v] : obj->flush_waiters) {
        if (--w->pending == 0) cancelled.push_back([w, status] { w->done(status); });
      }
      if (obj->extent.has_value()) arena_->Free(obj->arena_owner, *obj->extent).IgnoreError();
    }
  }
  jobs_.clear();
  published_.clear();
  lock.unlock();
  for (auto& fn : cancelled) fn();
}

absl::StatusOr<TierManager::Job*> TierManager::JobLocked(const std::string& job) {
  auto it = jobs_.find(job);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("unknown job '", job, "'"));
  return &it->second;
}

absl::StatusOr<TierManager::ObjectPtr> TierManager::ObjectLocked(const std::string& job,
                                                                 uint64_t id) {
  SPILL_ASSIGN_OR_RETURN(Job * j, JobLocked(job));
  auto it = j->objects.find(id);
  if (it == j->objects.end()) {
    return absl::NotFoundError(absl::StrCat("job '", job, "' has no object ", id));
  }
  return it->second;
}

const OffloadBudget& TierManager::BudgetLocked(const Job& job, const Object& obj) const {
  return obj.spec.stream == Stream::kParam ? job.options.param : job.options.optimizer;
}

uint64_t TierManager::ResidentLimit(const OffloadBudget& budget) {
  if (budget.max_in_cpu != 0) return budget.max_in_cpu;
  return budget.buffer_count * budget.buffer_size;
}

absl::Status TierManager::RegisterJob(const std::string& job, JobOptions options) {
  if (job.empty()) return absl::InvalidArgumentError("the job id is empty");
  SPILL_RETURN_IF_ERROR(ValidateJobOptions(options));
  std::lock_guard<std::mutex> lock(mu_);
  if (jobs_.contains(job)) {
    return absl::AlreadyExistsError(absl::StrCat("job '", job, "' is already registered"));
  }
  jobs_[job].options = std::move(options);
  return absl::OkStatus();
}

absl::Status TierManager::SetJobOptions(const std::string& job, JobOptions options) {
  SPILL_RETURN_IF_ERROR(ValidateJobOptions(options));
  std::lock_guard<std::mutex> lock(mu_);
  SPILL_ASSIGN_OR_RETURN(Job * j, JobLocked(job));
  const bool has_extent = std::any_of(j->objects.begin(), j->objects.end(), [](const auto& e) {
    return e.second->extent.has_value() || e.second->loading;
  });
  const std::string owner = options.arena_owner.empty() ? job : options.arena_owner;
  if (has_extent && j->ArenaOwner(job) != owner) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job '", job, "' has objects in pinned memory; its arena owner cannot change"));
  }
  j->options = std::move(options);
  for (auto& [id, obj] : j->objects) {
    if (!obj->extent.has_value() && !obj->loading) obj->arena_owner = j->ArenaOwner(job);
  }
  return absl::OkStatus();
}

absl::Status TierManager::CheckNvmeSpecLocked(const Job& job, const Object& obj) const {
  const ObjectSpec& spec = obj.spec;
  const OffloadBudget& budget = BudgetLocked(job, obj);
  if (budget.buffer_size != 0 && spec.bytes > budget.buffer_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(Label(obj.job, spec), " has ", spec.bytes, " bytes, more than the ",
                     StreamName(spec.stream), ".buffer_size of ", budget.buffer_size));
  }
  const uint64_t quota = nvme_->options().job_quota_bytes;
  if (quota != 0 && job.nvme_home_bytes + spec.bytes > quota) {
    return absl::ResourceExhaustedError(absl::StrCat(
        Label(obj.job, spec), " (", spec.bytes, " bytes) would take the job's NVMe objects to ",
        job.nvme_home_bytes + spec.bytes, " bytes, past its NVMe quota of ", quota));
  }
  return absl::OkStatus();
}

absl::Status TierManager::CreateObject(const std::string& job, const ObjectSpec& spec) {
  if (spec.bytes == 0) {
    return absl::InvalidArgumentError(absl::StrCat(Label(job, spec), " has 0 bytes"));
  }
  if (spec.home == Home::kNvme && nvme_ == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        Label(job, spec), " has an NVMe home but spilld runs without an NVMe tier"));
  }
  std::unique_lock<std::mutex> lock(mu_);
  SPILL_ASSIGN_OR_RETURN(Job * j, JobLocked(job));
  if (j->objects.contains(spec.id)) {
    return absl::AlreadyExistsError(absl::StrCat("job '", job, "' already has object ", spec.id));
  }
  auto obj = std::make_shared<Object>();
  obj->spec = spec;
  obj->job = job;
  obj->arena_owner = j->ArenaOwner(job);
  if (spec.home == Home::kNvme) {
    SPILL_RETURN_IF_ERROR(CheckNvmeSpecLocked(*j, *obj));
    j->nvme_home_bytes += spec.bytes;
    j->objects[spec.id] = std::move(obj);
    return absl::OkStatus();
  }
  // Allocation may refill a segment (slow): reserve the id, allocate
  // unlocked. Acquires meanwhile wait as for a load.
  obj->loading = true;
  j->objects[spec.id] = obj;
  lock.unlock();
  absl::StatusOr<Extent> extent = arena_->Allocate(obj->arena_owner, spec.bytes);
  Deferred deferred;
  lock.lock();
  obj->loading = false;
  if (obj->freed || !extent.ok()) {
    if (extent.ok()) arena_->Free(obj->arena_owner, *extent).IgnoreError();
    const absl::Status status =
        extent.ok() ? absl::AbortedError(absl::StrCat(Label(job, spec), " was freed while created"))
                    : extent.status();
    if (!obj->freed) jobs_[job].objects.erase(spec.id);
    for (auto& w : obj->waiters) deferred.Add([done = std::move(w.done), status] { done(status); });
    obj->waiters.clear();
    lock.unlock();
    return status;
  }
  obj->extent = *extent;
  ProcessWaitersLocked(*obj, deferred);
  lock.unlock();
  return absl::OkStatus();
}

void TierManager::Acquire(const std::string& job, uint64_t id, AcquireMode mode,
                          AcquireDone done) {
  Deferred deferred;
  std::unique_lock<std::mutex> lock(mu_);
  absl::StatusOr<ObjectPtr> obj = ObjectLocked(job, id);
  if (!obj.ok()) {
    deferred.Add([done = std::move(done), s = obj.status()] { done(s); });
    return;
  }
  RequestLocked(lock, *obj, mode, /*prefetch=*/false, std::move(done), deferred);
}

void TierManager::Prefetch(const std::string& job, uint64_t id, StatusDone done) {
  Deferred deferred;
  std::unique_lock<std::mutex> lock(mu_);
  absl::StatusOr<ObjectPtr> obj = ObjectLocked(job, id);
  if (!obj.ok()) {
    deferred.Add([done = std::move(done), s = obj.status()] { done(s); });
    return;
  }
  AcquireDone wrapped = [done = std::move(done)](absl::StatusOr<Extent> e) { done(e.status()); };
  RequestLocked(lock, *obj, AcquireMode::kRead, /*prefetch=*/true, std::move(wrapped), deferred);
}

void TierManager::RequestLocked(std::unique_lock<std::mutex>& lock, const ObjectPtr& obj,
                                AcquireMode mode, bool prefetch, AcquireDone done,
                                Deferred& deferred) {
  Job& job = jobs_.at(obj->job);
  if (obj->loading || obj->resident()) {
    if (!prefetch) {
      TierCounters& c = job.counters;
      if (obj->prefetched) ++c.prefetch_hits;
      if (obj->load_by_prefetch) ++c.prefetch_late;
      obj->prefetched = obj->load_by_prefetch = false;
    }
    obj->waiters.push_back({mode, !prefetch, std::move(done)});
    if (obj->resident()) ProcessWaitersLocked(*obj, deferred);
    return;
  }
  absl::Status room = CheckBuffersLocked(job, *obj);
  if (room.ok()) {
    room = MakeRoomForJobLocked(job, *obj);
    if (!room.ok() && PendingWriteBackLocked(&job, &obj->spec.stream)) {
      parked_.push_back({obj, mode, prefetch, std::move(done)});  // retried as writes finish
      return;
    }
  }
  if (!room.ok()) {
    deferred.Add([done = std::move(done), room] { done(room); });
    return;
  }
  CopyPtr copy = obj->latest;
  obj->loading = true;
  obj->load_by_prefetch = prefetch;
  obj->waiters.push_back({mode, !prefetch, std::move(done)});
  job.stream_resident[StreamIndex(obj->spec.stream)] += obj->spec.bytes;
  absl::StatusOr<Extent> extent = AllocateArena(lock, *obj);
  if (!extent.ok()) {
    OnLoadDoneLocked(obj, std::nullopt, extent.status(), deferred);
    return;
  }
  obj->extent = *extent;
  if (obj->freed) {
    OnLoadDoneLocked(obj, *extent, absl::OkStatus(), deferred);
    return;
  }
  // Counted once the read starts (a request that waited for room retries).
  if (!prefetch && copy != nullptr) ++jobs_.at(obj->job).counters.prefetch_misses;
  ++io_in_flight_;
  deferred.Add([this, obj, extent = *extent, copy] { StartLoad(obj, extent, copy); });
}

absl::Status TierManager::CheckBuffersLocked(const Job& job, const Object& obj) const {
  const OffloadBudget& budget = BudgetLocked(job, obj);
  if (obj.spec.home != Home::kNvme || budget.buffer_count == 0) return absl::OkStatus();
  uint32_t busy = 0;
  for (const auto& [id, o] : job.objects) {
    if (o->spec.home == Home::kNvme && o->spec.stream == obj.spec.stream &&
        (o->pins > 0 || o->loading)) {
      ++busy;
    }
  }
  if (busy < budget.buffer_count) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      Label(obj.job, obj.spec), " needs a pinned buffer but all ", budget.buffer_count, " ",
      StreamName(obj.spec.stream), " buffers (buffer_count) of the job are acquired or loading"));
}

absl::Status TierManager::MakeRoomForJobLocked(Job& job, const Object& obj) {
  const uint64_t limit = ResidentLimit(BudgetLocked(job, obj));
  const uint64_t resident = job.stream_resident[StreamIndex(obj.spec.stream)];
  if (obj.spec.home != Home::kNvme || limit == 0 || resident + obj.spec.bytes <= limit) {
    return absl::OkStatus();
  }
  std::vector<EvictionCandidate> candidates;
  for (const auto& [id, o] : job.objects) {
    if (o->spec.stream == obj.spec.stream && o->Evictable()) {
      candidates.push_back({{o->job, id}, o->spec.bytes, false});
    }
  }
  const uint64_t need = resident + obj.spec.bytes - limit;
  std::vector<ObjectKey> victims = policy_.ChooseVictims(std::move(candidates), need);
  if (victims.empty()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        Label(obj.job, obj.spec), " needs ", obj.spec.bytes, " bytes of pinned memory but the ",
        "job's ", StreamName(obj.spec.stream), " objects already hold ", resident, " of its ",
        "max_in_cpu of ", limit, " bytes and not enough of them are clean and unpinned to evict"));
  }
  for (const ObjectKey& key : victims) EvictLocked(job, *job.objects.at(key.id));
  return absl::OkStatus();
}

absl::StatusOr<Extent> TierManager::AllocateArena(std::unique_lock<std::mutex>& lock,
                                                  const Object& obj) {
  while (true) {
    lock.unlock();
    absl::StatusOr<Extent> extent = arena_->Allocate(obj.arena_owner, obj.spec.bytes);
    lock.lock();
    if (extent.ok() || !absl::IsResourceExhausted(extent.status())) return extent;
    if (!EvictOneLocked()) {
      return absl::ResourceExhaustedError(absl::StrCat(
          Label(obj.job, obj.spec), " needs ", obj.spec.bytes, " bytes of pinned memory and ",
          "no clean unpinned object is left to evict: ", extent.status().message()));
    }
  }
}

bool TierManager::EvictOneLocked() {
  std::vector<EvictionCandidate> candidates;
  for (const auto& [name, job] : jobs_) {
    for (const auto& [id, o] : job.objects) {
      if (o->Evictable()) candidates.push_back({{name, id}, o->spec.bytes, false});
    }
  }
  if (candidates.empty()) return false;
  const ObjectKey victim = policy_.Rank(std::move(candidates)).front().key;
  Job& job = jobs_.at(victim.job);
  EvictLocked(job, *job.objects.at(victim.id));
  return true;
}

void TierManager::EvictLocked(Job& job, Object& obj) {
  arena_->Free(obj.arena_owner, *obj.extent).IgnoreError();
  obj.extent.reset();
  obj.prefetched = false;
  job.stream_resident[StreamIndex(obj.spec.stream)] -= obj.spec.bytes;
  ++job.counters.evictions;
  job.counters.evicted_bytes += obj.spec.bytes;
}

void TierManager::StartLoad(const ObjectPtr& obj, Extent extent, CopyPtr copy) {
  uint8_t* dst = arena_->Data(extent);
  if (copy == nullptr) {  // never written: its content is zeros
    std::memset(dst, 0, obj->spec.bytes);
    OnLoadDone(obj, extent, absl::OkStatus(), 0);
    return;
  }
  nvme_->Read(copy->extent, copy->crcs, dst, copy->bytes, Label(obj->job, obj->spec),
              [this, obj, extent, copy](absl::Status s) {
                OnLoadDone(obj, extent, s, copy->bytes);
              });
}

void TierManager::OnLoadDone(const ObjectPtr& obj, Extent extent, absl::Status status,
                             uint64_t bytes) {
  Deferred deferred;
  std::lock_guard<std::mutex> lock(mu_);
  --io_in_flight_;
  cv_.notify_all();
  auto job = jobs_.find(obj->job);
  if (status.ok() && bytes > 0 && job != jobs_.end() && !obj->freed) {
    ++job->second.counters.reads;
    job->second.counters.read_bytes += bytes;
  } else if (!status.ok() && job != jobs_.end()) {
    ++job->second.counters.read_errors;
  }
  OnLoadDoneLocked(obj, extent, status, deferred);
}

void TierManager::OnLoadDoneLocked(const ObjectPtr& obj, std::optional<Extent> extent,
                                   absl::Status status, Deferred& deferred) {
  obj->loading = false;
  if (obj->freed || !status.ok()) {
    if (extent.has_value()) arena_->Free(obj->arena_owner, *extent).IgnoreError();
    obj->extent.reset();
    if (obj->freed) return;  // FreeObject settled the waiters and the accounting
    Job& job = jobs_.at(obj->job);
    job.stream_resident[StreamIndex(obj->spec.stream)] -= obj->spec.bytes;
    obj->load_by_prefetch = false;
    if (!extent.has_value() && absl::IsResourceExhausted(status) &&
        PendingWriteBackLocked(nullptr, nullptr)) {
      // The arena is full of dirty objects being written: wait for them.
      for (auto& w : obj->waiters) parked_.push_back({obj, w.mode, !w.pin, std::move(w.done)});
      obj->waiters.clear();
      return;
    }
    for (auto& w : obj->waiters) deferred.Add([done = std::move(w.done), status] { done(status); });
    obj->waiters.clear();
    return;
  }
  if (obj->load_by_prefetch) obj->prefetched = true;
  obj->load_by_prefetch = false;
  ProcessWaitersLocked(*obj, deferred);
}

void TierManager::ProcessWaitersLocked(Object& obj, Deferred& deferred) {
  // A write someone waits on (Flush, a durable callback) is let finish, so
  // that a writer stepping the object again and again cannot starve them.
  const bool awaited = !obj.durable_waiters.empty() || !obj.flush_waiters.empty();
  std::vector<Object::Waiter> keep;
  for (auto& w : obj.waiters) {
    if (w.mode == AcquireMode::kWrite && obj.writing && awaited) {
      keep.push_back(std::move(w));
      continue;
    }
    if (w.mode == AcquireMode::kWrite) {
      // The writer may change the bytes under a write-back in flight: that
      // copy may be torn, so it never becomes the durable one.
      if (obj.writing) obj.discard_write = true;
      ++obj.open_writes;
    }
    if (w.pin) {
      ++obj.pins;
      policy_.Touch({obj.job, obj.spec.id});
    }
    deferred.Add([done = std::move(w.done), e = *obj.extent] { done(e); });
  }
  obj.waiters = std::move(keep);
}

absl::Status TierManager::Release(const std::string& job, uint64_t id) {
  Deferred deferred;
  std::unique_lock<std::mutex> lock(mu_);
  SPILL_ASSIGN_OR_RETURN(ObjectPtr obj, ObjectLocked(job, id));
  if (obj->pins == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(Label(job, obj->spec), " is not acquired; nothing to release"));
  }
  --obj->pins;
  if (obj->pins == 0 && obj->open_writes > 0) {
    // A writer left without MarkWritten: its bytes are settled now.
    obj->open_writes = 0;
    if (obj->dirty) {
      QueueWriteBackLocked(obj);
      StartWriteBacksLocked(deferred);
    }
  }
  if (obj->pins == 0 && !parked_.empty()) RetryParkedLocked(lock, deferred);
  return absl::OkStatus();
}

bool TierManager::PendingWriteBackLocked(const Job* job, const Stream* stream) const {
  auto pending = [stream](const Object& o) {
    return o.dirty && o.pins == 0 && (o.queued || o.writing) &&
           (stream == nullptr || o.spec.stream == *stream);
  };
  if (job != nullptr) {
    return std::any_of(job->objects.begin(), job->objects.end(),
                       [&](const auto& e) { return pending(*e.second); });
  }
  for (const auto& [name, j] : jobs_) {
    if (PendingWriteBackLocked(&j, stream)) return true;
  }
  return false;
}

void TierManager::RetryParkedLocked(std::unique_lock<std::mutex>& lock, Deferred& deferred) {
  std::vector<ParkedRequest> parked;
  parked.swap(parked_);
  for (ParkedRequest& p : parked) {
    if (p.obj->freed) {
      deferred.Add([done = std::move(p.done), label = Label(p.obj->job, p.obj->spec)] {
        done(absl::AbortedError(absl::StrCat(label, " was freed")));
      });
      continue;
    }
    RequestLocked(lock, p.obj, p.mode, p.prefetch, std::move(p.done), deferred);
  }
}

absl::Status TierManager::SetAccessOrder(const std::string& job, std::vector<uint64_t> ids) {
  std::lock_guard<std::mutex> lock(mu_);
  SPILL_RETURN_IF_ERROR(JobLocked(job).status());
  policy_.SetAccessOrder(job, std::move(ids));
  return absl::OkStatus();
}

absl::Status TierManager::FreeObject(const std::string& job, uint64_t id) {
  Deferred deferred;
  std::lock_guard<std::mutex> lock(mu_);
  SPILL_ASSIGN_OR_RETURN(Job * j, JobLocked(job));
  SPILL_ASSIGN_OR_RETURN(ObjectPtr obj, ObjectLocked(job, id));
  ReleaseObjectLocked(*j, obj, deferred);
  return absl::OkStatus();
}

absl::Status TierManager::FreeJob(const std::string& job) {
  Deferred deferred;
  std::lock_guard<std::mutex> lock(mu_);
  SPILL_ASSIGN_OR_RETURN(Job * j, JobLocked(job));
  std::vector<ObjectPtr> objects;
  for (auto& [id, obj] : j->objects) objects.push_back(obj);
  for (const ObjectPtr& obj : objects) ReleaseObjectLocked(*j, obj, deferred);
  jobs_.erase(job);
  policy_.ForgetJob(job);
  manifest_dirty_ = true;
  cv_.notify_all();
  return absl::OkStatus();
}

void TierManager::ReleaseObjectLocked(Job& job, const ObjectPtr& obj, Deferred& deferred) {
  obj->freed = true;
  job.objects.erase(obj->spec.id);
  policy_.Forget({obj->job, obj->spec.id});
  const absl::Status aborted = absl::AbortedError(
      absl::StrCat(Label(obj->job, obj->spec), " was freed"));
  for (auto& w : obj->waiters) deferred.Add([done = std::move(w.done), aborted] { done(aborted); });
  obj->waiters.clear();
  std::vector<ParkedRequest> keep;
  for (ParkedRequest& p : parked_) {
    if (p.obj == obj) {
      deferred.Add([done = std::move(p.done), aborted] { done(aborted); });
    } else {
      keep.push_back(std::move(p));
    }
  }
  parked_ = std::move(keep);
  for (auto& [v, done] : obj->durable_waiters) {
    deferred.Add([done = std::move(done), aborted] { done(aborted); });
  }
  obj->durable_waiters.clear();
  SettleFlushWaitersLocked(*obj, nullptr, deferred);
  if (obj->spec.home == Home::kNvme) {
    job.nvme_home_bytes -= obj->spec.bytes;
    if (obj->extent.has_value() || obj->loading) {  // a load counts from its start
      job.stream_resident[StreamIndex(obj->spec.stream)] -= obj->spec.bytes;
    }
    if (obj->latest != nullptr) manifest_dirty_ = true;
  }
  // A load or write in flight uses the extent; its completion frees it.
  if (obj->extent.has_value() && !obj->loading && !obj->writing) {
    arena_->Free(obj->arena_owner, *obj->extent).IgnoreError();
    obj->extent.reset();
  }
  obj->latest.reset();
  cv_.notify_all();
}

absl::StatusOr<ObjectInfo> TierManager::Describe(const std::string& job, uint64_t id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto j = jobs_.find(job);
  if (j == jobs_.end()) return absl::NotFoundError(absl::StrCat("unknown job '", job, "'"));
  auto it = j->second.objects.find(id);
  if (it == j->second.objects.end()) {
    return absl::NotFoundError(absl::StrCat("job '", job, "' has no object ", id));
  }
  const Object& o = *it->second;
  ObjectInfo info;
  info.spec = o.spec;
  info.resident = o.resident();
  info.loading = o.loading;
  info.writing = o.writing;
  info.dirty = o.dirty;
  info.pins = o.pins;
  info.version = o.version;
  info.has_durable = o.latest != nullptr;
  info.durable_version = o.latest != nullptr ? o.latest->version : 0;
  info.acknowledged = o.latest != nullptr && o.acked && o.acked_version == o.latest->version;
  info.write_error = o.write_error;
  if (o.resident()) info.extent = o.extent;
  return info;
}

std::vector<std::string> TierManager::Jobs() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  for (const auto& [name, job] : jobs_) out.push_back(name);
  return out;
}

TierManagerStats TierManager::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  TierManagerStats stats;
  for (const auto& [name, job] : jobs_) {
    TierCounters c = job.counters;
    for (const auto& [id, o] : job.objects) {
      ++c.objects;
      if (o->extent.has_value()) c.resident_bytes += o->spec.bytes;
      if (o->dirty) c.dirty_bytes += o->spec.bytes;
      if (o->latest != nullptr) c.nvme_bytes += o->latest->bytes;
    }
    TierCounters& t = stats.total;
    for (auto [dst, src] : {std::pair{&t.objects, c.objects}, {&t.resident_bytes, c.resident_bytes},
                            {&t.dirty_bytes, c.dirty_bytes}, {&t.nvme_bytes, c.nvme_bytes},
                            {&t.reads, c.reads}, {&t.read_bytes, c.read_bytes},
                            {&t.read_errors, c.read_errors}, {&t.writes, c.writes},
                            {&t.write_bytes, c.write_bytes}, {&t.write_errors, c.write_errors},
                            {&t.evictions, c.evictions}, {&t.evicted_bytes, c.evicted_bytes},
                            {&t.prefetch_hits, c.prefetch_hits},
                            {&t.prefetch_late, c.prefetch_late},
                            {&t.prefetch_misses, c.prefetch_misses}}) {
      *dst += src;
    }
    stats.jobs[name] = c;
    if (!job.last_write_error.empty()) stats.last_write_error[name] = job.last_write_error;
  }
  stats.manifest_generation = generation_;
  stats.publishes = publishes_;
  stats.publish_errors = publish_errors_;
  stats.last_publish_error = last_publish_error_;
  stats.writebacks_in_flight = writebacks_in_flight_;
  return stats;
}

}  // namespace spill::storage
