// Optimizer groups whose parameters have home NVMe (offload_param.device =
// nvme), over a real TierManager and NVMe tier (io_uring over files under
// $SPILL_TEST_NVME_DIR, else /var/tmp; skipped without O_DIRECT). The group
// steps bit for bit like a twin over pinned parameters, also when its
// parameters are evicted between steps and read back from NVMe; a failed
// read leaves the group as it was; gradients on NVMe are refused.
#include <gtest/gtest.h>

#include <cstring>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "server/optimizer_host.h"
#include "storage/io_backend.h"
#include "storage/nvme_test_util.h"
#include "storage/pinned_arena.h"
#include "storage/tier_manager.h"

namespace spill::server {
namespace {

using std::chrono::milliseconds;
using storage::Home;
using storage::test_util::TempDir;

constexpr int kBF16 = 3;
constexpr int kParamKind = 1;
constexpr int kGradKind = 2;
constexpr uint64_t kN = 5000;
constexpr uint64_t kBytes = kN * 2;
constexpr int kMembers = 3;
constexpr uint64_t kMiB = 1 << 20;

class OptimizerParamTest : public ::testing::Test {
 protected:
  // The job's param budget holds exactly one group's parameters
  // (max_in_cpu = kMembers objects), so using kMembers fillers evicts them.
  void Start(const storage::FaultPlan* plan = nullptr, uint32_t buffer_count = 2 * kMembers) {
    ASSERT_FALSE(dir_.path().empty());
    storage::NvmeOptions nvme;
    nvme.dirs = {dir_.Sub("nvme")};
    nvme.capacity_bytes = 16 * kMiB;
    nvme.block_size = 4096;
    nvme.queue_depth = 8;
    nvme.thread_count = 1;
    auto tier = storage::test_util::OpenTierWithFaults(nvme, plan);
    if (!tier.ok() && absl::IsFailedPrecondition(tier.status())) {
      skip_ = std::string(tier.status().message());
      return;
    }
    ASSERT_TRUE(tier.ok()) << tier.status();
    tier_ = std::move(*tier);
    storage::ArenaOptions ao;
    ao.total_bytes = 8 * kMiB;
    ao.segment_bytes = kMiB;
    ao.huge_pages = storage::HugePageMode::kOff;
    ao.lock = false;
    arena_ = storage::PinnedArena::Create(ao).value();
    storage::TierManagerOptions to;
    to.manifest_dir = dir_.Sub("manifest");
    to.publish_interval = milliseconds(5);
    tiers_ = storage::TierManager::Create(arena_.get(), tier_.get(), to).value();
    registry_ = std::make_unique<Registry>(arena_.get(), RegistryOptions{},
                                           [] { return std::chrono::steady_clock::now(); },
                                           tiers_.get());
    OptimizerHostOptions options;
    options.threads = 2;
    options.nvme = tier_.get();
    options.param_timeout = milliseconds(10'000);
    host_ = std::make_unique<OptimizerHost>(registry_.get(), options);
    JobBudgets budgets;
    budgets.param = storage::OffloadBudget{buffer_count, kBytes, kMembers * kBytes};
    auto s = registry_->OpenSession("job", 0, 1, PeerCreds{1, 1000, 1000}, budgets);
    ASSERT_TRUE(s.ok()) << s.status();
    session_ = *s;
    ASSERT_TRUE(registry_->AttachStream(session_.session_id, session_.token).ok());
  }

  void TearDown() override {
    host_.reset();
    if (registry_ != nullptr) registry_->Clear();
    registry_.reset();
    tiers_.reset();
    tier_.reset();
  }

  ObjectRecord Register(const std::string& name, int kind, Home home) {
    auto r = registry_->RegisterObject(session_.session_id, session_.token, name, kind, kBF16,
                                       kN, home);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.value_or(ObjectRecord{});
  }

  absl::StatusOr<ObjectRecord> AcquireSync(uint64_t id, bool for_write) {
    std::promise<absl::StatusOr<ObjectRecord>> p;
    registry_->AcquireAsync(session_.session_id, id, for_write,
                            [&p](absl::StatusOr<ObjectRecord> r) { p.set_value(std::move(r)); });
    return p.get_future().get();
  }

  // A client's write of an NVMe-homed object: acquire, write, write back.
  void WriteNvme(uint64_t id, const std::vector<uint8_t>& bytes) {
    auto r = AcquireSync(id, true);
    ASSERT_TRUE(r.ok()) << r.status();
    std::memcpy(arena_->Data(r->extent), bytes.data(), bytes.size());
    ASSERT_TRUE(registry_->WriteBack(session_.session_id, id, 0).ok());
    ASSERT_TRUE(registry_->Release(session_.session_id, id).ok());
  }

  // A client's read of an NVMe-homed object (from NVMe when evicted).
  std::vector<uint8_t> ReadNvme(uint64_t id) {
    auto r = AcquireSync(id, false);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return {};
    const uint8_t* p = arena_->Data(r->extent);
    std::vector<uint8_t> out(p, p + kBytes);
    EXPECT_TRUE(registry_->Release(session_.session_id, id).ok());
    return out;
  }

  std::vector<uint8_t> ReadPinned(const ObjectRecord& r) {
    const uint8_t* p = arena_->Data(r.extent);
    return std::vector<uint8_t>(p, p + kBytes);
  }

  // Group 0 over pinned parameters, group 1 over NVMe-homed ones with the
  // same initial values; both with pinned gradients, and both with their
  // master and states pinned or (states_on_nvme) streamed from NVMe.
  void MakeTwins(bool states_on_nvme = false) {
    std::normal_distribution<float> dist(0, 1);
    for (int m = 0; m < kMembers; ++m) {
      std::vector<uint8_t> init(kBytes);
      for (uint64_t i = 0; i < kN; ++i) {
        uint16_t b = storage::test_util::TruncatedBf16(dist(rng_));
        std::memcpy(init.data() + 2 * i, &b, 2);
      }
      for (int g = 0; g < 2; ++g) {
        const std::string suffix = std::to_string(g) + "." + std::to_string(m);
        params_[g][m] = Register("p" + suffix, kParamKind, g == 0 ? Home::kPinned : Home::kNvme);
        grads_[g][m] = Register("g" + suffix, kGradKind, Home::kPinned);
      }
      std::memcpy(arena_->Data(params_[0][m].extent), init.data(), kBytes);
      WriteNvme(params_[1][m].id, init);
      fillers_[m] = Register("filler" + std::to_string(m), kParamKind, Home::kNvme);
    }
    for (int g = 0; g < 2; ++g) {
      GroupSpec spec;
      spec.name = g == 0 ? "pinned" : "nvme";
      spec.hyper.algo = optim::Algo::kAdamW;
      spec.hyper.weight_decay = 0.01f;
      spec.states_on_nvme = states_on_nvme;
      spec.sub_group_size = 2048;
      for (int m = 0; m < kMembers; ++m) spec.members.push_back({params_[g][m].id, grads_[g][m].id});
      auto created = host_->CreateGroup(session_.session_id, session_.token, spec);
      ASSERT_TRUE(created.ok()) << created.status();
      groups_[g] = created->first;
    }
  }

  // The same random gradients into both groups, marked ready.
  void Gradients(uint64_t step) {
    std::normal_distribution<float> dist(0, 0.1f);
    for (int m = 0; m < kMembers; ++m) {
      for (uint64_t i = 0; i < kN; ++i) {
        uint16_t b = storage::test_util::TruncatedBf16(dist(rng_));
        std::memcpy(arena_->Data(grads_[0][m].extent) + 2 * i, &b, 2);
        std::memcpy(arena_->Data(grads_[1][m].extent) + 2 * i, &b, 2);
      }
      for (int g = 0; g < 2; ++g) {
        auto sum = host_->GradReady(session_.session_id, groups_[g].group_id, grads_[g][m].id,
                                    step, 0);
        ASSERT_TRUE(sum.ok()) << sum.status();
      }
    }
  }

  absl::StatusOr<StepOutcome> Step(int g, uint64_t step) {
    return host_->Step(session_.session_id, groups_[g].group_id, step, 1e-2f, 1.0f, false);
  }

  // Pins every filler at once (or, with together = false and fillers never
  // used before, one after the other, so that LRU picks the parameters): the
  // param budget has no room left for the group's parameters, which are
  // evicted (after their write-backs).
  void EvictParams(bool together = true) {
    if (!together) {  // Clean parameters first: LRU passes over dirty ones.
      std::promise<absl::Status> flushed;
      tiers_->Flush("job", [&flushed](absl::Status s) { flushed.set_value(s); });
      ASSERT_TRUE(flushed.get_future().get().ok());
    }
    for (const ObjectRecord& f : fillers_) {
      auto r = AcquireSync(f.id, false);
      ASSERT_TRUE(r.ok()) << r.status();
      if (!together) ASSERT_TRUE(registry_->Release(session_.session_id, f.id).ok());
    }
    for (const ObjectRecord& f : fillers_) {
      if (together) ASSERT_TRUE(registry_->Release(session_.session_id, f.id).ok());
    }
    for (const ObjectRecord& p : params_[1]) {
      auto info = tiers_->Describe("job", p.id);
      ASSERT_TRUE(info.ok()) << info.status();
      ASSERT_FALSE(info->resident) << p.name << " was not evicted";
      ASSERT_FALSE(info->dirty) << p.name;
    }
  }

  // The NVMe group's parameters, as a client reads them, equal the pinned
  // group's.
  void ExpectTwinsEqual(const std::string& where) {
    for (int m = 0; m < kMembers; ++m) {
      EXPECT_EQ(ReadNvme(params_[1][m].id), ReadPinned(params_[0][m])) << where << " member " << m;
    }
  }

  GroupInfo Group(int g) {
    auto groups = host_->ListGroups(session_.session_id, session_.token).value();
    for (const GroupInfo& info : groups) {
      if (info.group_id == groups_[g].group_id) return info;
    }
    ADD_FAILURE() << "no group " << g;
    return {};
  }

  // Masters and states of group g, byte for byte.
  std::vector<uint8_t> GroupState(int g) {
    std::vector<uint8_t> out;
    auto objects = registry_->ListObjects(session_.session_id, session_.token).value();
    for (const GroupMemberInfo& m : Group(g).members) {
      std::vector<uint64_t> ids = {m.master_object_id};
      ids.insert(ids.end(), m.state_object_ids.begin(), m.state_object_ids.end());
      for (uint64_t id : ids) {
        for (const ObjectRecord& r : objects) {
          if (r.id != id) continue;
          const uint8_t* p = arena_->Data(r.extent);
          out.insert(out.end(), p, p + r.num_elements * 4);
        }
      }
    }
    return out;
  }

  // Steps both groups `steps` times, the parameters evicted before each
  // step and before each read-back; they must stay equal bit for bit.
  void StepTwinsAcrossEvictions(uint64_t steps) {
    for (uint64_t step = 1; step <= steps; ++step) {
      EvictParams();  // The step reads its parameters back from NVMe.
      Gradients(step);
      for (int g = 0; g < 2; ++g) {
        auto outcome = Step(g, step);
        ASSERT_TRUE(outcome.ok()) << outcome.status();
        EXPECT_TRUE(outcome->applied);
      }
      for (const ObjectRecord& p : params_[1]) {
        auto info = tiers_->Describe("job", p.id).value();
        EXPECT_EQ(info.version, step) << p.name;
        EXPECT_EQ(info.pins, 0u) << p.name;
      }
      EvictParams();  // The client reads what was written back to NVMe.
      ExpectTwinsEqual("step " + std::to_string(step));
    }
  }

  TempDir dir_;
  std::string skip_;
  std::mt19937 rng_{11};
  std::unique_ptr<storage::NvmeTier> tier_;
  std::unique_ptr<storage::PinnedArena> arena_;
  std::unique_ptr<storage::TierManager> tiers_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<OptimizerHost> host_;
  OpenedSession session_;
  ObjectRecord params_[2][kMembers], grads_[2][kMembers], fillers_[kMembers];
  GroupInfo groups_[2];
};

TEST_F(OptimizerParamTest, NvmeParamsStepLikePinnedOnesAcrossEvictions) {
  Start();
  if (!skip_.empty()) GTEST_SKIP() << skip_;
  MakeTwins();
  ExpectTwinsEqual("after creation");
  const uint64_t evictions_before = tiers_->Stats().total.evictions;
  StepTwinsAcrossEvictions(4);
  EXPECT_GE(tiers_->Stats().total.evictions - evictions_before, 8u * kMembers);
  EXPECT_EQ(GroupState(0), GroupState(1));
  // A resent step is answered again, not applied: nothing is written.
  const uint64_t writes = tiers_->Stats().total.writes;
  auto again = Step(1, 4);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->repeated);
  EXPECT_EQ(tiers_->Stats().total.writes, writes);
  ExpectTwinsEqual("after a resent step");
}

// offload_param and offload_optimizer both on NVMe (ZeRO-Infinity): the
// streamed step over NVMe-homed parameters.
TEST_F(OptimizerParamTest, NvmeParamsWithStatesOnNvmeStepLikePinnedOnes) {
  Start();
  if (!skip_.empty()) GTEST_SKIP() << skip_;
  MakeTwins(/*states_on_nvme=*/true);
  ASSERT_TRUE(Group(1).states_on_nvme);
  StepTwinsAcrossEvictions(3);
  EXPECT_EQ(Group(1).applied_steps, 3u);
}

TEST_F(OptimizerParamTest, FailedParameterReadLeavesTheGroupUnchanged) {
  storage::FaultPlan plan;
  // Nothing is read from NVMe before the parameters are first evicted: the
  // first read is the step's acquire of an evicted parameter.
  plan.rules.push_back({storage::FaultKind::kErrno, 0, 1, 5, storage::FaultDirection::kRead});
  Start(&plan);
  if (!skip_.empty()) GTEST_SKIP() << skip_;
  MakeTwins();
  Gradients(1);
  ASSERT_TRUE(Step(0, 1).ok());
  ASSERT_TRUE(Step(1, 1).ok());
  EvictParams();
  ASSERT_EQ(plan.counters->injected.load(), 0u);
  const std::vector<uint8_t> state_before = GroupState(1);
  Gradients(2);
  auto failed = Step(1, 2);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(plan.counters->injected.load(), 1u);
  EXPECT_NE(failed.status().message().find("parameter 'p1."), std::string::npos)
      << failed.status();
  EXPECT_NE(failed.status().message().find("home NVME"), std::string::npos) << failed.status();
  const GroupInfo info = Group(1);
  EXPECT_EQ(info.last_step, 1u);
  EXPECT_EQ(info.applied_steps, 1u);
  EXPECT_EQ(GroupState(1), state_before);
  for (const ObjectRecord& p : params_[1]) {
    auto d = tiers_->Describe("job", p.id).value();
    EXPECT_EQ(d.pins, 0u) << p.name;  // Every acquire of the failed step was released.
    EXPECT_EQ(d.version, 1u) << p.name;
  }
  // The parameters still hold step 1 (the pinned twin has not stepped yet).
  ExpectTwinsEqual("after the failed step");
  EvictParams();
  // The retry reads them again and matches the pinned group's step 2.
  auto retried = Step(1, 2);
  ASSERT_TRUE(retried.ok()) << retried.status();
  EXPECT_FALSE(retried->repeated);
  EXPECT_EQ(retried->applied_steps, 2u);
  ASSERT_TRUE(Step(0, 2).ok());
  EvictParams();
  ExpectTwinsEqual("after the retry");
  EXPECT_EQ(GroupState(0), GroupState(1));
}

TEST_F(OptimizerParamTest, ParametersPastTheBudgetFailTheStepCleanly) {
  Start(nullptr, /*buffer_count=*/kMembers - 1);
  if (!skip_.empty()) GTEST_SKIP() << skip_;
  MakeTwins();  // Creation reads one parameter at a time: it fits.
  EvictParams(/*together=*/false);  // Two buffers cannot pin three fillers.
  Gradients(1);
  const std::vector<uint8_t> state_before = GroupState(1);
  auto failed = Step(1, 1);
  ASSERT_FALSE(failed.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(failed.status())) << failed.status();
  EXPECT_NE(failed.status().message().find("buffer_count"), std::string::npos) << failed.status();
  EXPECT_EQ(Group(1).last_step, 0u);
  EXPECT_EQ(GroupState(1), state_before);
  for (const ObjectRecord& p : params_[1]) {
    auto d = tiers_->Describe("job", p.id).value();
    EXPECT_EQ(d.pins, 0u) << p.name;
    EXPECT_EQ(d.version, 0u) << p.name;
  }
  // The parameters are unchanged (the pinned twin has not stepped).
  ExpectTwinsEqual("after the refused step");
}

TEST_F(OptimizerParamTest, GradientsOnNvmeAreRefusedByName) {
  Start();
  if (!skip_.empty()) GTEST_SKIP() << skip_;
  ObjectRecord param = Register("p", kParamKind, Home::kNvme);
  ObjectRecord grad = Register("g.nvme", kGradKind, Home::kNvme);
  GroupSpec spec;
  spec.name = "bad";
  spec.members.push_back({param.id, grad.id});
  auto created = host_->CreateGroup(session_.session_id, session_.token, spec);
  ASSERT_FALSE(created.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(created.status())) << created.status();
  EXPECT_NE(created.status().message().find("gradient 'g.nvme'"), std::string::npos)
      << created.status();
  EXPECT_EQ(registry_->ListObjects(session_.session_id, session_.token)->size(), 2u);
  // The generic compute pin refuses NVMe-homed objects, naming them.
  auto pinned = registry_->PinForCompute("job", {grad.id});
  ASSERT_FALSE(pinned.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(pinned.status()));
  EXPECT_NE(pinned.status().message().find("'g.nvme'"), std::string::npos) << pinned.status();
  // The same group over a pinned gradient is fine.
  ObjectRecord pinned_grad = Register("g.pinned", kGradKind, Home::kPinned);
  spec.members[0].grad_object_id = pinned_grad.id;
  auto ok = host_->CreateGroup(session_.session_id, session_.token, spec);
  EXPECT_TRUE(ok.ok()) << ok.status();
}

}  // namespace
}  // namespace spill::server
