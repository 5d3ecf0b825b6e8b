// Registry with a real TierManager over a real NVMe tier (files under
// $SPILL_TEST_NVME_DIR, else /var/tmp; skipped without O_DIRECT): objects
// with home NVMe, asynchronous acquire, session end, restart, DropJob.
#include <gtest/gtest.h>

#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "server/registry.h"
#include "server/subsystem_metrics.h"
#include "storage/tier_manager_test_util.h"

namespace spill::server {
namespace {

using std::chrono::milliseconds;
using storage::Home;
using storage::tm_test::FillPattern;
using storage::tm_test::FirstMismatch;

constexpr int kF32 = 1;
constexpr int kParam = 1;
constexpr uint64_t kMiB = 1 << 20;

class RegistryTiersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    storage::ArenaOptions ao;
    ao.total_bytes = 4 * kMiB;
    ao.segment_bytes = kMiB;
    ao.huge_pages = storage::HugePageMode::kOff;
    ao.lock = false;
    arena_ = storage::PinnedArena::Create(ao).value();
    OpenTiers();
  }

  void OpenTiers() {
    storage::NvmeOptions no;
    no.dirs = {dir_.Sub("nvme")};
    no.capacity_bytes = 64 * kMiB;
    no.block_size = 64 << 10;
    no.queue_depth = 8;
    no.thread_count = 1;
    no.job_quota_bytes = 16 * kMiB;
    auto tier = storage::NvmeTier::Open(no);
    if (!tier.ok() && absl::IsFailedPrecondition(tier.status())) {
      GTEST_SKIP() << "no NVMe tier here (set SPILL_TEST_NVME_DIR to a file system with "
                      "O_DIRECT): "
                   << tier.status();
    }
    ASSERT_TRUE(tier.ok()) << tier.status();
    nvme_ = std::move(tier).value();
    storage::TierManagerOptions to;
    to.manifest_dir = dir_.Sub("manifest");
    to.publish_interval = milliseconds(5);
    tiers_ = storage::TierManager::Create(arena_.get(), nvme_.get(), to).value();
    RegistryOptions ro;
    ro.job_grace = milliseconds(1000);
    registry_ = std::make_unique<Registry>(arena_.get(), ro, [this] { return now_; },
                                           tiers_.get());
  }

  // A restart: everything but the files goes away and comes back.
  void Restart() {
    registry_->Clear();
    registry_.reset();
    tiers_.reset();
    nvme_.reset();
    OpenTiers();
    auto recovered = tiers_->Recover();
    ASSERT_TRUE(recovered.ok()) << recovered.status();
    ASSERT_TRUE(registry_->AddRecoveredJobs(*recovered).ok());
  }

  OpenedSession Open(const std::string& job, uid_t uid = 1000) {
    auto s = registry_->OpenSession(job, 0, 1, PeerCreds{42, uid, uid});
    EXPECT_TRUE(s.ok()) << s.status();
    EXPECT_TRUE(registry_->AttachStream(s->session_id, s->token).ok());
    return *s;
  }

  absl::StatusOr<ObjectRecord> AcquireSync(uint64_t session, uint64_t id, bool for_write) {
    std::promise<absl::StatusOr<ObjectRecord>> p;
    registry_->AcquireAsync(session, id, for_write,
                            [&p](absl::StatusOr<ObjectRecord> r) { p.set_value(std::move(r)); });
    return p.get_future().get();
  }

  absl::Status FlushSync(const OpenedSession& s) {
    std::promise<absl::Status> p;
    registry_->Flush(s.session_id, s.token, [&p](absl::Status st) { p.set_value(st); });
    return p.get_future().get();
  }

  // Acquire for write, fill the pattern of version, write back, release.
  void Write(const OpenedSession& s, uint64_t id, uint64_t version) {
    auto r = AcquireSync(s.session_id, id, /*for_write=*/true);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_GT(r->extent.size, 0u);
    FillPattern(arena_->Data(r->extent), r->extent.size, id, version);
    ASSERT_TRUE(registry_->WriteBack(s.session_id, id, version).ok());
    ASSERT_TRUE(registry_->Release(s.session_id, id).ok());
  }

  int64_t Check(const OpenedSession& s, uint64_t id, uint64_t version, uint64_t bytes) {
    auto r = AcquireSync(s.session_id, id, false);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return -2;
    int64_t bad = FirstMismatch(arena_->Data(r->extent), bytes, id, version);
    EXPECT_TRUE(registry_->Release(s.session_id, id).ok());
    return bad;
  }

  storage::tm_test::ScratchDir dir_;
  std::chrono::steady_clock::time_point now_{};
  std::unique_ptr<storage::PinnedArena> arena_;
  std::unique_ptr<storage::NvmeTier> nvme_;
  std::unique_ptr<storage::TierManager> tiers_;
  std::unique_ptr<Registry> registry_;
};

// A 2 MiB arena of 1 MiB segments, not locked, for registries without tiers.
std::unique_ptr<storage::PinnedArena> SmallUnlockedArena() {
  storage::ArenaOptions ao;
  ao.total_bytes = 2 * kMiB;
  ao.segment_bytes = kMiB;
  ao.huge_pages = storage::HugePageMode::kOff;
  ao.lock = false;
  return storage::PinnedArena::Create(ao).value();
}

TEST(RegistryNoTiersTest, NvmeHomeWithoutTierIsRefusedByName) {
  auto arena = SmallUnlockedArena();
  Registry registry(arena.get(), RegistryOptions{},
                    [] { return std::chrono::steady_clock::now(); });
  auto s = registry.OpenSession("j", 0, 1, PeerCreds{1, 1000, 1000}).value();
  auto r = registry.RegisterObject(s.session_id, s.token, "w", kParam, kF32, 16, Home::kNvme);
  ASSERT_TRUE(absl::IsFailedPrecondition(r.status())) << r.status();
  EXPECT_NE(r.status().message().find("--nvme-dirs"), std::string::npos);
  EXPECT_TRUE(registry.ListObjects(s.session_id, s.token)->empty());
  // The same name is still free for a pinned object.
  EXPECT_TRUE(registry.RegisterObject(s.session_id, s.token, "w", kParam, kF32, 16).ok());
}

TEST_F(RegistryTiersTest, NvmeObjectRoundTripAndFlush) {
  OpenedSession s = Open("job");
  auto obj = registry_->RegisterObject(s.session_id, s.token, "w", kParam, kF32, 65536,
                                       Home::kNvme);
  ASSERT_TRUE(obj.ok()) << obj.status();
  EXPECT_EQ(obj->home, Home::kNvme);
  EXPECT_EQ(obj->extent.size, 0u);  // No pinned copy until acquired.
  EXPECT_TRUE(registry_->MayWait(s.session_id, obj->id));
  // Synchronous forms refuse NVMe objects; the optimizer cannot use them.
  EXPECT_TRUE(absl::IsFailedPrecondition(registry_->Acquire(s.session_id, obj->id).status()));
  EXPECT_TRUE(absl::IsFailedPrecondition(registry_->PinForCompute("job", {obj->id}).status()));
  Write(s, obj->id, 3);
  ASSERT_TRUE(FlushSync(s).ok());
  auto info = tiers_->Describe("job", obj->id);
  ASSERT_TRUE(info.ok());
  EXPECT_TRUE(info->acknowledged);
  EXPECT_EQ(info->durable_version, 3u);
  EXPECT_EQ(info->pins, 0u);
  EXPECT_EQ(Check(s, obj->id, 3, 65536 * 4), -1);
  // Write-back below the version changes nothing.
  auto r = AcquireSync(s.session_id, obj->id, true);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(registry_->WriteBack(s.session_id, obj->id, 2).ok());
  EXPECT_TRUE(registry_->Release(s.session_id, obj->id).ok());
  auto list = registry_->ListObjects(s.session_id, s.token);
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].version, 3u);
  EXPECT_EQ(registry_->Jobs()[0].nvme_objects, 1u);
}

TEST_F(RegistryTiersTest, AccessOrderGoesToTheTierManagerForNvmeObjects) {
  OpenedSession s = Open("job");
  auto nvme = registry_->RegisterObject(s.session_id, s.token, "w", kParam, kF32, 1024,
                                        Home::kNvme);
  ASSERT_TRUE(nvme.ok()) << nvme.status();
  auto pinned = registry_->RegisterObject(s.session_id, s.token, "p", kParam, kF32, 1024);
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  auto n = registry_->SetAccessOrder(s.session_id, {pinned->id, nvme->id, nvme->id});
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 2u);  // Pinned-home objects are never evicted: not passed on.
  auto bad = registry_->SetAccessOrder(s.session_id, {nvme->id, 4242});
  EXPECT_TRUE(absl::IsNotFound(bad.status())) << bad.status();
  EXPECT_NE(bad.status().message().find("access order"), absl::string_view::npos);
  EXPECT_NE(bad.status().message().find("4242"), absl::string_view::npos);
  EXPECT_FALSE(registry_->SetAccessOrder(999, {nvme->id}).ok());  // no such session
  OpenedSession other = Open("other");
  auto plain = registry_->RegisterObject(other.session_id, other.token, "q", kParam, kF32, 16);
  ASSERT_TRUE(plain.ok());
  auto none = registry_->SetAccessOrder(other.session_id, {plain->id});
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none, 0u);
  // Another job's object is not this job's.
  EXPECT_TRUE(absl::IsNotFound(registry_->SetAccessOrder(other.session_id, {nvme->id}).status()));
}

TEST_F(RegistryTiersTest, StreamEndDropsTierPins) {
  OpenedSession s = Open("job");
  auto obj =
      registry_->RegisterObject(s.session_id, s.token, "w", kParam, kF32, 1024, Home::kNvme);
  ASSERT_TRUE(obj.ok());
  ASSERT_TRUE(AcquireSync(s.session_id, obj->id, false).ok());
  ASSERT_TRUE(AcquireSync(s.session_id, obj->id, false).ok());
  EXPECT_EQ(tiers_->Describe("job", obj->id)->pins, 2u);
  registry_->DetachStream(s.session_id);
  EXPECT_EQ(tiers_->Describe("job", obj->id)->pins, 0u);
  // An acquire after the session ended fails and leaves no pin.
  auto late = AcquireSync(s.session_id, obj->id, false);
  EXPECT_FALSE(late.ok());
  EXPECT_EQ(tiers_->Describe("job", obj->id)->pins, 0u);
}

TEST_F(RegistryTiersTest, FreeObjectFreesTheTierCopy) {
  OpenedSession s = Open("job");
  auto obj =
      registry_->RegisterObject(s.session_id, s.token, "w", kParam, kF32, 1024, Home::kNvme);
  ASSERT_TRUE(obj.ok());
  ASSERT_TRUE(AcquireSync(s.session_id, obj->id, false).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(registry_->FreeObject(s.session_id, s.token, obj->id)));
  ASSERT_TRUE(registry_->Release(s.session_id, obj->id).ok());
  ASSERT_TRUE(registry_->FreeObject(s.session_id, s.token, obj->id).ok());
  EXPECT_TRUE(absl::IsNotFound(tiers_->Describe("job", obj->id).status()));
}

TEST_F(RegistryTiersTest, NvmeQuotaIsEnforced) {
  OpenedSession s = Open("job");
  // 16 MiB NVMe job quota, 1 MiB objects: registration stops at the quota.
  size_t registered = 0;
  absl::Status last;
  for (int i = 0; i < 40 && last.ok(); ++i) {
    auto r = registry_->RegisterObject(s.session_id, s.token, "o" + std::to_string(i), kParam,
                                       kF32, kMiB / 4, Home::kNvme);
    last = r.status();
    if (r.ok()) ++registered;
  }
  EXPECT_TRUE(absl::IsResourceExhausted(last)) << last;
  EXPECT_GE(registered, 1u);
  EXPECT_LE(registered, 16u);
  EXPECT_EQ(registry_->ListObjects(s.session_id, s.token)->size(), registered);
}

TEST_F(RegistryTiersTest, RestartRecoversFlushedObjects) {
  OpenedSession s = Open("job", 1000);
  std::vector<uint64_t> ids;
  for (int i = 0; i < 3; ++i) {
    auto obj = registry_->RegisterObject(s.session_id, s.token, "w" + std::to_string(i), kParam,
                                         kF32, 4096 * (i + 1), Home::kNvme);
    ASSERT_TRUE(obj.ok());
    ids.push_back(obj->id);
    Write(s, obj->id, 10 + i);
  }
  ASSERT_TRUE(FlushSync(s).ok());
  Restart();
  auto jobs = registry_->Jobs();
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_TRUE(jobs[0].recovered);
  EXPECT_TRUE(jobs[0].in_grace);
  EXPECT_EQ(jobs[0].uid, 1000u);
  EXPECT_EQ(jobs[0].objects, 3u);
  // Another uid may not take it over.
  auto other = registry_->OpenSession("job", 0, 1, PeerCreds{7, 2000, 2000});
  EXPECT_TRUE(absl::IsPermissionDenied(other.status())) << other.status();
  auto again = registry_->OpenSession("job", 0, 2, PeerCreds{7, 1000, 1000});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->job_existed);
  ASSERT_TRUE(registry_->AttachStream(again->session_id, again->token).ok());
  EXPECT_FALSE(registry_->Jobs()[0].recovered);
  auto list = registry_->ListObjects(again->session_id, again->token);
  ASSERT_EQ(list->size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ((*list)[i].version, 10u + i);
    EXPECT_EQ(Check(*again, ids[i], 10 + i, 4096 * 4 * (i + 1)), -1);
  }
  // New objects get ids past the recovered ones.
  auto fresh = registry_->RegisterObject(again->session_id, again->token, "new", kParam, kF32,
                                         16, Home::kNvme);
  ASSERT_TRUE(fresh.ok());
  EXPECT_GT(fresh->id, ids.back());
}

TEST_F(RegistryTiersTest, DropJobOnlyForRootOrOwner) {
  OpenedSession s = Open("job", 1000);
  auto obj =
      registry_->RegisterObject(s.session_id, s.token, "w", kParam, kF32, 1024, Home::kNvme);
  ASSERT_TRUE(obj.ok());
  Write(s, obj->id, 1);
  absl::Status denied = registry_->DropJob("job", 2000);
  EXPECT_TRUE(absl::IsPermissionDenied(denied)) << denied;
  EXPECT_EQ(registry_->Jobs().size(), 1u);
  EXPECT_EQ(tiers_->Jobs().size(), 1u);
  EXPECT_TRUE(absl::IsNotFound(registry_->DropJob("nope", 0)));
  ASSERT_TRUE(registry_->DropJob("job", 1000).ok());
  EXPECT_TRUE(registry_->Jobs().empty());
  EXPECT_TRUE(tiers_->Jobs().empty());
  // The cached copy goes once its write-back (still in flight) is done.
  for (int i = 0; i < 200 && arena_->Stats().used_bytes != 0; ++i) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  EXPECT_EQ(arena_->Stats().used_bytes, 0u);
  // The job's id is free again, for anyone.
  OpenedSession t = Open("job", 2000);
  EXPECT_FALSE(registry_->ListObjects(t.session_id, t.token).value().size());
}

TEST_F(RegistryTiersTest, GraceExpiryFreesNvmeCopies) {
  OpenedSession s = Open("job");
  auto obj =
      registry_->RegisterObject(s.session_id, s.token, "w", kParam, kF32, 1024, Home::kNvme);
  ASSERT_TRUE(obj.ok());
  Write(s, obj->id, 1);
  registry_->DetachStream(s.session_id);
  now_ += milliseconds(1500);
  registry_->Tick();
  EXPECT_TRUE(registry_->Jobs().empty());
  EXPECT_TRUE(tiers_->Jobs().empty());
}

TEST_F(RegistryTiersTest, TierMetricsCountWriteBacksAndPublishes) {
  OpenedSession s = Open("job");
  auto obj =
      registry_->RegisterObject(s.session_id, s.token, "w", kParam, kF32, 1024, Home::kNvme);
  ASSERT_TRUE(obj.ok());
  Write(s, obj->id, 1);
  ASSERT_TRUE(FlushSync(s).ok());
  MetricsWriter out;
  TierMetricsCollector(tiers_.get()).Collect(out);
  const std::string& text = out.text();
  EXPECT_NE(text.find("spill_tiering_writebacks_total 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("spill_tiering_acquires_total{result=\"miss\"} 0\n"), std::string::npos)
      << text;  // Never written: nothing to read.
  EXPECT_NE(text.find("spill_tiering_dirty_bytes 0\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("spill_tiering_manifest_publishes_total{result=\"ok\"} 0\n"),
            std::string::npos)
      << text;
}

}  // namespace
}  // namespace spill::server

namespace spill::server {
namespace {

constexpr int kMaster = 3;
constexpr uint64_t kKiB = 1024;

JobBudgets ParamBudget(uint32_t count, uint64_t size, uint64_t max_in_cpu) {
  JobBudgets b;
  b.param = storage::OffloadBudget{count, size, max_in_cpu};
  return b;
}

TEST(RegistryNoTiersTest, BudgetsWithoutATierAreRefused) {
  auto arena = SmallUnlockedArena();
  Registry registry(arena.get(), RegistryOptions{},
                    [] { return std::chrono::steady_clock::now(); });
  auto refused = registry.OpenSession("j", 0, 1, PeerCreds{1, 1000, 1000},
                                      ParamBudget(4, 64 * kKiB, 256 * kKiB));
  ASSERT_TRUE(absl::IsFailedPrecondition(refused.status())) << refused.status();
  EXPECT_NE(refused.status().message().find("param_budget"), std::string::npos);
  EXPECT_NE(refused.status().message().find("--nvme-dirs"), std::string::npos);
  EXPECT_TRUE(registry.Jobs().empty());
  EXPECT_TRUE(registry.OpenSession("j", 0, 1, PeerCreds{1, 1000, 1000}).ok());
}

TEST_F(RegistryTiersTest, BadBudgetsAreRefusedByField) {
  struct Case {
    JobBudgets budgets;
    std::string field;
  };
  JobBudgets big_optimizer;
  big_optimizer.optimizer = storage::OffloadBudget{2, 64 * kMiB, 64 * kMiB};  // pool: 4 MiB
  std::vector<Case> cases = {
      {ParamBudget(0, 64 * kKiB, 256 * kKiB), "param_budget.buffer_count"},
      {ParamBudget(4, 0, 256 * kKiB), "param_budget.buffer_size"},
      {ParamBudget(4, 64 * kKiB, 0), "param_budget.max_in_cpu"},
      {ParamBudget(Registry::kMaxBufferCount + 1, 64 * kKiB, 256 * kKiB),
       "param_budget.buffer_count"},
      {ParamBudget(4, 64 * kKiB, 32 * kKiB), "param_budget.max_in_cpu"},
      {big_optimizer, "optimizer_budget.buffer_size"},
  };
  for (const Case& c : cases) {
    auto s = registry_->OpenSession("job", 0, 1, PeerCreds{42, 1000, 1000}, c.budgets);
    ASSERT_TRUE(absl::IsInvalidArgument(s.status())) << c.field << ": " << s.status();
    EXPECT_NE(s.status().message().find(c.field), std::string::npos) << s.status();
  }
  EXPECT_TRUE(registry_->Jobs().empty());  // Nothing was created.
}

TEST_F(RegistryTiersTest, BudgetsReachTheTierManager) {
  auto s = registry_->OpenSession("job", 0, 1, PeerCreds{42, 1000, 1000},
                                  ParamBudget(4, 64 * kKiB, 256 * kKiB));
  ASSERT_TRUE(s.ok()) << s.status();
  // buffer_size: a param larger than 64 KiB is refused, by the TierManager.
  auto big = registry_->RegisterObject(s->session_id, s->token, "big", kParam, kF32,
                                       32 * kKiB, Home::kNvme);
  EXPECT_TRUE(absl::IsInvalidArgument(big.status())) << big.status();
  EXPECT_NE(big.status().message().find("buffer_size"), std::string::npos) << big.status();
  EXPECT_TRUE(registry_->RegisterObject(s->session_id, s->token, "small", kParam, kF32,
                                        16 * kKiB, Home::kNvme).ok());
  // Masters follow offload_optimizer, which this job left at the defaults.
  EXPECT_TRUE(registry_->RegisterObject(s->session_id, s->token, "master", kMaster, kF32,
                                        32 * kKiB, Home::kNvme).ok());
  auto jobs = registry_->Jobs();
  ASSERT_EQ(jobs.size(), 1u);
  ASSERT_TRUE(jobs[0].budgets.param.has_value());
  EXPECT_EQ(jobs[0].budgets.param->max_in_cpu, 256 * kKiB);
  EXPECT_FALSE(jobs[0].budgets.optimizer.has_value());
}

TEST_F(RegistryTiersTest, LaterSessionsMustAgreeOnBudgets) {
  const JobBudgets first = ParamBudget(4, 64 * kKiB, 256 * kKiB);
  ASSERT_TRUE(registry_->OpenSession("job", 0, 3, PeerCreds{42, 1000, 1000}, first).ok());
  EXPECT_TRUE(registry_->OpenSession("job", 1, 3, PeerCreds{43, 1000, 1000}, first).ok());
  EXPECT_TRUE(registry_->OpenSession("job", 2, 3, PeerCreds{44, 1000, 1000}).ok());  // unset
  auto other = registry_->OpenSession("job", 2, 3, PeerCreds{45, 1000, 1000},
                                      ParamBudget(8, 64 * kKiB, 256 * kKiB));
  ASSERT_TRUE(absl::IsFailedPrecondition(other.status())) << other.status();
  EXPECT_NE(other.status().message().find("buffer_count=4"), std::string::npos);
  EXPECT_NE(other.status().message().find("buffer_count=8"), std::string::npos);
  JobBudgets optimizer;
  optimizer.optimizer = storage::OffloadBudget{2, 64 * kKiB, 128 * kKiB};
  auto late = registry_->OpenSession("job", 2, 3, PeerCreds{46, 1000, 1000}, optimizer);
  ASSERT_TRUE(absl::IsFailedPrecondition(late.status())) << late.status();
  EXPECT_NE(late.status().message().find("optimizer_budget unset"), std::string::npos)
      << late.status();
  EXPECT_EQ(registry_->Jobs()[0].sessions.size(), 3u);  // The refused ones left nothing.
}

TEST_F(RegistryTiersTest, ReattachingToARecoveredJobSetsItsBudgets) {
  OpenedSession s = Open("job", 1000);
  auto obj = registry_->RegisterObject(s.session_id, s.token, "w", kParam, kF32, 16 * kKiB,
                                       Home::kNvme);
  ASSERT_TRUE(obj.ok()) << obj.status();
  Write(s, obj->id, 1);
  ASSERT_TRUE(FlushSync(s).ok());
  Restart();
  // Its 64 KiB object does not fit a 32 KiB buffer_size: refused, by name.
  auto small = registry_->OpenSession("job", 0, 1, PeerCreds{7, 1000, 1000},
                                      ParamBudget(2, 32 * kKiB, 64 * kKiB));
  ASSERT_TRUE(absl::IsFailedPrecondition(small.status())) << small.status();
  EXPECT_NE(small.status().message().find("'w'"), std::string::npos) << small.status();
  EXPECT_TRUE(registry_->Jobs()[0].recovered);
  auto again = registry_->OpenSession("job", 0, 1, PeerCreds{7, 1000, 1000},
                                      ParamBudget(2, 64 * kKiB, 64 * kKiB));
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_TRUE(registry_->AttachStream(again->session_id, again->token).ok());
  // The recovered job is registered with the TierManager already: the
  // budget applies at once, so a new object past buffer_size is refused.
  auto big = registry_->RegisterObject(again->session_id, again->token, "big", kParam, kF32,
                                       32 * kKiB, Home::kNvme);
  EXPECT_TRUE(absl::IsInvalidArgument(big.status())) << big.status();
  EXPECT_EQ(registry_->Jobs()[0].budgets.param->buffer_count, 2u);
}

}  // namespace
}  // namespace spill::server
