// NvmeTier: object storage on one or more NVMe devices (one directory each),
// driven by io_uring, with a CRC32C per block checked on every read.
//
// Each directory holds one data file, `spill-nvme.data`, opened O_DIRECT and
// preallocated (fallocate) to capacity_bytes; an extent allocator hands out
// block-aligned space in it. An object's extent is striped round-robin across
// lanes, one per directory it uses, in block_size units: logical block i is
// block i / lanes of lane i % lanes. A lane is the run of pieces naming one
// directory (lanes in the order the pieces first name them), its blocks laid
// end to end over its pieces in order. A lane has one piece unless that
// directory's free space was fragmented when the extent was allocated: then
// it takes the largest free ranges, up to kMaxPiecesPerLane of them. (A
// manifest holding such an extent is refused by builds older than this
// layout, which required one piece per directory.)
// The data file is never truncated, so extents recorded in a manifest (see
// storage/manifest.h) stay readable after a restart (Adopt them).
//
//   NvmeOptions o;
//   o.dirs = {"/mnt/nvme0/spill", "/mnt/nvme1/spill"};
//   o.capacity_bytes = 64ull << 30;
//   auto tier = NvmeTier::Open(o);
//   auto extent = (*tier)->Allocate("job-1", bytes);
//   std::vector<uint32_t> crcs;
//   (*tier)->Write(*extent, src, bytes, &crcs, [](absl::Status s) { ... });
//   (*tier)->Read(*extent, crcs, dst, bytes, "layer3.weight", [](absl::Status s) { ... });
//
// I/O: a Write or Read is split into one request per block (the last
// partial 4 KiB of an object goes through a small bounce buffer, so neither
// side ever touches memory past `bytes`). Requests are spread over
// thread_count rings, each with its own completion thread, at most
// queue_depth in flight per ring; short transfers are resubmitted with the
// offset advanced, -EAGAIN/-EINTR retried (up to 1000 times per request), a
// 0-byte read is EIO. The op completes when all its requests have; the first
// error wins. A write's CRCs are computed on its ring's thread right after
// each block is submitted, while the device writes it (never on the caller's
// thread); a read's are
// checked on the ring's thread as each block completes, while the ring keeps
// reaping and resubmitting between checks.
//
// Thread-safety: every method may be called from any thread. The destructor
// waits until every Write/Read in progress has completed (their callbacks
// run); no call may start once it has begun.
#ifndef SPILL_STORAGE_NVME_TIER_H_
#define SPILL_STORAGE_NVME_TIER_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "storage/extent_allocator.h"
#include "storage/io_backend.h"

namespace spill::storage {

namespace internal {
class Ring;
struct IoOp;
struct IoUnit;
}  // namespace internal

// The settings keep the meaning of DeepSpeed's `aio` block where one exists.
struct NvmeOptions {
  std::vector<std::string> dirs;   // one per device; objects striped across them
  uint64_t capacity_bytes = 0;     // per directory (rounded down to block_size);
                                   // each gets one preallocated data file
  uint32_t block_size = 1 << 20;   // aio.block_size: stripe unit, request size and
                                   // checksum block; a multiple of 4096, <= 64 MiB
  uint32_t queue_depth = 32;       // aio.queue_depth: max requests in flight per ring
  uint32_t thread_count = 1;       // aio.thread_count: rings, each with its own
                                   // completion thread (1..64)
  bool single_submit = false;      // aio.single_submit: one request per io_uring_submit
  bool overlap_events = true;      // aio.overlap_events: keep submitting while
                                   // completions are reaped (false: submit a batch of up
                                   // to queue_depth, wait for all of it, then the next)
  bool sqpoll = false;             // kernel submission polling (IORING_SETUP_SQPOLL)
  uint64_t job_quota_bytes = 0;    // per-job bytes over all dirs; 0 = no quota
  uint32_t max_fixed_buffers = 64; // fixed-buffer slots per ring (<= 1 GiB each)
  uint32_t lock_wait_ms = 5000;    // how long Open waits for another tier (or a just
                                   // killed process) to release a data file's flock
};

struct NvmePiece {
  uint32_t dir = 0;
  uint64_t offset = 0;  // in the directory's data file, 4 KiB aligned
  uint64_t length = 0;  // a multiple of block_size
  bool operator==(const NvmePiece&) const = default;
};

struct NvmeExtent {
  uint64_t bytes = 0;               // logical size the extent was allocated for
  std::vector<NvmePiece> pieces;    // lane by lane, in stripe order (see above)
  bool operator==(const NvmeExtent&) const = default;
};

// How many free ranges one lane of an extent may be spread over.
inline constexpr size_t kMaxPiecesPerLane = 64;

// The extent's pieces grouped into lanes: lane k holds, in order, the pieces
// naming the k-th directory the extent's pieces name.
std::vector<std::vector<NvmePiece>> NvmeLanes(const NvmeExtent& extent);

// Called exactly once per Write/Read. On a completion thread, except when
// the arguments are rejected before any I/O starts: then it runs on the
// calling thread before Write/Read returns (so do not hold a lock the
// callback takes while calling Write/Read).
using IoDone = std::function<void(absl::Status)>;

struct NvmeStats {
  uint64_t capacity_bytes = 0;  // over all dirs
  uint64_t used_bytes = 0;      // allocated (whole blocks)
  uint64_t free_bytes = 0;
  std::map<std::string, uint64_t> job_used_bytes;
  uint64_t bytes_read = 0;      // logical bytes of successful Reads
  uint64_t bytes_written = 0;   // logical bytes of successful Writes
  uint64_t read_ops = 0, write_ops = 0;            // completed, ok or not
  uint64_t requests = 0;        // io_uring requests submitted (resubmissions included)
  uint64_t fixed_requests = 0;  // of which READ_FIXED/WRITE_FIXED
  uint64_t retries = 0;         // -EAGAIN/-EINTR resubmissions
  uint64_t short_resubmits = 0; // short transfers continued
  uint64_t crc_failures = 0;    // blocks whose CRC32C did not match
  std::map<std::string, uint64_t> errors;  // failed ops by status code name
};

class NvmeTier {
 public:
  // Opens (creating and preallocating when needed) the data file in each
  // directory. backend_factory(ring) makes ring's backend (default: io_uring
  // with the options' queue_depth/sqpoll/single_submit); tests pass a faulty
  // one. InvalidArgument for bad options (empty dirs, a dir twice, block_size
  // not a positive multiple of 4096 or > 64 MiB, capacity < block_size,
  // queue_depth not 1..4096, thread_count not 1..64); FailedPrecondition
  // naming the directory when its file system lacks O_DIRECT (tmpfs) or
  // fallocate, or when another tier holds the file's flock for longer than
  // lock_wait_ms;
  // ResourceExhausted when the disk cannot hold capacity_bytes; the errno
  // status for other file errors; the backend's status when a ring fails.
  static absl::StatusOr<std::unique_ptr<NvmeTier>> Open(
      const NvmeOptions& options,
      std::function<absl::StatusOr<std::unique_ptr<IoBackend>>(int ring)> backend_factory = {});

  ~NvmeTier();
  NvmeTier(const NvmeTier&) = delete;
  NvmeTier& operator=(const NvmeTier&) = delete;

  // Space for `bytes` (rounded up to whole blocks) striped over the dirs.
  // InvalidArgument for 0 bytes or an empty job; ResourceExhausted (naming
  // capacity, use and request) when the dirs cannot hold it or it would take
  // the job past job_quota_bytes. Nothing is allocated on failure.
  absl::StatusOr<NvmeExtent> Allocate(const std::string& job, uint64_t bytes);

  // Returns an extent job holds. NotFound when job does not hold exactly
  // this extent (unknown, already freed, another job's, altered pieces);
  // nothing changes then. The caller must not free an extent with I/O in
  // flight.
  absl::Status Free(const std::string& job, const NvmeExtent& extent);

  // Marks an extent (from a manifest) as held by job again. InvalidArgument
  // for a malformed extent (no pieces, unknown dir, misaligned, past
  // capacity, pieces not matching bytes); FailedPrecondition when it overlaps
  // anything allocated. Not counted against the quota check (it is already
  // on disk), but counted in the job's use. All or nothing.
  absl::Status Adopt(const std::string& job, const NvmeExtent& extent);

  // Writes bytes from src to the extent and stores one CRC32C per block of
  // the logical bytes into *crcs (resized to the block count) before done(Ok).
  // src must be 4 KiB aligned and stay valid and unchanged until done runs.
  // Errors (through done): InvalidArgument for null/misaligned src, null
  // crcs, 0 bytes or bytes > extent.bytes or a malformed extent; the errno
  // status of a failed request (ENOSPC -> ResourceExhausted, EIO -> its
  // errno code) naming the byte offset. On error the extent's content and
  // *crcs are unspecified (the old copy, if any, must be kept elsewhere).
  void Write(const NvmeExtent& extent, const void* src, uint64_t bytes,
             std::vector<uint32_t>* crcs, IoDone done);

  // Reads bytes into dst (4 KiB aligned) and checks each block against crcs
  // (as Write produced them for the same bytes). DataLoss naming `what` and
  // the block's byte offset on a mismatch; the errno status naming `what` and
  // the offset for a failed request; InvalidArgument for bad arguments
  // (including crcs.size() != block count). On any error dst's content is
  // unspecified and must not be handed out.
  void Read(const NvmeExtent& extent, const std::vector<uint32_t>& crcs, void* dst,
            uint64_t bytes, std::string what, IoDone done);

  // Registers [addr, addr+len) with every ring as fixed buffers (split into
  // <= 1 GiB slots), so requests inside it use READ_FIXED/WRITE_FIXED and
  // need no per-request page pinning. Other memory still works (plain
  // READ/WRITE). AlreadyExists for a key in use; InvalidArgument for len 0 or
  // an overlap with registered memory; ResourceExhausted when the slot table
  // is full; the kernel's status (e.g. RLIMIT_MEMLOCK) otherwise. All or
  // nothing. Re-register a remapped segment by Unregister + Register.
  absl::Status RegisterMemory(uint64_t key, void* addr, uint64_t len);

  // Waits until no request in flight uses the memory, then unregisters it.
  // NotFound for an unknown key.
  absl::Status UnregisterMemory(uint64_t key);

  NvmeStats Stats() const;
  const NvmeOptions& options() const { return options_; }
  // Path of directory dir's data file.
  std::string DataFilePath(uint32_t dir) const;

 private:
  friend struct internal::IoOp;
  friend class internal::Ring;

  struct Slot {
    uintptr_t addr = 0;
    uint64_t len = 0;
    std::atomic<uint32_t> users{0};
  };

  explicit NvmeTier(const NvmeOptions& options);
  absl::Status OpenFiles();
  absl::Status StartRings(
      const std::function<absl::StatusOr<std::unique_ptr<IoBackend>>(int)>& factory);
  // (The extent's lanes, NvmeLanes, into *lanes when given: Submit maps
  // blocks with them.)
  absl::Status CheckExtent(const NvmeExtent& extent,
                           std::vector<std::vector<NvmePiece>>* lanes = nullptr) const;
  // Appends to `out` the pieces of one lane of len bytes in directory dir:
  // one range when one fits, else the largest free ones. ResourceExhausted
  // (why) appends nothing. Holds mu_.
  absl::Status AllocateLaneLocked(uint32_t dir, uint64_t len, std::vector<NvmePiece>& out);
  void Submit(bool write, const NvmeExtent& extent, uint8_t* mem, uint64_t bytes,
              std::vector<uint32_t>* out_crcs, const std::vector<uint32_t>* in_crcs,
              std::string what, IoDone done);
  // Slot holding [p, p+len) with its user count raised, or -1.
  int AcquireSlot(const uint8_t* p, uint64_t len);
  void ReleaseSlot(int slot);
  void RecordOp(bool write, uint64_t bytes, const absl::Status& status);

  const NvmeOptions options_;
  uint64_t dir_capacity_ = 0;
  std::vector<int> fds_;
  std::vector<std::unique_ptr<internal::Ring>> rings_;

  mutable std::mutex mu_;  // allocation state
  std::vector<ExtentAllocator> allocators_;
  std::map<std::string, std::map<std::pair<uint32_t, uint64_t>, NvmeExtent>> jobs_;
  std::map<std::string, uint64_t> job_used_;
  uint32_t next_dir_ = 0;

  mutable std::mutex slot_mu_;  // fixed-buffer table
  std::condition_variable slot_cv_;
  bool fixed_ok_ = true;
  std::unique_ptr<Slot[]> slots_;
  std::map<uintptr_t, uint32_t> slot_by_addr_;             // registered slot start -> slot
  std::map<uint64_t, std::vector<uint32_t>> slots_by_key_;

  std::atomic<uint64_t> next_op_{0};
  std::atomic<uint64_t> bytes_read_{0}, bytes_written_{0}, read_ops_{0}, write_ops_{0};
  std::atomic<uint64_t> requests_{0}, fixed_requests_{0}, retries_{0}, short_resubmits_{0};
  std::atomic<uint64_t> crc_failures_{0};
  mutable std::mutex err_mu_;
  std::map<std::string, uint64_t> errors_;
};

}  // namespace spill::storage

#endif  // SPILL_STORAGE_NVME_TIER_H_
