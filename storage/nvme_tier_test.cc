#include "storage/nvme_tier.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "common/status_macros.h"
#include "storage/nvme_test_util.h"
#include "storage/test_util.h"

namespace spill::storage {
namespace {

using test_util::AlignedBuf;
using test_util::ReadSync;
using test_util::TempDir;
using test_util::WriteSync;
using ::testing::HasSubstr;

constexpr uint64_t kKiB = 1024, kMiB = 1024 * 1024;

struct RoundTripCase {
  uint32_t queue_depth;
  uint32_t block_size;
  int dirs;
  bool fixed;
  bool single_submit;
  bool overlap_events;
  uint32_t threads;
  bool sqpoll;
};

std::string CaseName(const testing::TestParamInfo<RoundTripCase>& info) {
  const RoundTripCase& c = info.param;
  return "qd" + std::to_string(c.queue_depth) + "_bs" + std::to_string(c.block_size / kKiB) +
         "k_dirs" + std::to_string(c.dirs) + (c.fixed ? "_fixed" : "") +
         (c.single_submit ? "_single" : "") + (c.overlap_events ? "" : "_nooverlap") + "_t" +
         std::to_string(c.threads) + (c.sqpoll ? "_sqpoll" : "");
}

class NvmeRoundTripTest : public testing::TestWithParam<RoundTripCase> {};

// Writes objects of random sizes (some not 4 KiB multiples) from random
// places in a buffer, several at once, reads them back and compares.
TEST_P(NvmeRoundTripTest, RandomSizesAndOffsetsReadBackByteForByte) {
  const RoundTripCase& c = GetParam();
  TempDir tmp;
  NvmeOptions o;
  for (int d = 0; d < c.dirs; ++d) o.dirs.push_back(tmp.Sub("d" + std::to_string(d)));
  o.capacity_bytes = 64 * kMiB;
  o.block_size = c.block_size;
  o.queue_depth = c.queue_depth;
  o.single_submit = c.single_submit;
  o.overlap_events = c.overlap_events;
  o.thread_count = c.threads;
  o.sqpoll = c.sqpoll;
  SPILL_OPEN_TIER_OR_SKIP(tier, o);

  const uint64_t arena_bytes = 48 * kMiB;
  AlignedBuf src(arena_bytes), dst(arena_bytes);
  src.Fill(c.queue_depth * 7919 + c.block_size);
  if (c.fixed) {
    ASSERT_TRUE(tier->RegisterMemory(1, src.data, arena_bytes).ok());
    ASSERT_TRUE(tier->RegisterMemory(2, dst.data, arena_bytes).ok());
  }
  std::mt19937_64 rng(c.block_size ^ c.queue_depth);
  struct Obj {
    NvmeExtent extent;
    uint64_t offset, bytes;
    std::vector<uint32_t> crcs;
  };
  std::vector<Obj> objs;
  uint64_t at = 0;
  while (objs.size() < 8) {
    const uint64_t max = std::min<uint64_t>(6 * kMiB, arena_bytes - at);
    if (max < 8 * kKiB) break;
    const uint64_t bytes = 1 + rng() % max;
    ASSERT_OK_AND_ASSIGN(e, tier->Allocate("job", bytes));
    objs.push_back({e, at, bytes, {}});
    at = (at + bytes + 4095) / 4096 * 4096 + 4096 * (rng() % 4);
  }
  std::vector<std::promise<absl::Status>> wrote(objs.size());
  for (size_t i = 0; i < objs.size(); ++i) {
    tier->Write(objs[i].extent, src.data + objs[i].offset, objs[i].bytes, &objs[i].crcs,
                [&wrote, i](absl::Status s) { wrote[i].set_value(s); });
  }
  for (auto& w : wrote) ASSERT_TRUE(w.get_future().get().ok());
  std::memset(dst.data, 0xEE, arena_bytes);
  std::vector<std::promise<absl::Status>> read(objs.size());
  for (size_t i = 0; i < objs.size(); ++i) {
    tier->Read(objs[i].extent, objs[i].crcs, dst.data + objs[i].offset, objs[i].bytes,
               "obj" + std::to_string(i), [&read, i](absl::Status s) { read[i].set_value(s); });
  }
  for (auto& r : read) ASSERT_TRUE(r.get_future().get().ok());
  for (const Obj& obj : objs) {
    ASSERT_EQ(std::memcmp(src.data + obj.offset, dst.data + obj.offset, obj.bytes), 0)
        << "object at " << obj.offset << " of " << obj.bytes << " bytes";
    // Nothing past the object's last byte was touched.
    const uint64_t end = obj.offset + obj.bytes;
    if (end % 4096 != 0) {
      EXPECT_EQ(dst.data[end], 0xEE);
    }
  }
  const NvmeStats stats = tier->Stats();
  EXPECT_EQ(stats.write_ops, objs.size());
  EXPECT_EQ(stats.read_ops, objs.size());
  EXPECT_TRUE(stats.errors.empty());
  if (c.fixed) {
    EXPECT_GT(stats.fixed_requests, 0u);
  } else {
    EXPECT_EQ(stats.fixed_requests, 0u);
  }
  for (const Obj& obj : objs) ASSERT_TRUE(tier->Free("job", obj.extent).ok());
  EXPECT_EQ(tier->Stats().used_bytes, 0u);
}

INSTANTIATE_TEST_SUITE_P(
    Grid, NvmeRoundTripTest,
    testing::Values(RoundTripCase{1, 128 * kKiB, 1, false, false, true, 1, false},
                    RoundTripCase{4, 128 * kKiB, 2, true, false, true, 1, false},
                    RoundTripCase{32, 1 * kMiB, 1, true, false, true, 1, false},
                    RoundTripCase{32, 1 * kMiB, 2, false, true, true, 1, false},
                    RoundTripCase{64, 256 * kKiB, 2, true, false, false, 1, false},
                    RoundTripCase{64, 8 * kMiB, 1, true, false, true, 1, false},
                    RoundTripCase{4, 8 * kMiB, 2, false, true, false, 1, false},
                    RoundTripCase{8, 512 * kKiB, 2, true, false, true, 3, false},
                    RoundTripCase{16, 12 * kKiB, 2, false, false, true, 2, false},
                    RoundTripCase{32, 1 * kMiB, 2, true, false, true, 1, true}),
    CaseName);

NvmeOptions OneDir(const TempDir& tmp, uint64_t capacity = 8 * kMiB) {
  NvmeOptions o;
  o.dirs = {tmp.Sub("d0")};
  o.capacity_bytes = capacity;
  o.block_size = 128 * kKiB;
  return o;
}

TEST(NvmeTierTest, RejectsBadOptions) {
  TempDir tmp;
  NvmeOptions o = OneDir(tmp);
  auto expect_bad = [](NvmeOptions o, const char* what) {
    auto t = NvmeTier::Open(o);
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << t.status();
    EXPECT_THAT(std::string(t.status().message()), HasSubstr(what));
  };
  NvmeOptions bad = o;
  bad.dirs.clear();
  expect_bad(bad, "no directories");
  bad = o;
  bad.block_size = 4096 * 3 + 1;
  expect_bad(bad, "block_size");
  bad = o;
  bad.block_size = 0;
  expect_bad(bad, "block_size");
  bad = o;
  bad.dirs.push_back(o.dirs[0]);
  expect_bad(bad, "twice");
  bad = o;
  bad.capacity_bytes = 4096;
  expect_bad(bad, "capacity_bytes");
  bad = o;
  bad.queue_depth = 0;
  expect_bad(bad, "queue_depth");
  bad = o;
  bad.thread_count = 0;
  expect_bad(bad, "thread_count");
}

TEST(NvmeTierTest, RefusesMissingDirectoryAndSecondOpener) {
  TempDir tmp;
  NvmeOptions o = OneDir(tmp);
  NvmeOptions missing = o;
  missing.dirs = {tmp.path() + "/no/such/dir"};
  auto t = NvmeTier::Open(missing);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("no/such/dir"));
  SPILL_OPEN_TIER_OR_SKIP(tier, o);
  o.lock_wait_ms = 50;
  auto second = NvmeTier::Open(o);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("in use"));
}

TEST(NvmeTierTest, TmpfsHasNoODirectAndIsRefusedNamingTheDirectory) {
  const std::string shm = "/dev/shm";
  char tmpl[] = "/dev/shm/spill-nvme-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) GTEST_SKIP() << "no writable /dev/shm here";
  NvmeOptions o;
  o.dirs = {tmpl};
  o.capacity_bytes = 1 * kMiB;
  o.block_size = 128 * kKiB;
  auto t = NvmeTier::Open(o);
  std::filesystem::remove_all(tmpl);
  if (t.ok()) GTEST_SKIP() << "/dev/shm supports O_DIRECT on this kernel";
  EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition) << t.status();
  EXPECT_THAT(std::string(t.status().message()), HasSubstr(tmpl));
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("O_DIRECT"));
}

TEST(NvmeTierTest, AllocationPastCapacityOrQuotaIsResourceExhaustedAndChangesNothing) {
  TempDir tmp;
  NvmeOptions o = OneDir(tmp, 4 * kMiB);
  o.job_quota_bytes = 3 * kMiB;
  SPILL_OPEN_TIER_OR_SKIP(tier, o);
  EXPECT_EQ(tier->Allocate("", 10).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tier->Allocate("a", 0).status().code(), absl::StatusCode::kInvalidArgument);
  auto over_quota = tier->Allocate("a", 3 * kMiB + 1);
  ASSERT_EQ(over_quota.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(over_quota.status().message()), HasSubstr("quota"));
  EXPECT_EQ(tier->Stats().used_bytes, 0u);
  ASSERT_OK_AND_ASSIGN(a, tier->Allocate("a", 3 * kMiB));
  ASSERT_OK_AND_ASSIGN(b, tier->Allocate("b", 1 * kMiB - 1));
  auto full = tier->Allocate("c", 1);
  ASSERT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(full.status().message()), HasSubstr("capacity 4194304"));
  const NvmeStats s = tier->Stats();
  EXPECT_EQ(s.used_bytes, 4 * kMiB);
  EXPECT_EQ(s.job_used_bytes.at("a"), 3 * kMiB);
  EXPECT_EQ(s.job_used_bytes.count("c"), 0u);
  ASSERT_TRUE(tier->Free("b", b).ok());
  EXPECT_TRUE(tier->Allocate("c", 1).ok());
}

TEST(NvmeTierTest, FreeOfAnExtentTheJobDoesNotHoldIsNotFoundAndChangesNothing) {
  TempDir tmp;
  SPILL_OPEN_TIER_OR_SKIP(tier, OneDir(tmp));
  ASSERT_OK_AND_ASSIGN(e, tier->Allocate("a", 300 * kKiB));
  const uint64_t used = tier->Stats().used_bytes;
  EXPECT_EQ(tier->Free("b", e).code(), absl::StatusCode::kNotFound);
  NvmeExtent altered = e;
  altered.pieces[0].length += 128 * kKiB;
  EXPECT_EQ(tier->Free("a", altered).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tier->Free("a", NvmeExtent{}).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tier->Stats().used_bytes, used);
  ASSERT_TRUE(tier->Free("a", e).ok());
  EXPECT_EQ(tier->Free("a", e).code(), absl::StatusCode::kNotFound);  // double free
  EXPECT_EQ(tier->Stats().used_bytes, 0u);
}

TEST(NvmeTierTest, BadIoArgumentsFailBeforeAnyIo) {
  TempDir tmp;
  SPILL_OPEN_TIER_OR_SKIP(tier, OneDir(tmp));
  ASSERT_OK_AND_ASSIGN(e, tier->Allocate("a", 200 * kKiB));
  AlignedBuf buf(512 * kKiB);
  std::vector<uint32_t> crcs;
  auto code = [](absl::Status s) { return s.code(); };
  EXPECT_EQ(code(WriteSync(*tier, e, buf.data + 512, 4096, &crcs)),
            absl::StatusCode::kInvalidArgument);  // misaligned memory
  EXPECT_EQ(code(WriteSync(*tier, e, nullptr, 4096, &crcs)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(WriteSync(*tier, e, buf.data, 0, &crcs)), absl::StatusCode::kInvalidArgument);
  absl::Status too_big = WriteSync(*tier, e, buf.data, 200 * kKiB + 1, &crcs);
  EXPECT_EQ(too_big.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(too_big.message()), HasSubstr("do not fit"));
  EXPECT_EQ(code(WriteSync(*tier, e, buf.data, 4096, nullptr)),
            absl::StatusCode::kInvalidArgument);
  NvmeExtent foreign = e;
  foreign.pieces[0].offset = 100 * kMiB;  // past capacity
  EXPECT_EQ(code(WriteSync(*tier, foreign, buf.data, 4096, &crcs)),
            absl::StatusCode::kInvalidArgument);
  foreign = e;
  foreign.pieces[0].dir = 3;
  EXPECT_EQ(code(WriteSync(*tier, foreign, buf.data, 4096, &crcs)),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(WriteSync(*tier, e, buf.data, 200 * kKiB, &crcs).ok());
  ASSERT_EQ(crcs.size(), 2u);
  std::vector<uint32_t> wrong_count(1, crcs[0]);
  absl::Status s = ReadSync(*tier, e, wrong_count, buf.data, 200 * kKiB);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("checksums"));
  EXPECT_EQ(tier->Stats().requests, 2u);  // only the good write's two blocks
}

TEST(NvmeTierTest, RegisterMemoryRejectsBadRegionsAndUnregisterWaits) {
  TempDir tmp;
  SPILL_OPEN_TIER_OR_SKIP(tier, OneDir(tmp));
  AlignedBuf buf(1 * kMiB);
  EXPECT_EQ(tier->RegisterMemory(1, buf.data, 0).code(), absl::StatusCode::kInvalidArgument);
  absl::Status reg = tier->RegisterMemory(1, buf.data, 1 * kMiB);
  if (reg.code() == absl::StatusCode::kResourceExhausted ||
      reg.code() == absl::StatusCode::kPermissionDenied) {
    GTEST_SKIP() << "cannot pin memory for io_uring here: " << reg;
  }
  ASSERT_TRUE(reg.ok()) << reg;
  EXPECT_EQ(tier->RegisterMemory(1, buf.data, 4096).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(tier->RegisterMemory(2, buf.data + 4096, 4096).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tier->UnregisterMemory(9).code(), absl::StatusCode::kNotFound);
  ASSERT_OK_AND_ASSIGN(e, tier->Allocate("a", 1 * kMiB));
  std::vector<uint32_t> crcs;
  std::promise<absl::Status> wrote;
  tier->Write(e, buf.data, 1 * kMiB, &crcs, [&](absl::Status s) { wrote.set_value(s); });
  EXPECT_TRUE(tier->UnregisterMemory(1).ok());  // waits for the write's requests
  EXPECT_TRUE(wrote.get_future().get().ok());
  EXPECT_TRUE(tier->RegisterMemory(2, buf.data + 4096, 4096).ok());
}

// The data file outlives the tier: extents adopted after a reopen read back.
TEST(NvmeTierTest, AdoptedExtentsReadBackAfterReopen) {
  TempDir tmp;
  NvmeOptions o;
  o.dirs = {tmp.Sub("d0"), tmp.Sub("d1")};
  o.capacity_bytes = 8 * kMiB;
  o.block_size = 256 * kKiB;
  AlignedBuf src(3 * kMiB), dst(3 * kMiB);
  src.Fill(42);
  NvmeExtent e;
  std::vector<uint32_t> crcs;
  {
    SPILL_OPEN_TIER_OR_SKIP(tier, o);
    ASSERT_OK_AND_ASSIGN(got, tier->Allocate("a", 3 * kMiB - 100));
    e = got;
    ASSERT_TRUE(WriteSync(*tier, e, src.data, e.bytes, &crcs).ok());
  }
  SPILL_OPEN_TIER_OR_SKIP(tier, o);
  NvmeExtent bad = e;
  bad.pieces[1].length = 4096;
  EXPECT_EQ(tier->Adopt("a", bad).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(tier->Adopt("a", e).ok());
  EXPECT_EQ(tier->Adopt("b", e).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(tier->Stats().job_used_bytes.at("a"), 12 * 256 * kKiB);
  ASSERT_TRUE(ReadSync(*tier, e, crcs, dst.data, e.bytes).ok());
  EXPECT_EQ(std::memcmp(src.data, dst.data, e.bytes), 0);
  EXPECT_TRUE(tier->Free("a", e).ok());
}

TEST(NvmeTierTest, ManyThreadsAllocateWriteReadFreeAtOnce) {
  TempDir tmp;
  NvmeOptions o = OneDir(tmp, 32 * kMiB);
  o.thread_count = 2;
  o.queue_depth = 8;
  SPILL_OPEN_TIER_OR_SKIP(tier, o);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      AlignedBuf src(700 * kKiB), dst(700 * kKiB);
      for (int i = 0; i < 10; ++i) {
        src.Fill(t * 100 + i);
        const uint64_t n = 1 + (t * 7919 + i * 104729) % src.size;
        auto e = tier->Allocate("job" + std::to_string(t), n);
        std::vector<uint32_t> crcs;
        if (!e.ok() || !WriteSync(*tier, *e, src.data, n, &crcs).ok() ||
            !ReadSync(*tier, *e, crcs, dst.data, n).ok() ||
            std::memcmp(src.data, dst.data, n) != 0 || !tier->Free("job" + std::to_string(t), *e).ok()) {
          failures.fetch_add(1);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(tier->Stats().used_bytes, 0u);
}


namespace fragmented {

NvmeOptions Dirs(const TempDir& tmp, int dirs, uint64_t capacity = 4 * kMiB,
                 uint32_t block = 128 * kKiB) {
  NvmeOptions o;
  for (int d = 0; d < dirs; ++d) o.dirs.push_back(tmp.Sub("d" + std::to_string(d)));
  o.capacity_bytes = capacity;
  o.block_size = block;
  return o;
}

// Fills the tier with extents of one block of job `job`, in allocation
// order (they go to the directories in turn).
std::vector<NvmeExtent> Fill(NvmeTier& tier, const std::string& job, uint64_t block) {
  std::vector<NvmeExtent> all;
  for (;;) {
    absl::StatusOr<NvmeExtent> e = tier.Allocate(job, block);
    if (!e.ok()) return all;
    all.push_back(*e);
  }
}

// Fills the tier of `dirs` directories with one-block extents of job
// "filler" and frees every other one in each directory: one-block holes,
// none next to another. The extents left are appended to `kept`.
absl::Status Punch(NvmeTier& tier, int dirs, uint64_t block, std::vector<NvmeExtent>& kept) {
  const std::vector<NvmeExtent> all = Fill(tier, "filler", block);
  for (size_t i = 0; i < all.size(); ++i) {
    if (i / dirs % 2 == 0) {  // Extents go to the directories in turn.
      SPILL_RETURN_IF_ERROR(tier.Free("filler", all[i]));
    } else {
      kept.push_back(all[i]);
    }
  }
  return absl::OkStatus();
}

}  // namespace fragmented

// Free space in one-block holes only: an object larger than any hole is
// spread over several per directory, reads back byte for byte, and frees
// every hole it took.
TEST(NvmeTierTest, FragmentedFreeSpaceIsUsedAndReadsBack) {
  for (int dirs : {1, 2}) {
    SCOPED_TRACE(dirs);
    TempDir tmp;
    SPILL_OPEN_TIER_OR_SKIP(tier, fragmented::Dirs(tmp, dirs));
    std::vector<NvmeExtent> kept;
    ASSERT_TRUE(fragmented::Punch(*tier, dirs, 128 * kKiB, kept).ok());
    const uint64_t used = tier->Stats().used_bytes;
    ASSERT_EQ(used, dirs * 16 * 128 * kKiB);
    // The blocks between the holes hold data the new object must not touch.
    AlignedBuf pattern(128 * kKiB), check(128 * kKiB);
    pattern.Fill(99);
    std::vector<std::vector<uint32_t>> kept_crcs(kept.size());
    for (size_t i = 0; i < kept.size(); ++i) {
      ASSERT_TRUE(WriteSync(*tier, kept[i], pattern.data, 128 * kKiB, &kept_crcs[i]).ok());
    }
    const uint64_t bytes = dirs * 6 * 128 * kKiB - 1000;
    ASSERT_OK_AND_ASSIGN(e, tier->Allocate("a", bytes));
    const std::vector<std::vector<NvmePiece>> lanes = NvmeLanes(e);
    ASSERT_EQ(lanes.size(), static_cast<size_t>(dirs));
    for (const auto& lane : lanes) EXPECT_EQ(lane.size(), 6u);
    EXPECT_EQ(tier->Stats().used_bytes, used + dirs * 6 * 128 * kKiB);
    AlignedBuf src(bytes + 4096), dst(bytes + 4096);
    src.Fill(dirs * 31);
    std::vector<uint32_t> crcs;
    ASSERT_TRUE(WriteSync(*tier, e, src.data, bytes, &crcs).ok());
    ASSERT_TRUE(ReadSync(*tier, e, crcs, dst.data, bytes).ok());
    EXPECT_EQ(std::memcmp(src.data, dst.data, bytes), 0);
    for (size_t i = 0; i < kept.size(); ++i) {
      ASSERT_TRUE(ReadSync(*tier, kept[i], kept_crcs[i], check.data, 128 * kKiB).ok()) << i;
      ASSERT_EQ(std::memcmp(pattern.data, check.data, 128 * kKiB), 0) << i;
    }
    ASSERT_TRUE(tier->Free("a", e).ok());
    EXPECT_EQ(tier->Stats().used_bytes, used);
    // More than is free: nothing taken.
    auto too_big = tier->Allocate("a", dirs * 17 * 128 * kKiB);
    ASSERT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_THAT(std::string(too_big.status().message()), HasSubstr("bytes free"));
    EXPECT_EQ(tier->Stats().used_bytes, used);
  }
}

// More holes than one lane may take: ResourceExhausted naming why, and
// nothing changes.
TEST(NvmeTierTest, TooFragmentedIsResourceExhaustedAndChangesNothing) {
  TempDir tmp;
  SPILL_OPEN_TIER_OR_SKIP(tier, fragmented::Dirs(tmp, 1, 16 * kMiB, 32 * kKiB));
  std::vector<NvmeExtent> kept;
  ASSERT_TRUE(fragmented::Punch(*tier, 1, 32 * kKiB, kept).ok());  // 256 holes of one block
  const uint64_t used = tier->Stats().used_bytes;
  auto r = tier->Allocate("a", (kMaxPiecesPerLane + 1) * 32 * kKiB);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("ranges"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("8388608 bytes free"));
  EXPECT_EQ(tier->Stats().used_bytes, used);
  EXPECT_TRUE(tier->Allocate("a", kMaxPiecesPerLane * 32 * kKiB).ok());
}

// A fragmented extent recorded before a restart is adopted and reads back;
// one whose lanes do not add up is refused.
TEST(NvmeTierTest, AdoptedFragmentedExtentReadsBackAndBadLanesAreRefused) {
  TempDir tmp;
  const NvmeOptions o = fragmented::Dirs(tmp, 2);
  const uint64_t bytes = 2 * 5 * 128 * kKiB;
  AlignedBuf src(bytes), dst(bytes);
  src.Fill(7);
  NvmeExtent e;
  std::vector<uint32_t> crcs;
  {
    SPILL_OPEN_TIER_OR_SKIP(tier, o);
    std::vector<NvmeExtent> kept;
    ASSERT_TRUE(fragmented::Punch(*tier, 2, 128 * kKiB, kept).ok());
    ASSERT_OK_AND_ASSIGN(got, tier->Allocate("a", bytes));
    e = got;
    ASSERT_EQ(e.pieces.size(), 10u);
    ASSERT_TRUE(WriteSync(*tier, e, src.data, bytes, &crcs).ok());
  }
  SPILL_OPEN_TIER_OR_SKIP(tier, o);
  NvmeExtent short_lane = e;
  short_lane.pieces.pop_back();
  absl::Status s = tier->Adopt("a", short_lane);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("expected"));
  NvmeExtent odd = e;
  odd.pieces[1].length -= 4096;
  EXPECT_EQ(tier->Adopt("a", odd).code(), absl::StatusCode::kInvalidArgument);
  NvmeExtent huge = e;  // a size whose block count would wrap
  huge.bytes = ~uint64_t{0};
  EXPECT_EQ(tier->Adopt("a", huge).code(), absl::StatusCode::kInvalidArgument);
  huge.pieces.clear();
  EXPECT_EQ(tier->Adopt("a", huge).code(), absl::StatusCode::kInvalidArgument);
  NvmeExtent split = e;  // the lane's total is right, its pieces are not whole blocks
  split.pieces[0].length += 4096;
  split.pieces[1].length -= 4096;
  EXPECT_EQ(tier->Adopt("a", split).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tier->Stats().used_bytes, 0u);
  ASSERT_TRUE(tier->Adopt("a", e).ok());
  ASSERT_TRUE(ReadSync(*tier, e, crcs, dst.data, bytes).ok());
  EXPECT_EQ(std::memcmp(src.data, dst.data, bytes), 0);
  EXPECT_TRUE(tier->Free("a", e).ok());
  EXPECT_EQ(tier->Stats().used_bytes, 0u);
}

// The layout is an on-disk format (manifests record extents): a lane takes
// the largest holes first, and its blocks run over them in that order, each
// from its start. Checked against the data file itself.
TEST(NvmeTierTest, FragmentedLaneLayoutIsPinned) {
  TempDir tmp;
  const uint64_t bs = 128 * kKiB;
  SPILL_OPEN_TIER_OR_SKIP(tier, fragmented::Dirs(tmp, 1));  // 32 blocks
  std::vector<NvmeExtent> holes;  // of 3, 2 and 4 blocks, between kept blocks
  for (const uint64_t n : {3, 1, 2, 1, 4, 1}) {
    ASSERT_OK_AND_ASSIGN(e, tier->Allocate("f", n * bs));
    if (n > 1) holes.push_back(e);
  }
  ASSERT_OK_AND_ASSIGN(rest, tier->Allocate("f", tier->Stats().free_bytes));
  for (const NvmeExtent& h : holes) ASSERT_TRUE(tier->Free("f", h).ok());
  const uint64_t bytes = 9 * bs - 5000;  // the last block partial
  ASSERT_OK_AND_ASSIGN(e, tier->Allocate("a", bytes));
  ASSERT_EQ(e.pieces.size(), 3u);
  const NvmePiece want[] = {{0, holes[2].pieces[0].offset, 4 * bs},
                            {0, holes[0].pieces[0].offset, 3 * bs},
                            {0, holes[1].pieces[0].offset, 2 * bs}};
  for (int k = 0; k < 3; ++k) EXPECT_EQ(e.pieces[k], want[k]) << k;
  AlignedBuf src(9 * bs), block(bs);
  src.Fill(5);
  std::vector<uint32_t> crcs;
  ASSERT_TRUE(WriteSync(*tier, e, src.data, bytes, &crcs).ok());
  const int fd = open(tier->DataFilePath(0).c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  uint64_t b = 0;
  for (const NvmePiece& p : want) {
    for (uint64_t j = 0; j < p.length / bs; ++j, ++b) {
      const uint64_t len = std::min(bs, bytes - b * bs);
      ASSERT_EQ(pread(fd, block.data, len, static_cast<off_t>(p.offset + j * bs)),
                static_cast<ssize_t>(len));
      EXPECT_EQ(std::memcmp(block.data, src.data + b * bs, len), 0) << "block " << b;
    }
  }
  close(fd);
}

// Two directories, one fragmented and one not: uneven lanes (one of several
// pieces, one of one) read back; when the second lane cannot be placed, the
// first one's ranges are given back and the job's use is unchanged.
TEST(NvmeTierTest, OneFragmentedDirectoryAndRollbackAcrossLanes) {
  TempDir tmp;
  const uint64_t bs = 128 * kKiB;
  SPILL_OPEN_TIER_OR_SKIP(tier, fragmented::Dirs(tmp, 2));  // 32 blocks per directory
  const std::vector<NvmeExtent> all = fragmented::Fill(*tier, "f", bs);
  ASSERT_EQ(all.size(), 64u);
  std::vector<uint64_t> seen(2, 0);  // blocks seen per directory, in allocation order
  for (const NvmeExtent& e : all) {
    const uint32_t dir = e.pieces[0].dir;
    const uint64_t n = seen[dir]++;
    // d0: every other block; d1: its first 8 blocks, in one run.
    if (dir == 0 ? n % 2 == 0 : n < 8) {
      ASSERT_TRUE(tier->Free("f", e).ok());
    }
  }
  const uint64_t used = tier->Stats().used_bytes;
  ASSERT_EQ(used, (64 - 16 - 8) * bs);
  // 13 blocks: lanes of 7 and 6, on d0 in 7 pieces and d1 in one (or the
  // other way round, by which directory comes first).
  const uint64_t bytes = 13 * bs - 100;
  ASSERT_OK_AND_ASSIGN(e, tier->Allocate("a", bytes));
  const auto lanes = NvmeLanes(e);
  ASSERT_EQ(lanes.size(), 2u);
  for (const auto& lane : lanes) {
    uint64_t total = 0;
    for (const NvmePiece& p : lane) total += p.length;
    EXPECT_EQ(lane.size(), lane[0].dir == 0 ? total / bs : 1u);
  }
  AlignedBuf src(13 * bs), dst(13 * bs);
  src.Fill(11);
  std::vector<uint32_t> crcs;
  ASSERT_TRUE(WriteSync(*tier, e, src.data, bytes, &crcs).ok());
  ASSERT_TRUE(ReadSync(*tier, e, crcs, dst.data, bytes).ok());
  EXPECT_EQ(std::memcmp(src.data, dst.data, bytes), 0);
  ASSERT_TRUE(tier->Free("a", e).ok());
  // 20 blocks: 10 fit d0 in pieces, 10 do not fit d1 (8 free). Tried with
  // each directory first (a successful allocation moves the first one on).
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto r = tier->Allocate("a", 20 * bs);
    ASSERT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << attempt;
    EXPECT_EQ(tier->Stats().used_bytes, used) << attempt;
    EXPECT_EQ(tier->Stats().job_used_bytes.count("a"), 0u) << attempt;
    ASSERT_OK_AND_ASSIGN(one, tier->Allocate("g", bs));
    ASSERT_TRUE(tier->Free("g", one).ok());
  }
  // Everything freed is still there to take, in pieces.
  ASSERT_OK_AND_ASSIGN(whole, tier->Allocate("a", 16 * bs));
  EXPECT_EQ(tier->Stats().used_bytes, used + 16 * bs);
}

}  // namespace
}  // namespace spill::storage
