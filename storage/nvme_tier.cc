// NvmeTier: opening the data files, allocation, fixed buffers, stats.
#include "storage/nvme_tier.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "storage/nvme_ring.h"

namespace spill::storage {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kMaxSlotBytes = uint64_t{1} << 30;
constexpr char kDataFile[] = "spill-nvme.data";

absl::Status CheckOptions(const NvmeOptions& o) {
  if (o.dirs.empty()) return absl::InvalidArgumentError("NVMe tier: no directories given");
  std::set<std::string> seen;
  for (const std::string& d : o.dirs) {
    if (d.empty()) return absl::InvalidArgumentError("NVMe tier: empty directory name");
    if (!seen.insert(d).second) {
      return absl::InvalidArgumentError(absl::StrCat("NVMe tier: directory ", d, " given twice"));
    }
  }
  if (o.block_size == 0 || o.block_size % kPage != 0 || o.block_size > (64u << 20)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "NVMe tier: block_size ", o.block_size, " must be a multiple of 4096 up to 64 MiB"));
  }
  if (o.capacity_bytes < o.block_size) {
    return absl::InvalidArgumentError(absl::StrCat("NVMe tier: capacity_bytes ", o.capacity_bytes,
                                                   " is below one block of ", o.block_size));
  }
  if (o.queue_depth == 0 || o.queue_depth > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("NVMe tier: queue_depth ", o.queue_depth, " not in 1..4096"));
  }
  if (o.thread_count == 0 || o.thread_count > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("NVMe tier: thread_count ", o.thread_count, " not in 1..64"));
  }
  return absl::OkStatus();
}

// Opens (O_DIRECT) and preallocates one directory's data file.
absl::StatusOr<int> OpenDataFile(const std::string& dir, uint64_t capacity, uint32_t lock_wait_ms) {
  const std::string path = absl::StrCat(dir, "/", kDataFile);
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
  if (fd < 0) {
    const int err = errno;
    if (err == EINVAL) {
      return absl::FailedPreconditionError(absl::StrCat(
          "NVMe directory ", dir, ": its file system does not support O_DIRECT (tmpfs?)"));
    }
    return absl::ErrnoToStatus(err, absl::StrCat("NVMe directory ", dir, ": open ", path));
  }
  absl::Status status;
  // A tier that just closed (or a process just killed) may hold the lock a
  // little longer: its io_uring keeps the file until the kernel tears the
  // ring down asynchronously. Wait lock_wait_ms for it.
  int locked = ::flock(fd, LOCK_EX | LOCK_NB);
  for (uint32_t waited = 0; locked != 0 && errno == EWOULDBLOCK && waited < lock_wait_ms;
       waited += 10) {
    ::usleep(10000);
    locked = ::flock(fd, LOCK_EX | LOCK_NB);
  }
  if (locked != 0) {
    status = absl::FailedPreconditionError(
        absl::StrCat("NVMe directory ", dir, ": ", path, " is in use by another NVMe tier"));
  } else if (int rc = ::posix_fallocate(fd, 0, static_cast<off_t>(capacity)); rc != 0) {
    if (rc == ENOSPC) {
      status = absl::ResourceExhaustedError(absl::StrCat(
          "NVMe directory ", dir, ": no room to preallocate ", capacity, " bytes"));
    } else if (rc == EOPNOTSUPP || rc == EINVAL) {
      status = absl::FailedPreconditionError(
          absl::StrCat("NVMe directory ", dir, ": file system cannot preallocate (fallocate)"));
    } else {
      status = absl::ErrnoToStatus(rc, absl::StrCat("NVMe directory ", dir, ": fallocate"));
    }
  }
  if (!status.ok()) {
    ::close(fd);
    return status;
  }
  return fd;
}

}  // namespace

NvmeTier::NvmeTier(const NvmeOptions& options)
    : options_(options),
      dir_capacity_(options.capacity_bytes / options.block_size * options.block_size) {}

NvmeTier::~NvmeTier() {
  rings_.clear();  // each waits for its requests
  for (int fd : fds_) {
    ::flock(fd, LOCK_UN);  // now, not when the kernel drops the ring's reference
    ::close(fd);
  }
}

absl::StatusOr<std::unique_ptr<NvmeTier>> NvmeTier::Open(
    const NvmeOptions& options,
    std::function<absl::StatusOr<std::unique_ptr<IoBackend>>(int ring)> backend_factory) {
  SPILL_RETURN_IF_ERROR(CheckOptions(options));
  std::unique_ptr<NvmeTier> tier(new NvmeTier(options));
  SPILL_RETURN_IF_ERROR(tier->OpenFiles());
  SPILL_RETURN_IF_ERROR(tier->StartRings(backend_factory));
  return tier;
}

absl::Status NvmeTier::OpenFiles() {
  for (const std::string& dir : options_.dirs) {
    SPILL_ASSIGN_OR_RETURN(const int fd, OpenDataFile(dir, dir_capacity_, options_.lock_wait_ms));
    fds_.push_back(fd);
    allocators_.emplace_back(dir_capacity_);
  }
  return absl::OkStatus();
}

absl::Status NvmeTier::StartRings(
    const std::function<absl::StatusOr<std::unique_ptr<IoBackend>>(int)>& factory) {
  slots_ = std::make_unique<Slot[]>(options_.max_fixed_buffers);
  for (uint32_t r = 0; r < options_.thread_count; ++r) {
    absl::StatusOr<std::unique_ptr<IoBackend>> backend =
        factory ? factory(static_cast<int>(r))
                : MakeUringBackend({.queue_depth = options_.queue_depth,
                                    .sqpoll = options_.sqpoll,
                                    .single_submit = options_.single_submit});
    if (!backend.ok()) return backend.status();
    SPILL_RETURN_IF_ERROR((*backend)->RegisterFiles(fds_));
    // Without a buffer table every request is a plain READ/WRITE.
    if (options_.max_fixed_buffers == 0 ||
        !(*backend)->RegisterBuffers(options_.max_fixed_buffers).ok()) {
      fixed_ok_ = false;
    }
    rings_.push_back(std::make_unique<internal::Ring>(std::move(*backend), options_, this));
  }
  return absl::OkStatus();
}

std::string NvmeTier::DataFilePath(uint32_t dir) const {
  return absl::StrCat(options_.dirs.at(dir), "/", kDataFile);
}

// ---- Allocation ----

std::vector<std::vector<NvmePiece>> NvmeLanes(const NvmeExtent& extent) {
  std::vector<std::vector<NvmePiece>> lanes;
  std::vector<uint32_t> dirs;
  for (const NvmePiece& p : extent.pieces) {
    const auto it = std::find(dirs.begin(), dirs.end(), p.dir);
    if (it == dirs.end()) {
      dirs.push_back(p.dir);
      lanes.push_back({p});
    } else {
      lanes[it - dirs.begin()].push_back(p);
    }
  }
  return lanes;
}

absl::Status NvmeTier::CheckExtent(const NvmeExtent& e,
                                   std::vector<std::vector<NvmePiece>>* lanes_out) const {
  const uint64_t bs = options_.block_size;
  const uint64_t blocks = e.bytes / bs + (e.bytes % bs != 0 ? 1 : 0);  // no wrap near 2^64
  const size_t want = std::min<uint64_t>(blocks, options_.dirs.size());
  std::vector<std::vector<NvmePiece>> lanes = NvmeLanes(e);
  if (e.bytes == 0 || e.bytes > dir_capacity_ * options_.dirs.size() || lanes.size() != want) {
    return absl::InvalidArgumentError(absl::StrCat("NVMe extent of ", e.bytes, " bytes has ",
                                                   e.pieces.size(), " pieces in ", lanes.size(),
                                                   " directories, expected ", want));
  }
  for (size_t k = 0; k < lanes.size(); ++k) {
    const uint64_t lane_bytes = (blocks / want + (k < blocks % want ? 1 : 0)) * bs;
    if (lanes[k].size() > kMaxPiecesPerLane) {
      return absl::InvalidArgumentError(absl::StrCat("NVMe extent lane ", k, " has ",
                                                     lanes[k].size(), " pieces, at most ",
                                                     kMaxPiecesPerLane));
    }
    uint64_t total = 0;
    for (const NvmePiece& p : lanes[k]) {
      if (p.dir >= options_.dirs.size() ||
          p.offset % kPage != 0 || p.length == 0 || p.length % bs != 0 ||
          p.offset > dir_capacity_ || p.length > dir_capacity_ - p.offset) {
        return absl::InvalidArgumentError(
            absl::StrCat("NVMe extent piece (dir ", p.dir, ", offset ", p.offset, ", length ",
                         p.length, ") of lane ", k, " does not fit the tier's layout"));
      }
      total += p.length;
    }
    if (total != lane_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("NVMe extent lane ", k, " (dir ",
                                                     lanes[k][0].dir, ") holds ", total,
                                                     " bytes, expected ", lane_bytes));
    }
  }
  if (lanes_out != nullptr) *lanes_out = std::move(lanes);
  return absl::OkStatus();
}

absl::Status NvmeTier::AllocateLaneLocked(uint32_t dir, uint64_t len, std::vector<NvmePiece>& out) {
  ExtentAllocator& a = allocators_[dir];
  if (absl::StatusOr<uint64_t> off = a.Allocate(len, kPage); off.ok()) {
    out.push_back({dir, *off, len});
    return absl::OkStatus();
  }
  // Fragmented: the largest free ranges, each a whole number of blocks.
  const uint64_t bs = options_.block_size;
  if (a.free_bytes() / bs * bs < len) {
    return absl::ResourceExhaustedError(absl::StrCat(a.free_bytes(), " bytes free"));
  }
  const size_t first = out.size();
  uint64_t left = len;
  while (left > 0 && out.size() - first < kMaxPiecesPerLane) {
    const uint64_t chunk = std::min(left, a.largest_free() / bs * bs);
    if (chunk == 0) break;  // Only ranges shorter than a block are left.
    absl::StatusOr<uint64_t> off = a.Allocate(chunk, kPage);
    if (!off.ok()) break;
    out.push_back({dir, *off, chunk});
    left -= chunk;
  }
  if (left == 0) return absl::OkStatus();
  // Give this lane's ranges back before describing the free space.
  for (size_t k = first; k < out.size(); ++k) (void)a.Free(out[k].offset);
  out.resize(first);
  return absl::ResourceExhaustedError(absl::StrCat(
      a.free_bytes(), " bytes free, but a lane of ", len, " bytes would need more than ",
      kMaxPiecesPerLane, " ranges of whole blocks (largest ", a.largest_free(), ")"));
}

absl::StatusOr<NvmeExtent> NvmeTier::Allocate(const std::string& job, uint64_t bytes) {
  if (job.empty()) return absl::InvalidArgumentError("NVMe allocate: empty job id");
  if (bytes == 0) return absl::InvalidArgumentError("NVMe allocate: 0 bytes");
  const uint64_t bs = options_.block_size;
  const uint64_t ndirs = options_.dirs.size();
  const uint64_t blocks = bytes / bs + (bytes % bs != 0 ? 1 : 0);
  const uint64_t lanes = std::min(blocks, ndirs);
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t used = 0;
  for (const ExtentAllocator& a : allocators_) used += a.used_bytes();
  const uint64_t capacity = dir_capacity_ * ndirs;
  const uint64_t job_used = job_used_.count(job) ? job_used_[job] : 0;
  if (options_.job_quota_bytes > 0 && job_used + blocks * bs > options_.job_quota_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "NVMe quota of job ", job, ": uses ", job_used, " of ", options_.job_quota_bytes,
        " bytes, request of ", bytes, " needs ", blocks * bs));
  }
  NvmeExtent extent{bytes, {}};
  const uint32_t start = next_dir_;
  for (uint64_t k = 0; k < lanes; ++k) {
    const uint32_t dir = static_cast<uint32_t>((start + k) % ndirs);
    const uint64_t len = (blocks / lanes + (k < blocks % lanes ? 1 : 0)) * bs;
    if (absl::Status s = AllocateLaneLocked(dir, len, extent.pieces); !s.ok()) {
      for (const NvmePiece& p : extent.pieces) (void)allocators_[p.dir].Free(p.offset);
      return absl::ResourceExhaustedError(absl::StrCat(
          "NVMe tier full: capacity ", capacity, " bytes, used ", used, ", request ", bytes,
          " (", blocks * bs, " in blocks) for job ", job, "; dir ", options_.dirs[dir], ": ",
          s.message()));
    }
  }
  next_dir_ = static_cast<uint32_t>((start + 1) % ndirs);
  jobs_[job][{extent.pieces[0].dir, extent.pieces[0].offset}] = extent;
  job_used_[job] += blocks * bs;
  return extent;
}

absl::Status NvmeTier::Free(const std::string& job, const NvmeExtent& extent) {
  std::lock_guard<std::mutex> lock(mu_);
  const absl::Status not_found = absl::NotFoundError(absl::StrCat(
      "NVMe free: job ", job, " holds no extent of ", extent.bytes, " bytes at that place"));
  auto j = jobs_.find(job);
  if (j == jobs_.end() || extent.pieces.empty()) return not_found;
  auto e = j->second.find({extent.pieces[0].dir, extent.pieces[0].offset});
  if (e == j->second.end() || !(e->second == extent)) return not_found;
  uint64_t len = 0;
  for (const NvmePiece& p : extent.pieces) {
    (void)allocators_[p.dir].Free(p.offset);
    len += p.length;
  }
  j->second.erase(e);
  if ((job_used_[job] -= len) == 0) job_used_.erase(job);
  if (j->second.empty()) jobs_.erase(j);
  return absl::OkStatus();
}

absl::Status NvmeTier::Adopt(const std::string& job, const NvmeExtent& extent) {
  if (job.empty()) return absl::InvalidArgumentError("NVMe adopt: empty job id");
  SPILL_RETURN_IF_ERROR(CheckExtent(extent));
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<const NvmePiece*> done;
  for (const NvmePiece& p : extent.pieces) {
    absl::Status s = allocators_[p.dir].AllocateAt(p.offset, p.length);
    if (!s.ok()) {
      for (const NvmePiece* q : done) (void)allocators_[q->dir].Free(q->offset);
      return absl::FailedPreconditionError(
          absl::StrCat("NVMe adopt for job ", job, ": dir ", p.dir, " [", p.offset, ", +",
                       p.length, ") overlaps allocated space: ", s.message()));
    }
    done.push_back(&p);
  }
  uint64_t len = 0;
  for (const NvmePiece& p : extent.pieces) len += p.length;
  jobs_[job][{extent.pieces[0].dir, extent.pieces[0].offset}] = extent;
  job_used_[job] += len;
  return absl::OkStatus();
}

// ---- Fixed buffers ----

absl::Status NvmeTier::RegisterMemory(uint64_t key, void* addr, uint64_t len) {
  if (len == 0 || addr == nullptr) {
    return absl::InvalidArgumentError("NVMe register memory: empty region");
  }
  std::lock_guard<std::mutex> lock(slot_mu_);
  if (!fixed_ok_) {
    return absl::FailedPreconditionError("NVMe register memory: rings have no buffer table");
  }
  if (slots_by_key_.count(key)) {
    return absl::AlreadyExistsError(absl::StrCat("NVMe memory key ", key, " already registered"));
  }
  const auto start = reinterpret_cast<uintptr_t>(addr);
  auto next = slot_by_addr_.lower_bound(start);
  const bool overlaps_next = next != slot_by_addr_.end() && next->first < start + len;
  const bool overlaps_prev =
      next != slot_by_addr_.begin() &&
      std::prev(next)->first + slots_[std::prev(next)->second].len > start;
  if (overlaps_next || overlaps_prev) {
    return absl::InvalidArgumentError("NVMe register memory: overlaps registered memory");
  }
  std::vector<uint32_t> free_slots;
  const uint64_t need = (len + kMaxSlotBytes - 1) / kMaxSlotBytes;
  for (uint32_t s = 0; s < options_.max_fixed_buffers && free_slots.size() < need; ++s) {
    if (slots_[s].len == 0) free_slots.push_back(s);
  }
  if (free_slots.size() < need) {
    return absl::ResourceExhaustedError(absl::StrCat("NVMe register memory: needs ", need,
                                                     " free slots of ", options_.max_fixed_buffers));
  }
  std::vector<std::pair<size_t, uint32_t>> done;  // (ring, slot) to undo on failure
  for (uint64_t i = 0; i < need; ++i) {
    const uint64_t off = i * kMaxSlotBytes;
    const uint64_t n = std::min(kMaxSlotBytes, len - off);
    for (size_t r = 0; r < rings_.size(); ++r) {
      absl::Status s = rings_[r]->WithSubmitLock([&](IoBackend* b) {
        return b->UpdateBuffer(free_slots[i], static_cast<uint8_t*>(addr) + off, n);
      });
      if (!s.ok()) {
        for (auto [ring, slot] : done) {
          (void)rings_[ring]->WithSubmitLock([&](IoBackend* b) { return b->ClearBuffer(slot); });
        }
        return s;
      }
      done.emplace_back(r, free_slots[i]);
    }
  }
  for (uint64_t i = 0; i < need; ++i) {
    const uint64_t off = i * kMaxSlotBytes;
    slots_[free_slots[i]].addr = start + off;
    slots_[free_slots[i]].len = std::min(kMaxSlotBytes, len - off);
    slot_by_addr_[start + off] = free_slots[i];
  }
  slots_by_key_[key] = std::move(free_slots);
  return absl::OkStatus();
}

absl::Status NvmeTier::UnregisterMemory(uint64_t key) {
  std::unique_lock<std::mutex> lock(slot_mu_);
  auto it = slots_by_key_.find(key);
  if (it == slots_by_key_.end()) {
    return absl::NotFoundError(absl::StrCat("NVMe memory key ", key, " not registered"));
  }
  const std::vector<uint32_t> slots = std::move(it->second);
  slots_by_key_.erase(it);
  for (uint32_t s : slots) slot_by_addr_.erase(slots_[s].addr);  // no new users
  slot_cv_.wait(lock, [&] {
    return std::all_of(slots.begin(), slots.end(),
                       [&](uint32_t s) { return slots_[s].users.load() == 0; });
  });
  absl::Status status;
  for (uint32_t s : slots) {
    for (auto& ring : rings_) {
      absl::Status c = ring->WithSubmitLock([&](IoBackend* b) { return b->ClearBuffer(s); });
      if (status.ok()) status = c;
    }
    slots_[s].addr = 0;
    slots_[s].len = 0;
  }
  return status;
}

int NvmeTier::AcquireSlot(const uint8_t* p, uint64_t len) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> lock(slot_mu_);
  auto it = slot_by_addr_.upper_bound(a);
  if (it == slot_by_addr_.begin()) return -1;
  --it;
  Slot& s = slots_[it->second];
  if (a + len > s.addr + s.len) return -1;
  s.users.fetch_add(1);
  return static_cast<int>(it->second);
}

void NvmeTier::ReleaseSlot(int slot) {
  if (slots_[slot].users.fetch_sub(1) == 1) {
    std::lock_guard<std::mutex> lock(slot_mu_);
    slot_cv_.notify_all();
  }
}

NvmeStats NvmeTier::Stats() const {
  NvmeStats s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    s.capacity_bytes = dir_capacity_ * options_.dirs.size();
    for (const ExtentAllocator& a : allocators_) s.used_bytes += a.used_bytes();
    s.free_bytes = s.capacity_bytes - s.used_bytes;
    s.job_used_bytes = job_used_;
  }
  s.bytes_read = bytes_read_.load();
  s.bytes_written = bytes_written_.load();
  s.read_ops = read_ops_.load();
  s.write_ops = write_ops_.load();
  s.requests = requests_.load();
  s.fixed_requests = fixed_requests_.load();
  s.retries = retries_.load();
  s.short_resubmits = short_resubmits_.load();
  s.crc_failures = crc_failures_.load();
  std::lock_guard<std::mutex> lock(err_mu_);
  s.errors = errors_;
  return s;
}

}  // namespace spill::storage
