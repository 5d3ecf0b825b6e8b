// SIGKILL a process that publishes manifests in a loop, many times; after
// each kill the directory holds a complete manifest (older or newer), never
// a torn one.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "storage/manifest.h"
#include "storage/nvme_test_util.h"
#include "storage/test_util.h"

namespace spill::storage {
namespace {

// The content of generation g: big enough that a write spans several pages.
Manifest Generation(uint64_t g) {
  Manifest m{g, {}};
  ManifestJob job{"job", 7, {}};
  for (uint64_t o = 0; o < 200; ++o) {
    ManifestObject obj;
    obj.id = o;
    obj.name = "param." + std::to_string(o);
    obj.version = g;
    obj.bytes = (g + o) * 4096;
    obj.extent = {obj.bytes, {{0, o << 20, 1 << 20}}};
    obj.crcs = {static_cast<uint32_t>(g * 31 + o)};
    job.objects.push_back(obj);
  }
  m.jobs.push_back(job);
  return m;
}

TEST(ManifestCrashTest, KillDuringPublishNeverLeavesATornManifest) {
  test_util::TempDir tmp;
  const int kKills = std::getenv("SPILL_CRASH_ITERATIONS") ? std::atoi(std::getenv("SPILL_CRASH_ITERATIONS")) : 60;
  std::mt19937 rng(12345);
  ASSERT_TRUE(PublishManifest(tmp.path(), Generation(1)).ok());
  uint64_t last = 1;
  uint64_t next = 2;
  int torn_windows = 0;  // kills that landed while a publish was in progress
  for (int i = 0; i < kKills; ++i) {
    const uint64_t start = next;
    const pid_t pid = test_util::StartChild([&]() -> int {
      for (uint64_t g = start;; ++g) {
        if (!PublishManifest(tmp.path(), Generation(g)).ok()) return 3;
      }
    });
    ASSERT_GT(pid, 0);
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 100000));
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    ASSERT_EQ(test_util::WaitChild(pid), 128 + SIGKILL);
    absl::StatusOr<Manifest> m = LoadManifest(tmp.path());
    ASSERT_TRUE(m.ok()) << "after kill " << i << ": " << m.status();
    for (const auto& e : std::filesystem::directory_iterator(tmp.path())) {
      if (e.path().filename().string().rfind("manifest.tmp.", 0) == 0) ++torn_windows;
    }
    ASSERT_GE(m->generation, last) << "went back in time";
    ASSERT_EQ(*m, Generation(m->generation)) << "content does not match its generation";
    last = m->generation;
    next = last + 1;
  }
  // The child got to publish at all (the kills did not all come too early).
  EXPECT_GT(last, 1u);
  std::printf("%d kills, last generation %llu, %d kills left a temporary file behind\n", kKills,
              static_cast<unsigned long long>(last), torn_windows);
}

}  // namespace
}  // namespace spill::storage
