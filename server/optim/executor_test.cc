#include "server/optim/executor.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <atomic>
#include <mutex>
#include <set>
#include <chrono>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace spill::optim {
namespace {

// Tracks how many fn calls run at once.
struct Concurrency {
  std::atomic<int> now{0}, peak{0};
  void Enter() {
    const int v = ++now;
    int p = peak.load();
    while (v > p && !peak.compare_exchange_weak(p, v)) {
    }
  }
  void Leave() { --now; }
};

TEST(ExecutorTest, CoversEveryElementOnceInAlignedChunks) {
  Executor exec(3);
  for (uint64_t n : {1ull, 63ull, 64ull, 65ull, 1000ull, 123457ull}) {
    for (uint32_t max_threads : {0u, 1u, 2u, 8u}) {
      std::vector<std::atomic<int>> hits(n);
      ASSERT_TRUE(exec.ParallelFor(n, 1, max_threads, [&](uint64_t b, uint64_t e) {
        EXPECT_LT(b, e);
        EXPECT_EQ(b % Executor::kAlign, 0u);
        EXPECT_TRUE(e == n || e % Executor::kAlign == 0);
        for (uint64_t i = b; i < e; ++i) hits[i]++;
      }).ok());
      for (uint64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " i=" << i;
    }
  }
}

int ThreadNice() {
  errno = 0;
  return getpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)));
}

// Workers run at the nice value asked for; the caller keeps its own.
TEST(ExecutorTest, WorkersRunAtTheirNiceValue) {
  const int caller_nice = ThreadNice();
  if (caller_nice > 7) GTEST_SKIP() << "this process already runs at nice " << caller_nice;
  Executor exec(3, /*nice=*/7);
  std::mutex mu;
  std::set<int> worker_nices;
  int caller_seen = -100;
  const auto caller = std::this_thread::get_id();
  for (int round = 0; round < 50 && worker_nices.empty(); ++round) {
    ASSERT_TRUE(exec.ParallelFor(1 << 16, 64, 0, [&](uint64_t, uint64_t) {
                      std::this_thread::sleep_for(std::chrono::microseconds(50));
                      std::lock_guard<std::mutex> lock(mu);
                      if (std::this_thread::get_id() == caller) {
                        caller_seen = ThreadNice();
                      } else {
                        worker_nices.insert(ThreadNice());
                      }
                    }).ok());
  }
  EXPECT_EQ(worker_nices, std::set<int>{7});
  EXPECT_EQ(caller_seen, caller_nice);
  EXPECT_EQ(ThreadNice(), caller_nice);
}

TEST(ExecutorTest, LowerThreadPriorityRefusesValuesOutsideTheRange) {
  const int before = ThreadNice();
  EXPECT_EQ(LowerThreadPriority(-1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LowerThreadPriority(20).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(LowerThreadPriority(0).ok());
  EXPECT_EQ(ThreadNice(), before);
}

TEST(ExecutorTest, EmptyRangeAndBadArguments) {
  Executor exec(1);
  int calls = 0;
  EXPECT_TRUE(exec.ParallelFor(0, 1, 0, [&](uint64_t, uint64_t) { ++calls; }).ok());
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(exec.ParallelFor(10, 1, 0, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ExecutorTest, MaxThreadsOneRunsOnTheCaller) {
  Executor exec(4);
  const auto me = std::this_thread::get_id();
  ASSERT_TRUE(exec.ParallelFor(1 << 16, 64, 1, [&](uint64_t, uint64_t) {
    EXPECT_EQ(std::this_thread::get_id(), me);
  }).ok());
}

TEST(ExecutorTest, NoWorkersRunsOnTheCaller) {
  Executor exec(0);
  const auto me = std::this_thread::get_id();
  uint64_t covered = 0;
  ASSERT_TRUE(exec.ParallelFor(10000, 64, 0, [&](uint64_t b, uint64_t e) {
    EXPECT_EQ(std::this_thread::get_id(), me);
    covered += e - b;
  }).ok());
  EXPECT_EQ(covered, 10000u);
}

TEST(ExecutorTest, MaxThreadsIsHonoured) {
  Executor exec(6);
  for (uint32_t limit : {2u, 3u, 0u}) {
    Concurrency c;
    ASSERT_TRUE(exec.ParallelFor(64 * 256, 64, limit, [&](uint64_t, uint64_t) {
      c.Enter();
      std::this_thread::sleep_for(std::chrono::microseconds(200));  // widen the overlap window
      c.Leave();
    }).ok());
    EXPECT_LE(c.peak.load(), limit == 0 ? 7 : static_cast<int>(limit)) << "limit " << limit;
    EXPECT_GE(c.peak.load(), 1);
  }
}

TEST(ExecutorTest, ConcurrentCallersEachKeepTheirLimitAndFinish) {
  Executor exec(3);
  constexpr int kJobs = 4;
  constexpr uint64_t kN = 64 * 300;
  std::vector<Concurrency> per_job(kJobs);
  Concurrency total;
  std::vector<std::vector<int>> hits(kJobs, std::vector<int>(kN, 0));
  std::vector<std::thread> callers;
  for (int j = 0; j < kJobs; ++j) {
    callers.emplace_back([&, j] {
      for (int rep = 0; rep < 5; ++rep) {
        ASSERT_TRUE(exec.ParallelFor(kN, 64, 2, [&](uint64_t b, uint64_t e) {
          per_job[j].Enter();
          total.Enter();
          for (uint64_t i = b; i < e; ++i) hits[j][i]++;
          std::this_thread::sleep_for(std::chrono::microseconds(50));
          total.Leave();
          per_job[j].Leave();
        }).ok());
      }
    });
  }
  for (auto& t : callers) t.join();
  for (int j = 0; j < kJobs; ++j) {
    EXPECT_LE(per_job[j].peak.load(), 2) << "job " << j;
    for (uint64_t i = 0; i < kN; ++i) ASSERT_EQ(hits[j][i], 5);
  }
  // Each caller plus the three workers.
  EXPECT_LE(total.peak.load(), kJobs + 3);
}

TEST(ExecutorTest, JobProgressesOnItsCallerWhileWorkersAreBusy) {
  Executor exec(2);
  std::atomic<int> inside{0};
  std::atomic<bool> release{false};
  std::thread a([&] {
    // Three chunks: one per worker and one for the caller, all held.
    ASSERT_TRUE(exec.ParallelFor(3 * 64, 64, 0, [&](uint64_t, uint64_t) {
      ++inside;
      while (!release.load()) std::this_thread::yield();
    }).ok());
  });
  while (inside.load() < 3) std::this_thread::yield();
  // Every worker is held by job A; job B still completes on its own thread.
  uint64_t covered = 0;
  ASSERT_TRUE(exec.ParallelFor(64 * 10, 64, 0, [&](uint64_t b, uint64_t e) {
    covered += e - b;
  }).ok());
  EXPECT_EQ(covered, 640u);
  release = true;
  a.join();
}

TEST(ExecutorTest, WorkersMoveOnToALaterJob) {
  // Job A's caller holds chunk 0 until job B has been helped by a worker:
  // B must not wait for A to finish to get workers.
  Executor exec(2);
  std::atomic<bool> b_helped{false}, a_first_chunk{false};
  std::thread a([&] {
    ASSERT_TRUE(exec.ParallelFor(64 * 64, 64, 0, [&](uint64_t begin, uint64_t) {
      if (begin == 0) {  // the caller takes chunk 0
        a_first_chunk = true;
        for (int i = 0; i < 20000 && !b_helped.load(); ++i) {
          std::this_thread::sleep_for(std::chrono::microseconds(100));
        }
      }
    }).ok());
  });
  while (!a_first_chunk.load()) std::this_thread::yield();
  const auto me = std::this_thread::get_id();
  ASSERT_TRUE(exec.ParallelFor(64 * 64, 64, 0, [&](uint64_t, uint64_t) {
    if (std::this_thread::get_id() != me) b_helped = true;
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }).ok());
  a.join();
  EXPECT_TRUE(b_helped.load());
}

}  // namespace
}  // namespace spill::optim
