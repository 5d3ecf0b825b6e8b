// Restart persistence of the tier manager: recovery from the manifest, a
// torn or inconsistent manifest, and a writer killed at random points.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/manifest.h"
#include "storage/test_util.h"
#include "storage/tier_manager.h"
#include "storage/tier_manager_test_util.h"

namespace spill::storage {
namespace {

using ::testing::HasSubstr;
using test_util::kMiB;
using namespace tm_test;  // NOLINT

constexpr uint64_t kKiB = 1024;

// One daemon's worth of storage over fixed directories.
struct Stack {
  std::unique_ptr<PinnedArena> arena;
  std::unique_ptr<NvmeTier> tier;
  std::unique_ptr<TierManager> tm;

  // FailedPrecondition from the NVMe tier means "no O_DIRECT here".
  absl::Status Open(const ScratchDir& dir, std::chrono::milliseconds publish_interval) {
    ArenaOptions ao = test_util::SmallOptions(4, kMiB);
    ao.lock = false;
    SPILL_ASSIGN_OR_RETURN(arena, PinnedArena::Create(ao));
    NvmeOptions no;
    no.dirs = {dir.Sub("nvme0"), dir.Sub("nvme1")};  // striped over two
    no.capacity_bytes = 32 * kMiB;
    no.block_size = 64 * kKiB;
    no.queue_depth = 16;
    SPILL_ASSIGN_OR_RETURN(tier, NvmeTier::Open(no));
    TierManagerOptions to;
    to.manifest_dir = dir.Sub("manifest");
    to.publish_interval = publish_interval;
    SPILL_ASSIGN_OR_RETURN(tm, TierManager::Create(arena.get(), tier.get(), to));
    return absl::OkStatus();
  }
  void Close() {
    tm.reset();
    tier.reset();
    arena.reset();
  }
};

ObjectSpec NvmeSpec(uint64_t id, uint64_t bytes) {
  ObjectSpec spec;
  spec.id = id;
  spec.name = "w" + std::to_string(id);
  spec.kind = 3;
  spec.dtype = 2;
  spec.num_elements = bytes / 2;
  spec.bytes = bytes;
  spec.home = Home::kNvme;
  return spec;
}

// Object sizes: not multiples of the block size, some over two blocks.
uint64_t SizeOf(uint64_t id) { return 40 * kKiB + id * 52 * kKiB + 4 * kKiB * (id % 3) + 100; }

class TierRecoveryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    absl::Status s = stack_.Open(dir_, std::chrono::milliseconds(5));
    if (absl::IsFailedPrecondition(s)) GTEST_SKIP() << "no O_DIRECT file system here: " << s;
    ASSERT_TRUE(s.ok()) << s;
  }
  void Reopen() {
    stack_.Close();
    absl::Status s = stack_.Open(dir_, std::chrono::milliseconds(5));
    ASSERT_TRUE(s.ok()) << s;
  }
  ScratchDir dir_;
  Stack stack_;
};

TEST_F(TierRecoveryTest, FlushedObjectsSurviveARestart) {
  TierManager& tm = *stack_.tm;
  JobOptions options;
  options.uid = 1234;
  ASSERT_TRUE(tm.RegisterJob("train", options).ok());
  for (uint64_t id = 0; id < 5; ++id) {
    ASSERT_TRUE(tm.CreateObject("train", NvmeSpec(id, SizeOf(id))).ok());
    ASSERT_TRUE(WriteObject(tm, *stack_.arena, "train", id, 10 + id, false).ok());
  }
  ASSERT_TRUE(tm.CreateObject("train", NvmeSpec(9, 4096)).ok());  // never written
  ASSERT_TRUE(FlushSync(tm).ok());
  Reopen();
  absl::StatusOr<std::vector<RecoveredJob>> jobs = stack_.tm->Recover();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_EQ(jobs->size(), 1u);
  const RecoveredJob& job = (*jobs)[0];
  EXPECT_EQ(job.job_id, "train");
  EXPECT_EQ(job.uid, 1234u);
  ASSERT_EQ(job.objects.size(), 5u);  // the unwritten object had nothing durable
  JobOptions reattached;
  reattached.uid = 1234;
  reattached.arena_owner = "train#2";  // the new instance's pinned memory
  ASSERT_TRUE(stack_.tm->SetJobOptions("train", reattached).ok());
  for (size_t i = 0; i < job.objects.size(); ++i) {
    const uint64_t id = job.objects[i].id;
    EXPECT_EQ(job.versions[i], 10 + id);
    EXPECT_EQ(job.objects[i].name, "w" + std::to_string(id));
    EXPECT_EQ(job.objects[i].bytes, SizeOf(id));
    absl::StatusOr<ObjectInfo> info = stack_.tm->Describe("train", id);
    ASSERT_TRUE(info.ok());
    EXPECT_FALSE(info->resident);
    EXPECT_TRUE(info->acknowledged);
    ASSERT_TRUE(CheckObject(*stack_.tm, *stack_.arena, "train", id, 10 + id).ok()) << id;
  }
  EXPECT_GT(stack_.arena->JobUsage("train#2").used_bytes, 0u);
  EXPECT_EQ(stack_.arena->JobUsage("train").used_bytes, 0u);
  // It carries on: a new version, published with a newer generation.
  const uint64_t generation = stack_.tm->Stats().manifest_generation;
  ASSERT_TRUE(WriteObject(*stack_.tm, *stack_.arena, "train", 0, 20, true).ok());
  EXPECT_GT(stack_.tm->Stats().manifest_generation, generation);
  EXPECT_EQ(stack_.tm->Recover().status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(TierRecoveryTest, TornManifestIsDataLossAndNothingIsLoaded) {
  ASSERT_TRUE(stack_.tm->RegisterJob("train", {}).ok());
  for (uint64_t id = 0; id < 3; ++id) {
    ASSERT_TRUE(stack_.tm->CreateObject("train", NvmeSpec(id, SizeOf(id))).ok());
    ASSERT_TRUE(WriteObject(*stack_.tm, *stack_.arena, "train", id, 1, true).ok());
  }
  stack_.Close();
  const std::string path = dir_.Sub("manifest") + "/manifest";
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    bytes = ss.str();
  }
  ASSERT_GT(bytes.size(), 40u);
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << bytes.substr(0, bytes.size() / 2);
  }
  ASSERT_TRUE(stack_.Open(dir_, std::chrono::milliseconds(5)).ok());
  absl::StatusOr<std::vector<RecoveredJob>> jobs = stack_.tm->Recover();
  EXPECT_EQ(jobs.status().code(), absl::StatusCode::kDataLoss) << jobs.status();
  EXPECT_TRUE(stack_.tm->Jobs().empty());
  EXPECT_EQ(stack_.tier->Stats().used_bytes, 0u);
}

TEST_F(TierRecoveryTest, OverlappingExtentsAreRejectedAllOrNothing) {
  ASSERT_TRUE(stack_.tm->RegisterJob("train", {}).ok());
  ASSERT_TRUE(stack_.tm->CreateObject("train", NvmeSpec(1, 100 * kKiB)).ok());
  ASSERT_TRUE(WriteObject(*stack_.tm, *stack_.arena, "train", 1, 1, true).ok());
  stack_.Close();
  absl::StatusOr<Manifest> m = LoadManifest(dir_.Sub("manifest"));
  ASSERT_TRUE(m.ok()) << m.status();
  ManifestObject copy = m->jobs[0].objects[0];
  copy.id = 2;  // a second object claiming the same extent
  m->jobs.push_back({.job_id = "other", .uid = 0, .objects = {copy}});
  ASSERT_TRUE(PublishManifest(dir_.Sub("manifest"), *m).ok());
  ASSERT_TRUE(stack_.Open(dir_, std::chrono::milliseconds(5)).ok());
  absl::StatusOr<std::vector<RecoveredJob>> jobs = stack_.tm->Recover();
  EXPECT_FALSE(jobs.ok());
  EXPECT_THAT(jobs.status().message(), HasSubstr("object 2 of job other"));
  EXPECT_TRUE(stack_.tm->Jobs().empty());
  EXPECT_EQ(stack_.tier->Stats().used_bytes, 0u);  // the first adoption was undone
}

// ---- Kill -9 of a writer, many times -------------------------------------

constexpr uint64_t kObjects = 6;
constexpr char kJob[] = "crash";

void Report(int fd, char what, uint64_t id, uint64_t version) {
  char line[64];
  const int n = std::snprintf(line, sizeof(line), "%c %lu %lu\n", what,
                              static_cast<unsigned long>(id), static_cast<unsigned long>(version));
  if (::write(fd, line, n) != n) ::_exit(90);  // lines are below PIPE_BUF: atomic
}

// The child: recovers, then writes new versions and flushes until killed.
// Reports "M id v" before marking version v written and "A id v" once it is
// acknowledged. Exit codes name the step that failed.
int WriterMain(const ScratchDir& dir, int fd, uint64_t seed) {
  Stack stack;
  if (!stack.Open(dir, std::chrono::milliseconds(2)).ok()) return 10;
  TierManager& tm = *stack.tm;
  absl::StatusOr<std::vector<RecoveredJob>> jobs = tm.Recover();
  if (!jobs.ok()) return 11;
  std::map<uint64_t, uint64_t> version;
  for (const RecoveredJob& job : *jobs) {
    for (size_t i = 0; i < job.objects.size(); ++i) version[job.objects[i].id] = job.versions[i];
  }
  if (jobs->empty() && !tm.RegisterJob(kJob, {}).ok()) return 12;
  for (uint64_t id = 0; id < kObjects; ++id) {
    if (!version.contains(id) && !tm.CreateObject(kJob, NvmeSpec(id, SizeOf(id))).ok()) return 13;
  }
  std::mt19937_64 rng(seed);
  for (uint64_t n = 0;; ++n) {
    const uint64_t id = rng() % kObjects;
    const uint64_t v = ++version[id];
    absl::StatusOr<Extent> e = AcquireSync(tm, kJob, id, AcquireMode::kWrite);
    if (!e.ok()) return 14;
    FillPattern(stack.arena->Data(*e), SizeOf(id), id, v);
    Report(fd, 'M', id, v);
    if (!tm.MarkWritten(kJob, id, v, [fd, id, v](absl::Status s) {
          if (s.ok()) Report(fd, 'A', id, v);
        }).ok()) {
      return 15;
    }
    if (!tm.Release(kJob, id).ok()) return 16;
    if (n % 7 == 6 && !FlushSync(tm).ok()) return 17;
  }
}

struct Reports {
  std::map<uint64_t, uint64_t> marked, acked;  // id -> highest version
};

void ReadReports(int fd, Reports& r) {
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) text.append(buf, n);
  std::istringstream in(text);
  char what;
  uint64_t id, v;
  while (in >> what >> id >> v) {
    auto& m = what == 'M' ? r.marked : r.acked;
    m[id] = std::max(m[id], v);
  }
}

// Every acknowledged version (or a newer marked one) is back, byte for byte;
// nothing that was never marked written is present.
void CheckRecovered(const ScratchDir& dir, const Reports& r, int iteration) {
  Stack stack;
  ASSERT_TRUE(stack.Open(dir, std::chrono::milliseconds(5)).ok());
  absl::StatusOr<std::vector<RecoveredJob>> jobs = stack.tm->Recover();
  ASSERT_TRUE(jobs.ok()) << "iteration " << iteration << ": " << jobs.status();
  std::map<uint64_t, uint64_t> recovered;
  for (const RecoveredJob& job : *jobs) {
    ASSERT_EQ(job.job_id, kJob);
    for (size_t i = 0; i < job.objects.size(); ++i) recovered[job.objects[i].id] = job.versions[i];
  }
  for (const auto& [id, v] : r.acked) {
    ASSERT_TRUE(recovered.contains(id)) << "iteration " << iteration << ": acknowledged object "
                                        << id << " v" << v << " is missing";
    EXPECT_GE(recovered[id], v) << "iteration " << iteration << ", object " << id;
  }
  for (const auto& [id, v] : recovered) {
    ASSERT_LT(id, kObjects);
    ASSERT_TRUE(r.marked.contains(id) && v <= r.marked.at(id))
        << "iteration " << iteration << ": object " << id << " v" << v << " was never written";
    absl::Status s = CheckObject(*stack.tm, *stack.arena, kJob, id, v);
    ASSERT_TRUE(s.ok()) << "iteration " << iteration << ": " << s;
  }
}

TEST_F(TierRecoveryTest, KilledWriterLosesNothingAcknowledged) {
  stack_.Close();  // the children and the checks open their own
  Reports reports;
  std::mt19937_64 rng(42);
  constexpr int kIterations = 30;
  for (int it = 0; it < kIterations; ++it) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t pid = test_util::StartChild([&] {
      ::close(fds[0]);
      return WriterMain(dir_, fds[1], 1000 + it);
    });
    ASSERT_GT(pid, 0);
    ::close(fds[1]);
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + rng() % 150));  // the kill point
    ::kill(pid, SIGKILL);
    const int code = test_util::WaitChild(pid);
    ReadReports(fds[0], reports);
    ::close(fds[0]);
    ASSERT_EQ(code, 128 + SIGKILL) << "the writer failed at step " << code;
    CheckRecovered(dir_, reports, it);
    if (HasFatalFailure()) return;
  }
  uint64_t acked = 0, marked = 0;
  for (const auto& [id, v] : reports.acked) acked += v;
  for (const auto& [id, v] : reports.marked) marked += v;
  EXPECT_GT(acked, 0u) << "no write was ever acknowledged: the test proved nothing";
  RecordProperty("versions_written", static_cast<int>(marked));
  RecordProperty("versions_acknowledged", static_cast<int>(acked));
  std::printf("%d kills: %lu versions written, %lu acknowledged\n", kIterations,
              static_cast<unsigned long>(marked), static_cast<unsigned long>(acked));
}

}  // namespace
}  // namespace spill::storage
