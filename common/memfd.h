// memfd segments: the shared-memory unit spilld owns and clients map.
//
// spilld creates a segment with CreateSealedMemfd (populated, sealed against
// shrinking, optionally on huge pages); a client that receives the fd checks
// it with CheckReceivedSegment before mapping it, so a segment that could
// shrink under it (and SIGBUS it) is refused.
#ifndef SPILL_COMMON_MEMFD_H_
#define SPILL_COMMON_MEMFD_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "common/unique_fd.h"

namespace spill {

struct MemfdOptions {
  std::string name = "spill";
  uint64_t size_bytes = 0;
  // Ask for MFD_HUGETLB (2 MiB pages); size must be a multiple of 2 MiB.
  bool huge_pages = false;
};

// Creates a memfd of exactly size_bytes with sealing allowed, then seals it
// with F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL so no process can change its
// size. Fails with the errno status of the failing call.
absl::StatusOr<UniqueFd> CreateSealedMemfd(const MemfdOptions& options);

// Verifies that fd is a memfd sealed against shrinking whose size is at least
// expected_size. FailedPrecondition names what is missing.
absl::Status CheckReceivedSegment(int fd, uint64_t expected_size);

// A shared read-write mapping; unmapped on destruction.
class Mapping {
 public:
  Mapping() = default;
  ~Mapping();
  Mapping(Mapping&& other) noexcept;
  Mapping& operator=(Mapping&& other) noexcept;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

  // Maps size bytes of fd. populate pre-faults every page (MAP_POPULATE).
  static absl::StatusOr<Mapping> Map(int fd, uint64_t size, bool populate);

  uint8_t* data() const { return static_cast<uint8_t*>(addr_); }
  uint64_t size() const { return size_; }
  bool valid() const { return addr_ != nullptr; }
  void Reset();

 private:
  void* addr_ = nullptr;
  uint64_t size_ = 0;
};

// Huge pages of the default size that the kernel has free right now
// (HugePages_Free from /proc/meminfo), and that size in bytes.
struct HugePageInfo {
  uint64_t free_pages = 0;
  uint64_t page_bytes = 0;
};
HugePageInfo ReadHugePageInfo();

}  // namespace spill

#endif  // SPILL_COMMON_MEMFD_H_
