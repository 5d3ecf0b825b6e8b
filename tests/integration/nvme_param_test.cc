// ZeRO-Infinity parameter offload against a real spilld with a real NVMe
// tier (files under $SPILL_TEST_NVME_DIR, else /var/tmp; skipped without
// O_DIRECT): the job's offload budgets travel with OpenSession and govern
// eviction; conflicting budgets are refused; an optimizer group over
// NVMe-homed parameters steps like one over pinned parameters, and the
// client reads the stepped values back after they were evicted.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "spill/client.h"
#include "tests/integration/metric_value.h"
#include "tests/integration/spilld_process.h"

namespace spill::testing {
namespace {

using client::DType;
using client::ObjectHome;
using client::ObjectInfo;
using client::ObjectKind;
using client::OffloadBudget;
using client::Session;
using std::chrono::seconds;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kN = 64 * kKiB;  // bf16 elements: 128 KiB per object
constexpr uint64_t kBytes = 2 * kN;
constexpr int kMembers = 2;

class NvmeParamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::string> dir = MakeNvmeScratchDir("spill-nvparam-it");
    if (absl::IsFailedPrecondition(dir.status())) GTEST_SKIP() << dir.status().message();
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = *dir;
    std::filesystem::create_directories(dir_ + "/nvme");
    auto d = SpilldProcess::Start({"--pinned-bytes=16MiB", "--segment-bytes=4MiB",
                                   "--nvme-dirs=" + dir_ + "/nvme", "--nvme-capacity=256MiB",
                                   "--job-grace=2m", "--optim-threads=2",
                                   "--metrics-address=127.0.0.1:0"});
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }
  void TearDown() override {
    if (daemon_) {
      EXPECT_EQ(daemon_->Stop(), 0) << daemon_->output();
    }
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  absl::StatusOr<std::unique_ptr<Session>> Open(const std::string& job, int rank, int world,
                                                std::optional<OffloadBudget> param) {
    client::SessionOptions options;
    options.socket_path = daemon_->socket_path();
    options.job_id = job;
    options.rank = rank;
    options.world_size = world;
    options.timeout = seconds(60);
    options.param_budget = param;
    return Session::Open(options);
  }

  ObjectInfo Register(Session& s, const std::string& name, ObjectKind kind, ObjectHome home) {
    auto obj = s.Register(name, kind, DType::kBFloat16, kN, home);
    EXPECT_TRUE(obj.ok()) << obj.status();
    return obj.value_or(ObjectInfo{});
  }

  // Acquire for write, copy bytes in, write back, release.
  void WriteNvme(Session& s, uint64_t id, const std::vector<uint8_t>& bytes) {
    auto acquire = s.Acquire(id, /*for_write=*/true);
    ASSERT_TRUE(acquire->Wait(seconds(30)).ok()) << acquire->status();
    auto span = s.Bytes(acquire->object());
    ASSERT_TRUE(span.ok()) << span.status();
    std::memcpy(span->data(), bytes.data(), bytes.size());
    ASSERT_TRUE(s.WriteBack(id, 0)->Wait(seconds(30)).ok());
    ASSERT_TRUE(s.Release(id)->Wait(seconds(30)).ok());
  }

  // Acquire (reading from NVMe if evicted), copy out, release.
  std::vector<uint8_t> ReadNvme(Session& s, uint64_t id) {
    auto acquire = s.Acquire(id);
    EXPECT_TRUE(acquire->Wait(seconds(30)).ok()) << acquire->status();
    if (!acquire->status().ok()) return {};
    auto span = s.Bytes(acquire->object());
    EXPECT_TRUE(span.ok()) << span.status();
    std::vector<uint8_t> out(span->begin(), span->end());
    EXPECT_TRUE(s.Release(id)->Wait(seconds(30)).ok());
    return out;
  }

  std::string dir_;
  std::unique_ptr<SpilldProcess> daemon_;
};

TEST_F(NvmeParamTest, BudgetsReachSpilldAndGovernEviction) {
  const OffloadBudget budget{4, kBytes, 2 * kBytes};
  auto a = Open("budgeted", 0, 2, budget);
  ASSERT_TRUE(a.ok()) << a.status();
  // Shown in the jobs listing.
  auto jobs = daemon_->Jobs();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_EQ(jobs->jobs_size(), 1);
  const auto& job = jobs->jobs(0);
  ASSERT_TRUE(job.has_param_budget());
  EXPECT_EQ(job.param_budget().buffer_count(), 4u);
  EXPECT_EQ(job.param_budget().buffer_size(), kBytes);
  EXPECT_EQ(job.param_budget().max_in_cpu(), 2 * kBytes);
  EXPECT_FALSE(job.has_optimizer_budget());
  // Another rank with other budgets is refused, naming both; the same or
  // none is fine.
  auto conflict = Open("budgeted", 1, 2, OffloadBudget{8, kBytes, 2 * kBytes});
  ASSERT_EQ(conflict.status().code(), absl::StatusCode::kFailedPrecondition) << conflict.status();
  EXPECT_NE(conflict.status().message().find("buffer_count=4"), std::string::npos);
  EXPECT_NE(conflict.status().message().find("buffer_count=8"), std::string::npos);
  auto b = Open("budgeted", 1, 2, budget);
  ASSERT_TRUE(b.ok()) << b.status();
  // buffer_size bounds the objects.
  auto big = (*a)->Register("big", ObjectKind::kParamShard, DType::kBFloat16, 2 * kN,
                            ObjectHome::kNvme);
  ASSERT_EQ(big.status().code(), absl::StatusCode::kInvalidArgument) << big.status();
  EXPECT_NE(big.status().message().find("buffer_size"), std::string::npos) << big.status();
  // max_in_cpu holds two of four objects, though the pinned pool has room:
  // writing them evicts; the same writes in a job without budgets do not.
  auto free_job = Open("unbudgeted", 0, 1, std::nullopt);
  ASSERT_TRUE(free_job.ok()) << free_job.status();
  std::vector<uint8_t> bytes(kBytes, 0x5a);
  auto evictions_for = [&](Session& s) {
    const double before = MetricValue(*daemon_, "spill_tiering_evictions_total");
    for (int i = 0; i < 4; ++i) {
      ObjectInfo o = Register(s, "w" + std::to_string(i), ObjectKind::kParamShard,
                              ObjectHome::kNvme);
      WriteNvme(s, o.object_id, bytes);
    }
    EXPECT_TRUE(s.Flush().ok());
    return MetricValue(*daemon_, "spill_tiering_evictions_total") - before;
  };
  EXPECT_EQ(evictions_for(**free_job), 0);
  EXPECT_GE(evictions_for(**a), 2);
}

TEST_F(NvmeParamTest, BadBudgetsAreRefusedByField) {
  // Checked by the library before connecting.
  auto zero = Open("bad", 0, 1, OffloadBudget{0, kBytes, kBytes});
  ASSERT_EQ(zero.status().code(), absl::StatusCode::kInvalidArgument) << zero.status();
  EXPECT_NE(zero.status().message().find("param_budget.buffer_count"), std::string::npos);
  // Checked by spilld: a buffer larger than its 16 MiB pinned pool.
  auto huge = Open("bad", 0, 1, OffloadBudget{2, 64ull << 20, 64ull << 20});
  ASSERT_EQ(huge.status().code(), absl::StatusCode::kInvalidArgument) << huge.status();
  EXPECT_NE(huge.status().message().find("param_budget.buffer_size"), std::string::npos);
  auto jobs = daemon_->Jobs();
  ASSERT_TRUE(jobs.ok());
  EXPECT_EQ(jobs->jobs_size(), 0);
  // A spilld without an NVMe tier refuses budgets rather than ignore them.
  auto plain = SpilldProcess::Start({"--pinned-bytes=16MiB", "--segment-bytes=4MiB"});
  ASSERT_TRUE(plain.ok()) << plain.status();
  client::SessionOptions options;
  options.socket_path = (*plain)->socket_path();
  options.job_id = "j";
  options.param_budget = OffloadBudget{2, kBytes, kBytes};
  auto refused = Session::Open(options);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_NE(refused.status().message().find("--nvme-dirs"), std::string::npos);
  options.param_budget.reset();
  EXPECT_TRUE(Session::Open(options).ok());
  EXPECT_EQ((*plain)->Stop(), 0);
}

uint16_t ToBF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<uint16_t>(bits >> 16);
}

// Two groups: over pinned and over NVMe-homed parameters with the same
// values and gradients. The budget holds one group's parameters; two
// fillers push them out between steps, so every step and every read-back
// goes through NVMe.
TEST_F(NvmeParamTest, GroupOverNvmeParamsStepsAndTheClientReadsItBack) {
  auto opened = Open("train", 0, 1, OffloadBudget{4, kBytes, kMembers * kBytes});
  ASSERT_TRUE(opened.ok()) << opened.status();
  Session& s = **opened;
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0, 1);
  ObjectInfo params[2][kMembers], grads[2][kMembers], fillers[kMembers];
  for (int m = 0; m < kMembers; ++m) {
    std::vector<uint8_t> init(kBytes);
    for (uint64_t i = 0; i < kN; ++i) {
      const uint16_t b = ToBF16(dist(rng));
      std::memcpy(init.data() + 2 * i, &b, 2);
    }
    for (int g = 0; g < 2; ++g) {
      const std::string name = std::to_string(g) + "." + std::to_string(m);
      params[g][m] = Register(s, "p" + name, ObjectKind::kParamShard,
                              g == 0 ? ObjectHome::kPinned : ObjectHome::kNvme);
      grads[g][m] = *s.Acquire(Register(s, "g" + name, ObjectKind::kGradShard,
                                        ObjectHome::kPinned).object_id)->Get(seconds(10));
    }
    params[0][m] = *s.Acquire(params[0][m].object_id)->Get(seconds(10));
    std::memcpy(s.Bytes(params[0][m])->data(), init.data(), kBytes);
    WriteNvme(s, params[1][m].object_id, init);
    fillers[m] = Register(s, "filler" + std::to_string(m), ObjectKind::kParamShard,
                          ObjectHome::kNvme);
  }
  uint64_t group_ids[2];
  for (int g = 0; g < 2; ++g) {
    client::GroupSpec spec;
    spec.name = g == 0 ? "pinned" : "nvme";
    spec.params.weight_decay = 0.01f;
    for (int m = 0; m < kMembers; ++m) {
      spec.members.push_back({params[g][m].object_id, grads[g][m].object_id});
    }
    auto group = s.CreateGroup(spec);
    ASSERT_TRUE(group.ok()) << group.status();
    group_ids[g] = group->group_id;
  }
  auto evict = [&] {
    std::vector<std::shared_ptr<client::Work>> pins;
    for (const ObjectInfo& f : fillers) pins.push_back(s.Acquire(f.object_id));
    for (auto& w : pins) ASSERT_TRUE(w->Wait(seconds(30)).ok()) << w->status();
    for (const ObjectInfo& f : fillers) ASSERT_TRUE(s.Release(f.object_id)->Wait(seconds(30)).ok());
  };
  const double evictions = MetricValue(*daemon_, "spill_tiering_evictions_total");
  const double reads = MetricValue(*daemon_, "spill_tiering_reads_total");
  std::normal_distribution<float> gdist(0, 0.1f);
  for (uint64_t step = 1; step <= 3; ++step) {
    evict();  // The step reads the parameters from NVMe.
    for (int m = 0; m < kMembers; ++m) {
      auto g0 = *s.Data<uint16_t>(grads[0][m]);
      auto g1 = *s.Data<uint16_t>(grads[1][m]);
      for (uint64_t i = 0; i < kN; ++i) g0[i] = g1[i] = ToBF16(gdist(rng));
      for (int g = 0; g < 2; ++g) {
        auto ready = s.GradReady(group_ids[g], grads[g][m].object_id, step, 0);
        ASSERT_TRUE(ready->Wait(seconds(30)).ok()) << ready->status();
      }
    }
    for (int g = 0; g < 2; ++g) {
      auto work = s.OptimizerStep(group_ids[g], step, 1e-2f, 1.0f, false);
      ASSERT_TRUE(work->Wait(seconds(60)).ok()) << work->status();
      EXPECT_TRUE(work->step_outcome().applied);
    }
    evict();  // The client reads what spilld wrote back to NVMe.
    for (int m = 0; m < kMembers; ++m) {
      auto pinned = s.Bytes(params[0][m]);
      std::vector<uint8_t> want(pinned->begin(), pinned->end());
      EXPECT_EQ(ReadNvme(s, params[1][m].object_id), want) << "step " << step << " member " << m;
    }
  }
  auto list = s.List();
  ASSERT_TRUE(list.ok());
  for (const ObjectInfo& o : *list) {
    if (o.object_id == params[1][0].object_id || o.object_id == params[1][1].object_id) {
      EXPECT_EQ(o.version, 3u) << o.name;  // The step number, as after a client's write-back.
    }
  }
  // Each member evicted and read back twice per step, at the least.
  EXPECT_GE(MetricValue(*daemon_, "spill_tiering_evictions_total") - evictions, 6 * kMembers);
  EXPECT_GE(MetricValue(*daemon_, "spill_tiering_reads_total") - reads, 6 * kMembers);
  // A resent step is answered again and not applied.
  auto again = s.OptimizerStep(group_ids[1], 3, 1e-2f, 1.0f, false);
  ASSERT_TRUE(again->Wait(seconds(30)).ok()) << again->status();
  EXPECT_TRUE(again->step_outcome().repeated);
  EXPECT_EQ(ReadNvme(s, params[1][0].object_id),
            std::vector<uint8_t>(s.Bytes(params[0][0])->begin(), s.Bytes(params[0][0])->end()));
}

}  // namespace
}  // namespace spill::testing
