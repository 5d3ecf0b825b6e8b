// Sessions, objects and segments through libspill_client against a real
// spilld: data round trips, re-attach, isolation between jobs, zeroing,
// seals, and a client killed mid-stream.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <numeric>
#include <thread>

#include "common/fd_protocol.h"
#include "spill/client.h"
#include "tests/integration/spilld_process.h"

namespace spill::testing {
namespace {

using client::DType;
using client::ObjectKind;
using client::Session;
using std::chrono::seconds;

std::unique_ptr<Session> OpenOrDie(const std::string& socket, const std::string& job,
                                   int rank = 0, int world = 1) {
  client::SessionOptions options;
  options.socket_path = socket;
  options.job_id = job;
  options.rank = rank;
  options.world_size = world;
  auto s = Session::Open(options);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(*s) : nullptr;
}

const spill::v1::JobInfo* FindJob(const spill::v1::JobsResponse& jobs, const std::string& id) {
  for (const auto& j : jobs.jobs()) {
    if (j.job_id() == id) return &j;
  }
  return nullptr;
}

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = SpilldProcess::Start({"--job-grace=1s"});
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }
  void TearDown() override {
    if (daemon_) {
      EXPECT_EQ(daemon_->Stop(), 0) << daemon_->output();
    }
  }
  std::unique_ptr<SpilldProcess> daemon_;
};

TEST_F(SessionTest, WriteReadBackAndReattach) {
  auto s = OpenOrDie(daemon_->socket_path(), "job");
  ASSERT_NE(s, nullptr);
  EXPECT_FALSE(s->job_existed());
  auto obj = s->Register("master", ObjectKind::kMaster, DType::kFloat32, 100000);
  ASSERT_TRUE(obj.ok()) << obj.status();
  auto pinned = s->Acquire(obj->object_id)->Get(seconds(10));
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  auto data = s->Data<float>(*pinned);
  ASSERT_TRUE(data.ok()) << data.status();
  ASSERT_EQ(data->size(), 100000u);
  std::iota(data->begin(), data->end(), 0.5f);
  ASSERT_TRUE(s->WriteBack(obj->object_id, 1)->Wait(seconds(10)).ok());
  ASSERT_TRUE(s->Release(obj->object_id)->Wait(seconds(10)).ok());
  ASSERT_TRUE(s->Close().ok());

  auto again = OpenOrDie(daemon_->socket_path(), "job");
  ASSERT_NE(again, nullptr);
  EXPECT_TRUE(again->job_existed());
  auto list = again->List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].version, 1u);
  auto view = again->Acquire((*list)[0].object_id)->Get(seconds(10));
  ASSERT_TRUE(view.ok());
  auto back = again->Data<float>(*view);
  ASSERT_TRUE(back.ok()) << back.status();
  for (size_t i = 0; i < back->size(); ++i) ASSERT_EQ((*back)[i], 0.5f + i) << i;
  auto stats = daemon_->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->tiers(0).name(), "pinned");
  EXPECT_EQ(stats->tiers(0).used_bytes(), 400000u);
  EXPECT_GE(stats->bytes_in(), 400000u);
}

TEST_F(SessionTest, JobsCannotSeeOrTouchEachOther) {
  auto a = OpenOrDie(daemon_->socket_path(), "job-a");
  auto b = OpenOrDie(daemon_->socket_path(), "job-b");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  auto obj = a->Register("secret", ObjectKind::kParamShard, DType::kBFloat16, 4096);
  ASSERT_TRUE(obj.ok());
  EXPECT_TRUE(b->List()->empty());
  EXPECT_EQ(b->Acquire(obj->object_id)->Wait(seconds(10)).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(b->Prefetch(obj->object_id)->Wait(seconds(10)).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(b->Free(obj->object_id).code(), absl::StatusCode::kNotFound);
  // B cannot get A's segment even by asking for its id directly.
  auto bytes = b->Bytes(*obj);
  EXPECT_EQ(bytes.status().code(), absl::StatusCode::kPermissionDenied) << bytes.status();
  EXPECT_EQ(a->List()->size(), 1u);
}

TEST_F(SessionTest, SegmentIsZeroedBeforeAnotherJobGetsIt) {
  uint64_t segment = 0;
  {
    auto a = OpenOrDie(daemon_->socket_path(), "writer");
    // 8 MiB segments: fill one completely.
    auto obj = a->Register("fill", ObjectKind::kOther, DType::kUInt8, 8 << 20);
    ASSERT_TRUE(obj.ok()) << obj.status();
    segment = obj->location.segment_id;
    auto bytes = a->Bytes(*obj);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    std::memset(bytes->data(), 0xAB, bytes->size());
    ASSERT_TRUE(a->Free(obj->object_id).ok());
    ASSERT_TRUE(a->Close().ok());
  }
  auto b = OpenOrDie(daemon_->socket_path(), "reader");
  std::vector<uint64_t> ids;
  // Take every segment of the pool so the writer's old one is among them.
  for (int i = 0; i < 8; ++i) {
    auto obj = b->Register("r" + std::to_string(i), ObjectKind::kOther, DType::kUInt8, 8 << 20);
    ASSERT_TRUE(obj.ok()) << obj.status();
    EXPECT_NE(obj->location.segment_id, segment) << "segment id reused across jobs";
    auto bytes = b->Bytes(*obj);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    for (size_t k = 0; k < bytes->size(); k += 997) ASSERT_EQ((*bytes)[k], 0) << "segment " << i;
  }
}

TEST_F(SessionTest, ClientCannotShrinkASegmentAndDaemonSurvivesTheAttempt) {
  auto s = OpenOrDie(daemon_->socket_path(), "sealed");
  auto obj = s->Register("w", ObjectKind::kParamShard, DType::kFloat32, 1024);
  ASSERT_TRUE(obj.ok());
  // Fetch the segment fd ourselves over the fd channel, as a hostile client would.
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strcpy(addr.sun_path, daemon_->socket_path().c_str());
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  // A second session of the same job gives us a token to use.
  grpc::ClientContext ctx;
  spill::v1::OpenSessionRequest req;
  req.set_job_id("sealed");
  req.set_world_size(1);
  spill::v1::OpenSessionResponse resp;
  ASSERT_TRUE(daemon_->worker().OpenSession(&ctx, req, &resp).ok());
  FdHello hello{};
  std::memcpy(hello.magic, kFdMagic, sizeof(kFdMagic));
  hello.session_id = resp.session().session_id();
  std::memcpy(hello.token, resp.session().token().data(), kSessionTokenBytes);
  ASSERT_TRUE(SendAll(fd, &hello, sizeof(hello)).ok());
  FdReplyHeader header{};
  ASSERT_TRUE(RecvAll(fd, &header, sizeof(header)).ok());
  ASSERT_EQ(header.code, 0);
  FdRequest request{static_cast<uint32_t>(FdOp::kGetSegment), 0, obj->location.segment_id};
  ASSERT_TRUE(SendAll(fd, &request, sizeof(request)).ok());
  UniqueFd segment;
  ASSERT_TRUE(RecvAll(fd, &header, sizeof(header), &segment).ok());
  ASSERT_EQ(header.code, 0);
  ASSERT_TRUE(segment.valid());
  EXPECT_NE(::ftruncate(segment.get(), 0), 0);
  EXPECT_EQ(errno, EPERM);
  EXPECT_NE(::ftruncate(segment.get(), header.size_bytes * 2), 0);
  EXPECT_EQ(::fcntl(segment.get(), F_ADD_SEALS, F_SEAL_WRITE), -1);  // Seals are sealed.
  ::close(fd);
  // spilld and the first session still work, and the data path is intact.
  auto pinned = s->Acquire(obj->object_id)->Get(seconds(10));
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  auto data = s->Data<float>(*pinned);
  ASSERT_TRUE(data.ok());
  (*data)[1023] = 3.0f;
  EXPECT_TRUE(daemon_->Stats().ok());
}

TEST_F(SessionTest, WrongTokenOnTheFdChannelIsRefused) {
  auto s = OpenOrDie(daemon_->socket_path(), "job");
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strcpy(addr.sun_path, daemon_->socket_path().c_str());
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  FdHello hello{};
  std::memcpy(hello.magic, kFdMagic, sizeof(kFdMagic));
  hello.session_id = s->session_id();
  std::memset(hello.token, 0x5A, kSessionTokenBytes);
  ASSERT_TRUE(SendAll(fd, &hello, sizeof(hello)).ok());
  FdReplyHeader header{};
  ASSERT_TRUE(RecvAll(fd, &header, sizeof(header)).ok());
  EXPECT_EQ(header.code, static_cast<int>(absl::StatusCode::kUnauthenticated));
  ::close(fd);
}

TEST_F(SessionTest, KilledClientLosesItsPinsOthersAreUnaffected) {
  auto survivor = OpenOrDie(daemon_->socket_path(), "survivor");
  auto keep = survivor->Register("keep", ObjectKind::kMaster, DType::kFloat32, 1000);
  ASSERT_TRUE(keep.ok());
  ASSERT_TRUE(survivor->Acquire(keep->object_id)->Wait(seconds(10)).ok());

  const char* env = std::getenv("SPILL_TEST_CLIENT");  // Set when run from a bundle.
  auto child = Spawn({env != nullptr && *env ? env : SPILL_TEST_CLIENT_PATH,
                      daemon_->socket_path(), "victim"});
  ASSERT_TRUE(child.ok());
  // The child prints "ready" once it holds a pin, then blocks forever.
  std::string line;
  char c;
  while (line.find("ready") == std::string::npos && ::read(child->stdout_fd, &c, 1) == 1) {
    line += c;
  }
  ASSERT_NE(line.find("ready"), std::string::npos) << line;
  auto jobs = daemon_->Jobs();
  ASSERT_TRUE(jobs.ok());
  const auto* victim = FindJob(*jobs, "victim");
  ASSERT_NE(victim, nullptr);
  ASSERT_EQ(victim->sessions_size(), 1);
  EXPECT_EQ(victim->sessions(0).pins(), 1u);

  ::kill(child->pid, SIGKILL);
  WaitExit(child->pid);
  ::close(child->stdout_fd);
  // The stream's end reaches spilld asynchronously; poll for it.
  const spill::v1::JobInfo* after = nullptr;
  spill::v1::JobsResponse latest;
  for (int i = 0; i < 200; ++i) {
    latest = *daemon_->Jobs();
    after = FindJob(latest, "victim");
    if (after != nullptr && after->sessions_size() == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  ASSERT_NE(after, nullptr) << "job vanished before its grace period";
  EXPECT_EQ(after->sessions_size(), 0);
  EXPECT_EQ(after->state(), "grace");
  EXPECT_EQ(after->objects(), 1u);

  // The survivor still works and still holds its pin.
  EXPECT_TRUE(survivor->Ping()->Wait(seconds(10)).ok());
  const auto* mine = FindJob(latest, "survivor");
  ASSERT_NE(mine, nullptr);
  EXPECT_EQ(mine->sessions(0).pins(), 1u);
  EXPECT_TRUE(survivor->Release(keep->object_id)->Wait(seconds(10)).ok());

  // After the grace period (1 s) the victim's objects are freed.
  for (int i = 0; i < 200; ++i) {
    latest = *daemon_->Jobs();
    if (FindJob(latest, "victim") == nullptr) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  EXPECT_EQ(FindJob(latest, "victim"), nullptr);
}

TEST_F(SessionTest, ListsAJobWithThousandsOfObjects) {
  // Requests are capped at 64 KiB; a job's object list is far larger.
  auto s = OpenOrDie(daemon_->socket_path(), "many");
  for (int i = 0; i < 3000; ++i) {
    auto obj = s->Register("layer." + std::to_string(i) + ".attention.qkv.param_shard.rank0",
                           ObjectKind::kParamShard, DType::kBFloat16, 8);
    ASSERT_TRUE(obj.ok()) << obj.status();
  }
  auto list = s->List();
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(list->size(), 3000u);
}

TEST_F(SessionTest, ManyConcurrentRequestsAllAnswered) {
  auto s = OpenOrDie(daemon_->socket_path(), "busy");
  auto obj = s->Register("w", ObjectKind::kParamShard, DType::kBFloat16, 1 << 16);
  ASSERT_TRUE(obj.ok());
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        if (!s->Acquire(obj->object_id)->Wait(seconds(10)).ok()) ++failures;
        if (!s->Release(obj->object_id)->Wait(seconds(10)).ok()) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  auto list = s->List();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ((*list)[0].pin_count, 0u);
}

}  // namespace
}  // namespace spill::testing
