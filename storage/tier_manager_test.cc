#include "storage/tier_manager.h"

#include <atomic>
#include <cerrno>
#include <future>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/io_backend.h"
#include "storage/manifest.h"
#include "storage/test_util.h"
#include "storage/tier_manager_test_util.h"

namespace spill::storage {
namespace {

using ::testing::HasSubstr;
using test_util::kMiB;
using namespace tm_test;  // NOLINT

constexpr uint64_t kKiB = 1024;

ObjectSpec Spec(uint64_t id, uint64_t bytes, Home home = Home::kPinned) {
  ObjectSpec spec;
  spec.id = id;
  spec.bytes = bytes;
  spec.home = home;
  return spec;
}

struct TestSetup {
  uint64_t arena_segments = 4;
  uint64_t segment_bytes = kMiB;
  std::optional<FaultPlan> faults;
  uint32_t max_writebacks = 8;
  uint64_t nvme_quota = 0;
  int retry_ms = 20;
};

class TierManagerTest : public ::testing::Test {
 protected:
  void Open(TestSetup s = {}) {
    ASSERT_FALSE(dir_.path().empty()) << "cannot make a scratch directory";
    ArenaOptions ao = test_util::SmallOptions(s.arena_segments, s.segment_bytes);
    ao.lock = false;
    ASSERT_OK_AND_ASSIGN(a, PinnedArena::Create(ao));
    arena_ = std::move(a);
    NvmeOptions no;
    no.dirs = {dir_.Sub("nvme")};
    no.capacity_bytes = 64 * kMiB;
    no.block_size = 64 * kKiB;
    no.queue_depth = 8;
    no.thread_count = 1;
    no.job_quota_bytes = s.nvme_quota;
    std::function<absl::StatusOr<std::unique_ptr<IoBackend>>(int)> factory;
    if (s.faults.has_value()) {
      factory = [plan = *s.faults](int) -> absl::StatusOr<std::unique_ptr<IoBackend>> {
        SPILL_ASSIGN_OR_RETURN(auto inner, MakeUringBackend({.queue_depth = 8}));
        return MakeFaultyBackend(std::move(inner), plan);
      };
    }
    auto tier = NvmeTier::Open(no, factory);
    if (!tier.ok() && absl::IsFailedPrecondition(tier.status())) {
      GTEST_SKIP() << "no NVMe tier here (set SPILL_TEST_NVME_DIR to a file system with "
                      "O_DIRECT): "
                   << tier.status();
    }
    ASSERT_TRUE(tier.ok()) << tier.status();
    tier_ = std::move(tier).value();
    retry_ms_ = s.retry_ms;
    ReopenManager(s.max_writebacks);
  }

  void ReopenManager(uint32_t max_writebacks = 8) {
    tm_.reset();
    TierManagerOptions to;
    to.manifest_dir = dir_.Sub("manifest");
    to.publish_interval = std::chrono::milliseconds(5);
    to.retry_interval = std::chrono::milliseconds(retry_ms_);
    to.max_writebacks = max_writebacks;
    ASSERT_OK_AND_ASSIGN(tm, TierManager::Create(arena_.get(), tier_.get(), to));
    tm_ = std::move(tm);
  }

  void AddJob(const std::string& job, JobOptions options = {}) {
    ASSERT_TRUE(tm_->RegisterJob(job, options).ok());
  }

  void AddObject(const std::string& job, uint64_t id, uint64_t bytes, Home home = Home::kNvme,
                 Stream stream = Stream::kParam) {
    ObjectSpec spec = Spec(id, bytes, home);
    spec.name = "o" + std::to_string(id);
    spec.stream = stream;
    absl::Status s = tm_->CreateObject(job, spec);
    ASSERT_TRUE(s.ok()) << s;
  }

  ObjectInfo Info(const std::string& job, uint64_t id) {
    absl::StatusOr<ObjectInfo> info = tm_->Describe(job, id);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? *info : ObjectInfo{};
  }

  ScratchDir dir_;
  std::unique_ptr<PinnedArena> arena_;
  std::unique_ptr<NvmeTier> tier_;
  std::unique_ptr<TierManager> tm_;
  int retry_ms_ = 20;
};

#define SPILL_OPEN(...)                           \
  do {                                            \
    Open(__VA_ARGS__);                            \
    if (IsSkipped() || HasFatalFailure()) return; \
  } while (0)

TEST_F(TierManagerTest, RoundTripsThroughEvictionUnderPressure) {
  SPILL_OPEN();  // 4 MiB of pinned memory
  AddJob("j");
  std::mt19937_64 rng(1);
  std::vector<uint64_t> sizes;
  for (uint64_t id = 0; id < 24; ++id) {  // ~7 MiB of objects
    sizes.push_back(64 * kKiB + rng() % (512 * kKiB));
    AddObject("j", id, sizes.back());
    ASSERT_TRUE(WriteObject(*tm_, *arena_, "j", id, 1, /*durable=*/true).ok()) << id;
  }
  for (int round = 0; round < 3; ++round) {
    for (uint64_t i = 0; i < 24; ++i) {
      const uint64_t id = rng() % 24;
      absl::Status s = CheckObject(*tm_, *arena_, "j", id, 1);
      ASSERT_TRUE(s.ok()) << s;
    }
  }
  const TierManagerStats stats = tm_->Stats();
  EXPECT_GT(stats.total.evictions, 0u);
  EXPECT_GT(stats.total.reads, 0u);
  EXPECT_EQ(stats.total.read_errors, 0u);
  EXPECT_EQ(stats.total.writes, 24u);
  EXPECT_LE(stats.total.resident_bytes, 4 * kMiB);
  EXPECT_EQ(stats.total.dirty_bytes, 0u);
}

TEST_F(TierManagerTest, PinnedObjectsAreNeverEvicted) {
  SPILL_OPEN();
  AddJob("j");
  AddObject("j", 100, 700 * kKiB, Home::kPinned);
  ASSERT_OK_AND_ASSIGN(pinned, AcquireSync(*tm_, "j", 100, AcquireMode::kWrite));
  FillPattern(arena_->Data(pinned), 700 * kKiB, 100, 1);
  ASSERT_TRUE(tm_->MarkWritten("j", 100, 1).ok());
  ASSERT_TRUE(tm_->Release("j", 100).ok());
  for (uint64_t id = 0; id < 16; ++id) {
    AddObject("j", id, 512 * kKiB);
    ASSERT_TRUE(WriteObject(*tm_, *arena_, "j", id, 1, true).ok());
  }
  for (uint64_t id = 0; id < 16; ++id) ASSERT_TRUE(CheckObject(*tm_, *arena_, "j", id, 1).ok());
  EXPECT_GT(tm_->Stats().total.evictions, 0u);
  const ObjectInfo info = Info("j", 100);
  EXPECT_TRUE(info.resident);
  ASSERT_TRUE(info.extent.has_value());
  EXPECT_EQ(info.extent->segment_id, pinned.segment_id);
  EXPECT_EQ(info.extent->offset, pinned.offset);
  EXPECT_EQ(FirstMismatch(arena_->Data(pinned), 700 * kKiB, 100, 1), -1);
  EXPECT_FALSE(info.has_durable);  // pinned home: never written to NVMe
}

TEST_F(TierManagerTest, NeverWrittenNvmeObjectReadsAsZeros) {
  SPILL_OPEN();
  AddJob("j");
  AddObject("j", 1, 100 * kKiB);
  ASSERT_OK_AND_ASSIGN(e, AcquireSync(*tm_, "j", 1));
  EXPECT_TRUE(test_util::AllBytesAre(arena_->Data(e), 100 * kKiB, 0));
  EXPECT_EQ(tm_->Stats().total.reads, 0u);
}

TEST_F(TierManagerTest, AcquireOfNonResidentObjectReadsItBack) {
  SPILL_OPEN();
  JobOptions options;
  options.param.max_in_cpu = 300 * kKiB;  // room for one object of the stream
  AddJob("j", options);
  AddObject("j", 1, 200 * kKiB);
  AddObject("j", 2, 200 * kKiB);
  ASSERT_TRUE(WriteObject(*tm_, *arena_, "j", 1, 3, true).ok());
  ASSERT_TRUE(WriteObject(*tm_, *arena_, "j", 2, 5, true).ok());
  EXPECT_FALSE(Info("j", 1).resident);  // evicted for object 2 (max_in_cpu)
  EXPECT_TRUE(Info("j", 2).resident);
  ASSERT_TRUE(CheckObject(*tm_, *arena_, "j", 1, 3).ok());
  ASSERT_TRUE(CheckObject(*tm_, *arena_, "j", 2, 5).ok());
  const TierCounters c = tm_->Stats().jobs.at("j");
  EXPECT_EQ(c.reads, 2u);
  EXPECT_EQ(c.read_bytes, 400 * kKiB);
  EXPECT_EQ(c.prefetch_misses, 2u);
  EXPECT_EQ(c.evictions, 3u);
}

TEST_F(TierManagerTest, ConcurrentAcquiresShareOneRead) {
  SPILL_OPEN();
  JobOptions options;
  options.param.max_in_cpu = 300 * kKiB;
  AddJob("j", options);
  AddObject("j", 1, 256 * kKiB);
  AddObject("j", 2, 256 * kKiB);
  ASSERT_TRUE(WriteObject(*tm_, *arena_, "j", 1, 1, true).ok());
  ASSERT_TRUE(WriteObject(*tm_, *arena_, "j", 2, 1, true).ok());  // evicts 1
  std::vector<std::future<absl::StatusOr<Extent>>> futures;
  std::vector<std::promise<absl::StatusOr<Extent>>> promises(4);
  for (auto& p : promises) {
    futures.push_back(p.get_future());
    tm_->Acquire("j", 1, AcquireMode::kRead, [&p](absl::StatusOr<Extent> e) { p.set_value(e); });
  }
  for (auto& f : futures) {
    absl::StatusOr<Extent> e = f.get();
    ASSERT_TRUE(e.ok()) << e.status();
    EXPECT_EQ(FirstMismatch(arena_->Data(*e), 256 * kKiB, 1, 1), -1);
  }
  EXPECT_EQ(Info("j", 1).pins, 4u);
  EXPECT_EQ(tm_->Stats().jobs.at("j").reads, 1u);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(tm_->Release("j", 1).ok());
}

TEST_F(TierManagerTest, PrefetchHitsAndMisses) {
  SPILL_OPEN();
  JobOptions options;
  options.param.max_in_cpu = 300 * kKiB;
  AddJob("j", options);
  AddObject("j", 1, 256 * kKiB);
  AddObject("j", 2, 256 * kKiB);
  ASSERT_TRUE(WriteObject(*tm_, *arena_, "j", 1, 1, true).ok());
  ASSERT_TRUE(WriteObject(*tm_, *arena_, "j", 2, 1, true).ok());  // 1 evicted
  ASSERT_TRUE(PrefetchSync(*tm_, "j", 1).ok());                   // 2 evicted
  EXPECT_FALSE(Info("j", 2).resident);
  EXPECT_EQ(Info("j", 1).pins, 0u);
  ASSERT_TRUE(CheckObject(*tm_, *arena_, "j", 1, 1).ok());  // hit
  ASSERT_TRUE(CheckObject(*tm_, *arena_, "j", 1, 1).ok());  // resident, not a prefetch
  ASSERT_TRUE(CheckObject(*tm_, *arena_, "j", 2, 1).ok());  // miss
  const TierCounters c = tm_->Stats().jobs.at("j");
  EXPECT_EQ(c.prefetch_hits, 1u);
  EXPECT_EQ(c.prefetch_late, 0u);
  EXPECT_EQ(c.prefetch_misses, 1u);
}

// Holds the NVMe tier's only completion thread inside a callback, so that
// completions queued behind it wait until Unblock.
class CompletionBlocker {
 public:
  // Prefetches (job, id), which must be non-resident with an NVMe copy.
  void Block(TierManager& tm, const std::string& job, uint64_t id) {
    tm.Prefetch(job, id, [this](absl::Status) {
      entered_.set_value();
      release_.get_future().wait();
    });
    entered_.get_future().wait();
  }
  void Unblock() { release_.set_value(); }

 private:
  std::promise<void> entered_, release_;
};

TEST_F(TierManagerTest, AcquireDuringPrefetchReadCountsAsLate) {
  SPILL_OPEN();
  JobOptions options;
  options.param.max_in_cpu = 300 * kKiB;  // one object resident at a time
  AddJob("j", options);
  for (uint64_t id = 1; id <= 3; ++id) {
    AddObject("j", id, 256 * kKiB);
    ASSERT_TRUE(WriteObject(*tm_, *arena_, "j", id, 1, true).ok());
  }
  ASSERT_TRUE(tm_->FreeObject("j", 3).ok());  // nothing resident now
  ASSERT_FALSE(Info("j", 1).resident || Info("j", 2).resident);
  CompletionBlocker blocker;
  blocker.Block(*tm_, "j", 1);
  std::promise<absl::Status> prefetched;
  tm_->Prefetch("j", 2, [&](absl::Status s) { prefetched.set_value(s); });
  std::promise<absl::StatusOr<Extent>> acquired;
  tm_->Acquire("j", 2, AcquireMode::kRead,
               [&](absl::StatusOr<Extent> e) { acquired.set_value(e); });
  EXPECT_TRUE(Info("j", 2).loading);
  blocker.Unblock();
  ASSERT_TRUE(prefetched.get_future().get().ok());
  ASSERT_TRUE(acquired.get_future().get().ok());
  const TierCounters c = tm_->Stats().jobs.at("j");
  EXPECT_EQ(c.prefetch_late, 1u);
  EXPECT_EQ(c.prefetch_hits, 0u);
  EXPECT_EQ(c.prefetch_misses, 0u);
}

TEST_F(TierManagerTest, DirtyWriteBackBecomesDurableAndAcknowledged) {
  SPILL_OPEN();
  AddJob("j");
  AddObject("j", 1, 300 * kKiB);
  ASSERT_OK_AND_ASSIGN(e, AcquireSync(*tm_, "j", 1, AcquireMode::kWrite));
  FillPattern(arena_->Data(e), 300 * kKiB, 1, 7);
  std::promise<absl::Status> acked;
  ASSERT_TRUE(tm_->MarkWritten("j", 1, 7, [&](absl::Status s) { acked.set_value(s); }).ok());
  EXPECT_TRUE(Info("j", 1).dirty || Info("j", 1).has_durable);
  ASSERT_TRUE(acked.get_future().get().ok());
  ObjectInfo info = Info("j", 1);
  EXPECT_FALSE(info.dirty);
  EXPECT_TRUE(info.has_durable);
  EXPECT_EQ(info.durable_version, 7u);
  EXPECT_TRUE(info.acknowledged);
  EXPECT_TRUE(info.resident);  // still acquired
  ASSERT_TRUE(tm_->Release("j", 1).ok());
  ASSERT_OK_AND_ASSIGN(m, LoadManifest(dir_.Sub("manifest")));
  ASSERT_EQ(m.jobs.size(), 1u);
  ASSERT_EQ(m.jobs[0].objects.size(), 1u);
  EXPECT_EQ(m.jobs[0].objects[0].version, 7u);
  EXPECT_EQ(m.jobs[0].objects[0].bytes, 300 * kKiB);
  const TierCounters c = tm_->Stats().jobs.at("j");
  EXPECT_EQ(c.writes, 1u);
  EXPECT_EQ(c.write_bytes, 300 * kKiB);
  EXPECT_EQ(c.nvme_bytes, 300 * kKiB);
}

// Two objects written at version 1 with object 2 left resident and 1
// evicted, so that a CompletionBlocker on 1 can hold NVMe completions.
class TierManagerRewriteTest : public TierManagerTest {
 protected:
  void SetUpObjects() {
    JobOptions options;
    options.param.max_in_cpu = 600 * kKiB;
    AddJob("j", options);
    for (uint64_t id = 1; id <= 3; ++id) {
      AddObject("j", id, 256 * kKiB);
      ASSERT_TRUE(WriteObject(*tm_, *arena_, "j", id, 1, true).ok());
    }
    ASSERT_TRUE(tm_->FreeObject("j", 3).ok());
    ASSERT_FALSE(Info("j", 1).resident);
    ASSERT_TRUE(Info("j", 2).resident);
  }

  // SetUpObjects, then version 2 of object 2 written under a kWrite pin
  // (kept) and marked, its write-back in flight and held by `blocker`.
  void WriteVersion2Held(CompletionBlocker& blocker, StatusDone durable = nullptr) {
    SetUpObjects();
    ASSERT_OK_AND_ASSIGN(e, AcquireSync(*tm_, "j", 2, AcquireMode::kWrite));
    blocker.Block(*tm_, "j", 1);
    FillPattern(arena_->Data(e), 256 * kKiB, 2, 2);
    ASSERT_TRUE(tm_->MarkWritten("j", 2, 2, std::move(durable)).ok());
    ASSERT_TRUE(Info("j", 2).writing);
  }

  // Waits (up to 10 s) until no write-back of (j, id) is in flight.
  void AwaitNotWriting(uint64_t id) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (Info("j", id).writing && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ASSERT_FALSE(Info("j", id).writing);
  }

  void ExpectDurableOnDisk(uint64_t id, uint64_t version) {
    ObjectInfo info = Info("j", id);
    EXPECT_EQ(info.durable_version, version);
    EXPECT_FALSE(info.dirty);
    ASSERT_OK_AND_ASSIGN(m, LoadManifest(dir_.Sub("manifest")));
    bool found = false;
    for (const auto& o : m.jobs[0].objects) {
      if (o.id != id) continue;
      found = true;
      EXPECT_EQ(o.version, version);
    }
    EXPECT_TRUE(found);
  }
};

TEST_F(TierManagerRewriteTest, WriteAcquireDiscardsTheWriteBackInFlight) {
  SPILL_OPEN();
  CompletionBlocker blocker;
  ASSERT_NO_FATAL_FAILURE(WriteVersion2Held(blocker));
  // The next step's writer does not wait for the disk.
  ASSERT_OK_AND_ASSIGN(again, AcquireSync(*tm_, "j", 2, AcquireMode::kWrite));
  ASSERT_OK_AND_ASSIGN(reader, AcquireSync(*tm_, "j", 2));
  FillPattern(arena_->Data(again), 256 * kKiB, 2, 3);  // under the write of version 2
  blocker.Unblock();
  AwaitNotWriting(2);
  // That copy may be torn: it is not the durable one, and while the writer's
  // pin is open no other write starts.
  ObjectInfo info = Info("j", 2);
  EXPECT_EQ(info.durable_version, 1u);
  EXPECT_TRUE(info.dirty);
  EXPECT_FALSE(info.writing);
  ASSERT_TRUE(tm_->MarkWritten("j", 2, 3).ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(tm_->Release("j", 2).ok());
  ASSERT_TRUE(FlushSync(*tm_).ok());
  ExpectDurableOnDisk(2, 3);
  // Read back from NVMe, after new objects filled max_in_cpu and evicted it.
  ASSERT_TRUE(tm_->FreeObject("j", 1).ok());
  for (uint64_t id = 4; id <= 5; ++id) {
    AddObject("j", id, 256 * kKiB);
    ASSERT_TRUE(WriteObject(*tm_, *arena_, "j", id, 1, true).ok());
  }
  ASSERT_FALSE(Info("j", 2).resident);
  const uint64_t reads = tm_->Stats().jobs.at("j").reads;
  ASSERT_TRUE(CheckObject(*tm_, *arena_, "j", 2, 3).ok());
  EXPECT_EQ(tm_->Stats().jobs.at("j").reads, reads + 1);
  (void)reader;
}

TEST_F(TierManagerRewriteTest, WriterLeavingWithoutMarkWrittenLetsTheWriteBackRun) {
  SPILL_OPEN();
  CompletionBlocker blocker;
  ASSERT_NO_FATAL_FAILURE(WriteVersion2Held(blocker));
  ASSERT_TRUE(tm_->Release("j", 2).ok());
  ASSERT_OK_AND_ASSIGN(again, AcquireSync(*tm_, "j", 2, AcquireMode::kWrite));
  blocker.Unblock();
  AwaitNotWriting(2);
  EXPECT_EQ(Info("j", 2).durable_version, 1u);
  // The writer gives up: the bytes are version 2's, written once it is gone.
  ASSERT_TRUE(tm_->Release("j", 2).ok());
  ASSERT_TRUE(FlushSync(*tm_).ok());
  ExpectDurableOnDisk(2, 2);
  (void)again;
}

TEST_F(TierManagerRewriteTest, WriteAcquireWaitsForAWriteSomeoneAwaits) {
  SPILL_OPEN();
  CompletionBlocker blocker;
  std::promise<absl::Status> acked;
  ASSERT_NO_FATAL_FAILURE(
      WriteVersion2Held(blocker, [&](absl::Status s) { acked.set_value(s); }));
  std::atomic<bool> granted{false};
  std::promise<absl::StatusOr<Extent>> writer;
  tm_->Acquire("j", 2, AcquireMode::kWrite, [&](absl::StatusOr<Extent> x) {
    granted = true;
    writer.set_value(x);
  });
  ASSERT_OK_AND_ASSIGN(reader, AcquireSync(*tm_, "j", 2));  // readers do not wait
  EXPECT_FALSE(granted.load());
  blocker.Unblock();
  ASSERT_TRUE(writer.get_future().get().ok());
  ASSERT_TRUE(acked.get_future().get().ok());
  EXPECT_EQ(Info("j", 2).durable_version, 2u);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(tm_->Release("j", 2).ok());
  ASSERT_TRUE(FlushSync(*tm_).ok());
  ExpectDurableOnDisk(2, 2);
  (void)reader;
}

TEST_F(TierManagerRewriteTest, AFlushIsNotOvertakenByTheNextWriter) {
  SPILL_OPEN();
  CompletionBlocker blocker;
  ASSERT_NO_FATAL_FAILURE(WriteVersion2Held(blocker));
  ASSERT_TRUE(tm_->Release("j", 2).ok());
  // A writer steps to version 3 under the write of version 2, then a Flush
  // asks for version 3, and the next writer comes.
  ASSERT_OK_AND_ASSIGN(b, AcquireSync(*tm_, "j", 2, AcquireMode::kWrite));
  FillPattern(arena_->Data(b), 256 * kKiB, 2, 3);
  ASSERT_TRUE(tm_->MarkWritten("j", 2, 3).ok());
  ASSERT_TRUE(tm_->Release("j", 2).ok());
  std::promise<absl::Status> flushed;
  tm_->Flush("j", [&](absl::Status s) { flushed.set_value(s); });
  std::promise<uint64_t> durable_at_grant;
  tm_->Acquire("j", 2, AcquireMode::kWrite, [&](absl::StatusOr<Extent> x) {
    absl::StatusOr<ObjectInfo> info = tm_->Describe("j", 2);
    durable_at_grant.set_value(x.ok() && info.ok() ? info->durable_version : 0);
    if (x.ok()) tm_->Release("j", 2).IgnoreError();  // leaves without writing
  });
  blocker.Unblock();
  // Version 2's copy is discarded; the writer waits for version 3's write.
  EXPECT_EQ(durable_at_grant.get_future().get(), 3u);
  ASSERT_TRUE(flushed.get_future().get().ok());
  ExpectDurableOnDisk(2, 3);
}

TEST_F(TierManagerTest, OptimizerStatesStreamThroughTheirBuffers) {
  SPILL_OPEN();
  JobOptions options;
  options.optimizer.buffer_count = 2;  // two 256 KiB buffers: 512 KiB resident at most
  options.optimizer.buffer_size = 256 * kKiB;
  AddJob("j", options);
  for (uint64_t id = 0; id < 8; ++id) {
    AddObject("j", id, 256 * kKiB, Home::kNvme, Stream::kOptimizer);
  }
  for (uint64_t step = 1; step <= 3; ++step) {
    for (uint64_t id = 0; id < 8; ++id) {
      // No waiting for write-backs: an acquire short of room waits for them.
      absl::Status s = WriteObject(*tm_, *arena_, "j", id, step, /*durable=*/false);
      ASSERT_TRUE(s.ok()) << "step " << step << ", object " << id << ": " << s;
      EXPECT_LE(tm_->Stats().jobs.at("j").resident_bytes, 512 * kKiB);
    }
  }
  ASSERT_TRUE(FlushSync(*tm_).ok());
  for (uint64_t id = 0; id < 8; ++id) ASSERT_TRUE(CheckObject(*tm_, *arena_, "j", id, 3).ok());
  EXPECT_EQ(tm_->Stats().jobs.at("j").writes, 24u);
}

TEST_F(TierManagerTest, ArenaFullOfDirtyObjectsWaitsForWriteBacks) {
  TestSetup setup;
  setup.arena_segments = 2;  // a segment for each job
  SPILL_OPEN(setup);
  JobOptions one;
  one.param.max_in_cpu = 256 * kKiB;
  AddJob("b", one);
  AddObject("b", 100, 256 * kKiB);
  AddObject("b", 101, 256 * kKiB);
  ASSERT_TRUE(WriteObject(*tm_, *arena_, "b", 100, 1, true).ok());
  ASSERT_TRUE(WriteObject(*tm_, *arena_, "b", 101, 1, true).ok());  // evicts 100
  CompletionBlocker blocker;  // no write-back completes until Unblock
  blocker.Block(*tm_, "b", 100);
  ASSERT_TRUE(AcquireSync(*tm_, "b", 100).ok());  // pinned: b's segment stays b's
  AddJob("j");
  for (uint64_t id = 0; id < 4; ++id) {  // fill j's segment with dirty objects
    AddObject("j", id, 256 * kKiB);
    ASSERT_TRUE(WriteObject(*tm_, *arena_, "j", id, 1, /*durable=*/false).ok());
  }
  AddObject("j", 4, 256 * kKiB);
  std::atomic<bool> granted{false};
  std::promise<absl::StatusOr<Extent>> acquired;
  tm_->Acquire("j", 4, AcquireMode::kWrite, [&](absl::StatusOr<Extent> e) {
    granted = true;
    acquired.set_value(e);
  });
  EXPECT_FALSE(granted.load());  // waiting for a write-back, not failed
  blocker.Unblock();
  absl::StatusOr<Extent> e = acquired.get_future().get();
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_TRUE(tm_->Release("j", 4).ok());
  ASSERT_TRUE(tm_->Release("b", 100).ok());
  ASSERT_TRUE(FlushSync(*tm_).ok());
  for (uint64_t id = 0; id < 4; ++id) ASSERT_TRUE(CheckObject(*tm_, *arena_, "j", id, 1).ok());
}

TEST_F(TierManagerTest, EioOnWriteBackKeepsThePinnedCopyDirty) {
  FaultPlan plan;
  plan.rules.push_back({.kind = FaultKind::kErrno, .nth = 0, .count = 2, .err = EIO,
                        .direction = FaultDirection::kWrite});
  TestSetup setup;
  setup.faults = plan;
  setup.retry_ms = 3600 * 1000;
  SPILL_OPEN(setup);  // only Flush retries
  AddJob("j");
  AddObject("j", 1, 128 * kKiB);  // two blocks: two failing requests
  absl::Status acked = WriteObject(*tm_, *arena_, "j", 1, 1, /*durable=*/true);
  EXPECT_FALSE(acked.ok());
  ObjectInfo info = Info("j", 1);
  EXPECT_TRUE(info.dirty);
  EXPECT_TRUE(info.resident);
  EXPECT_FALSE(info.has_durable);
  EXPECT_FALSE(info.write_error.ok());
  ASSERT_TRUE(info.extent.has_value());
  EXPECT_EQ(FirstMismatch(arena_->Data(*info.extent), 128 * kKiB, 1, 1), -1);
  const TierManagerStats stats = tm_->Stats();
  EXPECT_GE(stats.jobs.at("j").write_errors, 1u);
  EXPECT_THAT(stats.last_write_error.at("j"), HasSubstr("object 1"));
  // Flush retries it; the fault is spent, so it succeeds.
  ASSERT_TRUE(FlushSync(*tm_).ok());
  info = Info("j", 1);
  EXPECT_FALSE(info.dirty);
  EXPECT_TRUE(info.acknowledged);
  EXPECT_TRUE(info.write_error.ok());
  ASSERT_TRUE(CheckObject(*tm_, *arena_, "j", 1, 1).ok());
}

TEST_F(TierManagerTest, FlushReportsAPersistentWriteError) {
  FaultPlan plan;
  plan.rules.push_back({.kind = FaultKind::kErrno, .nth = 0, .count = 1000, .err = EIO,
                        .direction = FaultDirection::kWrite});
  TestSetup setup;
  setup.faults = plan;
  SPILL_OPEN(setup);
  AddJob("j");
  AddObject("j", 1, 64 * kKiB);
  AddObject("j", 2, 64 * kKiB, Home::kPinned);
  ASSERT_TRUE(WriteObject(*tm_, *arena_, "j", 1, 1, false).ok());
  absl::Status flushed = FlushSync(*tm_, "j");
  EXPECT_FALSE(flushed.ok());
  EXPECT_THAT(flushed.message(), HasSubstr("offset"));
  EXPECT_TRUE(Info("j", 1).dirty);
  ASSERT_TRUE(CheckObject(*tm_, *arena_, "j", 1, 1).ok());  // still served from pinned memory
}

TEST_F(TierManagerTest, BitFlipOnDiskIsDataLossAndNothingIsHandedOut) {
  SPILL_OPEN();
  JobOptions options;
  options.param.max_in_cpu = 300 * kKiB;
  AddJob("j", options);
  AddObject("j", 1, 256 * kKiB);
  AddObject("j", 2, 256 * kKiB);
  ASSERT_TRUE(WriteObject(*tm_, *arena_, "j", 1, 1, true).ok());
  ASSERT_TRUE(WriteObject(*tm_, *arena_, "j", 2, 1, true).ok());  // evicts 1
  ASSERT_OK_AND_ASSIGN(m, LoadManifest(dir_.Sub("manifest")));
  const ManifestObject* one = nullptr;
  for (const auto& o : m.jobs[0].objects) one = o.id == 1 ? &o : one;
  ASSERT_NE(one, nullptr);
  const NvmePiece& piece = one->extent.pieces[0];
  ASSERT_TRUE(FlipBitInFile(tier_->DataFilePath(piece.dir), piece.offset + 70 * kKiB, 3).ok());
  absl::StatusOr<Extent> e = AcquireSync(*tm_, "j", 1);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kDataLoss) << e.status();
  EXPECT_THAT(e.status().message(), HasSubstr("object 1 'o1' of job j"));
  EXPECT_THAT(e.status().message(), HasSubstr("65536"));  // the block's offset
  ObjectInfo info = Info("j", 1);
  EXPECT_FALSE(info.resident);
  EXPECT_EQ(info.pins, 0u);
  EXPECT_EQ(tm_->Stats().jobs.at("j").read_errors, 1u);
  ASSERT_TRUE(CheckObject(*tm_, *arena_, "j", 2, 1).ok());  // others are still served
  EXPECT_EQ(AcquireSync(*tm_, "j", 1).status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(TierManagerTest, NoRoomIsResourceExhaustedNamingTheNeed) {
  TestSetup setup;
  setup.arena_segments = 2;
  SPILL_OPEN(setup);
  JobOptions options;
  options.param.buffer_count = 2;
  options.param.buffer_size = 512 * kKiB;
  options.param.max_in_cpu = 1536 * kKiB;
  options.optimizer.max_in_cpu = 512 * kKiB;
  AddJob("j", options);
  for (uint64_t id = 1; id <= 3; ++id) AddObject("j", id, 256 * kKiB);
  ASSERT_TRUE(AcquireSync(*tm_, "j", 1).ok());
  ASSERT_TRUE(AcquireSync(*tm_, "j", 2).ok());
  absl::StatusOr<Extent> third = AcquireSync(*tm_, "j", 3);
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.status().message(), HasSubstr("all 2 offload_param buffers"));
  EXPECT_FALSE(Info("j", 3).resident);
  EXPECT_FALSE(Info("j", 3).loading);
  ASSERT_TRUE(tm_->Release("j", 1).ok());
  ASSERT_TRUE(AcquireSync(*tm_, "j", 3).ok());
  // Past buffer_size at creation.
  absl::Status big = tm_->CreateObject("j", Spec(9, 513 * kKiB, Home::kNvme));
  EXPECT_EQ(big.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(big.message(), HasSubstr("buffer_size"));
  // max_in_cpu of the optimizer stream with everything pinned.
  for (uint64_t id = 11; id <= 13; ++id) {
    AddObject("j", id, 256 * kKiB, Home::kNvme, Stream::kOptimizer);
  }
  ASSERT_TRUE(AcquireSync(*tm_, "j", 11).ok());
  ASSERT_TRUE(AcquireSync(*tm_, "j", 12).ok());
  absl::StatusOr<Extent> e13 = AcquireSync(*tm_, "j", 13);
  EXPECT_EQ(e13.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(e13.status().message(), HasSubstr("max_in_cpu of 524288"));
  EXPECT_THAT(e13.status().message(), HasSubstr("needs 262144 bytes"));
  ASSERT_TRUE(tm_->Release("j", 11).ok());
  ASSERT_TRUE(AcquireSync(*tm_, "j", 13).ok());  // evicts 11
  EXPECT_FALSE(Info("j", 11).resident);
  // A pinned-home object larger than a segment: the arena's InvalidArgument.
  absl::Status pinned = tm_->CreateObject("j", Spec(20, 2 * kMiB));
  EXPECT_EQ(pinned.code(), absl::StatusCode::kInvalidArgument) << pinned;
  EXPECT_FALSE(tm_->Describe("j", 20).ok());
}

TEST_F(TierManagerTest, ArenaFullOfPinnedObjectsIsResourceExhausted) {
  TestSetup setup;
  setup.arena_segments = 2;
  SPILL_OPEN(setup);
  AddJob("j");
  AddObject("j", 1, kMiB, Home::kPinned);
  AddObject("j", 2, 600 * kKiB);
  AddObject("j", 3, 600 * kKiB);
  ASSERT_OK_AND_ASSIGN(e2, AcquireSync(*tm_, "j", 2));
  absl::StatusOr<Extent> e3 = AcquireSync(*tm_, "j", 3);
  ASSERT_EQ(e3.status().code(), absl::StatusCode::kResourceExhausted) << e3.status();
  EXPECT_THAT(e3.status().message(), HasSubstr("614400 bytes of pinned memory"));
  EXPECT_FALSE(Info("j", 3).resident);
  EXPECT_FALSE(Info("j", 3).loading);
  ASSERT_TRUE(tm_->Release("j", 2).ok());
  ASSERT_TRUE(AcquireSync(*tm_, "j", 3).ok());  // 2 is evicted now
  EXPECT_FALSE(Info("j", 2).resident);
  (void)e2;
}

TEST_F(TierManagerTest, NvmeQuotaAtCreation) {
  TestSetup setup;
  setup.nvme_quota = kMiB;
  SPILL_OPEN(setup);
  AddJob("j");
  AddObject("j", 1, 768 * kKiB);
  absl::Status s = tm_->CreateObject("j", Spec(2, 512 * kKiB, Home::kNvme));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(s.message(), HasSubstr("NVMe quota"));
  EXPECT_FALSE(tm_->Describe("j", 2).ok());
}

TEST_F(TierManagerTest, BadInputIsRejectedAndChangesNothing) {
  SPILL_OPEN();
  EXPECT_EQ(tm_->RegisterJob("", {}).code(), absl::StatusCode::kInvalidArgument);
  JobOptions bad;
  bad.optimizer.buffer_count = 4;
  EXPECT_EQ(tm_->RegisterJob("j", bad).code(), absl::StatusCode::kInvalidArgument);
  AddJob("j");
  EXPECT_EQ(tm_->RegisterJob("j", {}).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(tm_->CreateObject("nope", Spec(1, 1)).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tm_->CreateObject("j", Spec(1, 0)).code(),
            absl::StatusCode::kInvalidArgument);
  AddObject("j", 1, 64 * kKiB);
  AddObject("j", 2, 64 * kKiB, Home::kPinned);
  EXPECT_EQ(tm_->CreateObject("j", Spec(1, 8)).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(AcquireSync(*tm_, "j", 9).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(PrefetchSync(*tm_, "nope", 1).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tm_->Release("j", 1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(tm_->MarkWritten("j", 1, 1).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(WriteObject(*tm_, *arena_, "j", 1, 5, true).ok());
  ASSERT_TRUE(AcquireSync(*tm_, "j", 1).ok());
  absl::Status older = tm_->MarkWritten("j", 1, 4);
  EXPECT_EQ(older.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(older.message(), HasSubstr("version 5"));
  EXPECT_FALSE(Info("j", 1).dirty);
  ASSERT_TRUE(AcquireSync(*tm_, "j", 2).ok());
  EXPECT_EQ(tm_->MarkWritten("j", 2, 1, [](absl::Status) {}).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(tm_->SetAccessOrder("nope", {1}).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(FlushSync(*tm_, "nope").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tm_->FreeObject("j", 9).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tm_->FreeJob("nope").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tm_->Stats().jobs.at("j").objects, 2u);
}

TEST_F(TierManagerTest, AccessOrderDecidesTheVictim) {
  SPILL_OPEN();
  JobOptions options;
  options.param.max_in_cpu = 3 * 128 * kKiB;
  AddJob("j", options);
  for (uint64_t id = 1; id <= 3; ++id) {
    AddObject("j", id, 128 * kKiB);
    ASSERT_TRUE(WriteObject(*tm_, *arena_, "j", id, 1, true).ok());
  }
  ASSERT_TRUE(Info("j", 1).resident && Info("j", 2).resident && Info("j", 3).resident);
  AddObject("j", 4, 128 * kKiB);
  // LRU would drop 1; the order says 1 is next after 4 and 3 is last.
  ASSERT_TRUE(tm_->SetAccessOrder("j", {4, 1, 2, 3}).ok());
  ASSERT_TRUE(AcquireSync(*tm_, "j", 4).ok());
  EXPECT_TRUE(Info("j", 1).resident);
  EXPECT_TRUE(Info("j", 2).resident);
  EXPECT_FALSE(Info("j", 3).resident);
  ASSERT_TRUE(tm_->Release("j", 4).ok());
  // Without an order: least recently used (1) goes.
  ASSERT_TRUE(tm_->SetAccessOrder("j", {}).ok());
  ASSERT_TRUE(CheckObject(*tm_, *arena_, "j", 3, 1).ok());
  EXPECT_FALSE(Info("j", 1).resident);
}

TEST_F(TierManagerTest, FreeDuringReadAbortsWaitersAndReleasesMemory) {
  SPILL_OPEN();
  JobOptions options;
  options.param.max_in_cpu = 300 * kKiB;  // one object resident at a time
  AddJob("j", options);
  for (uint64_t id = 1; id <= 3; ++id) {
    AddObject("j", id, 256 * kKiB);
    ASSERT_TRUE(WriteObject(*tm_, *arena_, "j", id, 1, true).ok());
  }
  ASSERT_TRUE(tm_->FreeObject("j", 3).ok());  // nothing resident now
  ASSERT_FALSE(Info("j", 1).resident || Info("j", 2).resident);
  CompletionBlocker blocker;
  blocker.Block(*tm_, "j", 1);
  std::promise<absl::StatusOr<Extent>> acquired;
  tm_->Acquire("j", 2, AcquireMode::kRead,
               [&](absl::StatusOr<Extent> e) { acquired.set_value(e); });
  ASSERT_TRUE(Info("j", 2).loading);
  ASSERT_TRUE(tm_->FreeObject("j", 2).ok());
  absl::StatusOr<Extent> e = acquired.get_future().get();
  EXPECT_EQ(e.status().code(), absl::StatusCode::kAborted);
  blocker.Unblock();
  ASSERT_TRUE(FlushSync(*tm_).ok());
  ASSERT_OK_AND_ASSIGN(m, LoadManifest(dir_.Sub("manifest")));
  ASSERT_EQ(m.jobs[0].objects.size(), 1u);  // only object 1 is left
  ASSERT_TRUE(tm_->FreeJob("j").ok());
  ASSERT_TRUE(FlushSync(*tm_).ok());
  ASSERT_OK_AND_ASSIGN(after, LoadManifest(dir_.Sub("manifest")));
  EXPECT_TRUE(after.jobs.empty());  // a freed job leaves the manifest
  ReopenManager();  // waits for the read in flight
  EXPECT_EQ(arena_->Stats().used_bytes, 0u);
}

}  // namespace
}  // namespace spill::storage
