// PinnedArena: the pinned-CPU tier. A fixed pool of memfd segments, created,
// populated and mlocked when spilld starts, from which jobs allocate extents.
//
// Ownership rules (the security model of the data plane):
//  - A segment belongs to at most one job at a time; a job's extents are
//    allocated only in segments it owns, so the fd of a segment can be handed
//    to that job's sessions without exposing another job's bytes.
//  - A segment that becomes empty goes back to the free pool.
//  - When a free segment is given to a job other than its last owner, the
//    arena replaces its memfd with a fresh one (new pages come zeroed from
//    the kernel) and gives it a new segment id. A former owner's process that
//    kept a mapping of the old memfd therefore sees neither the new job's
//    bytes nor zeros written over them; its stale id is simply unknown.
//  - Segment ids are never reused.
//
// Thread-safe: every method may be called from any thread.
//
//   SPILL_ASSIGN_OR_RETURN(auto arena, PinnedArena::Create(options));
//   SPILL_ASSIGN_OR_RETURN(Extent e, arena->Allocate("job-a", 1 << 20));
//   std::memset(arena->Data(e), 0, e.size);
//   arena->Free("job-a", e);
#ifndef SPILL_STORAGE_PINNED_ARENA_H_
#define SPILL_STORAGE_PINNED_ARENA_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/memfd.h"
#include "common/unique_fd.h"
#include "storage/extent_allocator.h"

namespace spill::storage {

enum class HugePageMode { kAuto, kOn, kOff };

struct ArenaOptions {
  // Total pinned bytes; rounded down to whole segments. At least one segment.
  uint64_t total_bytes = 0;
  // Bytes per segment (the largest object the arena can hold). Clamped to
  // total_bytes; rounded up to the page size in use.
  uint64_t segment_bytes = uint64_t{1} << 30;
  // kAuto uses huge pages when the kernel has enough free for the whole pool,
  // else 4 KiB pages; kOn fails when it cannot; kOff never tries.
  HugePageMode huge_pages = HugePageMode::kAuto;
  // mlock every segment (spilld always does; tests of the allocator may not).
  bool lock = true;
  // Alignment of every extent's offset (power of two, >= 64).
  uint64_t alignment = 4096;
  // Threads that populate and lock segments in Create (page faulting and
  // zeroing is most of a large pool's start-up time). 0: half the CPUs, at
  // most 16.
  uint32_t populate_threads = 0;
};

// A byte range of one segment held by one job.
struct Extent {
  uint64_t segment_id = 0;
  uint64_t offset = 0;
  uint64_t size = 0;
};

// What a client needs to receive and map a segment.
struct SegmentHandle {
  int fd = -1;  // Owned by the arena; valid while the segment is owned by the job.
  uint64_t segment_id = 0;
  uint64_t size_bytes = 0;
  bool huge_pages = false;
};

struct JobArenaUsage {
  uint64_t used_bytes = 0;      // Sum of the job's extents.
  uint64_t reserved_bytes = 0;  // Bytes of segments the job owns.
  uint32_t segments = 0;
};

struct ArenaStats {
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;
  uint64_t segment_bytes = 0;
  uint32_t segments_total = 0;
  uint32_t segments_free = 0;
  bool huge_pages = false;
  absl::flat_hash_map<std::string, JobArenaUsage> jobs;
};

class PinnedArena {
 public:
  // Creates, populates, seals and (options.lock) mlocks every segment. Fails
  // before touching memory when RLIMIT_MEMLOCK (without CAP_IPC_LOCK) or
  // MemAvailable cannot cover total_bytes: ResourceExhausted whose message
  // names the limit, its value, the need, and how to raise it
  // (ulimit -l / LimitMEMLOCK=infinity / CAP_IPC_LOCK, or a smaller
  // --pinned-bytes). InvalidArgument for a bad option.
  static absl::StatusOr<std::unique_ptr<PinnedArena>> Create(const ArenaOptions& options);

  ~PinnedArena();
  PinnedArena(const PinnedArena&) = delete;
  PinnedArena& operator=(const PinnedArena&) = delete;

  // Allocates size bytes for job. InvalidArgument when size is 0 or larger
  // than a segment (the message names the segment size), or job is empty;
  // ResourceExhausted when neither the job's segments nor a free segment can
  // hold it (the message names capacity and use). May replace a free
  // segment's memfd (see above), which costs time proportional to its size
  // (spent without holding the arena's lock).
  absl::StatusOr<Extent> Allocate(const std::string& job, uint64_t size);

  // Frees an extent of job. NotFound when job does not hold exactly that
  // extent; nothing changes then.
  absl::Status Free(const std::string& job, const Extent& extent);

  // Frees every extent of job and returns its segments to the pool.
  void ReleaseJob(const std::string& job);

  // The segment with this id if job owns it now; NotFound (unknown or
  // replaced id) or PermissionDenied (owned by another job, or free) otherwise.
  // handle.fd may be closed (and its number reused) as soon as the job frees
  // the segment; to send it to a client, use DupSegmentFd.
  absl::StatusOr<SegmentHandle> GetSegment(const std::string& job, uint64_t segment_id) const;

  // Like GetSegment, but returns a duplicate of the segment's fd (close-on-
  // exec), made under the arena's lock: it stays valid after the segment is
  // freed or replaced, so it can be sent to a client without racing them.
  absl::StatusOr<UniqueFd> DupSegmentFd(const std::string& job, uint64_t segment_id) const;

  // The daemon's own mapping of an extent's first byte. The extent must be
  // live (returned by Allocate and not freed); nullptr when its segment id
  // is unknown.
  uint8_t* Data(const Extent& extent) const;

  JobArenaUsage JobUsage(const std::string& job) const;
  ArenaStats Stats() const;

  uint64_t segment_bytes() const { return segment_bytes_; }
  uint64_t alignment() const { return alignment_; }
  bool huge_pages() const { return huge_pages_; }

 private:
  struct Segment;
  PinnedArena(const ArenaOptions& options, uint64_t segment_bytes, bool huge_pages);

  struct JobState {
    std::vector<Segment*> segments;  // Owned segments, in the order taken.
    uint64_t used_bytes = 0;
  };

  // Creates segment's memfd, maps it (populated) and mlocks it when lock_.
  // Touches only segment and const members, so it runs without mu_.
  absl::Status Populate(Segment& segment);
  Segment* FindSegmentLocked(uint64_t segment_id) const;
  // The segment if job owns it; the NotFound / PermissionDenied of GetSegment else.
  absl::StatusOr<Segment*> OwnedSegmentLocked(const std::string& job, uint64_t segment_id) const;
  absl::Status CreateSegments(uint64_t count, uint32_t threads);
  std::optional<Extent> AllocateInOwnedLocked(const std::string& job, uint64_t size);
  Segment* PickFreeSegmentLocked(const std::string& job) const;
  // Gives segment, whose memfd is stale or missing, a fresh one for job.
  // Releases lock while the pages are made; on failure the segment is left
  // free and without a memfd.
  absl::Status RefillLocked(std::unique_lock<std::mutex>& lock, Segment& segment,
                            const std::string& job);
  void ReturnToPoolLocked(Segment& segment);
  absl::Status ExhaustedLocked(const std::string& job, uint64_t size) const;

  const uint64_t segment_bytes_;
  const uint64_t alignment_;
  const bool huge_pages_;
  const bool lock_;
  mutable std::mutex mu_;
  uint64_t next_segment_id_ = 1;
  std::vector<std::unique_ptr<Segment>> segments_;  // Fixed after Create.
  absl::flat_hash_map<uint64_t, Segment*> by_id_;    // Live ids only.
  absl::flat_hash_map<std::string, JobState> jobs_;  // Jobs owning a segment.
};

}  // namespace spill::storage

#endif  // SPILL_STORAGE_PINNED_ARENA_H_
