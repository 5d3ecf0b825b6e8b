// TierManager: per-object residency and I/O between the pinned tier
// (PinnedArena) and the NVMe tier (NvmeTier), and the NVMe manifest that
// lets NVMe-resident objects survive a restart.
//
// Objects are keyed (job, id). Each has a home:
//  - kPinned: lives in the arena from CreateObject to FreeObject; never
//    evicted, never written to NVMe, not in the manifest.
//  - kNvme: its durable copy lives on NVMe; the arena caches it. Acquire
//    reads it in when it is not resident; MarkWritten makes the pinned copy
//    dirty and starts an asynchronous write-back from the arena extent (no
//    copy); clean unpinned copies are evicted when room is needed.
//
// DeepSpeed budgets, per job (JobOptions). An NVMe-homed object belongs to
// one stream: kParam follows `offload_param`, kOptimizer `offload_optimizer`:
//  - buffer_size: the largest object of the stream (CreateObject refuses a
//    larger one), as DeepSpeed requires buffer_size >= the largest parameter;
//  - buffer_count: how many of the stream's objects may be acquired (pinned)
//    or being read in at once, i.e. DeepSpeed's pinned swap buffers;
//  - max_in_cpu (bytes, not DeepSpeed's elements): how many bytes of the
//    stream's objects may be resident in the arena at once (acquired,
//    prefetched, cached or being read/written); beyond it the job's own clean
//    unpinned objects are evicted. 0 means buffer_count * buffer_size when
//    both are set (optimizer states are streamed through the buffers and
//    nothing more stays cached), else no limit but the arena.
//
// Versions and durability. MarkWritten(v) states that the pinned bytes are
// version v. The write-back allocates a fresh NVMe extent and writes from the
// arena; when it completes, that copy (extent, CRC32Cs, v) becomes the
// object's durable copy. A manifest listing every job and each durable copy
// is published (storage/manifest.h) by the manager thread at most every
// publish_interval after a change, and at once for Flush. A version is
// *acknowledged* when its write completed and a manifest containing it was
// published; that is what MarkWritten's durable callback and Flush report.
// Until then a crash recovers the previous acknowledged copy (or nothing),
// because an extent in the last published manifest is never overwritten or
// reused until a newer manifest stops naming it. So each kNvme object can hold
// up to three NVMe extents at once (published, newest, being written); the
// NVMe job quota (NvmeOptions::job_quota_bytes) counts all of them.
//
// Writers' contract: a client changes an object's bytes only while it holds
// a pin from Acquire(kWrite), and not between its MarkWritten and its Release
// (the write-back reads them then). Acquire(kWrite) does not wait for a
// write-back in flight: that write's copy may be torn, so it is discarded
// (never becomes the durable copy) and a newer one is written after the
// writer's MarkWritten. No write-back starts while a kWrite pin is open (granted,
// not yet followed by MarkWritten or by the release of the object's last pin).
// So a parameter stepped every step never waits for the disk; a copy reaches
// NVMe whenever the disk is faster than the object's rewrites, and before
// eviction. While a Flush or a durable callback waits on the object, kWrite
// waits for the write in flight instead, so rewrites cannot starve them.
//
// Callbacks run exactly once and never under the manager's lock. A request
// that completes at once (resident object, rejected arguments) runs its
// callback on the calling thread before the call returns, so do not hold a
// lock the callback takes while calling; others run on an NvmeTier
// completion thread, the manager thread, or (for a request that waited for
// room) the thread of the Release that made room.
//
// Callbacks should return quickly: they may run on a ring thread of the NVMe
// tier, whose other completions wait meanwhile.
//
// Thread-safety: every method may be called from any thread, including from
// inside a callback. The arena and NVMe tier must outlive the manager; the
// destructor waits for the I/O it started and fails pending callbacks with
// Cancelled; no call (from a callback either) may start once it has begun.
//
//   TierManagerOptions o{.manifest_dir = "/var/lib/spill"};
//   auto tm = TierManager::Create(arena.get(), nvme.get(), o);
//   auto recovered = (*tm)->Recover();
//   (*tm)->RegisterJob("job", {});
//   (*tm)->CreateObject("job", {.id = 1, .bytes = 1 << 20, .home = Home::kNvme});
//   (*tm)->Acquire("job", 1, AcquireMode::kWrite, [](absl::StatusOr<Extent> e) {...});
//   ... write arena->Data(*e) ...
//   (*tm)->MarkWritten("job", 1, /*version=*/1, [](absl::Status acked) {...});
//   (*tm)->Release("job", 1);
#ifndef SPILL_STORAGE_TIER_MANAGER_H_
#define SPILL_STORAGE_TIER_MANAGER_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "storage/eviction_policy.h"
#include "storage/manifest.h"
#include "storage/nvme_tier.h"
#include "storage/pinned_arena.h"

namespace spill::storage {

enum class Home { kPinned, kNvme };
enum class Stream { kParam, kOptimizer };
enum class AcquireMode { kRead, kWrite };

struct ObjectSpec {
  uint64_t id = 0;
  std::string name;   // names the object in errors and the manifest
  int kind = 0;       // wire values, stored in the manifest as given
  int dtype = 0;
  uint64_t num_elements = 0;
  uint64_t bytes = 0;
  Home home = Home::kPinned;
  Stream stream = Stream::kParam;  // budget of a kNvme object
};

// One of DeepSpeed's offload blocks (see the overview). 0 = no limit.
struct OffloadBudget {
  uint32_t buffer_count = 0;
  uint64_t buffer_size = 0;
  uint64_t max_in_cpu = 0;
};

struct JobOptions {
  uint32_t uid = 0;          // recorded in the manifest
  std::string arena_owner;   // the arena's job key; empty: the job id
  OffloadBudget param;       // offload_param
  OffloadBudget optimizer;   // offload_optimizer
};

struct TierManagerOptions {
  std::string manifest_dir;  // empty: never publish (no restart persistence)
  std::chrono::milliseconds publish_interval{200};  // batching of publishes
  std::chrono::milliseconds retry_interval{1000};   // failed write-backs
  uint32_t max_writebacks = 8;                      // in flight at once
};

// What Recover found for one job.
struct RecoveredJob {
  std::string job_id;
  uint32_t uid = 0;
  std::vector<ObjectSpec> objects;      // all kNvme
  std::vector<uint64_t> versions;       // durable version of each object
};

struct ObjectInfo {
  ObjectSpec spec;
  bool resident = false;     // a full pinned copy exists
  bool loading = false;      // a read into the arena is in flight
  bool writing = false;      // a write-back is in flight
  bool dirty = false;        // pinned copy newer than the durable copy
  uint32_t pins = 0;
  uint64_t version = 0;         // of the newest bytes (pinned or durable)
  bool has_durable = false;
  uint64_t durable_version = 0;
  bool acknowledged = false;    // durable_version is in a published manifest
  absl::Status write_error;     // last failed write-back, OK after a success
  std::optional<Extent> extent; // when resident
};

struct TierCounters {
  uint64_t objects = 0;
  uint64_t resident_bytes = 0;   // arena bytes of the job's objects
  uint64_t dirty_bytes = 0;
  uint64_t nvme_bytes = 0;       // bytes of durable copies
  uint64_t reads = 0, read_bytes = 0, read_errors = 0;
  uint64_t writes = 0, write_bytes = 0, write_errors = 0;  // write-backs
  uint64_t evictions = 0, evicted_bytes = 0;
  // Acquires of kNvme objects: hit = found resident thanks to a prefetch;
  // late = joined a prefetch's read in flight; miss = had to read.
  uint64_t prefetch_hits = 0, prefetch_late = 0, prefetch_misses = 0;
};

struct TierManagerStats {
  TierCounters total;  // sum over registered jobs (a freed job's counters leave it)
  std::map<std::string, TierCounters> jobs;
  std::map<std::string, std::string> last_write_error;  // job -> message
  uint64_t manifest_generation = 0;
  uint64_t publishes = 0, publish_errors = 0;
  std::string last_publish_error;
  uint32_t writebacks_in_flight = 0;
};

using AcquireDone = std::function<void(absl::StatusOr<Extent>)>;
using StatusDone = std::function<void(absl::Status)>;

class TierManager {
 public:
  // nvme may be null: then only kPinned objects exist. InvalidArgument for a
  // null arena or max_writebacks 0. Starts the manager thread.
  static absl::StatusOr<std::unique_ptr<TierManager>> Create(PinnedArena* arena, NvmeTier* nvme,
                                                             TierManagerOptions options);
  ~TierManager();
  TierManager(const TierManager&) = delete;
  TierManager& operator=(const TierManager&) = delete;

  // Loads <manifest_dir>/manifest, adopts every extent in the NVMe tier and
  // registers each job (default budgets, the manifest's uid; SetJobOptions
  // when it re-attaches) with its objects (stream from stream_of_kind(kind),
  // else kParam) as durable, acknowledged and not resident. Call once, at
  // start. OK with no jobs when there is no manifest or no manifest_dir.
  // FailedPrecondition when a job is already registered or there is no NVMe
  // tier for a non-empty manifest;
  // DataLoss when the manifest is torn or corrupt; the Adopt status when an
  // extent is bad or overlaps. All or nothing.
  absl::StatusOr<std::vector<RecoveredJob>> Recover(
      const std::function<Stream(int kind)>& stream_of_kind = {});

  // InvalidArgument for an empty job id or a buffer_count without a
  // buffer_size; AlreadyExists when registered.
  absl::Status RegisterJob(const std::string& job, JobOptions options);
  // Replaces a registered job's options (e.g. a recovered job re-attaching);
  // arena_owner cannot change once the job has resident objects. NotFound,
  // InvalidArgument, FailedPrecondition.
  absl::Status SetJobOptions(const std::string& job, JobOptions options);

  // Adds an object. kPinned: allocates its arena extent now (the arena's
  // ResourceExhausted / InvalidArgument). kNvme: nothing is allocated; its
  // content is zeros until first written. NotFound (job), AlreadyExists (id),
  // InvalidArgument (0 bytes; larger than the stream's buffer_size),
  // FailedPrecondition (kNvme without an NVMe tier), ResourceExhausted when
  // the job's kNvme bytes would pass the NVMe job quota.
  absl::Status CreateObject(const std::string& job, const ObjectSpec& spec);

  // Pins the object in the arena and hands out its extent, reading it from
  // NVMe first when it is not resident; concurrent acquires share one read.
  // kWrite discards a write-back in flight (see above). When room is short (the
  // stream's max_in_cpu, or the arena) and unpinned dirty objects are being
  // written back, it waits for those writes and tries again (so optimizer
  // states stream through their buffers). done gets: NotFound
  // (job/object); ResourceExhausted naming the need and the limit (the
  // stream's buffer_count, its max_in_cpu, or the arena) when no clean
  // unpinned object can be evicted to make room and no write-back can; DataLoss naming the object
  // and offset when the NVMe copy fails its checksum (nothing handed out);
  // the NVMe tier's status for a failed read; Aborted when the object is
  // freed meanwhile. Pins nest: each success needs one Release.
  void Acquire(const std::string& job, uint64_t id, AcquireMode mode, AcquireDone done);

  // Like Acquire without pinning: the object becomes resident (and may be
  // evicted again before it is acquired). OK at once when already resident
  // or loading.
  void Prefetch(const std::string& job, uint64_t id, StatusDone done);

  // Drops one pin. NotFound; FailedPrecondition when not pinned.
  absl::Status Release(const std::string& job, uint64_t id);

  // The client wrote version `version` into the acquired pinned copy.
  // kNvme: dirty, write-back queued. durable (optional) runs once: OK when
  // this version (or a newer one) is acknowledged; the write's or publish's
  // error when that fails (the object stays dirty and is retried); Aborted
  // when the object is freed first. Returns NotFound; FailedPrecondition
  // when the object is not acquired, or for a kPinned object with durable
  // (pinned objects are not persisted); InvalidArgument when version is
  // below the object's version. Nothing changes on error.
  absl::Status MarkWritten(const std::string& job, uint64_t id, uint64_t version,
                           StatusDone durable = nullptr);

  // Removes the object now: it disappears from lookups at once; reads and
  // writes in flight finish first and then their memory and extents are
  // freed; their waiters get Aborted. NotFound. The durable copy leaves the
  // manifest with the next publish.
  absl::Status FreeObject(const std::string& job, uint64_t id);
  // FreeObject for every object, then forgets the job. NotFound.
  absl::Status FreeJob(const std::string& job);

  // The job's access order for the coming step (see EvictionPolicy). NotFound.
  absl::Status SetAccessOrder(const std::string& job, std::vector<uint64_t> ids);

  // Writes every dirty kNvme object of job (all jobs when job is empty),
  // then publishes the manifest. done: OK when every object dirty at the
  // call is acknowledged; else the first write-back error (the others are
  // still published) or the publish error; NotFound for an unknown job;
  // FailedPrecondition without a manifest_dir.
  void Flush(const std::string& job, StatusDone done);

  absl::StatusOr<ObjectInfo> Describe(const std::string& job, uint64_t id) const;
  std::vector<std::string> Jobs() const;
  TierManagerStats Stats() const;

 private:
  struct Object;
  struct Job;
  struct FlushWaiter;
  struct NvmeCopy;
  class Deferred;
  using ObjectPtr = std::shared_ptr<Object>;
  using CopyPtr = std::shared_ptr<const NvmeCopy>;

  TierManager(PinnedArena* arena, NvmeTier* nvme, TierManagerOptions options);

  // Lookups (mu_ held).
  absl::StatusOr<Job*> JobLocked(const std::string& job);
  absl::StatusOr<ObjectPtr> ObjectLocked(const std::string& job, uint64_t id);
  const OffloadBudget& BudgetLocked(const Job& job, const Object& obj) const;
  static uint64_t ResidentLimit(const OffloadBudget& budget);
  absl::Status CheckNvmeSpecLocked(const Job& job, const Object& obj) const;

  // Acquire / prefetch / eviction (tier_manager.cc). Functions taking the
  // lock may release and retake it.
  void RequestLocked(std::unique_lock<std::mutex>& lock, const ObjectPtr& obj, AcquireMode mode,
                     bool prefetch, AcquireDone done, Deferred& deferred);
  absl::Status CheckBuffersLocked(const Job& job, const Object& obj) const;
  absl::Status MakeRoomForJobLocked(Job& job, const Object& obj);
  absl::StatusOr<Extent> AllocateArena(std::unique_lock<std::mutex>& lock, const Object& obj);
  bool EvictOneLocked();
  void EvictLocked(Job& job, Object& obj);
  void StartLoad(const ObjectPtr& obj, Extent extent, CopyPtr copy);
  void OnLoadDone(const ObjectPtr& obj, Extent extent, absl::Status status, uint64_t bytes);
  void OnLoadDoneLocked(const ObjectPtr& obj, std::optional<Extent> extent, absl::Status status,
                        Deferred& deferred);
  void ProcessWaitersLocked(Object& obj, Deferred& deferred);
  void ReleaseObjectLocked(Job& job, const ObjectPtr& obj, Deferred& deferred);
  // Whether an unpinned dirty object (of job and stream, when given) has a
  // write-back queued or in flight, after which it can be evicted.
  bool PendingWriteBackLocked(const Job* job, const Stream* stream) const;
  void RetryParkedLocked(std::unique_lock<std::mutex>& lock, Deferred& deferred);

  // Write-back, flush, publish, recovery (tier_manager_io.cc).
  CopyPtr MakeCopy(const std::string& job, NvmeExtent extent, std::vector<uint32_t> crcs,
                   uint64_t bytes, uint64_t version);
  void QueueWriteBackLocked(const ObjectPtr& obj);
  void StartWriteBacksLocked(Deferred& deferred);
  void FailWriteLocked(Object& obj, const absl::Status& status, Deferred& deferred);
  void OnWriteDone(const ObjectPtr& obj, std::shared_ptr<NvmeCopy> copy, absl::Status status);
  void SettleFlushWaitersLocked(Object& obj, const absl::Status* error, Deferred& deferred);
  void FlushWaiterDoneLocked(const std::shared_ptr<FlushWaiter>& waiter);
  void RetryFailedWritesLocked(Deferred& deferred);
  void ThreadMain();
  void PublishOnce(std::unique_lock<std::mutex>& lock);
  Manifest SnapshotLocked(std::vector<std::pair<ObjectPtr, CopyPtr>>* copies) const;
  absl::Status AdoptAllLocked(const Manifest& m);

  PinnedArena* const arena_;
  NvmeTier* const nvme_;
  const TierManagerOptions options_;

  mutable std::mutex mu_;
  std::condition_variable cv_;  // manager thread wake-ups, I/O drain
  std::map<std::string, Job> jobs_;
  EvictionPolicy policy_;
  std::deque<ObjectPtr> writeback_queue_;
  // Acquires and prefetches short of room that wait for write-backs.
  struct ParkedRequest {
    ObjectPtr obj;
    AcquireMode mode;
    bool prefetch;
    AcquireDone done;
  };
  std::vector<ParkedRequest> parked_;
  uint32_t writebacks_in_flight_ = 0;
  uint32_t io_in_flight_ = 0;
  bool manifest_dirty_ = false;
  uint64_t publish_ticket_ = 0;  // raised by each Flush ready to publish
  std::vector<std::shared_ptr<FlushWaiter>> publish_waiters_;
  std::vector<CopyPtr> published_;  // copies the last published manifest names
  uint64_t generation_ = 0;
  uint64_t publishes_ = 0, publish_errors_ = 0;
  std::string last_publish_error_;
  std::chrono::steady_clock::time_point last_retry_, last_publish_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace spill::storage

#endif  // SPILL_STORAGE_TIER_MANAGER_H_
