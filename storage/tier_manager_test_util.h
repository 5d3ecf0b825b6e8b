// Helpers for the tier manager tests. Not part of the library.
#ifndef SPILL_STORAGE_TIER_MANAGER_TEST_UTIL_H_
#define SPILL_STORAGE_TIER_MANAGER_TEST_UTIL_H_

#include <stdlib.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "storage/nvme_tier.h"
#include "storage/pinned_arena.h"
#include "storage/tier_manager.h"

namespace spill::storage::tm_test {

// A fresh directory under $SPILL_TEST_NVME_DIR, else /var/tmp (a tmpfs /tmp
// has no O_DIRECT), removed at the end.
class ScratchDir {
 public:
  ScratchDir() {
    const char* env = std::getenv("SPILL_TEST_NVME_DIR");
    std::string tmpl = std::string(env != nullptr && *env ? env : "/var/tmp") +
                       "/spill-tier-test-XXXXXX";
    if (::mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const {
    std::filesystem::create_directories(path_ + "/" + name);
    return path_ + "/" + name;
  }

 private:
  std::string path_;
};

// Deterministic content of version `version` of object `id`.
inline void FillPattern(uint8_t* p, uint64_t n, uint64_t id, uint64_t version) {
  uint64_t x = (id + 1) * 0x9E3779B97F4A7C15ull ^ (version + 7) * 0xC2B2AE3D27D4EB4Full;
  for (uint64_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p[i] = static_cast<uint8_t>(x);
  }
}

// Offset of the first byte that differs from the pattern, or -1.
inline int64_t FirstMismatch(const uint8_t* p, uint64_t n, uint64_t id, uint64_t version) {
  std::vector<uint8_t> want(n);
  FillPattern(want.data(), n, id, version);
  for (uint64_t i = 0; i < n; ++i) {
    if (p[i] != want[i]) return static_cast<int64_t>(i);
  }
  return -1;
}

inline absl::StatusOr<Extent> AcquireSync(TierManager& tm, const std::string& job, uint64_t id,
                                          AcquireMode mode = AcquireMode::kRead) {
  std::promise<absl::StatusOr<Extent>> p;
  tm.Acquire(job, id, mode, [&p](absl::StatusOr<Extent> e) { p.set_value(std::move(e)); });
  return p.get_future().get();
}

inline absl::Status PrefetchSync(TierManager& tm, const std::string& job, uint64_t id) {
  std::promise<absl::Status> p;
  tm.Prefetch(job, id, [&p](absl::Status s) { p.set_value(std::move(s)); });
  return p.get_future().get();
}

inline absl::Status FlushSync(TierManager& tm, const std::string& job = "") {
  std::promise<absl::Status> p;
  tm.Flush(job, [&p](absl::Status s) { p.set_value(std::move(s)); });
  return p.get_future().get();
}

// Acquires for write, fills the pattern of (id, version), marks it written
// and releases; returns the acknowledgement when `durable`, else OK.
inline absl::Status WriteObject(TierManager& tm, PinnedArena& arena, const std::string& job,
                                uint64_t id, uint64_t version, bool durable) {
  absl::StatusOr<Extent> e = AcquireSync(tm, job, id, AcquireMode::kWrite);
  if (!e.ok()) return e.status();
  absl::StatusOr<ObjectInfo> info = tm.Describe(job, id);
  if (!info.ok()) return info.status();
  FillPattern(arena.Data(*e), info->spec.bytes, id, version);
  std::promise<absl::Status> acked;
  absl::Status s = tm.MarkWritten(job, id, version,
                                  durable ? StatusDone([&acked](absl::Status st) {
                                    acked.set_value(std::move(st));
                                  })
                                          : StatusDone());
  absl::Status r = tm.Release(job, id);
  if (!s.ok()) return s;
  if (!r.ok()) return r;
  return durable ? acked.get_future().get() : absl::OkStatus();
}

// Acquires, compares with the pattern of (id, version), releases.
inline absl::Status CheckObject(TierManager& tm, PinnedArena& arena, const std::string& job,
                                uint64_t id, uint64_t version) {
  absl::StatusOr<Extent> e = AcquireSync(tm, job, id);
  if (!e.ok()) return e.status();
  absl::StatusOr<ObjectInfo> info = tm.Describe(job, id);
  const int64_t bad = FirstMismatch(arena.Data(*e), info->spec.bytes, id, version);
  absl::Status r = tm.Release(job, id);
  if (bad >= 0) {
    return absl::InternalError("object " + std::to_string(id) + " differs from version " +
                               std::to_string(version) + " at byte " + std::to_string(bad));
  }
  return r;
}

}  // namespace spill::storage::tm_test

#endif  // SPILL_STORAGE_TIER_MANAGER_TEST_UTIL_H_
