#include "storage/pinned_arena.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/memfd.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/test_util.h"

namespace spill::storage {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

using test_util::AllBytesAre;
using test_util::kMiB;
using test_util::SmallOptions;

TEST(PinnedArenaTest, CreateRejectsBadOptions) {
  ArenaOptions options = SmallOptions();
  options.total_bytes = 0;
  EXPECT_EQ(PinnedArena::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = SmallOptions();
  options.segment_bytes = 0;
  EXPECT_EQ(PinnedArena::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  for (uint64_t alignment : {0, 32, 100, 4095}) {
    options = SmallOptions();
    options.alignment = alignment;
    EXPECT_EQ(PinnedArena::Create(options).status().code(), absl::StatusCode::kInvalidArgument)
        << alignment;
  }
  options = SmallOptions();
  options.total_bytes = 1000;  // Less than a page.
  EXPECT_EQ(PinnedArena::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = SmallOptions();
  options.total_bytes = uint64_t{1} << 40;  // 2^28 segments of 4 KiB: refused before mapping.
  options.segment_bytes = 4096;
  EXPECT_EQ(PinnedArena::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PinnedArenaTest, GeometryRoundsSegmentsAndPool) {
  struct Case {
    uint64_t total, segment, want_segment, want_count;
  } cases[] = {
      {10 * kMiB + 100, 3 * kMiB, 3 * kMiB, 3},  // Pool rounded down to whole segments.
      {64 << 10, 5000, 8192, 8},                  // Segment rounded up to pages.
      {3 * kMiB, uint64_t{1} << 30, 3 * kMiB, 1},  // Segment clamped to the pool.
      {6000, 8192, 4096, 1},                      // Rounding never passes the pool.
  };
  for (const Case& c : cases) {
    ArenaOptions options = SmallOptions();
    options.total_bytes = c.total;
    options.segment_bytes = c.segment;
    ASSERT_OK_AND_ASSIGN(arena, PinnedArena::Create(options));
    ArenaStats stats = arena->Stats();
    EXPECT_EQ(arena->segment_bytes(), c.want_segment) << c.total << "/" << c.segment;
    EXPECT_EQ(stats.segments_total, c.want_count) << c.total << "/" << c.segment;
    EXPECT_EQ(stats.capacity_bytes, c.want_segment * c.want_count);
    EXPECT_EQ(stats.segments_free, stats.segments_total);
    EXPECT_FALSE(stats.huge_pages);
  }
}

TEST(PinnedArenaTest, ParallelCreationNumbersSegmentsInOrder) {
  for (uint32_t threads : {1u, 3u, 16u}) {
    ArenaOptions options = SmallOptions(8, 256 << 10);
    options.populate_threads = threads;
    ASSERT_OK_AND_ASSIGN(arena, PinnedArena::Create(options));
    EXPECT_EQ(arena->Stats().segments_total, 8u);
    // Pristine segments are taken in order, so the ids show the numbering.
    for (uint64_t want = 1; want <= 8; ++want) {
      ASSERT_OK_AND_ASSIGN(e, arena->Allocate("job", 256 << 10));
      EXPECT_EQ(e.segment_id, want) << threads << " threads";
      EXPECT_TRUE(arena->GetSegment("job", want).ok());
    }
  }
}

TEST(PinnedArenaTest, AllocateFreeAndAccounting) {
  ASSERT_OK_AND_ASSIGN(arena, PinnedArena::Create(SmallOptions()));
  ASSERT_OK_AND_ASSIGN(a, arena->Allocate("job-a", 1000));
  ASSERT_OK_AND_ASSIGN(b, arena->Allocate("job-a", 5000));
  EXPECT_EQ(a.segment_id, b.segment_id);  // Own segment first.
  EXPECT_EQ(a.offset % arena->alignment(), 0u);
  EXPECT_EQ(b.offset % arena->alignment(), 0u);
  EXPECT_EQ(a.size, 1000u);
  std::memset(arena->Data(a), 0x11, a.size);
  std::memset(arena->Data(b), 0x22, b.size);
  EXPECT_TRUE(AllBytesAre(arena->Data(a), a.size, 0x11));

  JobArenaUsage usage = arena->JobUsage("job-a");
  EXPECT_EQ(usage.used_bytes, 6000u);
  EXPECT_EQ(usage.reserved_bytes, kMiB);
  EXPECT_EQ(usage.segments, 1u);
  ArenaStats stats = arena->Stats();
  EXPECT_EQ(stats.capacity_bytes, 4 * kMiB);
  EXPECT_EQ(stats.used_bytes, 6000u);
  EXPECT_EQ(stats.segments_free, 3u);
  ASSERT_EQ(stats.jobs.size(), 1u);
  EXPECT_EQ(stats.jobs["job-a"].used_bytes, 6000u);

  ASSERT_TRUE(arena->Free("job-a", a).ok());
  EXPECT_EQ(arena->JobUsage("job-a").used_bytes, 5000u);
  ASSERT_TRUE(arena->Free("job-a", b).ok());
  usage = arena->JobUsage("job-a");
  EXPECT_EQ(usage.used_bytes, 0u);
  EXPECT_EQ(usage.segments, 0u);  // The emptied segment went back to the pool.
  stats = arena->Stats();
  EXPECT_EQ(stats.used_bytes, 0u);
  EXPECT_EQ(stats.segments_free, 4u);
  EXPECT_TRUE(stats.jobs.empty());
}

TEST(PinnedArenaTest, CustomAlignmentIsHonoured) {
  ArenaOptions options = SmallOptions();
  options.alignment = 64;
  ASSERT_OK_AND_ASSIGN(arena, PinnedArena::Create(options));
  for (uint64_t size : {1, 63, 65, 100, 4097}) {
    ASSERT_OK_AND_ASSIGN(e, arena->Allocate("job", size));
    EXPECT_EQ(e.offset % 64, 0u);
  }
}

TEST(PinnedArenaTest, JobsNeverShareASegment) {
  ASSERT_OK_AND_ASSIGN(arena, PinnedArena::Create(SmallOptions()));
  std::map<uint64_t, std::string> owner_of;
  const std::string jobs[] = {"a", "b", "c"};
  for (int i = 0; i < 30; ++i) {
    const std::string& job = jobs[i % 3];
    ASSERT_OK_AND_ASSIGN(e, arena->Allocate(job, 10000));
    auto [it, inserted] = owner_of.emplace(e.segment_id, job);
    EXPECT_EQ(it->second, job) << "segment " << e.segment_id << " shared";
    ASSERT_TRUE(arena->GetSegment(job, e.segment_id).ok());
  }
  EXPECT_EQ(owner_of.size(), 3u);
}

TEST(PinnedArenaTest, SegmentMovingToAnotherJobIsFreshAndZeroed) {
  ASSERT_OK_AND_ASSIGN(arena, PinnedArena::Create(SmallOptions(1)));
  ASSERT_OK_AND_ASSIGN(a, arena->Allocate("job-a", kMiB));
  std::memset(arena->Data(a), 0xAB, a.size);
  // A client of job A keeps its own fd and mapping of the segment.
  ASSERT_OK_AND_ASSIGN(client_fd, arena->DupSegmentFd("job-a", a.segment_id));
  ASSERT_OK_AND_ASSIGN(client_map, Mapping::Map(client_fd.get(), kMiB, false));
  ASSERT_TRUE(arena->Free("job-a", a).ok());

  ASSERT_OK_AND_ASSIGN(b, arena->Allocate("job-b", kMiB));
  EXPECT_GT(b.segment_id, a.segment_id);  // New id; ids only grow.
  EXPECT_TRUE(AllBytesAre(arena->Data(b), b.size, 0)) << "job B sees job A's bytes";
  std::memset(arena->Data(b), 0xCD, b.size);
  // The old id is gone for everybody; job A's mapping sees neither B's bytes
  // nor zeros written over its own.
  EXPECT_EQ(arena->GetSegment("job-a", a.segment_id).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(arena->GetSegment("job-b", a.segment_id).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(arena->Data(a), nullptr);
  EXPECT_TRUE(AllBytesAre(client_map.data(), kMiB, 0xAB));
  ASSERT_OK_AND_ASSIGN(handle, arena->GetSegment("job-b", b.segment_id));
  struct stat old_st {}, new_st {};
  ASSERT_EQ(::fstat(client_fd.get(), &old_st), 0);
  ASSERT_EQ(::fstat(handle.fd, &new_st), 0);
  EXPECT_NE(old_st.st_ino, new_st.st_ino) << "the memfd was not replaced";
}

TEST(PinnedArenaTest, SameJobReclaimsItsSegmentUnchanged) {
  // Three segments, so a pristine one is free too: the job's own comes first.
  ASSERT_OK_AND_ASSIGN(arena, PinnedArena::Create(SmallOptions(3)));
  ASSERT_OK_AND_ASSIGN(a1, arena->Allocate("job-a", 4096));
  ASSERT_OK_AND_ASSIGN(b1, arena->Allocate("job-b", 4096));
  std::memset(arena->Data(a1), 0x5A, 4096);
  ASSERT_TRUE(arena->Free("job-a", a1).ok());
  ASSERT_TRUE(arena->Free("job-b", b1).ok());
  // All segments are free; each job gets its own former one back, as is.
  ASSERT_OK_AND_ASSIGN(b2, arena->Allocate("job-b", 4096));
  ASSERT_OK_AND_ASSIGN(a2, arena->Allocate("job-a", 4096));
  EXPECT_EQ(a2.segment_id, a1.segment_id);
  EXPECT_EQ(b2.segment_id, b1.segment_id);
  EXPECT_TRUE(AllBytesAre(arena->Data(a2), 4096, 0x5A));
}

TEST(PinnedArenaTest, PristineSegmentsArePreferredOverOtherJobsFormerOnes) {
  ASSERT_OK_AND_ASSIGN(arena, PinnedArena::Create(SmallOptions(2)));
  ASSERT_OK_AND_ASSIGN(a, arena->Allocate("job-a", 4096));
  ASSERT_TRUE(arena->Free("job-a", a).ok());
  ASSERT_OK_AND_ASSIGN(b, arena->Allocate("job-b", 4096));
  EXPECT_NE(b.segment_id, a.segment_id);
  EXPECT_LT(b.segment_id, a.segment_id + 2);  // One of the two created ids, not a new one.
  EXPECT_TRUE(arena->GetSegment("job-b", b.segment_id).ok());
}

TEST(PinnedArenaTest, BadRequestsAreRejected) {
  ASSERT_OK_AND_ASSIGN(arena, PinnedArena::Create(SmallOptions()));
  EXPECT_EQ(arena->Allocate("job", 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(arena->Allocate("", 10).status().code(), absl::StatusCode::kInvalidArgument);
  absl::Status big = arena->Allocate("job", kMiB + 1).status();
  EXPECT_EQ(big.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(big.message()), HasSubstr("1.0 MiB"));
  EXPECT_TRUE(arena->Allocate("job", kMiB).ok());  // Exactly one segment fits.
  EXPECT_EQ(arena->Stats().used_bytes, kMiB);
}

TEST(PinnedArenaTest, ExhaustionNamesCapacityAndChangesNothing) {
  ASSERT_OK_AND_ASSIGN(arena, PinnedArena::Create(SmallOptions()));
  // Job A holds a little in every segment, so job B finds none free.
  std::vector<Extent> held;
  for (int i = 0; i < 4; ++i) {
    ASSERT_OK_AND_ASSIGN(e, arena->Allocate("job-a", kMiB - 4096));
    held.push_back(e);
  }
  const ArenaStats before = arena->Stats();
  absl::Status status = arena->Allocate("job-b", 4096).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(status.message()),
              AllOf(HasSubstr("capacity 4.0 MiB"), HasSubstr("job-b"),
                    HasSubstr("no segment free")));
  status = arena->Allocate("job-a", 8192).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(status.message()), HasSubstr("it owns 4 segments"));
  const ArenaStats after = arena->Stats();
  EXPECT_EQ(after.used_bytes, before.used_bytes);
  EXPECT_EQ(after.segments_free, 0u);
  EXPECT_EQ(after.jobs.size(), 1u);
  EXPECT_TRUE(arena->Allocate("job-a", 4096).ok());  // What is left still fits.
}

TEST(PinnedArenaTest, GetSegmentChecksOwnership) {
  ASSERT_OK_AND_ASSIGN(arena, PinnedArena::Create(SmallOptions(2)));
  ASSERT_OK_AND_ASSIGN(a, arena->Allocate("job-a", 4096));
  ASSERT_OK_AND_ASSIGN(handle, arena->GetSegment("job-a", a.segment_id));
  EXPECT_EQ(handle.segment_id, a.segment_id);
  EXPECT_EQ(handle.size_bytes, kMiB);
  EXPECT_FALSE(handle.huge_pages);
  EXPECT_TRUE(CheckReceivedSegment(handle.fd, kMiB).ok());
  EXPECT_EQ(CheckReceivedSegment(handle.fd, kMiB + 1).code(),
            absl::StatusCode::kFailedPrecondition);

  EXPECT_EQ(arena->GetSegment("job-b", a.segment_id).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(arena->DupSegmentFd("job-b", a.segment_id).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(arena->GetSegment("job-a", 999).status().code(), absl::StatusCode::kNotFound);
  // The other segment exists but is free: nobody may have it.
  const uint64_t free_id = a.segment_id == 1 ? 2 : 1;
  EXPECT_EQ(arena->GetSegment("job-a", free_id).status().code(),
            absl::StatusCode::kPermissionDenied);
  ASSERT_TRUE(arena->Free("job-a", a).ok());
  EXPECT_EQ(arena->GetSegment("job-a", a.segment_id).status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST(PinnedArenaTest, FreeOfAnythingButAHeldExtentChangesNothing) {
  ASSERT_OK_AND_ASSIGN(arena, PinnedArena::Create(SmallOptions()));
  ASSERT_OK_AND_ASSIGN(e, arena->Allocate("job-a", 10000));
  ASSERT_OK_AND_ASSIGN(other, arena->Allocate("job-b", 10000));
  const Extent bad[] = {
      {e.segment_id, e.offset, e.size + 1},
      {e.segment_id, e.offset, e.size - 1},
      {e.segment_id, e.offset + 4096, e.size},
      {e.segment_id + 100, e.offset, e.size},
      other,  // Job B's extent.
  };
  for (const Extent& x : bad) {
    EXPECT_EQ(arena->Free("job-a", x).code(), absl::StatusCode::kNotFound)
        << x.segment_id << "/" << x.offset << "/" << x.size;
  }
  EXPECT_EQ(arena->Free("job-c", e).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(arena->JobUsage("job-a").used_bytes, 10000u);
  EXPECT_EQ(arena->JobUsage("job-b").used_bytes, 10000u);
  ASSERT_TRUE(arena->Free("job-a", e).ok());
  EXPECT_EQ(arena->Free("job-a", e).code(), absl::StatusCode::kNotFound);  // Double free.
  EXPECT_EQ(arena->Stats().used_bytes, 10000u);
}

TEST(PinnedArenaTest, ReleaseJobReturnsEverything) {
  ASSERT_OK_AND_ASSIGN(arena, PinnedArena::Create(SmallOptions()));
  std::vector<Extent> extents;
  for (int i = 0; i < 5; ++i) {
    ASSERT_OK_AND_ASSIGN(e, arena->Allocate("job-a", 400 << 10));
    extents.push_back(e);
  }
  ASSERT_OK_AND_ASSIGN(b, arena->Allocate("job-b", 4096));
  EXPECT_EQ(arena->JobUsage("job-a").segments, 3u);
  arena->ReleaseJob("job-a");
  arena->ReleaseJob("job-a");  // A no-op the second time.
  arena->ReleaseJob("nobody");
  EXPECT_EQ(arena->JobUsage("job-a").used_bytes, 0u);
  EXPECT_EQ(arena->Free("job-a", extents[0]).code(), absl::StatusCode::kNotFound);
  ArenaStats stats = arena->Stats();
  EXPECT_EQ(stats.segments_free, 3u);
  EXPECT_EQ(stats.used_bytes, 4096u);
  EXPECT_EQ(stats.jobs.size(), 1u);
  // Job B now takes A's former segments, each replaced.
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK_AND_ASSIGN(e, arena->Allocate("job-b", kMiB));
    EXPECT_GT(e.segment_id, 4u);
    EXPECT_TRUE(AllBytesAre(arena->Data(e), e.size, 0));
  }
  EXPECT_TRUE(arena->Free("job-b", b).ok());
}

TEST(PinnedArenaTest, DupSegmentFdOutlivesReplacement) {
  ASSERT_OK_AND_ASSIGN(arena, PinnedArena::Create(SmallOptions(1)));
  ASSERT_OK_AND_ASSIGN(a, arena->Allocate("job-a", 4096));
  ASSERT_OK_AND_ASSIGN(fd, arena->DupSegmentFd("job-a", a.segment_id));
  ASSERT_OK_AND_ASSIGN(handle, arena->GetSegment("job-a", a.segment_id));
  EXPECT_NE(fd.get(), handle.fd);
  EXPECT_NE(::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC, 0);
  ASSERT_TRUE(arena->Free("job-a", a).ok());
  ASSERT_TRUE(arena->Allocate("job-b", 4096).ok());
  EXPECT_TRUE(CheckReceivedSegment(fd.get(), kMiB).ok());  // Still the old, sealed memfd.
}

// Every segment id the arena ever hands out is new.
TEST(PinnedArenaTest, SegmentIdsAreNeverReused) {
  ASSERT_OK_AND_ASSIGN(arena, PinnedArena::Create(SmallOptions(2)));
  std::set<uint64_t> seen;
  uint64_t last_new = 0;
  for (int round = 0; round < 6; ++round) {
    const std::string job = "job-" + std::to_string(round % 3);
    ASSERT_OK_AND_ASSIGN(x, arena->Allocate(job, kMiB));
    ASSERT_OK_AND_ASSIGN(y, arena->Allocate(job, kMiB));
    for (uint64_t id : {x.segment_id, y.segment_id}) {
      if (seen.insert(id).second) {
        EXPECT_GT(id, last_new);
        last_new = id;
      }
    }
    ASSERT_TRUE(arena->Free(job, x).ok());
    ASSERT_TRUE(arena->Free(job, y).ok());
  }
  EXPECT_EQ(seen.size(), 12u);  // Every round changed job, so every round replaced both.
}

}  // namespace
}  // namespace spill::storage
