#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "storage/io_backend.h"
#include "storage/nvme_test_util.h"
#include "storage/test_util.h"

namespace spill::storage {
namespace {

using test_util::AlignedBuf;
using test_util::TempDir;

// An O_DIRECT file of 1 MiB and a backend over it, or a skip reason.
struct Fixture {
  TempDir tmp;
  int fd = -1;
  std::unique_ptr<IoBackend> backend;
  std::string skip;
  explicit Fixture(UringOptions o = {}) {
    const std::string path = tmp.path() + "/f";
    fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
    if (fd < 0) {
      skip = "no O_DIRECT under " + tmp.path();
      return;
    }
    if (::ftruncate(fd, 1 << 20) != 0) skip = "ftruncate failed";
    auto b = MakeUringBackend(o);
    if (!b.ok()) {
      skip = std::string(b.status().message());
      return;
    }
    backend = std::move(*b);
  }
  ~Fixture() {
    backend.reset();
    if (fd >= 0) ::close(fd);
  }
};

absl::StatusOr<std::vector<IoCompletion>> ReapAll(IoBackend& b, size_t n) {
  std::vector<IoCompletion> all, out(8);
  while (all.size() < n) {
    absl::StatusOr<int> got = b.Reap(out, true);
    if (!got.ok()) return got.status();
    all.insert(all.end(), out.begin(), out.begin() + *got);
  }
  return all;
}

TEST(UringBackendTest, WritesAndReadsWithAndWithoutFixedBuffers) {
  Fixture f({.queue_depth = 4});
  if (f.backend == nullptr) GTEST_SKIP() << f.skip;
  IoBackend& b = *f.backend;
  ASSERT_TRUE(b.RegisterFiles(std::vector<int>{f.fd}).ok());
  EXPECT_EQ(b.RegisterFiles(std::vector<int>{f.fd}).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(b.RegisterBuffers(2).ok());
  AlignedBuf src(64 * 1024), dst(64 * 1024);
  src.Fill(1);
  EXPECT_EQ(b.UpdateBuffer(2, src.data, 4096).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(b.UpdateBuffer(0, src.data, 0).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(b.UpdateBuffer(0, src.data, src.size).ok());
  std::vector<IoRequest> writes = {{true, 0, 0, src.data, 32768, 0, 11},
                                   {true, 0, 32768, src.data + 32768, 32768, -1, 12}};
  ASSERT_TRUE(b.Submit(writes).ok());
  EXPECT_EQ(b.in_flight(), 2u);
  ASSERT_OK_AND_ASSIGN(done, ReapAll(b, 2));
  for (const IoCompletion& c : done) {
    EXPECT_TRUE(c.user_data == 11 || c.user_data == 12);
    EXPECT_EQ(c.res, 32768);
  }
  std::vector<IoRequest> read = {{false, 0, 0, dst.data, 65536, -1, 13}};
  ASSERT_TRUE(b.Submit(read).ok());
  ASSERT_OK_AND_ASSIGN(r, ReapAll(b, 1));
  EXPECT_EQ(r[0].res, 65536);
  EXPECT_EQ(std::memcmp(src.data, dst.data, 65536), 0);
  ASSERT_TRUE(b.ClearBuffer(0).ok());
  EXPECT_EQ(b.in_flight(), 0u);
}

TEST(UringBackendTest, RejectsMoreThanQueueDepthAndBadIndexes) {
  Fixture f({.queue_depth = 2, .single_submit = true});
  if (f.backend == nullptr) GTEST_SKIP() << f.skip;
  IoBackend& b = *f.backend;
  AlignedBuf buf(3 * 4096);
  EXPECT_EQ(b.RegisterFiles({}).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(b.RegisterFiles(std::vector<int>{f.fd}).ok());
  std::vector<IoRequest> three(3, IoRequest{false, 0, 0, buf.data, 4096, -1, 1});
  EXPECT_EQ(b.Submit(three).code(), absl::StatusCode::kResourceExhausted);
  std::vector<IoRequest> bad_file = {{false, 1, 0, buf.data, 4096, -1, 1}};
  EXPECT_EQ(b.Submit(bad_file).code(), absl::StatusCode::kInvalidArgument);
  std::vector<IoRequest> bad_slot = {{false, 0, 0, buf.data, 4096, 0, 1}};
  EXPECT_EQ(b.Submit(bad_slot).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(b.in_flight(), 0u);
  // Reading past the end of the file completes with 0 bytes.
  std::vector<IoRequest> eof = {{false, 0, 2 << 20, buf.data, 4096, -1, 5}};
  ASSERT_TRUE(b.Submit(eof).ok());
  ASSERT_OK_AND_ASSIGN(r, ReapAll(b, 1));
  EXPECT_EQ(r[0].res, 0);
}

TEST(UringBackendTest, DestructorReapsRequestsInFlight) {
  Fixture f({.queue_depth = 8});
  if (f.backend == nullptr) GTEST_SKIP() << f.skip;
  ASSERT_TRUE(f.backend->RegisterFiles(std::vector<int>{f.fd}).ok());
  AlignedBuf buf(8 * 65536);
  std::vector<IoRequest> reqs;
  for (int i = 0; i < 8; ++i) reqs.push_back({false, 0, uint64_t(i) * 65536, buf.data + i * 65536, 65536, -1, uint64_t(i)});
  ASSERT_TRUE(f.backend->Submit(reqs).ok());
  f.backend.reset();  // must wait for all 8 before the buffer goes away
}

TEST(UringBackendTest, SqpollWhenPermitted) {
  Fixture f({.queue_depth = 4, .sqpoll = true});
  if (f.backend == nullptr) GTEST_SKIP() << "SQPOLL not available: " << f.skip;
  ASSERT_TRUE(f.backend->RegisterFiles(std::vector<int>{f.fd}).ok());
  AlignedBuf buf(4096);
  std::vector<IoRequest> r = {{false, 0, 0, buf.data, 4096, -1, 1}};
  ASSERT_TRUE(f.backend->Submit(r).ok());
  ASSERT_OK_AND_ASSIGN(done, ReapAll(*f.backend, 1));
  EXPECT_EQ(done[0].res, 4096);
}

TEST(UringBackendTest, BadQueueDepthIsInvalidArgument) {
  EXPECT_EQ(MakeUringBackend({.queue_depth = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace spill::storage
