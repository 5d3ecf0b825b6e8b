// Objects with home NVMe against a real spilld with a real NVMe tier (files
// under $SPILL_TEST_NVME_DIR, else /var/tmp; skipped when the file system
// has no O_DIRECT): eviction and read-back, restart, kill -9 during
// write-back, DropJob permissions, bad input.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "spill/client.h"
#include "tests/integration/metric_value.h"
#include "tests/integration/spilld_process.h"

namespace spill::testing {
namespace {

using client::DType;
using client::ObjectHome;
using client::ObjectKind;
using client::Session;
using std::chrono::seconds;

constexpr uint64_t kObjBytes = 3 << 20;

// Content of version `version` of the object named `name`.
void Fill(uint8_t* p, uint64_t n, uint64_t salt, uint64_t version) {
  uint64_t x = (salt + 1) * 0x9E3779B97F4A7C15ull ^ (version + 3) * 0xC2B2AE3D27D4EB4Full;
  for (uint64_t i = 0; i < n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(p + i, &x, std::min<uint64_t>(8, n - i));
  }
}

int64_t FirstMismatch(const uint8_t* p, uint64_t n, uint64_t salt, uint64_t version) {
  std::vector<uint8_t> want(n);
  Fill(want.data(), n, salt, version);
  for (uint64_t i = 0; i < n; ++i) {
    if (p[i] != want[i]) return static_cast<int64_t>(i);
  }
  return -1;
}

class NvmeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::string> dir = MakeNvmeScratchDir("spill-nvme-it");
    if (absl::IsFailedPrecondition(dir.status())) GTEST_SKIP() << dir.status().message();
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = *dir;
    std::filesystem::create_directories(dir_ + "/nvme");
  }
  void TearDown() override {
    if (daemon_) {
      int code = daemon_->Stop();
      EXPECT_EQ(code, 0) << daemon_->output();
    }
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  std::vector<std::string> Flags() const {
    return {"--pinned-bytes=16MiB", "--segment-bytes=4MiB", "--nvme-dirs=" + dir_ + "/nvme",
            "--nvme-capacity=256MiB", "--aio-block-size=256KiB", "--job-grace=2m"};
  }
  void StartDaemon(std::vector<std::string> extra = {}) {
    std::vector<std::string> flags = Flags();
    flags.insert(flags.end(), extra.begin(), extra.end());
    auto d = SpilldProcess::Start(flags);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }

  std::unique_ptr<Session> OpenSession(const std::string& job) {
    client::SessionOptions options;
    options.socket_path = daemon_->socket_path();
    options.job_id = job;
    options.timeout = std::chrono::seconds(60);
    auto s = Session::Open(options);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }

  // Registers n objects of kObjBytes with home NVME, not yet resident.
  std::vector<uint64_t> RegisterNvmeObjects(Session& s, int n) {
    std::vector<uint64_t> ids;
    for (int i = 0; i < n; ++i) {
      auto obj = s.Register("p" + std::to_string(i), ObjectKind::kParamShard, DType::kUInt8,
                            kObjBytes, ObjectHome::kNvme);
      EXPECT_TRUE(obj.ok()) << obj.status();
      if (!obj.ok()) return ids;
      EXPECT_EQ(obj->home, ObjectHome::kNvme);
      EXPECT_FALSE(obj->resident());
      ids.push_back(obj->object_id);
    }
    return ids;
  }

  // Acquire for write, fill (salt, version), write back, release.
  void Write(Session& s, uint64_t id, uint64_t salt, uint64_t version) {
    auto acquire = s.Acquire(id, /*for_write=*/true);
    ASSERT_TRUE(acquire->Wait(seconds(30)).ok()) << acquire->status();
    auto bytes = s.Bytes(acquire->object());
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    Fill(bytes->data(), bytes->size(), salt, version);
    auto wb = s.WriteBack(id, version);
    ASSERT_TRUE(wb->Wait(seconds(30)).ok()) << wb->status();
    ASSERT_TRUE(s.Release(id)->Wait(seconds(30)).ok());
  }

  // Acquires, returns the first byte that differs from (salt, version).
  int64_t Check(Session& s, uint64_t id, uint64_t salt, uint64_t version) {
    auto acquire = s.Acquire(id);
    absl::Status st = acquire->Wait(seconds(30));
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) return -2;
    auto bytes = s.Bytes(acquire->object());
    EXPECT_TRUE(bytes.ok()) << bytes.status();
    if (!bytes.ok()) return -2;
    int64_t bad = FirstMismatch(bytes->data(), bytes->size(), salt, version);
    EXPECT_TRUE(s.Release(id)->Wait(seconds(30)).ok());
    return bad;
  }

  std::string dir_;
  std::unique_ptr<SpilldProcess> daemon_;
};

TEST_F(NvmeTest, ObjectsLargerThanThePinnedPoolAreEvictedAndReadBack) {
  StartDaemon({"--metrics-address=127.0.0.1:0"});
  auto s = OpenSession("big");
  ASSERT_NE(s, nullptr);
  // 8 x 3 MiB = 24 MiB of objects over a 16 MiB pinned pool.
  std::vector<uint64_t> ids = RegisterNvmeObjects(*s, 8);
  ASSERT_EQ(ids.size(), 8u);
  for (int i = 0; i < 8; ++i) Write(*s, ids[i], i, 1);
  ASSERT_TRUE(s->Flush().ok());
  // Read back in another order, with prefetches ahead.
  for (int i = 7; i >= 0; --i) {
    if (i > 0) s->Prefetch(ids[i - 1]);
    EXPECT_EQ(Check(*s, ids[i], i, 1), -1) << "object " << i;
  }
  for (int i = 0; i < 8; ++i) EXPECT_EQ(Check(*s, ids[i], i, 1), -1) << "object " << i;
  // Pipelined without waiting: each release is read after its acquire has
  // been answered (the acquire may have to read from NVMe first).
  std::vector<std::shared_ptr<client::Work>> works;
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < 8; ++i) {
      works.push_back(s->Acquire(ids[i]));
      works.push_back(s->Release(ids[i]));
    }
  }
  for (size_t k = 0; k < works.size(); ++k) {
    EXPECT_TRUE(works[k]->Wait(seconds(30)).ok()) << "request " << k << ": " << works[k]->status();
  }
  auto list = s->List();
  ASSERT_TRUE(list.ok());
  for (const auto& o : *list) {
    EXPECT_EQ(o.home, ObjectHome::kNvme);
    EXPECT_EQ(o.version, 1u);
  }
  // The pool really was too small: copies were evicted and read back.
  EXPECT_GT(MetricValue(*daemon_, "spill_tiering_evictions_total"), 0);
  EXPECT_GT(MetricValue(*daemon_, "spill_tiering_reads_total"), 0);
  EXPECT_GE(MetricValue(*daemon_, "spill_tiering_writebacks_total"), 8);
  // A pinned object of the same job still works beside them.
  auto pinned = s->Register("pinned", ObjectKind::kOther, DType::kFloat32, 1024);
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  EXPECT_EQ(pinned->home, ObjectHome::kPinned);
}

// The access order a worker sends (its parameter trace) decides what is
// evicted: the object used furthest ahead goes, where least-recently-used
// would have dropped another; a bad id is refused and changes nothing.
TEST_F(NvmeTest, TheAccessOrderDecidesWhatIsEvicted) {
  StartDaemon({"--metrics-address=127.0.0.1:0"});
  auto s = OpenSession("order");
  ASSERT_NE(s, nullptr);
  std::vector<uint64_t> ids = RegisterNvmeObjects(*s, 8);
  ASSERT_EQ(ids.size(), 8u);
  // One object per 4 MiB segment: the last four written (4..7) stay
  // resident, least recently used first.
  for (int i = 0; i < 8; ++i) Write(*s, ids[i], i, 1);
  ASSERT_TRUE(s->Flush().ok());
  auto reads = [&] { return MetricValue(*daemon_, "spill_tiering_reads_total"); };
  auto bad = s->SetAccessOrder({ids[0], 987654321});
  EXPECT_FALSE(bad->Wait(seconds(30)).ok());
  EXPECT_EQ(bad->status().code(), absl::StatusCode::kNotFound) << bad->status();
  EXPECT_NE(bad->status().message().find("987654321"), std::string::npos) << bad->status();
  // Object 0 comes first, then 4, 5, 6, 7: 7 is used furthest ahead, so
  // acquiring 0 evicts 7 (least-recently-used would have evicted 4).
  auto order = s->SetAccessOrder({ids[0], ids[4], ids[5], ids[6], ids[7]});
  ASSERT_TRUE(order->Wait(seconds(30)).ok()) << order->status();
  const double r0 = reads();
  ASSERT_GE(r0, 0);
  EXPECT_EQ(Check(*s, ids[0], 0, 1), -1);
  EXPECT_EQ(reads(), r0 + 1);  // 0 was read from NVMe
  EXPECT_EQ(Check(*s, ids[4], 4, 1), -1);
  EXPECT_EQ(reads(), r0 + 1) << "object 4 (used next) was evicted";
  EXPECT_EQ(Check(*s, ids[7], 7, 1), -1);
  EXPECT_EQ(reads(), r0 + 2) << "object 7 (used furthest ahead) was kept";
}

TEST_F(NvmeTest, RestartKeepsFlushedAndGracefullyStoppedObjects) {
  StartDaemon();
  std::vector<uint64_t> ids;
  {
    auto s = OpenSession("persist");
    ASSERT_NE(s, nullptr);
    for (int i = 0; i < 3; ++i) {
      auto obj = s->Register("w" + std::to_string(i), ObjectKind::kMaster, DType::kFloat32,
                             (64 << 10) * (i + 1), ObjectHome::kNvme);
      ASSERT_TRUE(obj.ok()) << obj.status();
      ids.push_back(obj->object_id);
      Write(*s, obj->object_id, 100 + i, 5);
    }
    ASSERT_TRUE(s->Flush().ok());
    // Written back, not flushed: SIGTERM makes it durable before exit.
    Write(*s, ids[2], 102, 6);
  }
  ASSERT_EQ(daemon_->Stop(), 0) << daemon_->output();
  StartDaemon();
  auto jobs = daemon_->Jobs();
  ASSERT_TRUE(jobs.ok());
  ASSERT_EQ(jobs->jobs_size(), 1);
  EXPECT_EQ(jobs->jobs(0).job_id(), "persist");
  EXPECT_EQ(jobs->jobs(0).state(), "recovered");
  EXPECT_EQ(jobs->jobs(0).objects(), 3u);
  EXPECT_EQ(jobs->jobs(0).nvme_objects(), 3u);
  auto s = OpenSession("persist");
  ASSERT_NE(s, nullptr);
  EXPECT_TRUE(s->job_existed());
  auto list = s->List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 3u);
  std::map<uint64_t, uint64_t> versions;
  for (const auto& o : *list) versions[o.object_id] = o.version;
  EXPECT_EQ(versions[ids[0]], 5u);
  EXPECT_EQ(versions[ids[1]], 5u);
  EXPECT_EQ(versions[ids[2]], 6u);
  EXPECT_EQ(Check(*s, ids[0], 100, 5), -1);
  EXPECT_EQ(Check(*s, ids[1], 101, 5), -1);
  EXPECT_EQ(Check(*s, ids[2], 102, 6), -1);
  EXPECT_EQ(daemon_->Jobs()->jobs(0).state(), "active");
}

TEST_F(NvmeTest, KillNineDuringWriteBackKeepsEveryAcknowledgedVersion) {
  constexpr int kObjects = 3;
  constexpr int kRounds = 20;
  std::vector<uint64_t> ids;
  std::vector<uint64_t> acked(kObjects, 0);
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE(::testing::Message() << "round " << round);
    StartDaemon();
    auto s = OpenSession("crashy");
    ASSERT_NE(s, nullptr);
    if (round == 0) {
      for (int i = 0; i < kObjects; ++i) {
        auto obj = s->Register("o" + std::to_string(i), ObjectKind::kParamShard, DType::kUInt8,
                               512 << 10, ObjectHome::kNvme);
        ASSERT_TRUE(obj.ok()) << obj.status();
        ids.push_back(obj->object_id);
      }
    } else {
      // Every acknowledged version is there, intact; nothing newer than the
      // write in flight at the kill is reported.
      ASSERT_TRUE(s->job_existed());
      auto list = s->List();
      ASSERT_TRUE(list.ok()) << list.status();
      ASSERT_EQ(list->size(), static_cast<size_t>(kObjects));
      for (int i = 0; i < kObjects; ++i) {
        const auto& o = (*list)[i];
        ASSERT_EQ(o.object_id, ids[i]);
        ASSERT_GE(o.version, acked[i]);
        ASSERT_LE(o.version, acked[i] + 1);  // The unflushed write may have landed.
        ASSERT_EQ(Check(*s, ids[i], i, o.version), -1) << "object " << i;
        acked[i] = o.version;
      }
    }
    for (int i = 0; i < kObjects; ++i) Write(*s, ids[i], i, acked[i] + 1);
    ASSERT_TRUE(s->Flush().ok());
    for (int i = 0; i < kObjects; ++i) ++acked[i];
    // Another write-back, then kill -9 while it may be in flight.
    for (int i = 0; i < kObjects; ++i) Write(*s, ids[i], i, acked[i] + 1);
    ::kill(daemon_->pid(), SIGKILL);
    EXPECT_EQ(daemon_->Stop(), 128 + SIGKILL);
    s.reset();
    daemon_.reset();
  }
}

// Overwrites the first `bytes` of a file with a pattern no checksum matches.
void Scribble(const std::string& path, uint64_t bytes) {
  int fd = ::open(path.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  std::vector<uint8_t> junk(bytes, 0x5A);
  ASSERT_EQ(::pwrite(fd, junk.data(), junk.size(), 0), static_cast<ssize_t>(junk.size()));
  ::fsync(fd);
  ::close(fd);
}

TEST_F(NvmeTest, CorruptNvmeDataIsDataLossAndSpilldServesOn) {
  StartDaemon();
  uint64_t id = 0;
  {
    auto s = OpenSession("victim");
    ASSERT_NE(s, nullptr);
    auto obj = s->Register("w", ObjectKind::kMaster, DType::kUInt8, 256 << 10, ObjectHome::kNvme);
    ASSERT_TRUE(obj.ok()) << obj.status();
    id = obj->object_id;
    Write(*s, id, 9, 1);
    ASSERT_TRUE(s->Flush().ok());
  }
  ASSERT_EQ(daemon_->Stop(), 0) << daemon_->output();
  // The object's bytes are within the first extents of the data file.
  Scribble(dir_ + "/nvme/spill-nvme.data", 8 << 20);
  StartDaemon();
  auto s = OpenSession("victim");
  ASSERT_NE(s, nullptr);
  ASSERT_TRUE(s->job_existed());
  absl::Status st = s->Acquire(id)->Wait(seconds(30));
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_NE(st.message().find("w"), std::string::npos) << st;
  // Nothing was handed out; the session and spilld go on.
  EXPECT_TRUE(s->Ping()->Wait(seconds(10)).ok());
  auto pinned = s->Register("fresh", ObjectKind::kOther, DType::kUInt8, 4096);
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  EXPECT_TRUE(s->Acquire(pinned->object_id)->Wait(seconds(10)).ok());
  auto other = s->Register("other", ObjectKind::kOther, DType::kUInt8, 4096, ObjectHome::kNvme);
  ASSERT_TRUE(other.ok()) << other.status();
  Write(*s, other->object_id, 4, 1);
  EXPECT_EQ(Check(*s, other->object_id, 4, 1), -1);
}

TEST_F(NvmeTest, CorruptManifestStopsTheStartByName) {
  StartDaemon();
  {
    auto s = OpenSession("m");
    ASSERT_NE(s, nullptr);
    auto obj = s->Register("w", ObjectKind::kMaster, DType::kUInt8, 4096, ObjectHome::kNvme);
    ASSERT_TRUE(obj.ok());
    Write(*s, obj->object_id, 1, 1);
    ASSERT_TRUE(s->Flush().ok());
  }
  ASSERT_EQ(daemon_->Stop(), 0) << daemon_->output();
  daemon_.reset();
  const std::string manifest = dir_ + "/nvme/manifest";
  ASSERT_TRUE(std::filesystem::exists(manifest));
  std::filesystem::resize_file(manifest, std::filesystem::file_size(manifest) / 2);
  auto d = SpilldProcess::Start(Flags());
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("manifest"), std::string::npos) << d.status();
  EXPECT_NE(d.status().message().find("corrupt"), std::string::npos) << d.status();
}

TEST_F(NvmeTest, DropJobIsForRootOrTheOwner) {
  StartDaemon();
  auto s = OpenSession("owned");
  ASSERT_NE(s, nullptr);
  auto obj = s->Register("x", ObjectKind::kOther, DType::kUInt8, 4096, ObjectHome::kNvme);
  ASSERT_TRUE(obj.ok());
  if (::geteuid() == 0) {
    // spillctl run as nobody: the job belongs to root.
    std::string sock_dir = std::filesystem::path(daemon_->socket_path()).parent_path();
    ::chmod(daemon_->dir().c_str(), 0755);
    ::chmod(sock_dir.c_str(), 0755);
    ::chmod(daemon_->socket_path().c_str(), 0666);
    auto spawned = Spawn({"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          SPILLCTL_PATH, "--socket=" + daemon_->socket_path(), "drop-job",
                          "owned"});
    ASSERT_TRUE(spawned.ok()) << spawned.status();
    std::string out = ReadAll(spawned->stdout_fd);
    EXPECT_EQ(WaitExit(spawned->pid), 1) << out;
    EXPECT_NE(out.find("belongs to uid 0"), std::string::npos) << out;
    EXPECT_EQ(daemon_->Jobs()->jobs_size(), 1);
  }
  spill::v1::DropJobRequest unknown;
  unknown.set_job_id("nope");
  spill::v1::DropJobResponse response;
  grpc::ClientContext c1;
  EXPECT_EQ(daemon_->admin().DropJob(&c1, unknown, &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
  auto spawned = Spawn({SPILLCTL_PATH, "--socket=" + daemon_->socket_path(), "drop-job", "owned"});
  ASSERT_TRUE(spawned.ok());
  std::string out = ReadAll(spawned->stdout_fd);
  EXPECT_EQ(WaitExit(spawned->pid), 0) << out;
  EXPECT_EQ(daemon_->Jobs()->jobs_size(), 0);
  // The dropped session's requests now fail cleanly.
  EXPECT_FALSE(s->Acquire(obj->object_id)->Wait(seconds(10)).ok());
}

TEST_F(NvmeTest, BadInputGetsClearErrors) {
  // No NVMe tier: an NVMe home is refused by name, nothing is registered.
  {
    auto d = SpilldProcess::Start({"--pinned-bytes=16MiB", "--segment-bytes=4MiB"});
    ASSERT_TRUE(d.ok()) << d.status();
    client::SessionOptions options;
    options.socket_path = (*d)->socket_path();
    options.job_id = "no-tier";
    auto s = Session::Open(options);
    ASSERT_TRUE(s.ok()) << s.status();
    auto obj = (*s)->Register("x", ObjectKind::kOther, DType::kUInt8, 4096, ObjectHome::kNvme);
    EXPECT_EQ(obj.status().code(), absl::StatusCode::kFailedPrecondition) << obj.status();
    EXPECT_NE(obj.status().message().find("--nvme-dirs"), std::string::npos) << obj.status();
    EXPECT_TRUE((*s)->List()->empty());
    EXPECT_TRUE((*s)->Flush().ok());  // Nothing to flush.
    s->reset();
    EXPECT_EQ((*d)->Stop(), 0);
  }
  StartDaemon();
  // An unknown home value.
  grpc::ClientContext c1;
  spill::v1::OpenSessionRequest open;
  open.set_job_id("raw");
  open.set_world_size(1);
  spill::v1::OpenSessionResponse opened;
  ASSERT_TRUE(daemon_->worker().OpenSession(&c1, open, &opened).ok());
  spill::v1::RegisterObjectRequest reg;
  *reg.mutable_session() = opened.session();
  reg.set_name("odd");
  reg.set_kind(spill::v1::OBJECT_KIND_OTHER);
  reg.set_dtype(spill::v1::DTYPE_UINT8);
  reg.set_num_elements(4096);
  reg.set_home(static_cast<spill::v1::ObjectHome>(7));
  spill::v1::RegisterObjectResponse registered;
  grpc::ClientContext c2;
  grpc::Status st = daemon_->worker().RegisterObject(&c2, reg, &registered);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("home 7"), std::string::npos) << st.error_message();
  // --manifest-dir without an NVMe tier is refused at start.
  auto bad = SpilldProcess::Start({"--pinned-bytes=16MiB", "--manifest-dir=" + dir_});
  EXPECT_FALSE(bad.ok());
}

}  // namespace
}  // namespace spill::testing
