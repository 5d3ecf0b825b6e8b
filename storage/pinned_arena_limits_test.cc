// PinnedArena against the host: seals as a receiving process sees them,
// RLIMIT_MEMLOCK and CAP_IPC_LOCK, huge pages, and concurrent use.
#include <fcntl.h>
#include <linux/capability.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/fd_protocol.h"
#include "common/memfd.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/host_limits.h"
#include "storage/pinned_arena.h"
#include "storage/test_util.h"

namespace spill::storage {
namespace {

using test_util::AllBytesAre;
using test_util::kMiB;
using test_util::RunInChild;
using test_util::SmallOptions;

// Clears CAP_IPC_LOCK from the calling thread's effective, permitted and
// inheritable sets (PR_CAPBSET_DROP would leave the effective set alone).
bool DropCapIpcLock() {
  __user_cap_header_struct header{};
  header.version = _LINUX_CAPABILITY_VERSION_3;
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (::syscall(SYS_capget, &header, data) != 0) return false;
  const int i = CAP_TO_INDEX(CAP_IPC_LOCK);
  data[i].effective &= ~CAP_TO_MASK(CAP_IPC_LOCK);
  data[i].permitted &= ~CAP_TO_MASK(CAP_IPC_LOCK);
  data[i].inheritable &= ~CAP_TO_MASK(CAP_IPC_LOCK);
  return ::syscall(SYS_capset, &header, data) == 0;
}

bool SetMemlockSoftLimit(rlim_t bytes) {
  rlimit limit{};
  if (::getrlimit(RLIMIT_MEMLOCK, &limit) != 0) return false;
  limit.rlim_cur = bytes;
  return ::setrlimit(RLIMIT_MEMLOCK, &limit) == 0;
}

bool Contains(const absl::Status& status, const char* text) {
  return std::string(status.message()).find(text) != std::string::npos;
}

// Child-side check: prints why and returns code when cond fails.
#define CHILD_CHECK(cond, code, ...)                           \
  do {                                                         \
    if (!(cond)) {                                             \
      std::fprintf(stderr, "child check %d failed: %s: ", code, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                       \
      std::fprintf(stderr, "\n");                              \
      return code;                                             \
    }                                                          \
  } while (0)

// A forked receiver gets the segment over SCM_RIGHTS, as a client would,
// and tries to shrink, grow and reseal it; the daemon's view must survive.
TEST(PinnedArenaLimitsTest, ReceiverCannotResizeASealedSegment) {
  ASSERT_OK_AND_ASSIGN(arena, PinnedArena::Create(SmallOptions(1)));
  ASSERT_OK_AND_ASSIGN(e, arena->Allocate("job", kMiB));
  std::memset(arena->Data(e), 0x5A, e.size);
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd parent_end(sv[0]), child_end(sv[1]);

  const pid_t pid = test_util::StartChild([&]() -> int {
    parent_end.Reset();
    uint64_t size = 0;
    UniqueFd fd;
    absl::Status got = RecvAll(child_end.get(), &size, sizeof(size), &fd);
    CHILD_CHECK(got.ok() && fd.valid(), 2, "%s", got.ToString().c_str());
    absl::Status check = CheckReceivedSegment(fd.get(), size);
    CHILD_CHECK(check.ok(), 3, "%s", check.ToString().c_str());
    CHILD_CHECK(::ftruncate(fd.get(), 0) != 0 && errno == EPERM, 4, "%s", std::strerror(errno));
    CHILD_CHECK(::ftruncate(fd.get(), size / 2) != 0 && errno == EPERM, 5, "%s",
                std::strerror(errno));
    CHILD_CHECK(::ftruncate(fd.get(), size * 2) != 0 && errno == EPERM, 6, "%s",
                std::strerror(errno));
    CHILD_CHECK(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_WRITE) != 0 && errno == EPERM, 7, "%s",
                std::strerror(errno));
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    CHILD_CHECK(p != MAP_FAILED, 8, "mmap: %s", std::strerror(errno));
    auto* bytes = static_cast<uint8_t*>(p);
    CHILD_CHECK(bytes[0] == 0x5A && bytes[size - 1] == 0x5A, 9, "pattern not visible");
    bytes[size - 1] = 0xC3;  // Shared with the daemon's mapping.
    return 0;
  });
  ASSERT_GT(pid, 0);
  child_end.Reset();
  {
    ASSERT_OK_AND_ASSIGN(fd, arena->DupSegmentFd("job", e.segment_id));
    const uint64_t size = arena->segment_bytes();
    ASSERT_TRUE(SendAll(parent_end.get(), &size, sizeof(size), fd.get()).ok());
  }
  ASSERT_EQ(test_util::WaitChild(pid), 0);

  // Every byte of the daemon's mapping is still there (a shrink would SIGBUS
  // this read), with the child's write at the end.
  const uint8_t* data = arena->Data(e);
  EXPECT_TRUE(AllBytesAre(data, e.size - 1, 0x5A));
  EXPECT_EQ(data[e.size - 1], 0xC3);
  ASSERT_OK_AND_ASSIGN(handle, arena->GetSegment("job", e.segment_id));
  struct stat st {};
  ASSERT_EQ(::fstat(handle.fd, &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), kMiB);
}

// With CAP_IPC_LOCK gone and a low RLIMIT_MEMLOCK, Create refuses up front
// with a message that names the limit and the remedies.
TEST(PinnedArenaLimitsTest, MemlockLimitRefusesUpFront) {
  const int rc = RunInChild([]() -> int {
    CHILD_CHECK(DropCapIpcLock(), 2, "capset: %s", std::strerror(errno));
    CHILD_CHECK(!HasCapIpcLock(), 3, "CAP_IPC_LOCK still effective");
    CHILD_CHECK(SetMemlockSoftLimit(kMiB), 4, "setrlimit: %s", std::strerror(errno));

    absl::StatusOr<std::unique_ptr<PinnedArena>> refused =
        PinnedArena::Create(SmallOptions(8));
    CHILD_CHECK(refused.status().code() == absl::StatusCode::kResourceExhausted, 5, "%s",
                refused.status().ToString().c_str());
    const absl::Status& status = refused.status();
    CHILD_CHECK(Contains(status, "RLIMIT_MEMLOCK is 1.0 MiB") &&
                    Contains(status, "--pinned-bytes needs 8.0 MiB") &&
                    Contains(status, "ulimit -l unlimited") &&
                    Contains(status, "LimitMEMLOCK=infinity") && Contains(status, "CAP_IPC_LOCK"),
                6, "%s", status.ToString().c_str());

    ArenaOptions unlocked = SmallOptions(8);
    unlocked.lock = false;  // Not bounded by the limit.
    absl::StatusOr<std::unique_ptr<PinnedArena>> ok = PinnedArena::Create(unlocked);
    CHILD_CHECK(ok.ok(), 7, "%s", ok.status().ToString().c_str());

    // Within the limit works, and what is locked counts against the next one.
    absl::StatusOr<std::unique_ptr<PinnedArena>> small =
        PinnedArena::Create(SmallOptions(1, 512 << 10));
    CHILD_CHECK(small.ok(), 8, "%s", small.status().ToString().c_str());
    if (!test_util::kMlockIsReal) return 0;
    absl::StatusOr<std::unique_ptr<PinnedArena>> second =
        PinnedArena::Create(SmallOptions(1, 768 << 10));
    CHILD_CHECK(second.status().code() == absl::StatusCode::kResourceExhausted &&
                    Contains(second.status(), "RLIMIT_MEMLOCK is 1.0 MiB (512.0 KiB already "
                                              "locked by this process) but --pinned-bytes needs "
                                              "768.0 KiB"),
                9, "%s", second.status().ToString().c_str());
    return 0;
  });
  EXPECT_EQ(rc, 0);
}

// mlock failing when a segment is replaced: the allocation fails with the
// limit's message, the segment stays free (vacant), and a later allocation
// refills it once the limit allows.
TEST(PinnedArenaLimitsTest, MlockFailureDuringReplacementIsRecoverable) {
  if (!test_util::kMlockIsReal) GTEST_SKIP() << "mlock is a no-op under sanitizers";
  const int rc = RunInChild([]() -> int {
    absl::StatusOr<std::unique_ptr<PinnedArena>> created = PinnedArena::Create(SmallOptions(2));
    CHILD_CHECK(created.ok(), 2, "%s", created.status().ToString().c_str());
    PinnedArena& arena = **created;
    rlimit original{};
    CHILD_CHECK(::getrlimit(RLIMIT_MEMLOCK, &original) == 0, 3, "getrlimit");
    CHILD_CHECK(original.rlim_max == RLIM_INFINITY || original.rlim_max >= 4 * kMiB, 0,
                "hard RLIMIT_MEMLOCK too low to run this test; passing vacuously");
    CHILD_CHECK(DropCapIpcLock() && !HasCapIpcLock(), 4, "capset: %s", std::strerror(errno));
    CHILD_CHECK(SetMemlockSoftLimit(kMiB), 5, "setrlimit: %s", std::strerror(errno));

    absl::StatusOr<Extent> a1 = arena.Allocate("job-a", kMiB);
    absl::StatusOr<Extent> a2 = arena.Allocate("job-a", kMiB);
    CHILD_CHECK(a1.ok() && a2.ok(), 6, "job-a allocations");
    CHILD_CHECK(arena.Free("job-a", *a1).ok() && arena.Free("job-a", *a2).ok(), 7, "frees");

    // Both free segments are job A's former ones: B needs a fresh memfd, and
    // 1 MiB still locked plus 1 MiB new exceeds the 1 MiB limit.
    for (int attempt = 0; attempt < 2; ++attempt) {
      absl::Status failed = arena.Allocate("job-b", 4096).status();
      CHILD_CHECK(failed.code() == absl::StatusCode::kResourceExhausted &&
                      Contains(failed, "mlock of 1.0 MiB failed") &&
                      Contains(failed, "RLIMIT_MEMLOCK is 1.0 MiB"),
                  8, "%s", failed.ToString().c_str());
      ArenaStats stats = arena.Stats();
      CHILD_CHECK(stats.segments_free == 2 && stats.used_bytes == 0 && stats.jobs.empty(), 9,
                  "state changed by a failed allocation");
      CHILD_CHECK(arena.GetSegment("job-a", a1->segment_id).status().code() !=
                      absl::StatusCode::kOk,
                  10, "old id still served");
    }
    // Exactly the pool: enough only if a replacement unlocks the old pages
    // before it locks new ones.
    CHILD_CHECK(SetMemlockSoftLimit(2 * kMiB), 11, "raise: %s", std::strerror(errno));
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<Extent> b = arena.Allocate("job-b", kMiB);
      CHILD_CHECK(b.ok(), 12, "%s", b.status().ToString().c_str());
      CHILD_CHECK(b->segment_id > a2->segment_id && b->segment_id > a1->segment_id, 13,
                  "id %llu not new", static_cast<unsigned long long>(b->segment_id));
      CHILD_CHECK(AllBytesAre(arena.Data(*b), kMiB, 0), 14, "refilled segment not zero");
    }
    return 0;
  });
  EXPECT_EQ(rc, 0);
}

uint64_t FreeHugeBytes() {
  HugePageInfo info = ReadHugePageInfo();
  return info.free_pages * info.page_bytes;
}

TEST(PinnedArenaLimitsTest, HugePagesOnFailsCleanlyWhenNoneAreFree) {
  ArenaOptions options = SmallOptions(2, 2 * kMiB);
  if (FreeHugeBytes() >= options.total_bytes) {
    GTEST_SKIP() << "this host has free huge pages; see HugePagesUsedWhenFree";
  }
  options.huge_pages = HugePageMode::kOn;
  absl::Status status = PinnedArena::Create(options).status();
  if (ReadHugePageInfo().page_bytes == 0) {
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  } else {
    EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
    EXPECT_THAT(std::string(status.message()),
                ::testing::AllOf(::testing::HasSubstr("huge pages"),
                                 ::testing::HasSubstr("vm.nr_hugepages")));
  }
}

TEST(PinnedArenaLimitsTest, HugePagesAutoFallsBackToBasePages) {
  ArenaOptions options = SmallOptions(2, 2 * kMiB);
  if (FreeHugeBytes() >= options.total_bytes) GTEST_SKIP() << "this host has free huge pages";
  options.huge_pages = HugePageMode::kAuto;
  ASSERT_OK_AND_ASSIGN(arena, PinnedArena::Create(options));
  EXPECT_FALSE(arena->huge_pages());
  EXPECT_FALSE(arena->Stats().huge_pages);
  ASSERT_OK_AND_ASSIGN(e, arena->Allocate("job", 4096));
  ASSERT_OK_AND_ASSIGN(handle, arena->GetSegment("job", e.segment_id));
  EXPECT_FALSE(handle.huge_pages);
}

TEST(PinnedArenaLimitsTest, HugePagesUsedWhenFree) {
  ArenaOptions options = SmallOptions(2, 2 * kMiB);
  if (FreeHugeBytes() < options.total_bytes) {
    GTEST_SKIP() << "no free huge pages (HugePages_Free is "
                 << ReadHugePageInfo().free_pages << ")";
  }
  for (HugePageMode mode : {HugePageMode::kOn, HugePageMode::kAuto}) {
    options.huge_pages = mode;
    ASSERT_OK_AND_ASSIGN(arena, PinnedArena::Create(options));
    EXPECT_TRUE(arena->huge_pages());
    EXPECT_EQ(arena->segment_bytes() % ReadHugePageInfo().page_bytes, 0u);
    ASSERT_OK_AND_ASSIGN(e, arena->Allocate("job", 4096));
    ASSERT_OK_AND_ASSIGN(handle, arena->GetSegment("job", e.segment_id));
    EXPECT_TRUE(handle.huge_pages);
    EXPECT_TRUE(CheckReceivedSegment(handle.fd, handle.size_bytes).ok());
  }
}

// Jobs on several threads allocate, fill, verify and free at random, with
// few enough segments that they keep taking each other's former ones.
TEST(PinnedArenaLimitsTest, ConcurrentJobsStayIsolated) {
  ASSERT_OK_AND_ASSIGN(arena, PinnedArena::Create(SmallOptions(8, 256 << 10)));
  constexpr int kThreads = 4;
  std::vector<std::string> errors(kThreads);
  std::vector<std::set<uint64_t>> ids(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string job = "job-" + std::to_string(t);
      const auto mark = static_cast<uint8_t>(0x10 + t);
      std::mt19937_64 rng(t + 1);
      std::vector<Extent> live;
      for (int op = 0; op < 3000 && errors[t].empty(); ++op) {
        if (!live.empty() && rng() % 100 < 45) {
          const size_t pick = rng() % live.size();
          const Extent e = live[pick];
          live[pick] = live.back();
          live.pop_back();
          if (!AllBytesAre(arena->Data(e), e.size, mark)) errors[t] = "extent overwritten";
          absl::Status freed = arena->Free(job, e);
          if (!freed.ok()) errors[t] = freed.ToString();
          continue;
        }
        absl::StatusOr<Extent> e = arena->Allocate(job, rng() % (64 << 10) + 1);
        // Full (others hold every segment): free something on a later op.
        if (e.status().code() == absl::StatusCode::kResourceExhausted) continue;
        if (!e.ok()) {
          errors[t] = e.status().ToString();
          break;
        }
        if (!arena->GetSegment(job, e->segment_id).ok()) errors[t] = "segment not owned";
        std::memset(arena->Data(*e), mark, e->size);
        live.push_back(*e);
        ids[t].insert(e->segment_id);
      }
      for (const Extent& e : live) {
        if (!arena->Free(job, e).ok()) errors[t] = "final free failed";
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  std::set<uint64_t> all;
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(errors[t], "") << "thread " << t;
    all.insert(ids[t].begin(), ids[t].end());
  }
  EXPECT_GT(all.size(), 8u) << "no segment ever moved between jobs; the test is too weak";
  const ArenaStats stats = arena->Stats();
  EXPECT_EQ(stats.used_bytes, 0u);
  EXPECT_EQ(stats.segments_free, 8u);
  EXPECT_TRUE(stats.jobs.empty());
}

}  // namespace
}  // namespace spill::storage
