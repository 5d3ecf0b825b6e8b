#include "common/memfd.h"

#include <fcntl.h>
#include <linux/memfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"

namespace spill {

absl::StatusOr<UniqueFd> CreateSealedMemfd(const MemfdOptions& options) {
  if (options.size_bytes == 0) {
    return absl::InvalidArgumentError("memfd size must be positive");
  }
  unsigned flags = MFD_CLOEXEC | MFD_ALLOW_SEALING;
  if (options.huge_pages) flags |= MFD_HUGETLB;
  UniqueFd fd(::memfd_create(options.name.c_str(), flags));
  if (!fd.valid()) {
    return absl::ErrnoToStatus(errno, absl::StrCat("memfd_create(", options.name,
                                                   options.huge_pages ? ", MFD_HUGETLB)" : ")"));
  }
  if (::ftruncate(fd.get(), static_cast<off_t>(options.size_bytes)) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("ftruncate(memfd, ", options.size_bytes, ")"));
  }
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return absl::ErrnoToStatus(errno, "fcntl(F_ADD_SEALS) on memfd");
  }
  return fd;
}

absl::Status CheckReceivedSegment(int fd, uint64_t expected_size) {
  int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "received segment fd is not a sealable memfd (F_GET_SEALS: ", strerror(errno), ")"));
  }
  if ((seals & F_SEAL_SHRINK) == 0) {
    return absl::FailedPreconditionError(
        "received segment is not sealed against shrinking; refusing to map it");
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) return absl::ErrnoToStatus(errno, "fstat(segment)");
  if (static_cast<uint64_t>(st.st_size) < expected_size) {
    return absl::FailedPreconditionError(absl::StrCat(
        "received segment has ", st.st_size, " bytes, expected at least ", expected_size));
  }
  return absl::OkStatus();
}

Mapping::~Mapping() { Reset(); }

Mapping::Mapping(Mapping&& other) noexcept
    : addr_(std::exchange(other.addr_, nullptr)), size_(std::exchange(other.size_, 0)) {}

Mapping& Mapping::operator=(Mapping&& other) noexcept {
  if (this != &other) {
    Reset();
    addr_ = std::exchange(other.addr_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void Mapping::Reset() {
  if (addr_ != nullptr) ::munmap(addr_, size_);
  addr_ = nullptr;
  size_ = 0;
}

absl::StatusOr<Mapping> Mapping::Map(int fd, uint64_t size, bool populate) {
  if (size == 0) return absl::InvalidArgumentError("cannot map zero bytes");
  int flags = MAP_SHARED | (populate ? MAP_POPULATE : 0);
  void* addr = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, flags, fd, 0);
  if (addr == MAP_FAILED) {
    return absl::ErrnoToStatus(errno, absl::StrCat("mmap of ", size, " bytes"));
  }
  Mapping m;
  m.addr_ = addr;
  m.size_ = size;
  return m;
}

HugePageInfo ReadHugePageInfo() {
  HugePageInfo info;
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string key;
    uint64_t value = 0;
    fields >> key >> value;
    if (key == "HugePages_Free:") info.free_pages = value;
    if (key == "Hugepagesize:") info.page_bytes = value * 1024;
  }
  return info;
}

}  // namespace spill
