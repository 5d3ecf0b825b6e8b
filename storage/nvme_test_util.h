// Helpers for the NVMe tier tests. Not part of the library.
#ifndef SPILL_STORAGE_NVME_TEST_UTIL_H_
#define SPILL_STORAGE_NVME_TEST_UTIL_H_

#include <stdlib.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "storage/io_backend.h"
#include "storage/nvme_tier.h"

namespace spill::storage::test_util {

// A fresh directory under $SPILL_TEST_NVME_DIR (else /var/tmp, which unlike
// a tmpfs /tmp supports O_DIRECT), removed with everything in it at the end.
class TempDir {
 public:
  TempDir() {
    const char* env = std::getenv("SPILL_TEST_NVME_DIR");
    std::string base = env != nullptr && *env ? env : "/var/tmp";
    std::string tmpl = base + "/spill-nvme-test-XXXXXX";
    if (::mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const {
    const std::string p = path_ + "/" + name;
    std::filesystem::create_directories(p);
    return p;
  }

 private:
  std::string path_;
};

// A 4 KiB-aligned heap buffer.
struct AlignedBuf {
  explicit AlignedBuf(uint64_t n) : size(n) {
    const uint64_t alloc = (n + 4095) / 4096 * 4096 + 4096;
    data = static_cast<uint8_t*>(std::aligned_alloc(4096, alloc));
  }
  ~AlignedBuf() { std::free(data); }
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
  void Fill(uint64_t seed) {
    std::mt19937_64 rng(seed);
    for (uint64_t i = 0; i < size; i += 8) {
      const uint64_t v = rng();
      std::memcpy(data + i, &v, std::min<uint64_t>(8, size - i));
    }
  }
  uint8_t* data;
  uint64_t size;
};

// Runs a Write/Read and waits for its callback.
inline absl::Status WriteSync(NvmeTier& tier, const NvmeExtent& e, const void* src, uint64_t n,
                              std::vector<uint32_t>* crcs) {
  std::promise<absl::Status> p;
  tier.Write(e, src, n, crcs, [&p](absl::Status s) { p.set_value(std::move(s)); });
  return p.get_future().get();
}

inline absl::Status ReadSync(NvmeTier& tier, const NvmeExtent& e,
                             const std::vector<uint32_t>& crcs, void* dst, uint64_t n,
                             const std::string& what = "obj") {
  std::promise<absl::Status> p;
  tier.Read(e, crcs, dst, n, what, [&p](absl::Status s) { p.set_value(std::move(s)); });
  return p.get_future().get();
}

// Opens a tier whose rings inject plan's faults (no plan: plain io_uring).
// FailedPrecondition (no O_DIRECT, no io_uring) is for the caller to skip on.
inline absl::StatusOr<std::unique_ptr<NvmeTier>> OpenTierWithFaults(const NvmeOptions& options,
                                                                    const FaultPlan* plan) {
  std::function<absl::StatusOr<std::unique_ptr<IoBackend>>(int)> factory;
  if (plan != nullptr) {
    factory = [plan](int) -> absl::StatusOr<std::unique_ptr<IoBackend>> {
      auto inner = MakeUringBackend({.queue_depth = 8});
      if (!inner.ok()) return inner.status();
      return MakeFaultyBackend(std::move(*inner), *plan);
    };
  }
  return NvmeTier::Open(options, factory);
}

// The bf16 of f, truncated (tests need exact values, not rounding).
inline uint16_t TruncatedBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<uint16_t>(bits >> 16);
}

// Opens a tier; a file system without O_DIRECT or a kernel without the
// io_uring feature turns into a skip with the reason.
#define SPILL_OPEN_TIER_OR_SKIP(var, ...)                                              \
  auto var##_or = ::spill::storage::NvmeTier::Open(__VA_ARGS__);                       \
  if (!var##_or.ok() && var##_or.status().code() == absl::StatusCode::kFailedPrecondition) \
    GTEST_SKIP() << var##_or.status();                                                 \
  ASSERT_TRUE(var##_or.ok()) << var##_or.status();                                     \
  std::unique_ptr<::spill::storage::NvmeTier> var = std::move(var##_or).value()

}  // namespace spill::storage::test_util

#endif  // SPILL_STORAGE_NVME_TEST_UTIL_H_
