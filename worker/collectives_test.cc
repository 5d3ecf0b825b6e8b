// Gloo collectives between two real processes on localhost: the test spawns
// this binary twice with torchrun's variables set; each child checks every
// collective's result and exits 0 only if all matched.
#include <ATen/ATen.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "worker/collectives.h"
#include "worker/testing/free_port.h"

extern char** environ;

namespace spill::worker {
namespace {

constexpr std::chrono::seconds kWait(60);

#define CHILD_CHECK(cond, msg)                                              \
  do {                                                                      \
    if (!(cond)) {                                                          \
      std::cerr << "rank " << rank << ": " << msg << " (" #cond ")\n";       \
      return 1;                                                             \
    }                                                                       \
  } while (0)

int ChildMain() {
  absl::StatusOr<RendezvousInfo> info = RendezvousFromEnv();
  if (!info.ok()) {
    std::cerr << info.status() << "\n";
    return 1;
  }
  const int rank = info->rank;
  auto created = CreateGlooCollectives(*info, std::chrono::seconds(30));
  CHILD_CHECK(created.ok(), created.status());
  FaultyCollectives c(std::move(*created));
  const int w = c.world_size();
  CHILD_CHECK(c.backend() == "fake(gloo)", c.backend());

  // AllGather: rank r contributes r+1 four times.
  at::Tensor shard = at::full({4}, rank + 1.0f);
  at::Tensor full = at::empty({4 * w});
  absl::Status s = c.AllGather(full, shard)->Wait(kWait);
  CHILD_CHECK(s.ok(), s);
  for (int r = 0; r < w; ++r) {
    CHILD_CHECK(full.slice(0, 4 * r, 4 * r + 4).eq(r + 1.0f).all().item<bool>(), "all-gather");
  }

  // ReduceScatter (sum): input arange(4w) + 100 r.
  at::Tensor input = at::arange(4 * w, at::kFloat) + 100.0f * rank;
  at::Tensor out = at::empty({4});
  s = c.ReduceScatter(out, input, ReduceOp::kSum, std::nullopt)->Wait(kWait);
  CHILD_CHECK(s.ok(), s);
  at::Tensor expect = at::arange(4 * rank, 4 * rank + 4, at::kFloat) * w + 100.0f * (w * (w - 1) / 2);
  CHILD_CHECK(out.equal(expect), "reduce-scatter sum: " << out << " vs " << expect);

  // ReduceScatter (avg) of bf16 values reduced in fp32.
  at::Tensor in16 = (at::arange(4 * w, at::kFloat) + rank).to(at::kBFloat16);
  at::Tensor out16 = at::empty({4}, at::kBFloat16);
  s = c.ReduceScatter(out16, in16, ReduceOp::kAvg, at::kFloat)->Wait(kWait);
  CHILD_CHECK(s.ok(), s);
  at::Tensor expect16 = at::arange(4 * rank, 4 * rank + 4, at::kFloat) + (w - 1) / 2.0f;
  CHILD_CHECK(out16.to(at::kFloat).equal(expect16.to(at::kBFloat16).to(at::kFloat)),
              "reduce-scatter avg bf16/fp32: " << out16);

  // AllReduce sum and avg.
  at::Tensor t = at::full({3}, rank + 1.0f);
  s = c.AllReduce(t, ReduceOp::kSum)->Wait(kWait);
  CHILD_CHECK(s.ok() && t.eq(w * (w + 1) / 2.0f).all().item<bool>(), "all-reduce sum " << t);
  t = at::full({3}, rank + 1.0f);
  s = c.AllReduce(t, ReduceOp::kAvg)->Wait(kWait);
  CHILD_CHECK(s.ok() && t.eq((w + 1) / 2.0f).all().item<bool>(), "all-reduce avg " << t);

  // Broadcast from the last rank.
  at::Tensor b = at::full({5}, rank == w - 1 ? 42.0f : -1.0f);
  s = c.Broadcast(b, w - 1)->Wait(kWait);
  CHILD_CHECK(s.ok() && b.eq(42.0f).all().item<bool>(), "broadcast " << b);
  CHILD_CHECK(c.Broadcast(b, w)->Wait(kWait).code() == absl::StatusCode::kInvalidArgument,
              "broadcast to a bad root");

  // Bad arguments fail locally, nothing is sent (the next collective still
  // pairs up across ranks).
  s = c.AllGather(at::empty({7}), shard)->Wait(kWait);
  CHILD_CHECK(s.code() == absl::StatusCode::kInvalidArgument, s);
  s = c.ReduceScatter(at::empty({4}, at::kDouble), input, ReduceOp::kSum, std::nullopt)
          ->Wait(kWait);
  CHILD_CHECK(s.code() == absl::StatusCode::kInvalidArgument, s);

  // Injected fault: fails on every rank, sends nothing; the next works.
  c.fail_next = 1;
  s = c.AllReduce(t, ReduceOp::kSum)->Wait(kWait);
  CHILD_CHECK(s.code() == absl::StatusCode::kUnavailable, s);
  s = c.Barrier(kWait);
  CHILD_CHECK(s.ok(), s);
  std::cerr << "rank " << rank << ": all collectives matched\n";
  return 0;
}

using testing::FreePort;

pid_t SpawnRank(int rank, int world, int port) {
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  for (std::string kv : {"SPILL_COLLECTIVES_CHILD=1", "MASTER_ADDR=127.0.0.1"}) {
    env_strings.push_back(kv);
  }
  env_strings.push_back("RANK=" + std::to_string(rank));
  env_strings.push_back("LOCAL_RANK=" + std::to_string(rank));
  env_strings.push_back("WORLD_SIZE=" + std::to_string(world));
  env_strings.push_back("MASTER_PORT=" + std::to_string(port));
  std::vector<char*> envp;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  char self[] = "/proc/self/exe";
  char* argv[] = {self, nullptr};
  pid_t pid = -1;
  if (posix_spawn(&pid, self, nullptr, nullptr, argv, envp.data()) != 0) return -1;
  return pid;
}

// The rendezvous port of the multi-process tests: free on every address, and
// outside the kernel's ephemeral range, where another socket's outgoing
// connection could be handed it before rank 0 binds it.
TEST(FreePortTest, IsBindableAndBelowTheEphemeralRange) {
  int low = 0;
  std::ifstream("/proc/sys/net/ipv4/ip_local_port_range") >> low;
  if (low < 11000) GTEST_SKIP() << "the ephemeral range starts at " << low;
  for (int i = 0; i < 20; ++i) {
    const int port = FreePort();
    EXPECT_GE(port, 10000);
    EXPECT_LT(port, low);
    EXPECT_TRUE(testing::PortBindable(port)) << port;
  }
}

TEST(GlooCollectivesTest, TwoProcessesAgreeOnEveryCollective) {
  const int port = FreePort();
  std::vector<pid_t> pids;
  for (int r = 0; r < 2; ++r) {
    pids.push_back(SpawnRank(r, 2, port));
    ASSERT_GT(pids.back(), 0);
  }
  for (pid_t pid : pids) {
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "rank process status " << status;
  }
}

TEST(GlooCollectivesTest, UnreachableStoreIsUnavailable) {
  RendezvousInfo info;
  info.rank = 1;
  info.world_size = 2;
  info.master_port = FreePort();  // Nobody listens there.
  auto c = CreateGlooCollectives(info, std::chrono::milliseconds(1500));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(std::string(c.status().message()).find("127.0.0.1:" + std::to_string(info.master_port)),
            std::string::npos)
      << c.status();
}

TEST(GlooCollectivesTest, SingleRankWorld) {
  RendezvousInfo info;
  info.master_port = FreePort();
  auto c = CreateGlooCollectives(info, std::chrono::seconds(10));
  ASSERT_TRUE(c.ok()) << c.status();
  at::Tensor shard = at::arange(3, at::kFloat), full = at::empty({3});
  ASSERT_TRUE((*c)->AllGather(full, shard)->Wait(kWait).ok());
  EXPECT_TRUE(full.equal(shard));
  EXPECT_TRUE((*c)->Barrier(kWait).ok());
}

}  // namespace
}  // namespace spill::worker

int main(int argc, char** argv) {
  if (std::getenv("SPILL_COLLECTIVES_CHILD") != nullptr) return spill::worker::ChildMain();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
