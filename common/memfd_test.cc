#include "common/memfd.h"

#include <fcntl.h>
#include <linux/memfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <utility>

#include "gtest/gtest.h"

namespace spill {
namespace {

constexpr uint64_t kSize = 1 << 20;

UniqueFd SealedMemfd(uint64_t size = kSize) {
  MemfdOptions options;
  options.name = "memfd-test";
  options.size_bytes = size;
  absl::StatusOr<UniqueFd> fd = CreateSealedMemfd(options);
  EXPECT_TRUE(fd.ok()) << fd.status();
  return fd.ok() ? std::move(fd).value() : UniqueFd();
}

TEST(MemfdTest, CreateSealedMemfdHasSizeAndAllThreeSeals) {
  UniqueFd fd = SealedMemfd();
  ASSERT_TRUE(fd.valid());
  struct stat st {};
  ASSERT_EQ(::fstat(fd.get(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), kSize);
  const int seals = ::fcntl(fd.get(), F_GET_SEALS);
  EXPECT_EQ(seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
            F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  EXPECT_EQ(seals & F_SEAL_WRITE, 0) << "segments must stay writable";
  EXPECT_NE(::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC, 0);
}

TEST(MemfdTest, SealsForbidResizingAndResealing) {
  UniqueFd fd = SealedMemfd();
  ASSERT_TRUE(fd.valid());
  errno = 0;
  EXPECT_NE(::ftruncate(fd.get(), kSize / 2), 0);
  EXPECT_EQ(errno, EPERM);
  errno = 0;
  EXPECT_NE(::ftruncate(fd.get(), kSize * 2), 0);
  EXPECT_EQ(errno, EPERM);
  errno = 0;
  EXPECT_NE(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_WRITE), 0);
  EXPECT_EQ(errno, EPERM);
}

TEST(MemfdTest, CreateRejectsZeroSize) {
  MemfdOptions options;
  EXPECT_EQ(CreateSealedMemfd(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MemfdTest, MappingSharesBytesWithTheFile) {
  UniqueFd fd = SealedMemfd();
  ASSERT_TRUE(fd.valid());
  absl::StatusOr<Mapping> mapping = Mapping::Map(fd.get(), kSize, /*populate=*/true);
  ASSERT_TRUE(mapping.ok()) << mapping.status();
  ASSERT_TRUE(mapping->valid());
  EXPECT_EQ(mapping->size(), kSize);
  EXPECT_EQ(mapping->data()[0], 0);  // Fresh memfd pages are zero.
  std::memcpy(mapping->data() + 4096, "spill", 5);
  char buf[5] = {};
  ASSERT_EQ(::pread(fd.get(), buf, sizeof(buf), 4096), 5);
  EXPECT_EQ(std::string(buf, 5), "spill");
}

TEST(MemfdTest, MappingMovesAndResets) {
  UniqueFd fd = SealedMemfd();
  ASSERT_TRUE(fd.valid());
  absl::StatusOr<Mapping> mapped = Mapping::Map(fd.get(), kSize, false);
  ASSERT_TRUE(mapped.ok());
  Mapping a = std::move(mapped).value();
  uint8_t* const addr = a.data();
  Mapping b(std::move(a));
  EXPECT_FALSE(a.valid());  // NOLINT(bugprone-use-after-move): checking the moved-from state.
  EXPECT_EQ(b.data(), addr);
  Mapping c;
  c = std::move(b);
  EXPECT_EQ(c.data(), addr);
  c.Reset();
  EXPECT_FALSE(c.valid());
  EXPECT_EQ(c.size(), 0u);
}

TEST(MemfdTest, MapRejectsZeroSizeAndBadFd) {
  UniqueFd fd = SealedMemfd();
  EXPECT_EQ(Mapping::Map(fd.get(), 0, false).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(Mapping::Map(-1, kSize, false).ok());
}

TEST(MemfdTest, CheckReceivedSegmentAcceptsASealedMemfd) {
  UniqueFd fd = SealedMemfd();
  EXPECT_TRUE(CheckReceivedSegment(fd.get(), kSize).ok());
  EXPECT_TRUE(CheckReceivedSegment(fd.get(), kSize / 2).ok());  // "At least".
}

TEST(MemfdTest, CheckReceivedSegmentRejectsATooSmallSegment) {
  UniqueFd fd = SealedMemfd();
  absl::Status status = CheckReceivedSegment(fd.get(), kSize + 1);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(status.message()).find(std::to_string(kSize)), std::string::npos);
}

TEST(MemfdTest, CheckReceivedSegmentRejectsAnUnsealedMemfd) {
  // Sealing allowed but not applied: the sender could still shrink it.
  UniqueFd sealable(::memfd_create("unsealed", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  ASSERT_TRUE(sealable.valid());
  ASSERT_EQ(::ftruncate(sealable.get(), kSize), 0);
  EXPECT_EQ(CheckReceivedSegment(sealable.get(), kSize).code(),
            absl::StatusCode::kFailedPrecondition);
  // Sealed against growing only: still refused.
  ASSERT_EQ(::fcntl(sealable.get(), F_ADD_SEALS, F_SEAL_GROW), 0);
  EXPECT_EQ(CheckReceivedSegment(sealable.get(), kSize).code(),
            absl::StatusCode::kFailedPrecondition);
  // Sealing never allowed.
  UniqueFd plain(::memfd_create("plain", MFD_CLOEXEC));
  ASSERT_TRUE(plain.valid());
  ASSERT_EQ(::ftruncate(plain.get(), kSize), 0);
  EXPECT_EQ(CheckReceivedSegment(plain.get(), kSize).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(MemfdTest, CheckReceivedSegmentRejectsARegularFileAndAPipe) {
  char path[] = "/tmp/spill-memfd-test-XXXXXX";
  UniqueFd file(::mkstemp(path));
  ASSERT_TRUE(file.valid());
  ::unlink(path);
  ASSERT_EQ(::ftruncate(file.get(), kSize), 0);
  EXPECT_EQ(CheckReceivedSegment(file.get(), kSize).code(),
            absl::StatusCode::kFailedPrecondition);
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  UniqueFd r(fds[0]), w(fds[1]);
  EXPECT_EQ(CheckReceivedSegment(r.get(), 1).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(MemfdTest, ReadHugePageInfoMatchesProcMeminfo) {
  std::ifstream in("/proc/meminfo");
  uint64_t page_kib = 0, free_pages = 0;
  std::string line;
  while (std::getline(in, line)) {
    const char* rest = line.c_str() + line.find(':') + 1;
    if (line.rfind("Hugepagesize:", 0) == 0) page_kib = std::strtoull(rest, nullptr, 10);
    if (line.rfind("HugePages_Free:", 0) == 0) free_pages = std::strtoull(rest, nullptr, 10);
  }
  const HugePageInfo info = ReadHugePageInfo();
  EXPECT_EQ(info.page_bytes, page_kib * 1024);
  EXPECT_EQ(info.free_pages, free_pages);
}

TEST(UniqueFdTest, ClosesOnResetAndReleaseGivesUp) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  {
    UniqueFd r(fds[0]);
    UniqueFd moved(std::move(r));
    EXPECT_FALSE(r.valid());  // NOLINT(bugprone-use-after-move)
    EXPECT_EQ(moved.get(), fds[0]);
  }
  EXPECT_EQ(::fcntl(fds[0], F_GETFD), -1);  // Closed by the destructor.
  UniqueFd w(fds[1]);
  const int raw = w.Release();
  EXPECT_FALSE(w.valid());
  EXPECT_EQ(::fcntl(raw, F_GETFD) & ~FD_CLOEXEC, 0);  // Still open.
  ::close(raw);
}

}  // namespace
}  // namespace spill
