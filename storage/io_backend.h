// IoBackend: the injectable block I/O layer under the NVMe tier (in the
// spirit of leveldb's Env). The real one drives an io_uring (liburing); a
// fault-injecting wrapper lets tests fail, shorten or delay chosen requests.
//
// Submit/reap model. Files and buffers are registered first, then requests
// are submitted (each tagged with user_data) and their completions reaped:
//
//   auto backend = MakeUringBackend({.queue_depth = 32});
//   (*backend)->RegisterFiles(fds);
//   (*backend)->Submit(requests);               // at most queue_depth in flight
//   IoCompletion done[32];
//   auto n = (*backend)->Reap(done, /*wait=*/true);
//
// A completion's res is what the kernel reports: bytes moved (possibly fewer
// than asked: the caller resubmits the rest), or -errno. The backend never
// retries, never resubmits, never interprets results; that is the caller's job.
//
// Threads: at most one thread submits (Submit and the registration calls are
// serialised by the caller) and at most one thread reaps; one submitting
// thread and one reaping thread may run at the same time. The destructor
// waits for every submitted request to complete (and discards the results);
// it must not run concurrently with any other call.
#ifndef SPILL_STORAGE_IO_BACKEND_H_
#define SPILL_STORAGE_IO_BACKEND_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace spill::storage {

struct IoRequest {
  bool write = false;
  int file_index = -1;   // index into the RegisterFiles span
  uint64_t offset = 0;   // byte offset in the file (O_DIRECT: 4 KiB aligned)
  void* buf = nullptr;   // O_DIRECT: 4 KiB aligned
  uint32_t len = 0;      // O_DIRECT: multiple of 4 KiB
  int fixed_buf = -1;    // registered buffer slot holding [buf, buf+len), or -1
  uint64_t user_data = 0;
};

struct IoCompletion {
  uint64_t user_data = 0;
  int32_t res = 0;  // bytes transferred, or -errno
};

class IoBackend {
 public:
  virtual ~IoBackend() = default;

  // Registers the files requests refer to by index. Once per backend:
  // FailedPrecondition on a second call; InvalidArgument for an empty span or
  // a negative fd; the kernel's errno status when registration fails.
  virtual absl::Status RegisterFiles(std::span<const int> fds) = 0;

  // Creates a table of `slots` empty fixed-buffer slots (sparse
  // registration). Once per backend: FailedPrecondition on a second call;
  // InvalidArgument for 0 slots; the kernel's errno status otherwise.
  virtual absl::Status RegisterBuffers(uint32_t slots) = 0;

  // Points slot at [addr, addr+len) (pins the pages; counts towards
  // RLIMIT_MEMLOCK without CAP_IPC_LOCK). The slot must not be in use by a
  // request in flight. OutOfRange for a slot past the table,
  // FailedPrecondition before RegisterBuffers, InvalidArgument for len 0 or
  // len > 1 GiB, the kernel's errno status otherwise.
  virtual absl::Status UpdateBuffer(uint32_t slot, void* addr, size_t len) = 0;

  // Empties slot (unpins). Same failures as UpdateBuffer.
  virtual absl::Status ClearBuffer(uint32_t slot) = 0;

  // Queues and submits the requests. All or nothing on validation:
  // ResourceExhausted when in_flight() + requests.size() > queue_depth();
  // InvalidArgument for a file index outside the registered files or a
  // fixed_buf outside the table (nothing submitted then). A kernel error
  // while submitting is returned as its errno status; requests the kernel
  // already accepted still complete through Reap (in_flight() tells).
  virtual absl::Status Submit(std::span<const IoRequest> requests) = 0;

  // Copies up to out.size() completions into out and returns how many. With
  // wait, blocks until at least one is available (callers must only wait
  // when in_flight() > 0, or they block until something is submitted).
  // Returns the kernel's errno status when waiting fails (EINTR is retried).
  virtual absl::StatusOr<int> Reap(std::span<IoCompletion> out, bool wait) = 0;

  // Requests submitted and not yet reaped. Any thread.
  virtual uint32_t in_flight() const = 0;
  virtual uint32_t queue_depth() const = 0;
};

struct UringOptions {
  uint32_t queue_depth = 32;     // ring size and in-flight bound
  bool sqpoll = false;           // kernel thread polls the submission queue
  uint32_t sqpoll_idle_ms = 50;  // SQPOLL thread idle time before it sleeps
  bool single_submit = false;    // one io_uring_submit call per request
};

// An io_uring backend. FailedPrecondition (naming the feature) when the
// kernel refuses the ring (io_uring disabled, SQPOLL not permitted), so
// callers and tests can tell "not available here" from a bug;
// InvalidArgument for queue_depth 0 or > 4096.
absl::StatusOr<std::unique_ptr<IoBackend>> MakeUringBackend(const UringOptions& options);

// ---- Fault injection (tests and benchmarks of error paths) ----

enum class FaultKind {
  kErrno,     // the completion reports -err (the I/O may have happened)
  kShort,     // the request is submitted with half its length (4 KiB multiple,
              // at least 4 KiB), so it completes short
  kZeroRead,  // the completion reports 0 bytes (end of file)
};

enum class FaultDirection { kAny, kRead, kWrite };

// Applies to the requests numbered [nth, nth + count) among those matching
// direction, counted from 0 in submission order by this backend.
struct FaultRule {
  FaultKind kind = FaultKind::kErrno;
  uint64_t nth = 0;
  uint64_t count = 1;
  int err = 5;  // EIO
  FaultDirection direction = FaultDirection::kAny;
};

// Counters the test can watch while the backend lives (shared).
struct FaultCounters {
  std::atomic<uint64_t> reads{0};
  std::atomic<uint64_t> writes{0};
  std::atomic<uint64_t> injected{0};
};

struct FaultPlan {
  std::vector<FaultRule> rules;
  std::shared_ptr<FaultCounters> counters = std::make_shared<FaultCounters>();
};

// Wraps inner; every request goes to inner (so every completion is real)
// with the plan's faults applied to it or to its result. Same thread rules
// as inner.
std::unique_ptr<IoBackend> MakeFaultyBackend(std::unique_ptr<IoBackend> inner, FaultPlan plan);

// Flips bit `bit` (0..7) of the byte at offset in the file at path, through
// the page cache and then fsync, so a later O_DIRECT read sees it. NotFound /
// errno status when the file cannot be opened; OutOfRange past its end.
absl::Status FlipBitInFile(const std::string& path, uint64_t offset, int bit = 0);

}  // namespace spill::storage

#endif  // SPILL_STORAGE_IO_BACKEND_H_
