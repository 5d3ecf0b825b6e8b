// Private state of TierManager, shared by tier_manager.cc and
// tier_manager_io.cc. Not part of the library's interface.
#ifndef SPILL_STORAGE_TIER_MANAGER_INTERNAL_H_
#define SPILL_STORAGE_TIER_MANAGER_INTERNAL_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "storage/tier_manager.h"

namespace spill::storage {

// One NVMe copy of an object. Its extent goes back to the NVMe tier when the
// last reference drops (see TierManager::MakeCopy).
struct TierManager::NvmeCopy {
  NvmeExtent extent;
  std::vector<uint32_t> crcs;
  uint64_t bytes = 0;
  uint64_t version = 0;
};

struct TierManager::FlushWaiter {
  int pending = 0;
  absl::Status first_error;
  StatusDone done;
  uint64_t ticket = 0;
};

struct TierManager::Object {
  struct Waiter {
    AcquireMode mode = AcquireMode::kRead;
    bool pin = true;  // false for a prefetch
    AcquireDone done;
  };
  ObjectSpec spec;
  std::string job;
  std::string arena_owner;
  std::optional<Extent> extent;  // set while resident or loading
  bool loading = false;
  bool load_by_prefetch = false;  // the load was started by a prefetch, unclaimed
  bool prefetched = false;        // resident thanks to a prefetch, unclaimed
  std::vector<Waiter> waiters;    // for the load, or (kWrite) an awaited write-back in flight
  uint32_t pins = 0;
  // kWrite pins granted and not yet followed by MarkWritten: the bytes may be
  // changing, so no write-back starts. Cleared when the last pin goes.
  uint32_t open_writes = 0;
  uint64_t version = 0;
  bool dirty = false;
  bool writing = false;
  bool discard_write = false;  // a kWrite pin or MarkWritten during the write: its copy is stale
  bool queued = false;
  bool retry = false;          // last write-back failed
  absl::Status write_error;
  CopyPtr latest;              // newest complete NVMe copy
  uint64_t acked_version = 0;
  bool acked = false;
  bool freed = false;
  std::vector<std::pair<uint64_t, StatusDone>> durable_waiters;
  std::vector<std::pair<std::shared_ptr<FlushWaiter>, uint64_t>> flush_waiters;

  bool resident() const { return extent.has_value() && !loading; }
  bool Evictable() const {
    return spec.home == Home::kNvme && resident() && pins == 0 && !dirty && !writing &&
           waiters.empty();
  }
};

struct TierManager::Job {
  JobOptions options;
  std::map<uint64_t, ObjectPtr> objects;
  TierCounters counters;           // cumulative I/O counters only
  uint64_t stream_resident[2] = {0, 0};  // arena bytes of kNvme objects by stream
  uint64_t nvme_home_bytes = 0;
  std::string last_write_error;

  std::string ArenaOwner(const std::string& id) const {
    return options.arena_owner.empty() ? id : options.arena_owner;
  }
};

// Functions queued under the lock and run after it is released: client
// callbacks and NvmeTier calls (whose callbacks may run inline).
class TierManager::Deferred {
 public:
  Deferred() = default;
  Deferred(const Deferred&) = delete;
  Deferred& operator=(const Deferred&) = delete;
  ~Deferred() { Run(); }
  void Add(std::function<void()> fn) { fns_.push_back(std::move(fn)); }
  void Run() {
    std::vector<std::function<void()>> fns;
    fns.swap(fns_);
    for (auto& fn : fns) fn();
  }

 private:
  std::vector<std::function<void()>> fns_;
};

inline int StreamIndex(Stream s) { return s == Stream::kParam ? 0 : 1; }

}  // namespace spill::storage

#endif  // SPILL_STORAGE_TIER_MANAGER_INTERNAL_H_
