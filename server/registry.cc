#include "server/registry.h"

#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <limits>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "server/registry_internal.h"

namespace spill::server {

namespace {

Token RandomToken() {
  Token token{};
  size_t got = 0;
  while (got < token.size()) {
    ssize_t n = ::getrandom(token.data() + got, token.size() - got, 0);
    if (n < 0 && errno == EINTR) continue;
    // getrandom on Linux >= 3.17 only fails for bad arguments.
    if (n < 0) std::abort();
    got += static_cast<size_t>(n);
  }
  return token;
}

bool TokensEqual(const Token& a, const Token& b) {
  uint8_t diff = 0;  // Constant time: no early exit on the first mismatch.
  for (size_t i = 0; i < a.size(); ++i) diff |= a[i] ^ b[i];
  return diff == 0;
}

bool ValidKind(int kind) { return kind >= 1 && kind <= 5; }

}  // namespace

absl::StatusOr<Token> TokenFromBytes(const std::string& bytes) {
  if (bytes.size() != kSessionTokenBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "session token must be ", kSessionTokenBytes, " bytes, got ", bytes.size()));
  }
  Token token{};
  std::copy(bytes.begin(), bytes.end(), token.begin());
  return token;
}

Registry::Registry(storage::PinnedArena* arena, RegistryOptions options, Clock clock,
                   storage::TierManager* tiers)
    : arena_(arena),
      tiers_(tiers),
      options_(options),
      clock_(std::move(clock)),
      quota_(options.job_pinned_quota != 0 ? options.job_pinned_quota
                                           : arena->Stats().capacity_bytes) {}

Registry::~Registry() { Clear(); }

uint64_t Registry::job_pinned_quota() const { return quota_; }

absl::StatusOr<OpenedSession> Registry::OpenSession(const std::string& job_id, int rank,
                                                    int world_size, const PeerCreds& peer,
                                                    const JobBudgets& budgets) {
  if (job_id.empty()) return absl::InvalidArgumentError("job_id must not be empty");
  if (job_id.size() > options_.max_job_id_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("job_id is ", job_id.size(),
                                                   " bytes; the limit is ",
                                                   options_.max_job_id_bytes));
  }
  if (world_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("world_size must be >= 1, got ", world_size));
  }
  if (rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", rank, " is outside [0, world_size=", world_size, ")"));
  }
  SPILL_RETURN_IF_ERROR(CheckBudgets(budgets));
  std::lock_guard<std::mutex> lock(mu_);
  bool existed = false;
  auto it = jobs_.find(job_id);
  if (it != jobs_.end()) {
    Job& job = *it->second;
    if (job.uid != peer.uid) {
      return absl::PermissionDeniedError(absl::StrCat(
          "job '", job_id, "' belongs to uid ", job.uid, "; caller is uid ", peer.uid));
    }
    const bool first = job.recovered && job.sessions.empty();
    if (!first && job.world_size != world_size) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job '", job_id, "' has world_size ", job.world_size, "; session asked for ",
          world_size));
    }
    SPILL_RETURN_IF_ERROR(JoinBudgetsLocked(job, budgets, first));
    if (first) {
      job.world_size = world_size;  // The manifest does not record it.
      job.recovered = false;
    }
    existed = true;
  } else {
    auto job = std::make_unique<Job>();
    job->id = job_id;
    job->arena_key = absl::StrCat(job_id, "#", next_job_instance_++);
    job->uid = peer.uid;
    job->world_size = world_size;
    job->budgets = budgets;  // Reach the TierManager with the first kNvme object.
    it = jobs_.emplace(job_id, std::move(job)).first;
  }
  auto session = std::make_unique<Session>();
  session->id = next_session_id_++;
  session->token = RandomToken();
  session->job_id = job_id;
  session->rank = rank;
  session->world_size = world_size;
  session->peer = peer;
  session->attach_deadline = clock_() + options_.attach_timeout;
  it->second->sessions.insert(session->id);
  it->second->grace_deadline.reset();
  OpenedSession opened{session->id, session->token, existed};
  sessions_.emplace(session->id, std::move(session));
  return opened;
}

Registry::Session* Registry::FindSessionLocked(uint64_t session_id) const {
  auto it = sessions_.find(session_id);
  return it == sessions_.end() ? nullptr : it->second.get();
}

absl::StatusOr<Registry::Session*> Registry::AuthLocked(uint64_t session_id,
                                                        const Token& token) const {
  Session* session = FindSessionLocked(session_id);
  if (session == nullptr) {
    return absl::NotFoundError(absl::StrCat("session ", session_id, " is not open"));
  }
  if (!TokensEqual(session->token, token)) {
    return absl::UnauthenticatedError(
        absl::StrCat("wrong token for session ", session_id));
  }
  return session;
}

absl::StatusOr<Registry::Session*> Registry::StreamSessionLocked(uint64_t session_id) const {
  Session* session = FindSessionLocked(session_id);
  if (session == nullptr || !session->attached) {
    return absl::FailedPreconditionError(
        absl::StrCat("session ", session_id, " is closed"));
  }
  return session;
}

absl::Status Registry::Authenticate(uint64_t session_id, const Token& token) const {
  std::lock_guard<std::mutex> lock(mu_);
  return AuthLocked(session_id, token).status();
}

absl::StatusOr<std::string> Registry::AttachStream(uint64_t session_id, const Token& token) {
  std::lock_guard<std::mutex> lock(mu_);
  SPILL_ASSIGN_OR_RETURN(Session * session, AuthLocked(session_id, token));
  if (session->attached) {
    return absl::FailedPreconditionError(
        absl::StrCat("session ", session_id, " already has a stream attached"));
  }
  session->attached = true;
  return session->job_id;
}

void Registry::DetachStream(uint64_t session_id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    Session* session = FindSessionLocked(session_id);
    if (session != nullptr) CloseSessionLocked(*session);
  }
  RunDeferred();
}

absl::Status Registry::CloseSession(uint64_t session_id, const Token& token) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    SPILL_ASSIGN_OR_RETURN(Session * session, AuthLocked(session_id, token));
    CloseSessionLocked(*session);
  }
  RunDeferred();
  return absl::OkStatus();
}

void Registry::CloseSessionLocked(Session& session) {
  auto job_it = jobs_.find(session.job_id);
  if (job_it != jobs_.end()) {
    Job& job = *job_it->second;
    for (const auto& [object_id, pins] : session.pins) {
      auto obj = job.objects.find(object_id);
      if (obj == job.objects.end()) continue;
      obj->second.pin_count -= pins;
      if (obj->second.home == storage::Home::kNvme && tiers_ != nullptr) {
        DeferLocked([tiers = tiers_, job_id = job.id, object_id = object_id, n = pins] {
          for (uint32_t i = 0; i < n; ++i) tiers->Release(job_id, object_id).IgnoreError();
        });
      }
    }
    job.sessions.erase(session.id);
    if (job.sessions.empty()) job.grace_deadline = clock_() + options_.job_grace;
  }
  sessions_.erase(session.id);  // Destroys session.
}

absl::Status Registry::CheckQuotaLocked(const Job& job, const std::string& name,
                                        uint64_t bytes) const {
  const uint64_t quota = quota_;
  // Counted here, not read from the arena: an allocation that has finished
  // in the arena but not yet been recorded would otherwise count twice.
  uint64_t used = job.used_bytes + job.pending_bytes;
  if (used + bytes > quota) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "job '", job.id, "' pinned quota is ", FormatBytes(quota), " (", quota, " B) with ",
        FormatBytes(used), " (", used, " B) in use; object '", name, "' needs ",
        FormatBytes(bytes), " (", bytes, " B)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ObjectRecord> Registry::RegisterObject(uint64_t session_id, const Token& token,
                                                      const std::string& name, int kind,
                                                      int dtype, int64_t num_elements,
                                                      storage::Home home) {
  if (name.empty()) return absl::InvalidArgumentError("object name must not be empty");
  if (name.size() > options_.max_name_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("object name is ", name.size(),
                                                   " bytes; the limit is ",
                                                   options_.max_name_bytes));
  }
  if (!ValidKind(kind)) {
    return absl::InvalidArgumentError(
        absl::StrCat("object '", name, "': kind ", kind, " is not a valid ObjectKind"));
  }
  const size_t elem = DTypeSize(dtype);
  if (elem == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("object '", name, "': dtype ", dtype, " is not a valid DType"));
  }
  if (num_elements <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "object '", name, "': num_elements must be positive, got ", num_elements));
  }
  const uint64_t limit = arena_->segment_bytes();
  if (static_cast<uint64_t>(num_elements) > limit / elem) {
    return absl::OutOfRangeError(absl::StrCat(
        "object '", name, "': ", num_elements, " elements of ", DTypeName(dtype),
        " exceed the largest object, one segment of ", FormatBytes(limit),
        " (spilld --segment-bytes)"));
  }
  const uint64_t bytes = static_cast<uint64_t>(num_elements) * elem;
  if (home == storage::Home::kNvme && tiers_ == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "object '", name, "': home NVME needs spilld's NVMe tier; start spilld with "
        "--nvme-dirs"));
  }

  Job* job = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    SPILL_ASSIGN_OR_RETURN(Session * session, AuthLocked(session_id, token));
    job = jobs_.at(session->job_id).get();
    if (job->names.count(name) != 0 || job->pending_names.count(name) != 0) {
      return absl::AlreadyExistsError(
          absl::StrCat("job '", job->id, "' already has an object '", name, "'"));
    }
    if (job->objects.size() + job->pending_names.size() >= options_.max_objects_per_job) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "job '", job->id, "' has ", job->objects.size(), " objects; the limit is ",
          options_.max_objects_per_job));
    }
    if (home == storage::Home::kNvme) {
      ObjectRecord record;
      record.name = name;
      record.kind = kind;
      record.dtype = dtype;
      record.num_elements = static_cast<uint64_t>(num_elements);
      record.home = home;
      return RegisterNvmeLocked(*job, std::move(record), bytes);
    }
    SPILL_RETURN_IF_ERROR(CheckQuotaLocked(*job, name, bytes));
    // Reserved until the allocation is done; a job with a registration in
    // flight is never freed (Tick skips it), so `job` stays valid.
    job->pending_bytes += bytes;
    job->pending_names.insert(name);
  }
  // Allocation may replace a segment's memfd (populate and mlock: ~0.5 s per
  // GiB), so it runs without the registry's lock: other sessions' requests
  // go on meanwhile.
  absl::StatusOr<storage::Extent> extent = arena_->Allocate(job->arena_key, bytes);
  std::lock_guard<std::mutex> lock(mu_);
  job->pending_bytes -= bytes;
  job->pending_names.erase(name);
  if (!extent.ok()) return extent.status();
  ObjectRecord record;
  record.id = next_object_id_++;
  record.name = name;
  record.kind = kind;
  record.dtype = dtype;
  record.num_elements = static_cast<uint64_t>(num_elements);
  record.extent = *extent;
  job->names.emplace(name, record.id);
  job->objects.emplace(record.id, record);
  job->used_bytes += bytes;
  return record;
}

absl::StatusOr<Registry::StreamTarget> Registry::StreamTargetLocked(uint64_t session_id,
                                                                   uint64_t object_id) const {
  SPILL_ASSIGN_OR_RETURN(Session * session, StreamSessionLocked(session_id));
  SPILL_ASSIGN_OR_RETURN(ObjectRecord * object,
                         FindObjectLocked(*jobs_.at(session->job_id), object_id));
  return StreamTarget{session, object};
}

absl::StatusOr<ObjectRecord*> Registry::FindObjectLocked(Job& job, uint64_t object_id) const {
  auto it = job.objects.find(object_id);
  if (it == job.objects.end()) {
    return absl::NotFoundError(
        absl::StrCat("job '", job.id, "' has no object with id ", object_id));
  }
  return &it->second;
}

absl::Status Registry::FreeObject(uint64_t session_id, const Token& token, uint64_t object_id) {
  absl::Status status = FreeObjectDeferring(session_id, token, object_id);
  RunDeferred();
  return status;
}

absl::Status Registry::FreeObjectDeferring(uint64_t session_id, const Token& token,
                                        uint64_t object_id) {
  std::lock_guard<std::mutex> lock(mu_);
  SPILL_ASSIGN_OR_RETURN(Session * session, AuthLocked(session_id, token));
  Job& job = *jobs_.at(session->job_id);
  SPILL_ASSIGN_OR_RETURN(ObjectRecord * object, FindObjectLocked(job, object_id));
  if (object->pin_count > 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "object '", object->name, "' (id ", object_id, ") is pinned ", object->pin_count,
        " time(s); release it before freeing"));
  }
  if (object->compute_pins > 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "object '", object->name, "' (id ", object_id,
        ") is in use by an optimizer step in spilld; free it after the step completes"));
  }
  if (object->home == storage::Home::kNvme) {
    // Cannot fail: no pin is held and the TierManager has the object.
    DeferLocked([tiers = tiers_, job_id = job.id, object_id] {
      tiers->FreeObject(job_id, object_id).IgnoreError();
    });
    --job.nvme_objects;
  } else {
    SPILL_RETURN_IF_ERROR(arena_->Free(job.arena_key, object->extent));
    job.used_bytes -= object->extent.size;
  }
  job.names.erase(object->name);
  job.objects.erase(object_id);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ObjectRecord>> Registry::ListObjects(uint64_t session_id,
                                                                const Token& token) const {
  std::lock_guard<std::mutex> lock(mu_);
  SPILL_ASSIGN_OR_RETURN(Session * session, AuthLocked(session_id, token));
  const Job& job = *jobs_.at(session->job_id);
  std::vector<ObjectRecord> out;
  out.reserve(job.objects.size());
  for (const auto& [id, record] : job.objects) out.push_back(record);
  return out;
}

absl::StatusOr<ObjectRecord> Registry::Acquire(uint64_t session_id, uint64_t object_id) {
  std::lock_guard<std::mutex> lock(mu_);
  SPILL_ASSIGN_OR_RETURN(StreamTarget target, StreamTargetLocked(session_id, object_id));
  auto [session, object] = target;
  if (object->home != storage::Home::kPinned) {
    return absl::FailedPreconditionError(
        absl::StrCat("object '", object->name, "' has home NVME: use AcquireAsync"));
  }
  if (object->pin_count == std::numeric_limits<uint32_t>::max()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("object '", object->name, "' has the maximum number of pins"));
  }
  ++object->pin_count;
  ++session->pins[object_id];
  jobs_.at(session->job_id)->acquired_bytes += object->extent.size;
  return *object;
}

absl::StatusOr<ObjectRecord> Registry::Prefetch(uint64_t session_id, uint64_t object_id) {
  // The pinned tier holds every object resident, so a prefetch only checks
  // that the object exists; the NVMe tier makes this a read-ahead.
  std::lock_guard<std::mutex> lock(mu_);
  SPILL_ASSIGN_OR_RETURN(StreamTarget target, StreamTargetLocked(session_id, object_id));
  auto [session, object] = target;
  if (object->home != storage::Home::kPinned) {
    return absl::FailedPreconditionError(
        absl::StrCat("object '", object->name, "' has home NVME: use PrefetchAsync"));
  }
  return *object;
}

absl::StatusOr<ObjectRecord> Registry::Release(uint64_t session_id, uint64_t object_id) {
  absl::StatusOr<ObjectRecord> record;
  {
    std::lock_guard<std::mutex> lock(mu_);
    SPILL_ASSIGN_OR_RETURN(StreamTarget target, StreamTargetLocked(session_id, object_id));
    auto [session, object] = target;
    auto pin = session->pins.find(object_id);
    if (pin == session->pins.end()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "object '", object->name, "' (id ", object_id, ") is not pinned by session ",
          session_id));
    }
    if (--pin->second == 0) session->pins.erase(pin);
    --object->pin_count;
    if (object->home == storage::Home::kNvme) {
      DeferLocked([tiers = tiers_, job_id = session->job_id, object_id] {
        tiers->Release(job_id, object_id).IgnoreError();
      });
    }
    record = *object;
  }
  RunDeferred();
  return record;
}

absl::StatusOr<ObjectRecord> Registry::WriteBack(uint64_t session_id, uint64_t object_id,
                                                 uint64_t version) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    SPILL_ASSIGN_OR_RETURN(StreamTarget target, StreamTargetLocked(session_id, object_id));
    auto [session, object] = target;
    if (session->pins.count(object_id) == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "write-back of object '", object->name, "' (id ", object_id,
          ") needs a pin from this session: acquire it first"));
    }
    if (version < object->version) {
      return absl::FailedPreconditionError(absl::StrCat(
          "write-back of object '", object->name, "' at version ", version,
          " is older than its version ", object->version));
    }
    if (object->home == storage::Home::kPinned) {
      object->version = version;
      jobs_.at(session->job_id)->written_back_bytes += object->extent.size;
      return *object;
    }
  }
  return NvmeWriteBack(session_id, object_id, version);
}

absl::StatusOr<SegmentGrant> Registry::SegmentForSession(uint64_t session_id,
                                                         const Token& token, uid_t peer_uid,
                                                         uint64_t segment_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  SPILL_ASSIGN_OR_RETURN(Session * session, AuthLocked(session_id, token));
  if (session->peer.uid != peer_uid) {
    return absl::PermissionDeniedError(absl::StrCat(
        "fd channel peer uid ", peer_uid, " is not session ", session_id, "'s uid ",
        session->peer.uid));
  }
  SPILL_ASSIGN_OR_RETURN(storage::SegmentHandle handle,
                         arena_->GetSegment(jobs_.at(session->job_id)->arena_key, segment_id));
  SegmentGrant grant;
  SPILL_ASSIGN_OR_RETURN(grant.fd,
                         arena_->DupSegmentFd(jobs_.at(session->job_id)->arena_key, segment_id));
  grant.segment_id = handle.segment_id;
  grant.size_bytes = handle.size_bytes;
  grant.huge_pages = handle.huge_pages;
  return grant;
}

absl::StatusOr<std::string> Registry::StreamJob(uint64_t session_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  SPILL_ASSIGN_OR_RETURN(Session * session, StreamSessionLocked(session_id));
  return session->job_id;
}

absl::StatusOr<std::string> Registry::SessionJob(uint64_t session_id, const Token& token) const {
  std::lock_guard<std::mutex> lock(mu_);
  SPILL_ASSIGN_OR_RETURN(Session * session, AuthLocked(session_id, token));
  return session->job_id;
}

absl::StatusOr<std::vector<ComputeView>> Registry::PinForCompute(
    const std::string& job_id, const std::vector<uint64_t>& ids) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("job '", job_id, "' is gone"));
  Job& job = *it->second;
  std::vector<ObjectRecord*> objects;
  objects.reserve(ids.size());
  for (uint64_t id : ids) {
    SPILL_ASSIGN_OR_RETURN(ObjectRecord * object, FindObjectLocked(job, id));
    if (object->home != storage::Home::kPinned) {
      return absl::FailedPreconditionError(absl::StrCat(
          "object '", object->name, "' (id ", id,
          ") has home NVME; the optimizer in spilld needs gradients, masters and states with "
          "home PINNED (only parameters may have home NVME)"));
    }
    objects.push_back(object);
  }
  std::vector<ComputeView> views;
  views.reserve(objects.size());
  for (ObjectRecord* object : objects) {
    ++object->compute_pins;
    ++job.compute_pins;
    views.push_back({*object, arena_->Data(object->extent)});
  }
  return views;
}

void Registry::UnpinCompute(const std::string& job_id, const std::vector<uint64_t>& ids,
                            uint64_t version) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return;
  Job& job = *it->second;
  for (uint64_t id : ids) {
    auto obj = job.objects.find(id);
    if (obj == job.objects.end() || obj->second.compute_pins == 0) continue;
    --obj->second.compute_pins;
    --job.compute_pins;
    if (version != 0) obj->second.version = std::max(obj->second.version, version);
  }
}

void Registry::SetJobFreedListener(std::function<void(const std::string&)> listener) {
  std::lock_guard<std::mutex> lock(mu_);
  job_freed_ = std::move(listener);
}

void Registry::FreeJobLocked(const std::string& job_id, bool free_tiers) {
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return;
  if (job_freed_) job_freed_(job_id);
  Job& job = *it->second;
  for (uint64_t sid : job.sessions) sessions_.erase(sid);
  if (job.tiered && free_tiers && tiers_ != nullptr) {
    // The TierManager's reads may still fill arena extents of the job: free
    // the pinned objects one by one and let it free its own extents once
    // its I/O is done (the last free returns each segment to the pool).
    for (const auto& [id, object] : job.objects) {
      if (object.home == storage::Home::kPinned) {
        arena_->Free(job.arena_key, object.extent).IgnoreError();
      }
    }
    DeferLocked([tiers = tiers_, job_id] { tiers->FreeJob(job_id).IgnoreError(); });
  } else {
    arena_->ReleaseJob(job.arena_key);
  }
  jobs_.erase(it);
}

void Registry::Tick() {
  TickDeferring();
  RunDeferred();
}

void Registry::TickDeferring() {
  std::lock_guard<std::mutex> lock(mu_);
  const auto now = clock_();
  std::vector<uint64_t> stale;
  for (const auto& [id, session] : sessions_) {
    if (!session->attached && now >= session->attach_deadline) stale.push_back(id);
  }
  for (uint64_t id : stale) CloseSessionLocked(*sessions_.at(id));
  std::vector<std::string> expired;
  for (const auto& [id, job] : jobs_) {
    if (job->grace_deadline.has_value() && now >= *job->grace_deadline &&
        job->pending_names.empty() && job->compute_pins == 0) {
      expired.push_back(id);
    }
  }
  for (const auto& id : expired) FreeJobLocked(id);
}

void Registry::Clear() {
  std::lock_guard<std::mutex> lock(mu_);
  while (!jobs_.empty()) FreeJobLocked(jobs_.begin()->first, /*free_tiers=*/false);
  deferred_.clear();
  sessions_.clear();
}

std::vector<JobSnapshot> Registry::Jobs() const {
  std::lock_guard<std::mutex> lock(mu_);
  const auto now = clock_();
  const uint64_t quota = job_pinned_quota();
  std::vector<JobSnapshot> out;
  for (const auto& [id, job] : jobs_) {
    JobSnapshot snap;
    snap.job_id = id;
    snap.uid = job->uid;
    snap.in_grace = job->grace_deadline.has_value();
    if (snap.in_grace) {
      snap.grace_remaining = std::max(std::chrono::milliseconds(0),
                                      std::chrono::duration_cast<std::chrono::milliseconds>(
                                          *job->grace_deadline - now));
    }
    snap.objects = static_cast<uint32_t>(job->objects.size());
    const storage::JobArenaUsage usage = arena_->JobUsage(job->arena_key);
    snap.used_bytes = usage.used_bytes;
    snap.reserved_bytes = usage.reserved_bytes;
    snap.quota_bytes = quota;
    snap.acquired_bytes = job->acquired_bytes;
    snap.written_back_bytes = job->written_back_bytes;
    snap.recovered = job->recovered;
    snap.nvme_objects = job->nvme_objects;
    snap.budgets = job->budgets;
    for (uint64_t sid : job->sessions) {
      const Session& s = *sessions_.at(sid);
      uint32_t pins = 0;
      for (const auto& [oid, n] : s.pins) pins += n;
      snap.sessions.push_back({s.id, s.rank, s.world_size, s.peer, s.attached, pins});
    }
    out.push_back(std::move(snap));
  }
  return out;
}

}  // namespace spill::server
