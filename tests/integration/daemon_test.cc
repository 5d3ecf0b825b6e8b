// spilld as a process: start-up checks, socket modes, health, SIGTERM.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "spill/client.h"
#include "tests/integration/spilld_process.h"

namespace spill::testing {
namespace {

TEST(DaemonTest, SocketIs0660InA0750Directory) {
  auto d = SpilldProcess::Start();
  ASSERT_TRUE(d.ok()) << d.status();
  struct stat sock {}, dir {};
  ASSERT_EQ(::stat((*d)->socket_path().c_str(), &sock), 0);
  ASSERT_EQ(::stat(std::filesystem::path((*d)->socket_path()).parent_path().c_str(), &dir), 0);
  EXPECT_TRUE(S_ISSOCK(sock.st_mode));
  EXPECT_EQ(sock.st_mode & 0777, 0660u);
  EXPECT_EQ(dir.st_mode & 0777, 0750u);
  EXPECT_EQ((*d)->Stop(), 0);
  EXPECT_FALSE(std::filesystem::exists((*d)->socket_path())) << "socket not removed on exit";
}

TEST(DaemonTest, SigtermWithAttachedSessionExitsZeroAndClientSeesUnavailable) {
  auto d = SpilldProcess::Start();
  ASSERT_TRUE(d.ok()) << d.status();
  client::SessionOptions options;
  options.socket_path = (*d)->socket_path();
  options.job_id = "sigterm";
  auto session = client::Session::Open(options);
  ASSERT_TRUE(session.ok()) << session.status();
  auto obj = (*session)->Register("w", client::ObjectKind::kParamShard, client::DType::kFloat32,
                                  1024);
  ASSERT_TRUE(obj.ok()) << obj.status();
  ASSERT_TRUE((*session)->Acquire(obj->object_id)->Wait(std::chrono::seconds(10)).ok());
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ((*d)->Stop(), 0) << (*d)->output();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(8))
      << "an attached stream held up shutdown";
  EXPECT_NE((*d)->output().find("stopped cleanly"), std::string::npos) << (*d)->output();
  absl::Status after = (*session)->Ping()->Wait(std::chrono::seconds(10));
  EXPECT_FALSE(after.ok());
}

TEST(DaemonTest, RefusesALiveSocket) {
  auto d = SpilldProcess::Start();
  ASSERT_TRUE(d.ok()) << d.status();
  auto second = Spawn({SpilldPath(), "--socket=" + (*d)->socket_path(), "--pinned-bytes=8MiB"});
  ASSERT_TRUE(second.ok());
  std::string out = ReadAll(second->stdout_fd);
  EXPECT_NE(WaitExit(second->pid), 0);
  EXPECT_NE(out.find("already listening"), std::string::npos) << out;
  // The first daemon is untouched.
  EXPECT_TRUE((*d)->Stats().ok());
  EXPECT_EQ((*d)->Stop(), 0);
}

TEST(DaemonTest, ReplacesAStaleSocketFile) {
  std::string dir = ::testing::TempDir() + "/spilld-stale";
  std::filesystem::create_directories(dir);
  std::string path = dir + "/s.sock";
  std::filesystem::remove(path);
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strcpy(addr.sun_path, path.c_str());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ::close(fd);  // Bound, never listened: what a crashed daemon leaves.
  auto d = SpilldProcess::Start({"--socket=" + path});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ((*d)->Stop(), 0);
  std::filesystem::remove_all(dir);
}

TEST(DaemonTest, BadFlagsExitTwoNamingTheFlag) {
  struct Case {
    std::vector<std::string> args;
    std::string needle;
  } cases[] = {
      {{"--pinned-bytes=1GiB"}, "--socket"},
      {{"--socket=/tmp/x.sock", "--pinned-bytes=lots"}, "pinned-bytes"},
      {{"--socket=/tmp/x.sock", "--pinned-bytes=8MiB", "--nvme=/x"}, "nvme"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> argv = {SpilldPath()};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    auto p = Spawn(argv);
    ASSERT_TRUE(p.ok());
    std::string out = ReadAll(p->stdout_fd);
    EXPECT_EQ(WaitExit(p->pid), 2) << out;
    EXPECT_NE(out.find(c.needle), std::string::npos) << out;
  }
}

TEST(DaemonTest, RefusesToStartWhenMemlockLimitIsTooLow) {
  if (::access("/usr/bin/setpriv", X_OK) != 0 || ::access("/usr/bin/prlimit", X_OK) != 0) {
    GTEST_SKIP() << "needs setpriv and prlimit (util-linux)";
  }
  std::string dir = ::testing::TempDir() + "/spilld-memlock";
  // Without CAP_IPC_LOCK, RLIMIT_MEMLOCK binds even for root.
  auto p = Spawn({"/usr/bin/setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock",
                  "/usr/bin/prlimit", "--memlock=1048576", SpilldPath(),
                  "--socket=" + dir + "/s.sock", "--pinned-bytes=64MiB"});
  ASSERT_TRUE(p.ok());
  std::string out = ReadAll(p->stdout_fd);
  EXPECT_EQ(WaitExit(p->pid), 1) << out;
  EXPECT_NE(out.find("RLIMIT_MEMLOCK"), std::string::npos) << out;
  EXPECT_NE(out.find("ulimit -l"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir + "/s.sock"));
  std::filesystem::remove_all(dir);
}

TEST(DaemonTest, RefusesMoreMemoryThanTheMachineHas) {
  auto p = Spawn({SpilldPath(), "--socket=" + ::testing::TempDir() + "/spilld-huge.sock",
                  "--pinned-bytes=64TiB"});
  ASSERT_TRUE(p.ok());
  std::string out = ReadAll(p->stdout_fd);
  EXPECT_EQ(WaitExit(p->pid), 1) << out;
  EXPECT_NE(out.find("MemAvailable"), std::string::npos) << out;
}

// Whether process pid has exited: gone, or a zombie nobody reaped yet (its
// parent was killed, and init in a container need not reap it).
bool Exited(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  const size_t paren = line.rfind(')');
  return paren == std::string::npos || line.compare(paren + 2, 1, "Z") == 0;
}

// A spilld started for a process that is then killed goes too, cleanly,
// instead of keeping its pinned pool.
TEST(DaemonTest, StopsWhenItsParentIsKilled) {
  const std::string dir = ::testing::TempDir() + "/spilld-parent-" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto sh = Spawn({"/bin/sh", "-c",
                   "\"$0\" --socket=\"$1/s.sock\" --pinned-bytes=8MiB --parent-pid=$$ & "
                   "echo $! > \"$1/pid\"; wait",
                   SpilldPath(), dir});
  ASSERT_TRUE(sh.ok());
  pid_t spilld = 0;
  for (int i = 0; i < 200 && (spilld == 0 || !std::filesystem::exists(dir + "/s.sock")); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::ifstream(dir + "/pid") >> spilld;
  }
  ASSERT_GT(spilld, 0);
  ASSERT_TRUE(std::filesystem::exists(dir + "/s.sock")) << "spilld did not start";
  ASSERT_EQ(::kill(sh->pid, SIGKILL), 0);
  WaitExit(sh->pid);
  bool exited = false;
  for (int i = 0; i < 300 && !(exited = Exited(spilld)); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!exited) ::kill(spilld, SIGKILL);
  std::string out = ReadAll(sh->stdout_fd, std::chrono::seconds(5));
  EXPECT_TRUE(exited) << "spilld outlived its parent by 15 s: " << out;
  EXPECT_NE(out.find("SIGTERM"), std::string::npos) << out;
  EXPECT_NE(out.find("stopped cleanly"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir + "/s.sock"));
  std::filesystem::remove_all(dir);
}

TEST(DaemonTest, RefusesAParentPidThatIsNotItsParent) {
  const std::string sock = ::testing::TempDir() + "/spilld-notparent.sock";
  auto p = Spawn({SpilldPath(), "--socket=" + sock, "--pinned-bytes=8MiB", "--parent-pid=1"});
  ASSERT_TRUE(p.ok());
  std::string out = ReadAll(p->stdout_fd);
  EXPECT_EQ(WaitExit(p->pid), 2) << out;
  EXPECT_NE(out.find("--parent-pid=1 is not spilld's parent"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(sock));
}

TEST(DaemonTest, StandardHealthServiceAnswersServing) {
  auto d = SpilldProcess::Start();
  ASSERT_TRUE(d.ok()) << d.status();
  grpc::GenericStub stub((*d)->NewChannel());
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::ByteBuffer request;  // HealthCheckRequest{service: ""} encodes to nothing.
  grpc::Slice empty("", 0);
  request = grpc::ByteBuffer(&empty, 1);
  auto call = stub.PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check", request, &cq);
  call->StartCall();
  grpc::ByteBuffer response;
  grpc::Status status;
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  ASSERT_TRUE(cq.Next(&tag, &ok));
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // HealthCheckResponse{status: SERVING (1)} is field 1, varint 1.
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  EXPECT_EQ((*d)->Stop(), 0);
}

}  // namespace
}  // namespace spill::testing
