// NCCL collectives on the GPUs of this machine (label gpu). Skips when the
// build has no NCCL or no CUDA device is present. With two or more GPUs the
// test runs two ranks as two processes (one GPU each); otherwise one rank.
#include <ATen/ATen.h>
#include <cuda_runtime.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "worker/collectives.h"
#include "worker/testing/free_port.h"

extern char** environ;

namespace spill::worker {
namespace {

constexpr std::chrono::seconds kWait(120);

int GpuCount() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

#define CHILD_CHECK(cond, msg)                                         \
  do {                                                                 \
    if (!(cond)) {                                                     \
      std::cerr << "rank " << rank << ": " << msg << " (" #cond ")\n";  \
      return 1;                                                        \
    }                                                                  \
  } while (0)

int RankMain() {
  auto info = RendezvousFromEnv();
  if (!info.ok()) {
    std::cerr << info.status() << "\n";
    return 1;
  }
  const int rank = info->rank;
  auto c = CreateNcclCollectives(*info, info->local_rank);
  CHILD_CHECK(c.ok(), c.status());
  const int w = (*c)->world_size();
  at::TensorOptions cuda = at::TensorOptions().device(at::kCUDA, info->local_rank);
  at::Tensor shard = at::full({1024}, rank + 1.0f, cuda.dtype(at::kBFloat16));
  at::Tensor full = at::empty({1024 * w}, cuda.dtype(at::kBFloat16));
  cudaDeviceSynchronize();  // inputs were written on the default stream
  absl::Status s = (*c)->AllGather(full, shard)->Wait(kWait);
  CHILD_CHECK(s.ok(), s);
  for (int r = 0; r < w; ++r) {
    CHILD_CHECK(full.slice(0, 1024 * r, 1024 * (r + 1)).eq(r + 1.0f).all().item<bool>(),
                "all-gather");
  }
  // Small integers and halves: exact in bf16, so the average is exact.
  at::Tensor base = at::arange(1024 * w, cuda.dtype(at::kFloat)).remainder(64);
  at::Tensor in = (base + rank).to(at::kBFloat16);
  at::Tensor out = at::empty({1024}, cuda.dtype(at::kBFloat16));
  cudaDeviceSynchronize();
  s = (*c)->ReduceScatter(out, in, ReduceOp::kAvg, at::kFloat)->Wait(kWait);
  CHILD_CHECK(s.ok(), s);
  at::Tensor expect = base.view({w, 1024})[rank] + (w - 1) / 2.0f;
  CHILD_CHECK(out.to(at::kFloat).equal(expect), "reduce-scatter avg");
  at::Tensor t = at::full({8}, rank + 1.0f, cuda.dtype(at::kFloat));
  cudaDeviceSynchronize();
  s = (*c)->AllReduce(t, ReduceOp::kSum)->Wait(kWait);
  CHILD_CHECK(s.ok() && t.eq(w * (w + 1) / 2.0f).all().item<bool>(), "all-reduce");
  s = (*c)->AllGather(full, at::empty({3}, cuda.dtype(at::kBFloat16)))->Wait(kWait);
  CHILD_CHECK(s.code() == absl::StatusCode::kInvalidArgument, s);
  s = (*c)->AllReduce(at::zeros({4}), ReduceOp::kSum)->Wait(kWait);  // CPU tensor
  CHILD_CHECK(s.code() == absl::StatusCode::kInvalidArgument, s);
  CHILD_CHECK((*c)->Barrier(kWait).ok(), "barrier");
  std::cerr << "rank " << rank << ": NCCL collectives matched\n";
  return 0;
}

using testing::FreePort;

TEST(NcclCollectivesTest, RanksAgreeOnEveryCollective) {
  if (!NcclAvailable()) GTEST_SKIP() << "built without NCCL";
  const int gpus = GpuCount();
  if (gpus == 0) GTEST_SKIP() << "no CUDA device present";
  const int world = gpus >= 2 ? 2 : 1;
  const int port = FreePort();
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r) {
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
    env.push_back("SPILL_NCCL_CHILD=1");
    env.push_back("MASTER_ADDR=127.0.0.1");
    env.push_back("MASTER_PORT=" + std::to_string(port));
    env.push_back("RANK=" + std::to_string(r));
    env.push_back("LOCAL_RANK=" + std::to_string(r));
    env.push_back("WORLD_SIZE=" + std::to_string(world));
    std::vector<char*> envp;
    for (std::string& s : env) envp.push_back(s.data());
    envp.push_back(nullptr);
    char self[] = "/proc/self/exe";
    char* argv[] = {self, nullptr};
    pid_t pid = -1;
    ASSERT_EQ(posix_spawn(&pid, self, nullptr, nullptr, argv, envp.data()), 0);
    pids.push_back(pid);
  }
  for (pid_t pid : pids) {
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "rank status " << status;
  }
}

TEST(NcclCollectivesTest, NoDeviceIsFailedPrecondition) {
  if (!NcclAvailable()) GTEST_SKIP() << "built without NCCL";
  if (GpuCount() > 0) GTEST_SKIP() << "a CUDA device is present";
  RendezvousInfo info;
  auto c = CreateNcclCollectives(info, 0);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace spill::worker

int main(int argc, char** argv) {
  if (std::getenv("SPILL_NCCL_CHILD") != nullptr) return spill::worker::RankMain();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
