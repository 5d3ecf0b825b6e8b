#include "storage/pinned_arena.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "storage/host_limits.h"

namespace spill::storage {
namespace {

// Each segment holds a file descriptor for the daemon's lifetime; a pool
// that needs more is configured with segments far too small.
constexpr uint64_t kMaxSegments = 1 << 16;

struct Geometry {
  uint64_t segment_bytes = 0;
  uint64_t count = 0;
  uint64_t pool_bytes() const { return segment_bytes * count; }
};

bool IsPowerOfTwo(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

absl::Status ValidateOptions(const ArenaOptions& options) {
  if (options.total_bytes == 0) {
    return absl::InvalidArgumentError("the pinned pool size (--pinned-bytes) must be positive");
  }
  if (options.segment_bytes == 0) {
    return absl::InvalidArgumentError("the pinned segment size must be positive");
  }
  if (!IsPowerOfTwo(options.alignment) || options.alignment < 64) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pinned extent alignment ", options.alignment, " must be a power of two of at least 64"));
  }
  return absl::OkStatus();
}

// Segment size clamped to the pool, then rounded up to whole pages, but never
// past the pool; the pool is rounded down to whole segments.
absl::StatusOr<Geometry> PlanGeometry(const ArenaOptions& options, uint64_t page_bytes) {
  const uint64_t total = options.total_bytes;
  uint64_t segment = std::min(options.segment_bytes, total);
  const uint64_t rem = segment % page_bytes;
  if (rem != 0) {
    segment = segment > UINT64_MAX - page_bytes ? UINT64_MAX : segment - rem + page_bytes;
  }
  if (segment > total) segment = total - total % page_bytes;
  if (segment == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the pinned pool (--pinned-bytes) of ", FormatBytes(total),
        " is smaller than one page of ", FormatBytes(page_bytes)));
  }
  Geometry geometry{segment, total / segment};
  if (geometry.count > kMaxSegments) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the pinned pool of ", FormatBytes(total), " would need ", geometry.count,
        " segments of ", FormatBytes(segment), " (at most ", kMaxSegments,
        "): use larger segments"));
  }
  return geometry;
}

// OK when the kernel has enough free huge pages for the whole pool.
absl::Status HugePagesCover(const ArenaOptions& options, const HugePageInfo& info) {
  if (info.page_bytes == 0) {
    return absl::FailedPreconditionError(
        "huge pages were requested but the kernel reports no huge page size "
        "(Hugepagesize missing from /proc/meminfo): run with huge pages set to auto or off");
  }
  SPILL_ASSIGN_OR_RETURN(Geometry geometry, PlanGeometry(options, info.page_bytes));
  const uint64_t need = geometry.pool_bytes() / info.page_bytes;
  if (info.free_pages >= need) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "huge pages were requested but only ", info.free_pages, " ",
      FormatBytes(info.page_bytes), " huge pages are free (HugePages_Free) and the pinned pool of ",
      FormatBytes(geometry.pool_bytes()), " needs ", need, ": raise vm.nr_hugepages by at least ",
      need - info.free_pages, " (sysctl -w vm.nr_hugepages=...), or run with huge pages set "
      "to auto or off"));
}

// Page size to build the pool from: a huge page size, or 0 for base pages.
absl::StatusOr<uint64_t> ChooseHugePageBytes(const ArenaOptions& options) {
  if (options.huge_pages == HugePageMode::kOff) return 0;
  const HugePageInfo info = ReadHugePageInfo();
  absl::Status cover = HugePagesCover(options, info);
  if (cover.ok()) return info.page_bytes;
  if (options.huge_pages == HugePageMode::kAuto) return 0;
  return cover;
}

uint32_t PopulateThreads(const ArenaOptions& options) {
  if (options.populate_threads > 0) return options.populate_threads;
  return std::clamp(std::thread::hardware_concurrency() / 2, 1u, 16u);
}

absl::Status WithContext(const absl::Status& status, absl::string_view context) {
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

}  // namespace

struct PinnedArena::Segment {
  explicit Segment(uint64_t bytes) : allocator(bytes) {}

  // Offset of a new extent, or nullopt when none fits.
  std::optional<uint64_t> TryAllocate(uint64_t size, uint64_t alignment) {
    if (allocator.free_bytes() < size) return std::nullopt;
    absl::StatusOr<uint64_t> offset = allocator.Allocate(size, alignment);
    if (!offset.ok()) return std::nullopt;
    return *offset;
  }

  uint64_t id = 0;  // 0 while the segment has no memfd (vacant or refilling).
  UniqueFd fd;
  Mapping mapping;  // The daemon's own; populated and (lock_) mlocked.
  ExtentAllocator allocator;
  std::string owner;       // Empty when free.
  std::string last_owner;  // When free: who owned this memfd last; empty if nobody.
};

PinnedArena::PinnedArena(const ArenaOptions& options, uint64_t segment_bytes, bool huge_pages)
    : segment_bytes_(segment_bytes),
      alignment_(options.alignment),
      huge_pages_(huge_pages),
      lock_(options.lock) {}

PinnedArena::~PinnedArena() = default;

absl::StatusOr<std::unique_ptr<PinnedArena>> PinnedArena::Create(const ArenaOptions& options) {
  SPILL_RETURN_IF_ERROR(ValidateOptions(options));
  SPILL_ASSIGN_OR_RETURN(uint64_t huge_page_bytes, ChooseHugePageBytes(options));
  for (const bool huge : {true, false}) {
    if (huge && huge_page_bytes == 0) continue;
    const uint64_t page_bytes = huge ? huge_page_bytes : static_cast<uint64_t>(::getpagesize());
    SPILL_ASSIGN_OR_RETURN(Geometry geometry, PlanGeometry(options, page_bytes));
    if (options.lock) SPILL_RETURN_IF_ERROR(CheckMemlockLimit(geometry.pool_bytes()));
    // Huge pages are reserved apart from MemAvailable; HugePagesCover checked them.
    if (!huge) SPILL_RETURN_IF_ERROR(CheckMemAvailable(geometry.pool_bytes()));
    std::unique_ptr<PinnedArena> arena(new PinnedArena(options, geometry.segment_bytes, huge));
    absl::Status status = arena->CreateSegments(geometry.count, PopulateThreads(options));
    if (status.ok()) return arena;
    // In auto mode another process may have taken the free huge pages since
    // they were counted: fall back to base pages.
    if (!huge || options.huge_pages != HugePageMode::kAuto) return status;
  }
  return absl::InternalError("unreachable: no page size left to try");
}

absl::Status PinnedArena::CreateSegments(uint64_t count, uint32_t threads) {
  for (uint64_t i = 0; i < count; ++i) {
    segments_.push_back(std::make_unique<Segment>(segment_bytes_));
  }
  // Segments are independent, so they are populated in parallel; the first
  // failure stops the workers from starting more.
  std::vector<absl::Status> results(count);
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  auto work = [&] {
    for (uint64_t i = next++; i < count && !failed; i = next++) {
      results[i] = Populate(*segments_[i]);
      if (!results[i].ok()) failed = true;
    }
  };
  std::vector<std::thread> workers;
  for (uint64_t t = 1; t < std::min<uint64_t>(threads, count); ++t) workers.emplace_back(work);
  work();
  for (std::thread& worker : workers) worker.join();
  for (uint64_t i = 0; i < count; ++i) {
    if (!results[i].ok()) {
      return WithContext(results[i], absl::StrCat("creating pinned segment ", i + 1, " of ", count,
                                                  " (", FormatBytes(segment_bytes_), " each",
                                                  huge_pages_ ? ", huge pages)" : ")"));
    }
  }
  for (const auto& segment : segments_) {
    segment->id = next_segment_id_++;
    by_id_.emplace(segment->id, segment.get());
  }
  return absl::OkStatus();
}

absl::Status PinnedArena::Populate(Segment& segment) {
  MemfdOptions options;
  options.name = "spill-segment";
  options.size_bytes = segment_bytes_;
  options.huge_pages = huge_pages_;
  SPILL_ASSIGN_OR_RETURN(UniqueFd fd, CreateSealedMemfd(options));
  SPILL_ASSIGN_OR_RETURN(Mapping mapping, Mapping::Map(fd.get(), segment_bytes_, true));
  if (lock_ && ::mlock(mapping.data(), mapping.size()) != 0) {
    return MlockFailure(errno, segment_bytes_);
  }
  segment.fd = std::move(fd);
  segment.mapping = std::move(mapping);
  return absl::OkStatus();
}

absl::StatusOr<Extent> PinnedArena::Allocate(const std::string& job, uint64_t size) {
  if (job.empty()) return absl::InvalidArgumentError("pinned allocation for an empty job name");
  if (size == 0) return absl::InvalidArgumentError("cannot allocate 0 pinned bytes");
  if (size > segment_bytes_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot allocate ", FormatBytes(size), " (", size, " bytes) of pinned memory: larger "
        "than a segment (", FormatBytes(segment_bytes_), "), the largest object the arena holds"));
  }
  std::unique_lock<std::mutex> lock(mu_);
  if (std::optional<Extent> extent = AllocateInOwnedLocked(job, size)) return *extent;
  Segment* segment = PickFreeSegmentLocked(job);
  if (segment == nullptr) return ExhaustedLocked(job, size);
  const bool stale = !segment->fd.valid() ||
                     (!segment->last_owner.empty() && segment->last_owner != job);
  if (stale) SPILL_RETURN_IF_ERROR(RefillLocked(lock, *segment, job));
  segment->owner = job;
  segment->last_owner.clear();
  JobState& state = jobs_[job];
  state.segments.push_back(segment);
  // An empty segment holds any request no larger than itself at offset 0.
  const uint64_t offset = segment->TryAllocate(size, alignment_).value();
  state.used_bytes += size;
  return Extent{segment->id, offset, size};
}

std::optional<Extent> PinnedArena::AllocateInOwnedLocked(const std::string& job, uint64_t size) {
  auto it = jobs_.find(job);
  if (it == jobs_.end()) return std::nullopt;
  for (Segment* segment : it->second.segments) {
    if (std::optional<uint64_t> offset = segment->TryAllocate(size, alignment_)) {
      it->second.used_bytes += size;
      return Extent{segment->id, *offset, size};
    }
  }
  return std::nullopt;
}

// Prefers, in order: the job's own former segment (kept as is), a segment no
// job has used (fresh from the kernel), a vacant one, another job's former one.
PinnedArena::Segment* PinnedArena::PickFreeSegmentLocked(const std::string& job) const {
  Segment* best = nullptr;
  int best_rank = 4;
  for (const auto& segment : segments_) {
    if (!segment->owner.empty()) continue;
    int rank = 3;
    if (segment->fd.valid() && segment->last_owner == job) rank = 0;
    else if (segment->fd.valid() && segment->last_owner.empty()) rank = 1;
    else if (!segment->fd.valid()) rank = 2;
    if (rank < best_rank) {
      best = segment.get();
      best_rank = rank;
      if (rank == 0) break;
    }
  }
  return best;
}

absl::Status PinnedArena::RefillLocked(std::unique_lock<std::mutex>& lock, Segment& segment,
                                       const std::string& job) {
  if (segment.id != 0) by_id_.erase(segment.id);  // The old id becomes unknown now.
  segment.id = 0;
  segment.owner = job;  // Keeps other callers off the segment while unlocked.
  segment.last_owner.clear();
  UniqueFd old_fd = std::move(segment.fd);
  Mapping old_mapping = std::move(segment.mapping);
  lock.unlock();
  // Drop the old pages (and their mlock charge) before making new ones, so a
  // refill needs no memory or RLIMIT_MEMLOCK headroom beyond the pool.
  old_mapping.Reset();
  old_fd.Reset();
  Segment fresh(0);
  absl::Status status = Populate(fresh);
  lock.lock();
  if (!status.ok()) {
    segment.owner.clear();  // Free and vacant: the next taker refills it.
    return WithContext(status, absl::StrCat("replacing a pinned segment for job '", job, "'"));
  }
  segment.fd = std::move(fresh.fd);
  segment.mapping = std::move(fresh.mapping);
  segment.id = next_segment_id_++;
  by_id_.emplace(segment.id, &segment);
  return absl::OkStatus();
}

absl::Status PinnedArena::ExhaustedLocked(const std::string& job, uint64_t size) const {
  uint64_t used = 0;
  for (const auto& [name, state] : jobs_) used += state.used_bytes;
  auto it = jobs_.find(job);
  std::string own = "it owns no segment";
  if (it != jobs_.end()) {
    own = absl::StrCat("it owns ", it->second.segments.size(), " segments with ",
                       FormatBytes(it->second.used_bytes), " used and no extent left that fits");
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "pinned arena cannot fit ", FormatBytes(size), " for job '", job, "': capacity ",
      FormatBytes(segment_bytes_ * segments_.size()), " in ", segments_.size(),
      " segments of ", FormatBytes(segment_bytes_), ", ", FormatBytes(used), " used by ",
      jobs_.size(), " jobs, no segment free (jobs never share a segment); ", own));
}

absl::Status PinnedArena::Free(const std::string& job, const Extent& extent) {
  std::lock_guard<std::mutex> lock(mu_);
  Segment* segment = FindSegmentLocked(extent.segment_id);
  bool held = false;
  if (segment != nullptr && segment->owner == job) {
    absl::StatusOr<uint64_t> size = segment->allocator.SizeOf(extent.offset);
    held = size.ok() && *size == extent.size;
  }
  if (!held) {
    return absl::NotFoundError(absl::StrCat(
        "job '", job, "' holds no pinned extent of ", extent.size, " bytes at offset ",
        extent.offset, " of segment ", extent.segment_id));
  }
  segment->allocator.Free(extent.offset).IgnoreError();  // Checked just above.
  auto it = jobs_.find(job);
  JobState& state = it->second;
  state.used_bytes -= extent.size;
  if (segment->allocator.empty()) {
    std::erase(state.segments, segment);
    ReturnToPoolLocked(*segment);
    if (state.segments.empty()) jobs_.erase(it);
  }
  return absl::OkStatus();
}

void PinnedArena::ReleaseJob(const std::string& job) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job);
  if (it == jobs_.end()) return;
  for (Segment* segment : it->second.segments) ReturnToPoolLocked(*segment);
  jobs_.erase(it);
}

void PinnedArena::ReturnToPoolLocked(Segment& segment) {
  segment.last_owner = std::move(segment.owner);
  segment.owner.clear();
  segment.allocator = ExtentAllocator(segment_bytes_);
}

PinnedArena::Segment* PinnedArena::FindSegmentLocked(uint64_t segment_id) const {
  auto it = by_id_.find(segment_id);
  return it == by_id_.end() ? nullptr : it->second;
}

absl::StatusOr<PinnedArena::Segment*> PinnedArena::OwnedSegmentLocked(
    const std::string& job, uint64_t segment_id) const {
  Segment* segment = FindSegmentLocked(segment_id);
  if (segment == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("pinned segment ", segment_id, " is unknown or was replaced"));
  }
  if (segment->owner != job) {
    return absl::PermissionDeniedError(absl::StrCat(
        "pinned segment ", segment_id, segment->owner.empty() ? " is free" : " is another job's",
        "; job '", job, "' does not own it"));
  }
  return segment;
}

absl::StatusOr<SegmentHandle> PinnedArena::GetSegment(const std::string& job,
                                                      uint64_t segment_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  SPILL_ASSIGN_OR_RETURN(Segment * segment, OwnedSegmentLocked(job, segment_id));
  return SegmentHandle{segment->fd.get(), segment->id, segment_bytes_, huge_pages_};
}

absl::StatusOr<UniqueFd> PinnedArena::DupSegmentFd(const std::string& job,
                                                   uint64_t segment_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  SPILL_ASSIGN_OR_RETURN(Segment * segment, OwnedSegmentLocked(job, segment_id));
  UniqueFd fd(::fcntl(segment->fd.get(), F_DUPFD_CLOEXEC, 0));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, "duplicating a pinned segment's fd");
  return fd;
}

uint8_t* PinnedArena::Data(const Extent& extent) const {
  std::lock_guard<std::mutex> lock(mu_);
  Segment* segment = FindSegmentLocked(extent.segment_id);
  if (segment == nullptr || extent.offset >= segment_bytes_) return nullptr;
  return segment->mapping.data() + extent.offset;
}

JobArenaUsage PinnedArena::JobUsage(const std::string& job) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job);
  if (it == jobs_.end()) return JobArenaUsage{};
  const auto count = static_cast<uint32_t>(it->second.segments.size());
  return JobArenaUsage{it->second.used_bytes, count * segment_bytes_, count};
}

ArenaStats PinnedArena::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  ArenaStats stats;
  stats.segment_bytes = segment_bytes_;
  stats.segments_total = static_cast<uint32_t>(segments_.size());
  stats.capacity_bytes = segment_bytes_ * segments_.size();
  stats.huge_pages = huge_pages_;
  for (const auto& segment : segments_) {
    if (segment->owner.empty()) ++stats.segments_free;
  }
  for (const auto& [job, state] : jobs_) {
    const auto count = static_cast<uint32_t>(state.segments.size());
    stats.jobs[job] = JobArenaUsage{state.used_bytes, count * segment_bytes_, count};
    stats.used_bytes += state.used_bytes;
  }
  return stats;
}

}  // namespace spill::storage
