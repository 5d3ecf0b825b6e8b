// Registry: jobs, sessions, objects and pins — spilld's state, without gRPC.
//
// A job is named by its client (e.g. a torchrun run id) and belongs to the uid
// that opened its first session; only sessions of that uid may join it. A
// session is one worker process's connection: it is opened by a unary call,
// then kept alive by its stream (the lease). When the stream ends, the
// session's pins are dropped at once. When a job has no session left, its
// objects stay for the grace period so a restarted worker can re-attach, and
// are freed when it expires.
//
// Every mutating method either succeeds or changes nothing.
//
// Homes. An object's home is kPinned (its extent is allocated from the
// arena at registration and stays until it is freed) or kNvme (it lives in
// the TierManager given at construction: durable on NVMe, cached in the
// arena while acquired or until evicted; its record has no extent except in
// an acquire's answer). The pinned quota counts kPinned objects; kNvme
// objects count against the NVMe tier's job quota. Stream requests on kNvme
// objects may complete later (AcquireAsync, PrefetchAsync); calls into the
// TierManager are never made with the registry's lock held.
//
// Thread-safe. Time comes from the injected clock; Tick() applies deadlines
// (attach timeouts, grace expiry) and is called periodically by the daemon
// and explicitly by tests.
#ifndef SPILL_SERVER_REGISTRY_H_
#define SPILL_SERVER_REGISTRY_H_

#include <sys/types.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/fd_protocol.h"
#include "common/unique_fd.h"
#include "storage/pinned_arena.h"
#include "storage/tier_manager.h"

namespace spill::server {

using Clock = std::function<std::chrono::steady_clock::time_point()>;
using Token = std::array<uint8_t, kSessionTokenBytes>;

struct PeerCreds {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

struct RegistryOptions {
  // Pinned bytes one job may hold; 0 means the whole pool.
  uint64_t job_pinned_quota = 0;
  // How long a job without sessions keeps its objects.
  std::chrono::milliseconds job_grace{std::chrono::minutes(5)};
  // How long an opened session may go without attaching its stream.
  std::chrono::milliseconds attach_timeout{std::chrono::seconds(30)};
  uint32_t max_objects_per_job = 1u << 20;
  uint32_t max_name_bytes = 512;
  uint32_t max_job_id_bytes = 128;
};

struct ObjectRecord {
  uint64_t id = 0;
  std::string name;
  int kind = 0;   // A spill.v1.ObjectKind value.
  int dtype = 0;  // A spill.v1.DType value.
  uint64_t num_elements = 0;
  storage::Extent extent;
  uint64_t version = 0;
  uint32_t pin_count = 0;
  // Pins held by computations inside spilld (optimizer steps).
  uint32_t compute_pins = 0;
  storage::Home home = storage::Home::kPinned;
};

// An object pinned for a computation inside spilld, with the daemon's own
// mapping of its bytes (valid until UnpinCompute).
struct ComputeView {
  ObjectRecord record;
  uint8_t* data = nullptr;
};

struct SegmentGrant {
  UniqueFd fd;
  uint64_t segment_id = 0;
  uint64_t size_bytes = 0;
  bool huge_pages = false;
};

// A job's DeepSpeed budgets for its kNvme objects (storage::OffloadBudget;
// see storage/tier_manager.h): unset means the TierManager's defaults (no
// limit but the arena).
struct JobBudgets {
  std::optional<storage::OffloadBudget> param;      // offload_param
  std::optional<storage::OffloadBudget> optimizer;  // offload_optimizer
};

// The budget stream of a kNvme object of this spill.v1.ObjectKind: MASTER
// and MOMENT follow offload_optimizer, everything else offload_param.
storage::Stream StreamOfKind(int kind);

// "buffer_count=B buffer_size=S max_in_cpu=M", or "unset".
std::string BudgetString(const std::optional<storage::OffloadBudget>& budget);

struct OpenedSession {
  uint64_t session_id = 0;
  Token token{};
  bool job_existed = false;
};

struct SessionSnapshot {
  uint64_t session_id = 0;
  int rank = 0;
  int world_size = 0;
  PeerCreds peer;
  bool attached = false;
  uint32_t pins = 0;
};

struct JobSnapshot {
  std::string job_id;
  uid_t uid = 0;
  bool in_grace = false;
  std::chrono::milliseconds grace_remaining{0};
  uint32_t objects = 0;
  uint64_t used_bytes = 0;
  uint64_t reserved_bytes = 0;  // Segments the job owns.
  uint64_t quota_bytes = 0;
  // Bytes of objects acquired / written back by the job's sessions since the
  // job was created (counters; they end with the job).
  uint64_t acquired_bytes = 0;
  uint64_t written_back_bytes = 0;
  std::vector<SessionSnapshot> sessions;
  // Found in the NVMe manifest at start; no session has re-attached yet.
  bool recovered = false;
  uint32_t nvme_objects = 0;
  JobBudgets budgets;  // as set by the job's first session
};

class Registry {
 public:
  // tiers may be null (no kNvme objects then); it must outlive the
  // registry's use of it: call Clear() (which never touches it) before
  // destroying it.
  Registry(storage::PinnedArena* arena, RegistryOptions options, Clock clock,
           storage::TierManager* tiers = nullptr);
  ~Registry();

  // Opens a session of job_id for peer, creating the job if needed.
  // InvalidArgument for an empty/overlong job id, world_size < 1 or a rank
  // outside [0, world_size); FailedPrecondition when the job exists with
  // another world size; PermissionDenied when it belongs to another uid.
  //
  // budgets: the job's first session (or the first to re-attach to a
  // recovered job) sets them; they reach the TierManager (RegisterJob when
  // the job's first kNvme object is registered, SetJobOptions at once when
  // the job is already known to it). A later session may repeat them or
  // leave them unset; different ones are FailedPrecondition naming both, as
  // is a buffer_size below an object a recovered job already has.
  // InvalidArgument naming the field for a budget with a zero field, a
  // buffer_count above kMaxBufferCount, a buffer_size above the arena's
  // capacity, or a max_in_cpu below buffer_size; FailedPrecondition when a
  // budget is set and there is no TierManager (spilld without --nvme-dirs:
  // the budgets govern kNvme objects only, which it cannot hold).
  absl::StatusOr<OpenedSession> OpenSession(const std::string& job_id, int rank,
                                            int world_size, const PeerCreds& peer,
                                            const JobBudgets& budgets = {});
  static constexpr uint32_t kMaxBufferCount = 1u << 16;

  // Checks that (session_id, token) names an open session. Unauthenticated
  // for a wrong token, NotFound for an unknown or closed session.
  absl::Status Authenticate(uint64_t session_id, const Token& token) const;

  // Binds the session's stream. FailedPrecondition when already attached.
  absl::StatusOr<std::string> AttachStream(uint64_t session_id, const Token& token);
  // The stream ended: drops the session's pins and closes it. Idempotent.
  void DetachStream(uint64_t session_id);
  // Closes a session on request (drops its pins). Its job enters grace when
  // this was its last session.
  absl::Status CloseSession(uint64_t session_id, const Token& token);

  // home kNvme: FailedPrecondition naming --nvme-dirs without a TierManager;
  // the TierManager's CreateObject errors (ResourceExhausted past the NVMe
  // job quota).
  absl::StatusOr<ObjectRecord> RegisterObject(uint64_t session_id, const Token& token,
                                              const std::string& name, int kind, int dtype,
                                              int64_t num_elements,
                                              storage::Home home = storage::Home::kPinned);
  // FailedPrecondition while any session pins the object.
  absl::Status FreeObject(uint64_t session_id, const Token& token, uint64_t object_id);
  absl::StatusOr<std::vector<ObjectRecord>> ListObjects(uint64_t session_id,
                                                        const Token& token) const;

  // Stream operations; the session was authenticated when its stream attached.
  // Acquire and Prefetch are for kPinned objects (FailedPrecondition for a
  // kNvme one: use the Async forms, which take both).
  absl::StatusOr<ObjectRecord> Acquire(uint64_t session_id, uint64_t object_id);
  absl::StatusOr<ObjectRecord> Prefetch(uint64_t session_id, uint64_t object_id);

  using RecordDone = std::function<void(absl::StatusOr<ObjectRecord>)>;
  // Whether stream requests on the object may wait for I/O (its home is
  // kNvme); false for unknown objects (their requests fail at once).
  bool MayWait(uint64_t session_id, uint64_t object_id) const;

  // The job's access order for its coming step: the NVMe-homed objects
  // among `object_ids` go to the TierManager as its eviction hint (pinned-
  // home objects are never evicted). NotFound for an unknown session or
  // naming the first id that is not an object of the job; nothing changes
  // then. Returns how many entries concern NVMe-homed objects.
  absl::StatusOr<size_t> SetAccessOrder(uint64_t session_id,
                                        const std::vector<uint64_t>& object_ids);
  // Acquire of any object. kNvme: TierManager::Acquire (kWrite when
  // for_write), pinned for the session when it completes; done runs once,
  // on this thread when the object is resident, else on an I/O thread, with
  // the record (extent = the pinned copy) or the TierManager's error
  // (DataLoss, ResourceExhausted, ...); NotFound when the session closed
  // meanwhile (the pin is dropped again).
  void AcquireAsync(uint64_t session_id, uint64_t object_id, bool for_write, RecordDone done);
  // Prefetch of any object: kNvme objects are read into the arena, unpinned.
  void PrefetchAsync(uint64_t session_id, uint64_t object_id, RecordDone done);
  // Waits until every kNvme object of the session's job written back before
  // the call is durable (TierManager::Flush); OK at once when the job has no
  // kNvme objects. done runs once, possibly on this thread.
  void Flush(uint64_t session_id, const Token& token, std::function<void(absl::Status)> done);

  // Adds the jobs TierManager::Recover found, each in grace (owned by its
  // recorded uid; any world size may re-attach) with its objects (kNvme, not
  // resident, at their durable version). AlreadyExists when a job id is
  // taken; nothing is added then.
  absl::Status AddRecoveredJobs(const std::vector<storage::RecoveredJob>& jobs);
  // Frees a job now (sessions closed, objects and NVMe copies freed) for
  // caller_uid 0 or the job's uid. NotFound; PermissionDenied for another
  // uid; FailedPrecondition while an optimizer step or a registration runs.
  absl::Status DropJob(const std::string& job_id, uid_t caller_uid);
  // FailedPrecondition when this session does not pin the object.
  absl::StatusOr<ObjectRecord> Release(uint64_t session_id, uint64_t object_id);
  // Records that the client wrote the object's bytes for step `version`.
  // FailedPrecondition when this session does not pin the object or when
  // version is older than the object's.
  absl::StatusOr<ObjectRecord> WriteBack(uint64_t session_id, uint64_t object_id,
                                         uint64_t version);

  // The segment for the fd channel: the session must be open, its token
  // right, the peer's uid the session's, and the segment owned by its job.
  // The grant holds a duplicate of the segment's fd, so it stays valid even
  // if the arena replaces the segment afterwards.
  absl::StatusOr<SegmentGrant> SegmentForSession(uint64_t session_id,
                                                           const Token& token, uid_t peer_uid,
                                                           uint64_t segment_id) const;

  // The job of a session: of an attached stream session (StreamJob, for
  // stream requests) or of an authenticated one (SessionJob, for unary calls).
  absl::StatusOr<std::string> StreamJob(uint64_t session_id) const;
  absl::StatusOr<std::string> SessionJob(uint64_t session_id, const Token& token) const;

  // Pins objects of job for a computation inside spilld: until UnpinCompute
  // they cannot be freed, and the job is not freed by grace expiry. All or
  // nothing: NotFound naming the first unknown id (or an unknown job).
  absl::StatusOr<std::vector<ComputeView>> PinForCompute(const std::string& job_id,
                                                         const std::vector<uint64_t>& ids);
  // Drops pins taken by PinForCompute. When version is non-zero, each
  // object's version becomes max(version, its version).
  void UnpinCompute(const std::string& job_id, const std::vector<uint64_t>& ids,
                    uint64_t version);

  // PinForCompute for parameters, whose home may also be kNvme: each kNvme
  // object is acquired from the TierManager (kWrite when for_write, which
  // also waits for a write-back of it in flight), read from NVMe first when
  // it is not resident; the calling thread blocks, at most `timeout` per
  // object. The views' data is the pinned copy. All or nothing: on error
  // every pin taken is dropped again and nothing changed. Errors: those of
  // PinForCompute (but kNvme is accepted); FailedPrecondition for a kNvme
  // object without a TierManager; the TierManager's error (ResourceExhausted
  // past the param budget, DataLoss, the NVMe tier's EIO status) or
  // DeadlineExceeded, each naming the object.
  absl::StatusOr<std::vector<ComputeView>> PinParamsForCompute(const std::string& job_id,
                                                               const std::vector<uint64_t>& ids,
                                                               bool for_write,
                                                               std::chrono::milliseconds timeout);
  // Drops the pins of views returned by PinParamsForCompute. version
  // non-zero: the bytes of every object were rewritten as of step
  // `version`, and each object's version becomes v = max(version, its
  // version); a kNvme object is TierManager::MarkWritten(v) first (dirty,
  // written back to NVMe asynchronously, exactly as after a client's
  // WriteBack) and then released. version 0: the bytes are unchanged. Every
  // pin is dropped either way; Internal naming the object if a MarkWritten
  // failed (a broken invariant: the object is acquired for write and v is
  // not older than its version, unless a client wrote it meanwhile).
  absl::Status UnpinParams(const std::string& job_id, const std::vector<ComputeView>& views,
                           uint64_t version);
  // The records of objects of job_id, without pinning them. NotFound naming
  // the first unknown id (or the job).
  absl::StatusOr<std::vector<ObjectRecord>> Records(const std::string& job_id,
                                                    const std::vector<uint64_t>& ids) const;

  // Called with the registry's lock held whenever a job is freed (grace
  // expiry or Clear): it must not call back into the registry.
  void SetJobFreedListener(std::function<void(const std::string& job_id)> listener);

  // Applies attach timeouts and grace expiry as of now().
  void Tick();
  // Closes every session and frees every job (shutdown). Never calls the
  // TierManager: the jobs' NVMe copies stay for the next start.
  void Clear();

  std::vector<JobSnapshot> Jobs() const;
  uint64_t job_pinned_quota() const;

 private:
  struct Session;
  struct Job;

  Session* FindSessionLocked(uint64_t session_id) const;
  absl::StatusOr<Session*> AuthLocked(uint64_t session_id, const Token& token) const;
  absl::StatusOr<Session*> StreamSessionLocked(uint64_t session_id) const;
  absl::StatusOr<ObjectRecord*> FindObjectLocked(Job& job, uint64_t object_id) const;
  // The attached session and one of its job's objects, for stream requests.
  struct StreamTarget {
    Session* session;
    ObjectRecord* object;
  };
  absl::StatusOr<StreamTarget> StreamTargetLocked(uint64_t session_id, uint64_t object_id) const;
  absl::Status CheckQuotaLocked(const Job& job, const std::string& name, uint64_t bytes) const;
  void CloseSessionLocked(Session& session);
  absl::Status FreeObjectDeferring(uint64_t session_id, const Token& token, uint64_t object_id);
  void TickDeferring();
  // free_tiers: also free the job's objects in the TierManager (deferred).
  void FreeJobLocked(const std::string& job_id, bool free_tiers = true);
  absl::StatusOr<ObjectRecord> RegisterNvmeLocked(Job& job, ObjectRecord record, uint64_t bytes);
  storage::JobOptions TierOptionsLocked(const Job& job) const;
  absl::Status CheckBudgets(const JobBudgets& budgets) const;
  // A session of an existing job asks for `budgets`; applies them if it is
  // the job's first (first_session), else checks they match.
  absl::Status JoinBudgetsLocked(Job& job, const JobBudgets& budgets, bool first_session);
  // Fills in the pinned copies of the kNvme views (compute-pinned already),
  // acquiring them all at once. On error every tier pin taken is dropped.
  absl::Status AcquireTierViews(const std::string& job_id, std::vector<ComputeView>& views,
                                bool for_write, std::chrono::milliseconds timeout);
  absl::StatusOr<ObjectRecord> FinishTierAcquire(uint64_t session_id, uint64_t object_id,
                                                 const std::string& job_id,
                                                 const storage::Extent& extent);
  // WriteBack of a kNvme object: TierManager::MarkWritten outside mu_.
  absl::StatusOr<ObjectRecord> NvmeWriteBack(uint64_t session_id, uint64_t object_id,
                                             uint64_t version);
  // Work on the TierManager queued under mu_, run by RunDeferred after it
  // is released (TierManager calls may run callbacks that take mu_).
  void DeferLocked(std::function<void()> fn) { deferred_.push_back(std::move(fn)); }
  void RunDeferred();

  storage::PinnedArena* const arena_;
  storage::TierManager* const tiers_;
  const RegistryOptions options_;
  const Clock clock_;
  const uint64_t quota_;
  mutable std::mutex mu_;
  uint64_t next_session_id_ = 1;
  uint64_t next_object_id_ = 1;
  uint64_t next_job_instance_ = 1;
  std::map<std::string, std::unique_ptr<Job>> jobs_;
  std::function<void(const std::string&)> job_freed_;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Session>> sessions_;
  std::vector<std::function<void()>> deferred_;
};

// Parses a wire token; InvalidArgument when it is not kSessionTokenBytes long.
absl::StatusOr<Token> TokenFromBytes(const std::string& bytes);

}  // namespace spill::server

#endif  // SPILL_SERVER_REGISTRY_H_
