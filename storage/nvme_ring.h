// Internals of NvmeTier's I/O path: an op (one Write/Read), its units (one
// io_uring request each, before resubmission) and the rings that run them.
// Not part of the public API.
#ifndef SPILL_STORAGE_NVME_RING_H_
#define SPILL_STORAGE_NVME_RING_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <utility>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "storage/io_backend.h"
#include "storage/nvme_tier.h"

namespace spill::storage::internal {

struct IoUnit {
  IoOp* op = nullptr;
  uint32_t block = 0;     // logical block index
  uint32_t file = 0;      // dir index == registered file index
  uint64_t file_offset = 0;
  uint64_t logical_offset = 0;  // byte offset of buf within the object
  uint8_t* buf = nullptr;
  uint32_t len = 0;
  uint32_t done = 0;      // bytes already transferred (short I/O)
  int slot = -1;          // fixed buffer slot, or -1
  uint32_t retries = 0;
  bool crc_here = false;  // write: this unit computes its block's CRC
  bool crc_done = false;  // ring thread only
};

// One Write or Read. Owned by itself: deleted after done runs.
struct IoOp {
  NvmeTier* tier = nullptr;
  bool write = false;
  uint8_t* mem = nullptr;      // src (write) or dst (read)
  uint64_t bytes = 0;
  uint32_t block_size = 0;
  std::vector<uint32_t>* out_crcs = nullptr;  // write
  std::vector<uint32_t> crcs;                 // read: expected
  std::string what;
  IoDone done;
  uint8_t* bounce = nullptr;   // 4 KiB for the last partial page, or null
  uint64_t tail_offset = 0;    // logical offset of the bounced page
  uint32_t tail_len = 0;       // logical bytes in it
  std::vector<IoUnit> units;
  std::unique_ptr<std::atomic<uint32_t>[]> block_left;
  std::atomic<uint64_t> units_left{0};
  std::mutex mu;
  absl::Status status;

  ~IoOp();
  // Computes a write unit's block CRC (on the ring thread, once, after the
  // unit was submitted and before it completes). Returns the bytes summed.
  uint64_t Prepare(IoUnit* u);
  // Called once per unit: err == 0 success, else a positive errno; eof marks
  // a 0-byte read. Deletes the op after the last unit.
  void UnitDone(IoUnit* u, int err, bool eof);
  void Fail(absl::Status s);
};

class Ring {
 public:
  Ring(std::unique_ptr<IoBackend> backend, const NvmeOptions& options, NvmeTier* tier);
  // Waits until everything queued or in flight has completed.
  ~Ring();

  // Queues units. pump_here: submit from the calling thread now; else the
  // ring's thread submits them (so a write's CRCs are not computed on the
  // caller's thread).
  void Enqueue(const std::vector<IoUnit*>& units, bool pump_here);
  IoBackend* backend() { return backend_.get(); }
  // Runs f with submissions paused (registration calls).
  absl::Status WithSubmitLock(const std::function<absl::Status(IoBackend*)>& f);

 private:
  struct Finished {
    IoUnit* unit;
    int err;    // 0 or a positive errno
    bool eof;   // a 0-byte read
  };
  void Loop();
  // Reaps completions (waiting for one when wait), requeues retries and
  // short transfers, moves finished units to *finished and pumps. False when
  // reaping failed.
  bool ReapAndPump(bool wait, std::deque<Finished>* finished);
  // Submits pending units while there is room. Only the ring's own thread
  // (ring_thread) takes write units.
  void Pump(bool ring_thread);
  bool pending_empty();
  bool SubmitUnits(std::span<IoUnit* const> units,
                   std::vector<std::pair<IoUnit*, absl::Status>>* rejected);

  std::unique_ptr<IoBackend> backend_;
  const uint32_t depth_;
  const bool overlap_;
  NvmeTier* tier_;
  std::mutex submit_mu_;  // one submitter at a time
  std::mutex mu_;         // pending_, in_flight_, stopping_
  std::condition_variable cv_;
  std::deque<IoUnit*> pending_;
  uint32_t in_flight_ = 0;
  bool stopping_ = false;
  std::atomic<bool> flush_needed_{false};
  std::vector<IoCompletion> cqes_;  // ring thread only
  std::thread thread_;
};

}  // namespace spill::storage::internal

#endif  // SPILL_STORAGE_NVME_RING_H_
