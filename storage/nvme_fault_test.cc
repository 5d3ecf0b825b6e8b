// The NVMe tier under injected faults: each gives its documented status,
// no corrupt byte is handed out as good, and the tier keeps serving.
#include <errno.h>

#include <cstring>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/io_backend.h"
#include "storage/nvme_test_util.h"
#include "storage/nvme_tier.h"
#include "storage/test_util.h"

namespace spill::storage {
namespace {

using test_util::AlignedBuf;
using test_util::ReadSync;
using test_util::TempDir;
using test_util::WriteSync;
using ::testing::HasSubstr;

constexpr uint64_t kKiB = 1024, kMiB = 1024 * 1024;

class NvmeFaultTest : public testing::Test {
 protected:
  // Opens a one-ring tier (so request order is deterministic) whose backend
  // applies plan; skips where the tier cannot run here.
  void Open(FaultPlan plan, uint32_t dirs = 1) {
    counters_ = plan.counters;
    NvmeOptions o;
    for (uint32_t d = 0; d < dirs; ++d) o.dirs.push_back(tmp_.Sub("d" + std::to_string(d)));
    o.capacity_bytes = 8 * kMiB;
    o.block_size = 128 * kKiB;
    o.queue_depth = 4;
    auto factory = [plan](int) -> absl::StatusOr<std::unique_ptr<IoBackend>> {
      auto inner = MakeUringBackend({.queue_depth = 4});
      if (!inner.ok()) return inner.status();
      return MakeFaultyBackend(std::move(*inner), plan);
    };
    auto t = NvmeTier::Open(o, factory);
    if (!t.ok() && t.status().code() == absl::StatusCode::kFailedPrecondition) {
      skip_reason_ = std::string(t.status().message());
      return;
    }
    ASSERT_TRUE(t.ok()) << t.status();
    tier_ = std::move(*t);
  }

  // Writes and reads back an object of n bytes; returns both statuses.
  std::pair<absl::Status, absl::Status> RoundTrip(uint64_t n, uint64_t seed, bool compare = true) {
    AlignedBuf src(n), dst(n);
    src.Fill(seed);
    auto e = tier_->Allocate("job", n);
    if (!e.ok()) return {e.status(), e.status()};
    std::vector<uint32_t> crcs;
    absl::Status w = WriteSync(*tier_, *e, src.data, n, &crcs);
    absl::Status r = w.ok() ? ReadSync(*tier_, *e, crcs, dst.data, n, "obj") : w;
    if (r.ok() && compare && std::memcmp(src.data, dst.data, n) != 0) {
      r = absl::InternalError("data differs");
    }
    (void)tier_->Free("job", *e);
    return {w, r};
  }

  TempDir tmp_;
  std::unique_ptr<NvmeTier> tier_;
  std::shared_ptr<FaultCounters> counters_;
  std::string skip_reason_;
};

#define SKIP_IF_UNAVAILABLE() \
  if (tier_ == nullptr) GTEST_SKIP() << skip_reason_

TEST_F(NvmeFaultTest, FailedWriteRequestGivesErrnoStatusAndTierKeepsWorking) {
  Open({.rules = {{.kind = FaultKind::kErrno, .nth = 2, .err = EIO,
                   .direction = FaultDirection::kWrite}}});
  SKIP_IF_UNAVAILABLE();
  auto [w, r] = RoundTrip(640 * kKiB, 1);  // 5 write requests; the third fails
  EXPECT_EQ(w.code(), absl::ErrnoToStatus(EIO, "").code()) << w;
  EXPECT_THAT(std::string(w.message()), HasSubstr("byte offset 262144"));
  EXPECT_THAT(std::string(w.message()), HasSubstr("Input/output error"));
  auto [w2, r2] = RoundTrip(640 * kKiB, 2);
  EXPECT_TRUE(w2.ok() && r2.ok()) << w2 << r2;
  const NvmeStats s = tier_->Stats();
  EXPECT_EQ(s.errors.size(), 1u);
  EXPECT_EQ(s.used_bytes, 0u);
}

TEST_F(NvmeFaultTest, FailedReadRequestNamesObjectAndOffset) {
  Open({.rules = {{.kind = FaultKind::kErrno, .nth = 1, .err = EIO,
                   .direction = FaultDirection::kRead}}});
  SKIP_IF_UNAVAILABLE();
  auto [w, r] = RoundTrip(300 * kKiB, 3);
  ASSERT_TRUE(w.ok()) << w;
  EXPECT_EQ(r.code(), absl::ErrnoToStatus(EIO, "").code()) << r;
  EXPECT_THAT(std::string(r.message()), HasSubstr("'obj'"));
  EXPECT_THAT(std::string(r.message()), HasSubstr("byte offset 131072"));
  auto [w2, r2] = RoundTrip(300 * kKiB, 4);
  EXPECT_TRUE(w2.ok() && r2.ok()) << w2 << r2;
}

TEST_F(NvmeFaultTest, ShortTransfersAreResubmittedAndDataIsCorrect) {
  Open({.rules = {{.kind = FaultKind::kShort, .nth = 0, .count = 6}}});
  SKIP_IF_UNAVAILABLE();
  auto [w, r] = RoundTrip(512 * kKiB + 5000, 5);  // 4 full blocks + a partial one
  EXPECT_TRUE(w.ok()) << w;
  EXPECT_TRUE(r.ok()) << r;
  EXPECT_GE(tier_->Stats().short_resubmits, 5u);
}

TEST_F(NvmeFaultTest, EagainAndEintrAreRetried) {
  Open({.rules = {{.kind = FaultKind::kErrno, .nth = 0, .count = 3, .err = EAGAIN},
                  {.kind = FaultKind::kErrno, .nth = 3, .count = 3, .err = EINTR}}});
  SKIP_IF_UNAVAILABLE();
  auto [w, r] = RoundTrip(1 * kMiB, 6);
  EXPECT_TRUE(w.ok()) << w;
  EXPECT_TRUE(r.ok()) << r;
  EXPECT_EQ(tier_->Stats().retries, 6u);
}

TEST_F(NvmeFaultTest, ZeroByteReadIsEio) {
  Open({.rules = {{.kind = FaultKind::kZeroRead, .nth = 0, .direction = FaultDirection::kRead}}});
  SKIP_IF_UNAVAILABLE();
  auto [w, r] = RoundTrip(128 * kKiB, 7);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(r.code(), absl::ErrnoToStatus(EIO, "").code());
  EXPECT_THAT(std::string(r.message()), HasSubstr("end of file"));
}

TEST_F(NvmeFaultTest, EnospcIsResourceExhausted) {
  Open({.rules = {{.kind = FaultKind::kErrno, .nth = 0, .err = ENOSPC,
                   .direction = FaultDirection::kWrite}}});
  SKIP_IF_UNAVAILABLE();
  auto [w, r] = RoundTrip(128 * kKiB, 8);
  EXPECT_EQ(w.code(), absl::StatusCode::kResourceExhausted) << w;
}

TEST_F(NvmeFaultTest, FlippedBitOnDiskIsDataLossNamingObjectAndOffset) {
  Open({}, /*dirs=*/2);
  SKIP_IF_UNAVAILABLE();
  const uint64_t n = 600 * kKiB;
  AlignedBuf src(n), dst(n);
  src.Fill(9);
  ASSERT_OK_AND_ASSIGN(e, tier_->Allocate("job", n));
  std::vector<uint32_t> crcs;
  ASSERT_TRUE(WriteSync(*tier_, e, src.data, n, &crcs).ok());
  // Block 3 (byte offset 393216) is the second block of pieces[1].
  const NvmePiece& p = e.pieces[1];
  ASSERT_TRUE(FlipBitInFile(tier_->DataFilePath(p.dir), p.offset + 128 * kKiB + 77, 3).ok());
  absl::Status r = ReadSync(*tier_, e, crcs, dst.data, n, "layer7.weight");
  EXPECT_EQ(r.code(), absl::StatusCode::kDataLoss) << r;
  EXPECT_THAT(std::string(r.message()), HasSubstr("layer7.weight"));
  EXPECT_THAT(std::string(r.message()), HasSubstr("byte offset 393216"));
  EXPECT_EQ(tier_->Stats().crc_failures, 1u);
  // Flip it back: the same object reads correctly again.
  ASSERT_TRUE(FlipBitInFile(tier_->DataFilePath(p.dir), p.offset + 128 * kKiB + 77, 3).ok());
  EXPECT_TRUE(ReadSync(*tier_, e, crcs, dst.data, n, "layer7.weight").ok());
  EXPECT_EQ(std::memcmp(src.data, dst.data, n), 0);
}

TEST_F(NvmeFaultTest, CorruptTailPageIsDetected) {
  Open({});
  SKIP_IF_UNAVAILABLE();
  const uint64_t n = 128 * kKiB + 100;  // the last 100 bytes go through the bounce page
  AlignedBuf src(n), dst(n);
  src.Fill(10);
  ASSERT_OK_AND_ASSIGN(e, tier_->Allocate("job", n));
  std::vector<uint32_t> crcs;
  ASSERT_TRUE(WriteSync(*tier_, e, src.data, n, &crcs).ok());
  ASSERT_TRUE(FlipBitInFile(tier_->DataFilePath(0), e.pieces[0].offset + 128 * kKiB + 50).ok());
  absl::Status r = ReadSync(*tier_, e, crcs, dst.data, n, "tail");
  EXPECT_EQ(r.code(), absl::StatusCode::kDataLoss) << r;
  EXPECT_THAT(std::string(r.message()), HasSubstr("byte offset 131072"));
}

TEST_F(NvmeFaultTest, FaultyBackendCountsRequests) {
  FaultPlan plan;
  Open(plan);
  SKIP_IF_UNAVAILABLE();
  auto [w, r] = RoundTrip(256 * kKiB, 11);
  ASSERT_TRUE(w.ok() && r.ok());
  EXPECT_EQ(counters_->writes.load(), 2u);
  EXPECT_EQ(counters_->reads.load(), 2u);
  EXPECT_EQ(counters_->injected.load(), 0u);
}

TEST(FlipBitInFileTest, RejectsBadArguments) {
  TempDir tmp;
  EXPECT_FALSE(FlipBitInFile(tmp.path() + "/none", 0).ok());
  EXPECT_EQ(FlipBitInFile(tmp.path() + "/none", 0, 9).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace spill::storage
