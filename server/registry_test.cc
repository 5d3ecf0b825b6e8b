#include "server/registry.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "storage/pinned_arena.h"

namespace spill::server {
namespace {

using std::chrono::milliseconds;

constexpr int kF32 = 1;
constexpr int kBF16 = 3;
constexpr int kParam = 1;

class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override { Make(RegistryOptions{}); }

  void Make(RegistryOptions options) {
    registry_.reset();
    storage::ArenaOptions arena_options;
    arena_options.total_bytes = 4 << 20;
    arena_options.segment_bytes = 1 << 20;
    arena_options.huge_pages = storage::HugePageMode::kOff;
    arena_options.lock = false;
    arena_ = storage::PinnedArena::Create(arena_options).value();
    options.job_grace = milliseconds(1000);
    options.attach_timeout = milliseconds(500);
    registry_ = std::make_unique<Registry>(arena_.get(), options, [this] { return now_; });
  }

  OpenedSession Open(const std::string& job, int rank = 0, int world = 1, uid_t uid = 1000) {
    auto s = registry_->OpenSession(job, rank, world, PeerCreds{42, uid, uid});
    EXPECT_TRUE(s.ok()) << s.status();
    auto attached = registry_->AttachStream(s->session_id, s->token);
    EXPECT_TRUE(attached.ok()) << attached.status();
    return *s;
  }

  size_t JobCount() const { return registry_->Jobs().size(); }

  uint64_t UsedBytes(const std::string& job) const {
    for (const JobSnapshot& j : registry_->Jobs()) {
      if (j.job_id == job) return j.used_bytes;
    }
    return 0;
  }

  std::chrono::steady_clock::time_point now_{};
  std::unique_ptr<storage::PinnedArena> arena_;
  std::unique_ptr<Registry> registry_;
};

TEST_F(RegistryTest, RegisterListFree) {
  OpenedSession s = Open("job");
  auto obj = registry_->RegisterObject(s.session_id, s.token, "w", kParam, kBF16, 1000);
  ASSERT_TRUE(obj.ok()) << obj.status();
  EXPECT_EQ(obj->extent.size, 2000u);
  auto list = registry_->ListObjects(s.session_id, s.token);
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name, "w");
  EXPECT_TRUE(registry_->FreeObject(s.session_id, s.token, obj->id).ok());
  EXPECT_TRUE(registry_->ListObjects(s.session_id, s.token)->empty());
  EXPECT_EQ(UsedBytes("job"), 0u);
}

TEST_F(RegistryTest, BadRegistrationsChangeNothing) {
  OpenedSession s = Open("job");
  ASSERT_TRUE(registry_->RegisterObject(s.session_id, s.token, "a", kParam, kF32, 10).ok());
  struct Case {
    std::string name;
    int kind, dtype;
    int64_t n;
    absl::StatusCode code;
  } cases[] = {
      {"", kParam, kF32, 1, absl::StatusCode::kInvalidArgument},
      {"z", kParam, kF32, 0, absl::StatusCode::kInvalidArgument},
      {"z", kParam, kF32, -5, absl::StatusCode::kInvalidArgument},
      {"z", kParam, 99, 1, absl::StatusCode::kInvalidArgument},
      {"z", kParam, 0, 1, absl::StatusCode::kInvalidArgument},
      {"z", 0, kF32, 1, absl::StatusCode::kInvalidArgument},
      {"z", 17, kF32, 1, absl::StatusCode::kInvalidArgument},
      {"z", kParam, kF32, int64_t{1} << 40, absl::StatusCode::kOutOfRange},
      {"z", kParam, kF32, (1 << 18) + 1, absl::StatusCode::kOutOfRange},
      {"a", kParam, kF32, 1, absl::StatusCode::kAlreadyExists},
      {std::string(600, 'x'), kParam, kF32, 1, absl::StatusCode::kInvalidArgument},
  };
  for (const Case& c : cases) {
    auto r = registry_->RegisterObject(s.session_id, s.token, c.name, c.kind, c.dtype, c.n);
    EXPECT_EQ(r.status().code(), c.code) << c.name << " " << c.n << ": " << r.status();
    EXPECT_FALSE(r.status().message().empty());
  }
  EXPECT_EQ(registry_->ListObjects(s.session_id, s.token)->size(), 1u);
  EXPECT_EQ(UsedBytes("job"), 40u);
}

TEST_F(RegistryTest, WrongTokenAndUnknownSession) {
  OpenedSession s = Open("job");
  Token bad = s.token;
  bad[0] ^= 1;
  EXPECT_EQ(registry_->RegisterObject(s.session_id, bad, "a", kParam, kF32, 1).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(registry_->ListObjects(s.session_id + 100, s.token).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(registry_->CloseSession(s.session_id, bad).code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(registry_->Authenticate(s.session_id, s.token).ok());
}

TEST_F(RegistryTest, OpenSessionValidation) {
  PeerCreds peer{1, 1000, 1000};
  EXPECT_EQ(registry_->OpenSession("", 0, 1, peer).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry_->OpenSession("j", 1, 1, peer).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry_->OpenSession("j", -1, 2, peer).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry_->OpenSession("j", 0, 0, peer).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(JobCount(), 0u);
  ASSERT_TRUE(registry_->OpenSession("j", 0, 2, peer).ok());
  auto other_world = registry_->OpenSession("j", 1, 4, peer);
  EXPECT_EQ(other_world.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(other_world.status().message().find("world_size 2"), std::string::npos);
  auto other_uid = registry_->OpenSession("j", 1, 2, PeerCreds{2, 1001, 1001});
  EXPECT_EQ(other_uid.status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(RegistryTest, JobsAreIsolated) {
  OpenedSession a = Open("a");
  OpenedSession b = Open("b");
  auto obj = registry_->RegisterObject(a.session_id, a.token, "w", kParam, kF32, 100);
  ASSERT_TRUE(obj.ok());
  EXPECT_EQ(registry_->Acquire(b.session_id, obj->id).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(registry_->FreeObject(b.session_id, b.token, obj->id).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(registry_->SegmentForSession(b.session_id, b.token, 1000, obj->extent.segment_id)
                .status()
                .code(),
            absl::StatusCode::kPermissionDenied);
  auto grant = registry_->SegmentForSession(a.session_id, a.token, 1000, obj->extent.segment_id);
  ASSERT_TRUE(grant.ok()) << grant.status();
  EXPECT_TRUE(grant->fd.valid());
  EXPECT_EQ(registry_->SegmentForSession(a.session_id, a.token, 1001, obj->extent.segment_id)
                .status()
                .code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(RegistryTest, PinsAndFreeWhilePinned) {
  OpenedSession s = Open("job");
  auto obj = registry_->RegisterObject(s.session_id, s.token, "w", kParam, kF32, 100);
  ASSERT_TRUE(obj.ok());
  EXPECT_EQ(registry_->Acquire(s.session_id, obj->id)->pin_count, 1u);
  EXPECT_EQ(registry_->Acquire(s.session_id, obj->id)->pin_count, 2u);
  EXPECT_EQ(registry_->FreeObject(s.session_id, s.token, obj->id).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(registry_->Release(s.session_id, obj->id)->pin_count, 1u);
  EXPECT_EQ(registry_->Release(s.session_id, obj->id)->pin_count, 0u);
  EXPECT_EQ(registry_->Release(s.session_id, obj->id).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(registry_->FreeObject(s.session_id, s.token, obj->id).ok());
}

TEST_F(RegistryTest, DetachDropsPinsKeepsObjectsUntilGraceExpires) {
  OpenedSession s = Open("job");
  auto obj = registry_->RegisterObject(s.session_id, s.token, "w", kParam, kF32, 100);
  ASSERT_TRUE(registry_->Acquire(s.session_id, obj->id).ok());
  registry_->DetachStream(s.session_id);
  EXPECT_EQ(registry_->ListObjects(s.session_id, s.token).status().code(),
            absl::StatusCode::kNotFound);
  auto jobs = registry_->Jobs();
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_TRUE(jobs[0].in_grace);
  now_ += milliseconds(999);
  registry_->Tick();
  ASSERT_EQ(JobCount(), 1u);
  // Re-attach within grace: the object is there, unpinned.
  OpenedSession again = Open("job");
  auto list = registry_->ListObjects(again.session_id, again.token);
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].pin_count, 0u);
  EXPECT_FALSE(registry_->Jobs()[0].in_grace);
  registry_->DetachStream(again.session_id);
  now_ += milliseconds(1000);
  registry_->Tick();
  EXPECT_EQ(JobCount(), 0u);
  EXPECT_EQ(arena_->Stats().used_bytes, 0u);
}

TEST_F(RegistryTest, AJobIdReusedByAnotherUserGetsZeroedSegments) {
  OpenedSession a = Open("run1", 0, 1, /*uid=*/1000);
  auto obj = registry_->RegisterObject(a.session_id, a.token, "w", kParam, kF32, 1 << 18);
  ASSERT_TRUE(obj.ok()) << obj.status();
  uint8_t* bytes = arena_->Data(obj->extent);
  std::memset(bytes, 0xAB, obj->extent.size);
  registry_->DetachStream(a.session_id);
  now_ += milliseconds(1000);
  registry_->Tick();  // Grace over: "run1" is freed.
  ASSERT_EQ(JobCount(), 0u);
  // Another user names a job "run1" too: it must not inherit the old pages.
  OpenedSession b = Open("run1", 0, 1, /*uid=*/1001);
  EXPECT_FALSE(b.job_existed);
  for (int i = 0; i < 4; ++i) {
    auto mine = registry_->RegisterObject(b.session_id, b.token, "w" + std::to_string(i), kParam,
                                          kF32, 1 << 18);
    ASSERT_TRUE(mine.ok()) << mine.status();
    EXPECT_NE(mine->extent.segment_id, obj->extent.segment_id);
    const uint8_t* fresh = arena_->Data(mine->extent);
    for (uint64_t k = 0; k < mine->extent.size; k += 4093) ASSERT_EQ(fresh[k], 0) << k;
  }
}

TEST_F(RegistryTest, UnattachedSessionTimesOut) {
  auto s = registry_->OpenSession("job", 0, 1, PeerCreds{1, 1000, 1000});
  ASSERT_TRUE(s.ok());
  now_ += milliseconds(499);
  registry_->Tick();
  EXPECT_TRUE(registry_->Authenticate(s->session_id, s->token).ok());
  now_ += milliseconds(1);
  registry_->Tick();
  EXPECT_EQ(registry_->Authenticate(s->session_id, s->token).code(),
            absl::StatusCode::kNotFound);
}

TEST_F(RegistryTest, StreamOpsNeedAttachedSession) {
  auto s = registry_->OpenSession("job", 0, 1, PeerCreds{1, 1000, 1000});
  auto obj = registry_->RegisterObject(s->session_id, s->token, "w", kParam, kF32, 1);
  ASSERT_TRUE(obj.ok());
  EXPECT_EQ(registry_->Acquire(s->session_id, obj->id).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(registry_->AttachStream(s->session_id, s->token).ok());
  EXPECT_EQ(registry_->AttachStream(s->session_id, s->token).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(registry_->Acquire(s->session_id, obj->id).ok());
}

TEST_F(RegistryTest, QuotaNamesLimitAndUse) {
  RegistryOptions options;
  options.job_pinned_quota = 10000;
  Make(options);
  OpenedSession s = Open("job");
  ASSERT_TRUE(registry_->RegisterObject(s.session_id, s.token, "a", kParam, kF32, 2000).ok());
  auto over = registry_->RegisterObject(s.session_id, s.token, "b", kParam, kF32, 1000);
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(over.status().message().find("quota"), std::string::npos) << over.status();
  EXPECT_NE(over.status().message().find("10000 B"), std::string::npos) << over.status();
  EXPECT_NE(over.status().message().find("8000 B"), std::string::npos) << over.status();
  EXPECT_EQ(registry_->ListObjects(s.session_id, s.token)->size(), 1u);
  EXPECT_EQ(UsedBytes("job"), 8000u);
}

TEST_F(RegistryTest, WriteBackVersionsOnlyMoveForward) {
  OpenedSession s = Open("job");
  auto obj = registry_->RegisterObject(s.session_id, s.token, "w", kParam, kF32, 1);
  EXPECT_EQ(registry_->WriteBack(s.session_id, obj->id, 3).status().code(),
            absl::StatusCode::kFailedPrecondition);  // Not pinned.
  ASSERT_TRUE(registry_->Acquire(s.session_id, obj->id).ok());
  EXPECT_EQ(registry_->WriteBack(s.session_id, obj->id, 3)->version, 3u);
  EXPECT_EQ(registry_->WriteBack(s.session_id, obj->id, 2).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(registry_->ListObjects(s.session_id, s.token)->at(0).version, 3u);
}

TEST_F(RegistryTest, CountsAcquiredAndWrittenBackBytesPerJobOnlyOnSuccess) {
  OpenedSession s = Open("job");
  auto obj = registry_->RegisterObject(s.session_id, s.token, "w", kParam, kF32, 1000);
  ASSERT_TRUE(obj.ok()) << obj.status();
  const uint64_t size = obj->extent.size;
  auto counters = [&] {
    JobSnapshot snap = registry_->Jobs().at(0);
    return std::make_pair(snap.acquired_bytes, snap.written_back_bytes);
  };
  EXPECT_FALSE(registry_->WriteBack(s.session_id, obj->id, 1).ok());  // Not pinned.
  EXPECT_FALSE(registry_->Acquire(s.session_id, obj->id + 99).ok());  // Unknown object.
  EXPECT_EQ(counters(), std::make_pair(uint64_t{0}, uint64_t{0}));
  ASSERT_TRUE(registry_->Acquire(s.session_id, obj->id).ok());
  ASSERT_TRUE(registry_->Acquire(s.session_id, obj->id).ok());
  ASSERT_TRUE(registry_->WriteBack(s.session_id, obj->id, 1).ok());
  EXPECT_FALSE(registry_->WriteBack(s.session_id, obj->id, 0).ok());  // Older version.
  EXPECT_EQ(counters(), std::make_pair(2 * size, size));
}

TEST_F(RegistryTest, PoolExhaustionIsResourceExhausted) {
  OpenedSession s = Open("job");
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(registry_->RegisterObject(s.session_id, s.token, "o" + std::to_string(i), kParam,
                                          kF32, (1 << 18))
                    .ok());
  }
  auto r = registry_->RegisterObject(s.session_id, s.token, "more", kParam, kF32, 1);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  EXPECT_EQ(registry_->ListObjects(s.session_id, s.token)->size(), 4u);
}

TEST_F(RegistryTest, ConcurrentRegistrationsNeverPassTheQuota) {
  // Allocation runs outside the registry's lock; the quota must still hold
  // and names stay unique when many registrations race.
  RegistryOptions options;
  options.job_pinned_quota = 100 * 4000;
  Make(options);
  OpenedSession s = Open("job");
  std::atomic<int> ok{0}, exhausted{0}, duplicate{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 40; ++i) {
        // Threads 0-3 and 4-7 race on the same names.
        std::string name = "o" + std::to_string(t % 4) + "." + std::to_string(i);
        auto r = registry_->RegisterObject(s.session_id, s.token, name, kParam, kF32, 1000);
        if (r.ok()) ++ok;
        else if (r.status().code() == absl::StatusCode::kResourceExhausted) ++exhausted;
        else if (r.status().code() == absl::StatusCode::kAlreadyExists) ++duplicate;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 100);
  EXPECT_EQ(ok + exhausted + duplicate, 320);
  EXPECT_EQ(registry_->ListObjects(s.session_id, s.token)->size(), 100u);
  EXPECT_EQ(UsedBytes("job"), 100u * 4000);
}

TEST(TokenTest, WrongLength) {
  EXPECT_EQ(TokenFromBytes("short").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(TokenFromBytes(std::string(kSessionTokenBytes, 'x')).ok());
}

}  // namespace
}  // namespace spill::server
