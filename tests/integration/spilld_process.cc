#include "tests/integration/spilld_process.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include <cstdlib>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/units.h"
#include "proto/grpc_status.h"

extern char** environ;

namespace spill::testing {

std::string SpilldPath() {
  const char* env = std::getenv("SPILL_SPILLD");  // Set when run from a bundle.
  return env != nullptr && *env != '\0' ? env : SPILL_SPILLD_PATH;
}

absl::StatusOr<SpawnResult> Spawn(const std::vector<std::string>& argv) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return absl::ErrnoToStatus(errno, "pipe2");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 1);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(pipe_fds[1]);
  if (rc != 0) {
    ::close(pipe_fds[0]);
    return absl::ErrnoToStatus(rc, absl::StrCat("posix_spawn ", argv[0]));
  }
  return SpawnResult{pid, pipe_fds[0]};
}

int WaitExit(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

std::string ReadAll(int fd, std::chrono::milliseconds deadline) {
  std::string out;
  auto end = std::chrono::steady_clock::now() + deadline;
  char buf[4096];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        end - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

namespace {

// True when something accepts connections on the Unix socket at path (the
// probe sends nothing, so spilld drops it after its handshake timeout).
bool CanConnect(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SpilldProcess>> SpilldProcess::Start(
    std::vector<std::string> flags) {
  std::unique_ptr<SpilldProcess> p(new SpilldProcess());
  std::string tmpl = (std::filesystem::temp_directory_path() / "spilld-test-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) return absl::ErrnoToStatus(errno, "mkdtemp");
  p->dir_ = tmpl;
  p->socket_path_ = tmpl + "/run/spilld.sock";
  auto has = [&](const std::string& name) {
    for (const auto& f : flags) {
      if (f.rfind(name, 0) == 0) return true;
    }
    return false;
  };
  std::vector<std::string> argv = {SpilldPath()};
  for (const auto& f : flags) {
    if (f.rfind("--socket=", 0) == 0) p->socket_path_ = f.substr(9);
  }
  if (!has("--socket=")) argv.push_back("--socket=" + p->socket_path_);
  if (!has("--pinned-bytes")) argv.push_back("--pinned-bytes=64MiB");
  if (!has("--segment-bytes")) argv.push_back("--segment-bytes=8MiB");
  // spilld goes when this process does, even killed (it would keep its pool).
  if (!has("--parent-pid")) argv.push_back("--parent-pid=" + std::to_string(::getpid()));
  argv.insert(argv.end(), flags.begin(), flags.end());
  auto spawned = Spawn(argv);
  if (!spawned.ok()) return spawned.status();
  p->pid_ = spawned->pid;
  p->out_fd_ = spawned->stdout_fd;
  // Wait until the socket accepts connections; a gRPC channel created
  // earlier would sit in its reconnect backoff. spilld populates and locks
  // its pinned pool first: 20 s plus 1.5 s per GiB of it (a 108 GiB
  // pool took over 74 s on an H100 node).
  uint64_t pinned = 0;
  for (const auto& f : flags) {
    if (f.rfind("--pinned-bytes=", 0) == 0) pinned = ParseSize(f.substr(15)).value_or(0);
  }
  const auto wait = std::chrono::seconds(20 + 3 * pinned / (2ull << 30));
  auto deadline = std::chrono::steady_clock::now() + wait;
  for (;;) {
    int status = 0;
    if (::waitpid(p->pid_, &status, WNOHANG) == p->pid_) {
      p->pid_ = -1;
      std::string out = ReadAll(p->out_fd_);
      p->out_fd_ = -1;
      return absl::FailedPreconditionError(absl::StrCat("spilld exited at start: ", out));
    }
    if (CanConnect(p->socket_path_)) break;
    if (std::chrono::steady_clock::now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("spilld did not listen within ", wait.count(), " s"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // Polling a process start.
  }
  p->channel_ = p->NewChannel();
  p->admin_ = spill::v1::Admin::NewStub(p->channel_);
  p->worker_ = spill::v1::Worker::NewStub(p->channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  spill::v1::HealthResponse health;
  grpc::Status s = p->admin_->Health(&ctx, {}, &health);
  if (!s.ok() || health.status() != "SERVING") {
    return absl::UnavailableError(absl::StrCat("spilld is not healthy: ", s.error_message(), " ",
                                               health.status()));
  }
  return p;
}

std::shared_ptr<grpc::Channel> SpilldProcess::NewChannel() const {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // A connection of its own.
  return grpc::CreateCustomChannel("unix:" + socket_path_, grpc::InsecureChannelCredentials(),
                                   args);
}

int SpilldProcess::Stop() {
  if (pid_ < 0) return -1;
  ::kill(pid_, SIGTERM);
  int code = WaitExit(pid_);
  pid_ = -1;
  if (out_fd_ >= 0) {
    output_ = ReadAll(out_fd_, std::chrono::seconds(2));
    out_fd_ = -1;
  }
  return code;
}

SpilldProcess::~SpilldProcess() {
  if (pid_ >= 0) {
    ::kill(pid_, SIGKILL);
    WaitExit(pid_);
  }
  if (out_fd_ >= 0) ::close(out_fd_);
  std::error_code ec;
  if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
}

absl::StatusOr<spill::v1::StatsResponse> SpilldProcess::Stats() {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  spill::v1::StatsResponse out;
  absl::Status s = FromGrpcStatus(admin_->Stats(&ctx, {}, &out));
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<spill::v1::JobsResponse> SpilldProcess::Jobs() {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  spill::v1::JobsResponse out;
  absl::Status s = FromGrpcStatus(admin_->Jobs(&ctx, {}, &out));
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<std::string> MakeNvmeScratchDir(const std::string& prefix) {
  const char* env = std::getenv("SPILL_TEST_NVME_DIR");
  std::string tmpl = std::string(env != nullptr && *env ? env : "/var/tmp") + "/" + prefix + "-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("cannot make a scratch dir ", tmpl, ": ",
                                            std::strerror(errno)));
  }
  const std::string probe = tmpl + "/probe";
  const int fd = ::open(probe.c_str(), O_CREAT | O_RDWR | O_DIRECT, 0600);
  if (fd < 0) {
    const int err = errno;
    std::error_code ec;
    std::filesystem::remove_all(tmpl, ec);
    return absl::FailedPreconditionError(
        absl::StrCat(tmpl, " has no O_DIRECT (", std::strerror(err),
                     "); set SPILL_TEST_NVME_DIR to a directory on a disk file system"));
  }
  ::close(fd);
  return tmpl;
}

}  // namespace spill::testing
