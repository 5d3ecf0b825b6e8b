// The CPU optimizer through libspill_client against a real spilld: two ranks
// with gradient accumulation and clipping by the global norm, the result
// checked bit for bit against the same kernels run in this process; a worker
// that reconnects and resends a step; bad requests on the wire.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "server/optim/optimizer.h"
#include "spill/client.h"
#include "tests/integration/spilld_process.h"

namespace spill::testing {
namespace {

using client::DType;
using client::ObjectInfo;
using client::ObjectKind;
using client::Session;
using std::chrono::seconds;

constexpr uint32_t kGas = 2;

std::unique_ptr<Session> OpenOrDie(const std::string& socket, int rank, int world) {
  client::SessionOptions options;
  options.socket_path = socket;
  options.job_id = "train";
  options.rank = rank;
  options.world_size = world;
  auto s = Session::Open(options);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(*s) : nullptr;
}

uint16_t ToBF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

// One rank's shard: bf16 parameter and gradient in spilld, and the same
// state kept locally to compute what spilld must produce.
struct Shard {
  ObjectInfo param, grad;
  std::vector<uint16_t> local_param;
  std::vector<float> master, m, v, accum;
};

class OptimizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = SpilldProcess::Start({"--job-grace=30s", "--optim-threads=2"});
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }
  void TearDown() override {
    if (daemon_) {
      EXPECT_EQ(daemon_->Stop(), 0) << daemon_->output();
    }
  }

  Shard MakeShard(Session& s, const std::string& name, uint64_t n) {
    Shard shard;
    shard.param = *s.Register(name + ".p", ObjectKind::kParamShard, DType::kBFloat16, n);
    shard.grad = *s.Register(name + ".g", ObjectKind::kGradShard, DType::kBFloat16, n);
    shard.param = *s.Acquire(shard.param.object_id)->Get(seconds(10));
    shard.grad = *s.Acquire(shard.grad.object_id)->Get(seconds(10));
    auto p = *s.Data<uint16_t>(shard.param);
    std::normal_distribution<float> dist(0, 1);
    shard.local_param.resize(n);
    shard.master.resize(n);
    for (uint64_t i = 0; i < n; ++i) {
      p[i] = shard.local_param[i] = ToBF16(dist(rng_));
      uint32_t bits = uint32_t{p[i]} << 16;
      std::memcpy(&shard.master[i], &bits, 4);
    }
    shard.m.assign(n, 0);
    shard.v.assign(n, 0);
    shard.accum.assign(n, 0);
    return shard;
  }

  client::GroupSpec Spec(const std::string& name, const Shard& shard) {
    client::GroupSpec spec;
    spec.name = name;
    spec.params.type = client::OptimizerType::kAdamW;
    spec.params.lr = 1e-3f;
    spec.params.weight_decay = 0.1f;
    spec.gradient_accumulation_steps = kGas;
    spec.members.push_back({shard.param.object_id, shard.grad.object_id});
    return spec;
  }

  // A session (rank 0 of 1) and a one-member group over a fresh shard.
  void OpenOneGroup(const std::string& name, uint64_t n, std::unique_ptr<Session>* s,
                    Shard* shard, uint64_t* group_id) {
    *s = OpenOrDie(daemon_->socket_path(), 0, 1);
    ASSERT_NE(*s, nullptr);
    *shard = MakeShard(**s, name, n);
    auto g = (*s)->CreateGroup(Spec(name, *shard));
    ASSERT_TRUE(g.ok()) << g.status();
    *group_id = g->group_id;
  }

  // Every micro-step of `step`: a fresh gradient written and announced.
  void ReadyAllMicroSteps(Session& s, Shard& shard, uint64_t group_id, uint64_t step) {
    for (uint32_t k = 0; k < kGas; ++k) {
      WriteGrad(s, shard, k);
      auto ready = s.GradReady(group_id, shard.grad.object_id, step, k);
      ASSERT_TRUE(ready->Wait(seconds(30)).ok()) << ready->status();
    }
  }

  // Writes a fresh random gradient for micro-step k into spilld and adds it
  // to the local accumulator.
  void WriteGrad(Session& s, Shard& shard, uint32_t k) {
    auto g = *s.Data<uint16_t>(shard.grad);
    std::normal_distribution<float> dist(0, 0.05f);
    optim::Executor exec(1);
    std::vector<uint16_t> local(g.size());
    for (size_t i = 0; i < g.size(); ++i) g[i] = local[i] = ToBF16(dist(rng_));
    ASSERT_TRUE(optim::Accumulate(spill::DType::kBFloat16, local.data(), shard.accum.data(),
                                  local.size(), k == 0, 1.0f, exec)
                    .ok());
  }

  void LocalStep(Shard& shard, uint64_t t, float lr, float grad_scale) {
    optim::Hyper h;
    h.algo = optim::Algo::kAdamW;
    h.lr = lr;
    h.weight_decay = 0.1f;
    optim::ShardView view;
    view.grad_dtype = spill::DType::kFloat32;
    view.grad = shard.accum.data();
    view.master = shard.master.data();
    view.state[0] = shard.m.data();
    view.state[1] = shard.v.data();
    view.param_dtype = spill::DType::kBFloat16;
    view.param = shard.local_param.data();
    view.n = shard.master.size();
    optim::Executor exec(1);
    ASSERT_TRUE(optim::Step(h, {t, grad_scale}, view, exec).ok());
  }

  std::mt19937 rng_{11};
  std::unique_ptr<SpilldProcess> daemon_;
};

TEST_F(OptimizerTest, TwoRanksAccumulateClipAndStepLikeTheLocalKernels) {
  const int world = 2;
  std::vector<std::unique_ptr<Session>> sessions;
  std::vector<Shard> shards;
  std::vector<client::GroupInfo> groups;
  for (int r = 0; r < world; ++r) {
    sessions.push_back(OpenOrDie(daemon_->socket_path(), r, world));
    ASSERT_NE(sessions.back(), nullptr);
    shards.push_back(MakeShard(*sessions[r], "layer0.r" + std::to_string(r), 5000 + 37 * r));
    auto g = sessions[r]->CreateGroup(Spec("layer0.r" + std::to_string(r), shards[r]));
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_EQ(g->members[0].state_object_ids.size(), 2u);
    EXPECT_NE(g->members[0].accumulator_object_id, 0u);
    groups.push_back(*g);
  }
  const float max_norm = 0.5f, loss_scale = 1.0f;
  for (uint64_t step = 1; step <= 4; ++step) {
    double total = 0;
    for (uint32_t k = 0; k < kGas; ++k) {
      std::vector<std::shared_ptr<client::Work>> ready;
      for (int r = 0; r < world; ++r) {
        WriteGrad(*sessions[r], shards[r], k);
        ready.push_back(sessions[r]->GradReady(groups[r].group_id, shards[r].grad.object_id,
                                               step, k));
      }
      for (int r = 0; r < world; ++r) {
        ASSERT_TRUE(ready[r]->Wait(seconds(30)).ok()) << ready[r]->status();
        if (k + 1 == kGas) total += ready[r]->sum_squares();  // The "all-reduce".
      }
    }
    double expected_total = 0;
    for (const Shard& s : shards) {
      for (float a : s.accum) expected_total += static_cast<double>(a) * a;
    }
    EXPECT_NEAR(total, expected_total, expected_total * 1e-9);
    const float norm = static_cast<float>(std::sqrt(total)) / loss_scale;
    const float clip = std::min(1.0f, max_norm / (norm + 1e-6f));
    const float lr = 1e-3f * static_cast<float>(step);  // A scheduler in the worker.
    std::vector<std::shared_ptr<client::Work>> steps;
    for (int r = 0; r < world; ++r) {
      steps.push_back(
          sessions[r]->OptimizerStep(groups[r].group_id, step, lr, clip / loss_scale, false));
      LocalStep(shards[r], step, lr, clip / loss_scale);
    }
    for (int r = 0; r < world; ++r) {
      ASSERT_TRUE(steps[r]->Wait(seconds(30)).ok()) << steps[r]->status();
      client::StepOutcome outcome = steps[r]->step_outcome();
      EXPECT_TRUE(outcome.applied);
      EXPECT_EQ(outcome.step, step);
      EXPECT_EQ(outcome.applied_steps, step);
      auto p = *sessions[r]->Data<uint16_t>(shards[r].param);
      ASSERT_TRUE(std::equal(p.begin(), p.end(), shards[r].local_param.begin()))
          << "rank " << r << " step " << step;
    }
  }
  for (auto& s : sessions) EXPECT_TRUE(s->Close().ok());
}

TEST_F(OptimizerTest, AReconnectingWorkerFindsItsGroupAndAStepIsAppliedOnce) {
  std::unique_ptr<Session> s;
  Shard shard;
  uint64_t group_id = 0;
  ASSERT_NO_FATAL_FAILURE(OpenOneGroup("w", 777, &s, &shard, &group_id));
  ASSERT_NO_FATAL_FAILURE(ReadyAllMicroSteps(*s, shard, group_id, 1));
  ASSERT_TRUE(s->OptimizerStep(group_id, 1, 1e-3f, 1.0f, false)->Wait(seconds(30)).ok());
  LocalStep(shard, 1, 1e-3f, 1.0f);
  ASSERT_TRUE(s->Close().ok());

  auto again = OpenOrDie(daemon_->socket_path(), 0, 1);
  ASSERT_NE(again, nullptr);
  EXPECT_TRUE(again->job_existed());
  auto found = again->CreateGroup(Spec("w", shard));
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_TRUE(found->existed);
  EXPECT_EQ(found->group_id, group_id);
  EXPECT_EQ(found->last_step, 1u);
  // The resent step 1 is answered, not applied again.
  auto resent = again->OptimizerStep(group_id, 1, 1e-3f, 1.0f, false);
  ASSERT_TRUE(resent->Wait(seconds(30)).ok()) << resent->status();
  EXPECT_TRUE(resent->step_outcome().repeated);
  shard.param = *again->Acquire(shard.param.object_id)->Get(seconds(10));
  auto p = *again->Data<uint16_t>(shard.param);
  EXPECT_TRUE(std::equal(p.begin(), p.end(), shard.local_param.begin()));
  auto listed = again->ListGroups();
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].applied_steps, 1u);
  EXPECT_TRUE(again->Close().ok());
}

// Through a real spilld: a speculative step committed with the scale it ran
// with is the final step bit for bit (the local reference), and the group
// refuses the next step's gradient until the commit.
TEST_F(OptimizerTest, ASpeculativeStepAndItsCommitThroughSpilld) {
  std::unique_ptr<Session> s;
  Shard shard;
  uint64_t group_id = 0;
  ASSERT_NO_FATAL_FAILURE(OpenOneGroup("spec", 5000, &s, &shard, &group_id));
  for (uint64_t step = 1; step <= 2; ++step) {
    ASSERT_NO_FATAL_FAILURE(ReadyAllMicroSteps(*s, shard, group_id, step));
    auto ran = s->SpeculativeOptimizerStep(group_id, step, 1e-3f, 1.0f);
    ASSERT_TRUE(ran->Wait(seconds(30)).ok()) << ran->status();
    EXPECT_TRUE(ran->step_outcome().speculative);
    EXPECT_TRUE(ran->step_outcome().applied);
    auto held = s->GradReady(group_id, shard.grad.object_id, step + 1, 0);
    const absl::Status refused = held->Wait(seconds(30));
    EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(refused.message().find("is speculative: commit it before"), std::string::npos)
        << refused;
    auto commit = s->CommitOptimizerStep(group_id, step, 1.0f);
    ASSERT_TRUE(commit->Wait(seconds(30)).ok()) << commit->status();
    EXPECT_FALSE(commit->step_outcome().speculative);
    EXPECT_FALSE(commit->step_outcome().rescaled);
    EXPECT_EQ(commit->step_outcome().applied_steps, step);
    LocalStep(shard, step, 1e-3f, 1.0f);
    auto p = *s->Data<uint16_t>(shard.param);
    ASSERT_TRUE(std::equal(p.begin(), p.end(), shard.local_param.begin())) << "step " << step;
  }
  // A commit of a step that never ran speculatively is refused.
  auto stray = s->CommitOptimizerStep(group_id, 3, 0.5f);
  EXPECT_EQ(stray->Wait(seconds(30)).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(s->Close().ok());
}

TEST_F(OptimizerTest, BadOptimizerRequestsGetClearErrors) {
  auto s = OpenOrDie(daemon_->socket_path(), 0, 1);
  ASSERT_NE(s, nullptr);
  Shard shard = MakeShard(*s, "x", 100);
  client::GroupSpec spec = Spec("x", shard);
  spec.params.type = static_cast<client::OptimizerType>(42);
  auto bad_type = s->CreateGroup(spec);
  EXPECT_EQ(bad_type.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_type.status().message().find("optimizer type 42"), std::string::npos);
  spec = Spec("x", shard);
  spec.params.beta1 = 1.5f;
  auto bad_beta = s->CreateGroup(spec);
  EXPECT_EQ(bad_beta.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_beta.status().message().find("beta1"), std::string::npos) << bad_beta.status();
  auto unknown = s->OptimizerStep(12345, 1, 1e-3f, 1.0f, false);
  EXPECT_EQ(unknown->Wait(seconds(30)).code(), absl::StatusCode::kNotFound);
  auto unknown_grad = s->GradReady(12345, shard.grad.object_id, 1, 0);
  EXPECT_EQ(unknown_grad->Wait(seconds(30)).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s->DropGroup(12345).code(), absl::StatusCode::kNotFound);
  // A worker's own sum of squares is for groups without accumulation.
  spec = Spec("x", shard);
  ASSERT_GT(spec.gradient_accumulation_steps, 1u);
  auto accumulating = s->CreateGroup(spec);
  ASSERT_TRUE(accumulating.ok()) << accumulating.status();
  auto summed = s->GradReadySummed(accumulating->group_id, shard.grad.object_id, 1, 2.5);
  const absl::Status refused = summed->Wait(seconds(30));
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("accumulates"), std::string::npos) << refused;
  Shard single = MakeShard(*s, "y", 100);
  spec = Spec("y", single);
  spec.gradient_accumulation_steps = 1;
  auto plain = s->CreateGroup(spec);
  ASSERT_TRUE(plain.ok()) << plain.status();
  auto echoed = s->GradReadySummed(plain->group_id, single.grad.object_id, 1, 2.5);
  ASSERT_TRUE(echoed->Wait(seconds(30)).ok());
  EXPECT_EQ(echoed->sum_squares(), 2.5);
  // The stream is still healthy after the errors.
  EXPECT_TRUE(s->Ping()->Wait(seconds(10)).ok());
  EXPECT_TRUE(s->Close().ok());
}

}  // namespace
}  // namespace spill::testing
