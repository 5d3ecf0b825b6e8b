#include <gtest/gtest.h>

#include <chrono>
#include <thread>
#include <vector>

#include "client/work_table.h"
#include "spill/work.h"

namespace spill::client::internal {
namespace {

using std::chrono::milliseconds;

TEST(WorkTableTest, TagsAreUniqueAndStartAtOne) {
  WorkTable table;
  WorkTable::Started a = table.Start(WorkOp::kAcquire, 5);
  WorkTable::Started b = table.Start(WorkOp::kRelease, 5);
  EXPECT_EQ(a.tag, 1u);
  EXPECT_EQ(b.tag, 2u);
  EXPECT_EQ(table.pending(), 2u);
  EXPECT_EQ(a.work->op(), WorkOp::kAcquire);
  EXPECT_EQ(a.work->object_id(), 5u);
}

TEST(WorkTableTest, WaitTimesOutWithDeadlineExceededWhileInFlight) {
  WorkTable table;
  WorkTable::Started started = table.Start(WorkOp::kPing, 0);
  EXPECT_FALSE(started.work->IsCompleted());
  EXPECT_EQ(started.work->Wait(milliseconds(0)).code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(started.work->Wait(milliseconds(20)).code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(started.work->Wait(milliseconds(-5)).code(), absl::StatusCode::kDeadlineExceeded);
  // Not an OK before completion, whoever forgot to wait.
  EXPECT_EQ(started.work->status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(started.work->object().object_id, 0u);
}

TEST(WorkTableTest, CompletionCarriesStatusAndObject) {
  WorkTable table;
  WorkTable::Started ok = table.Start(WorkOp::kAcquire, 9);
  WorkTable::Started bad = table.Start(WorkOp::kRelease, 9);
  ObjectInfo info;
  info.object_id = 9;
  info.name = "layer0.param";
  info.location.size_bytes = 64;
  ASSERT_TRUE(table.Complete(ok.tag, absl::OkStatus(), info));
  ASSERT_TRUE(table.Complete(bad.tag, absl::FailedPreconditionError("not pinned"), info));
  EXPECT_TRUE(ok.work->IsCompleted());
  EXPECT_TRUE(ok.work->Wait().ok());
  EXPECT_EQ(ok.work->object().name, "layer0.param");
  absl::StatusOr<ObjectInfo> got = ok.work->Get(milliseconds(0));
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->location.size_bytes, 64u);

  EXPECT_EQ(bad.work->Wait().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(bad.work->status().message(), "not pinned");
  EXPECT_EQ(bad.work->object().object_id, 0u) << "a failed Work has no object";
  EXPECT_EQ(bad.work->Get().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(table.pending(), 0u);
}

TEST(WorkTableTest, SendAndCompletionTimesAreRecorded) {
  WorkTable table;
  const auto before = std::chrono::steady_clock::now();
  WorkTable::Started w = table.Start(WorkOp::kOptimizerStep, 0);
  EXPECT_GE(w.work->sent_at(), before);
  EXPECT_EQ(w.work->completed_at(), std::chrono::steady_clock::time_point());
  std::this_thread::sleep_for(milliseconds(5));
  ASSERT_TRUE(table.Complete(w.tag, absl::OkStatus(), {}));
  EXPECT_GE(w.work->completed_at() - w.work->sent_at(), milliseconds(5));
  EXPECT_LE(w.work->completed_at(), std::chrono::steady_clock::now());
  // A repeated completion is refused and leaves the time alone.
  const auto first = w.work->completed_at();
  EXPECT_FALSE(table.Complete(w.tag, absl::OkStatus(), {}));
  EXPECT_EQ(w.work->completed_at(), first);
}

TEST(WorkTableTest, UnknownOrRepeatedTagsAreRejected) {
  WorkTable table;
  WorkTable::Started started = table.Start(WorkOp::kPing, 0);
  EXPECT_FALSE(table.Complete(started.tag + 100, absl::OkStatus(), {}));
  EXPECT_TRUE(table.Complete(started.tag, absl::OkStatus(), {}));
  EXPECT_FALSE(table.Complete(started.tag, absl::InternalError("late"), {}));
  EXPECT_TRUE(started.work->status().ok()) << "the first outcome stays";
}

TEST(WorkTableTest, ShutdownFailsPendingAndLaterWork) {
  WorkTable table;
  WorkTable::Started pending = table.Start(WorkOp::kAcquire, 1);
  table.Shutdown(absl::UnavailableError("lost spilld at /x"));
  EXPECT_EQ(pending.work->Wait(milliseconds(0)).code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(table.shut_down());

  WorkTable::Started later = table.Start(WorkOp::kRelease, 1);
  EXPECT_EQ(later.tag, 0u) << "nothing may be sent after shutdown";
  EXPECT_TRUE(later.work->IsCompleted());
  EXPECT_EQ(later.work->status().message(), "lost spilld at /x");

  table.Shutdown(absl::CancelledError("closed"));
  WorkTable::Started after_second = table.Start(WorkOp::kPing, 0);
  EXPECT_EQ(after_second.work->status().code(), absl::StatusCode::kUnavailable)
      << "the first shutdown status wins";
}

TEST(WorkTableTest, WaitWakesWhenAnotherThreadCompletes) {
  WorkTable table;
  WorkTable::Started started = table.Start(WorkOp::kWriteBack, 3);
  std::thread completer([&] {
    std::this_thread::sleep_for(milliseconds(20));
    table.Complete(started.tag, absl::OkStatus(), {});
  });
  EXPECT_TRUE(started.work->Wait(std::chrono::seconds(30)).ok());
  completer.join();
}

TEST(WorkTableTest, ConcurrentStartsAndCompletionsLoseNothing) {
  WorkTable table;
  constexpr int kThreads = 4, kPerThread = 500;
  std::vector<std::thread> threads;
  std::vector<std::shared_ptr<Work>> works(kThreads * kPerThread);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        WorkTable::Started s = table.Start(WorkOp::kPing, 0);
        works[t * kPerThread + i] = s.work;
        table.Complete(s.tag, absl::OkStatus(), {});
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (const auto& work : works) EXPECT_TRUE(work->Wait(milliseconds(0)).ok());
  EXPECT_EQ(table.pending(), 0u);
}

TEST(WorkTableTest, FailedIsAlreadyComplete) {
  std::shared_ptr<Work> work =
      WorkTable::Failed(WorkOp::kAcquire, 4, absl::FailedPreconditionError("closed"));
  EXPECT_TRUE(work->IsCompleted());
  EXPECT_EQ(work->Wait(milliseconds(0)).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(work->object_id(), 4u);
}

TEST(WorkOpNameTest, NamesEveryOp) {
  EXPECT_STREQ(WorkOpName(WorkOp::kWriteBack), "write-back");
  EXPECT_STREQ(WorkOpName(WorkOp::kAttach), "attach");
}

}  // namespace
}  // namespace spill::client::internal
