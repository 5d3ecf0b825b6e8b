// control_rtt: the control round trip over spilld's Unix socket.
//
// Starts a real spilld, opens one session per client thread, and has each
// thread send Ping requests on its session stream back to back for a fixed
// time; 8 clients also as 8 processes with one session each, as the ranks
// of a job on one node are (metrics *_8processes_*). Reports p50/p99
// latency and requests/s. Two floors are measured in the same run:
// - a bare ping-pong of 8-byte messages over a Unix socketpair between two
//   threads, the floor any protocol over that socket can reach on this
//   machine (the latencies' baseline);
// - a bare gRPC echo stream of 8-byte messages with 1 and 8 client threads
//   (metrics *_grpc_echo, bench/grpc_echo.h), the floor gRPC itself sets
//   (the rates' baseline, and grpc_echo_p50_us beside each p50).
#include <fcntl.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "bench/bench_json.h"
#include "bench/grpc_echo.h"
#include "common/mutex_checks.h"
#include "spill/client.h"
#include "tests/integration/spilld_process.h"

namespace {

using Clock = std::chrono::steady_clock;
using spill::bench::Emit;
using spill::bench::Result;

// A Ping request and its answer are a few bytes each; the echo sends this many.
constexpr size_t kPingMessageBytes = 8;
constexpr char kEchoWhat[] =
    "bare gRPC echo stream over a Unix socket, no Spill: callback server in its own "
    "process; see bench/grpc_echo.h for the client";

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  size_t k = static_cast<size_t>(q * (v.size() - 1));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[k];
}

// Round trips of 8 bytes over a socketpair; returns latencies in µs.
std::vector<double> SocketPingPong(std::chrono::milliseconds duration) {
  int fds[2];
  ::socketpair(AF_UNIX, SOCK_STREAM, 0, fds);
  std::thread echo([fd = fds[1]] {
    char buf[8];
    while (::read(fd, buf, 8) == 8) {
      if (::write(fd, buf, 8) != 8) break;
    }
  });
  std::vector<double> lat;
  char buf[8] = {};
  auto end = Clock::now() + duration;
  while (Clock::now() < end) {
    auto t0 = Clock::now();
    if (::write(fds[0], buf, 8) != 8 || ::read(fds[0], buf, 8) != 8) break;
    lat.push_back(
        std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  ::close(fds[0]);
  echo.join();
  ::close(fds[1]);
  return lat;
}

struct RunResult {
  std::vector<double> latencies_us;
  double requests_per_s = 0;
  int failures = 0;
  double latest_start_s = 0;  // client processes: the last one's lateness
};

std::unique_ptr<spill::client::Session> OpenSession(const std::string& socket, int rank,
                                                    int world) {
  spill::client::SessionOptions options;
  options.socket_path = socket;
  options.job_id = "rtt-" + std::to_string(world);
  options.rank = rank;
  options.world_size = world;
  auto s = spill::client::Session::Open(options);
  if (!s.ok()) {
    std::fprintf(stderr, "control_rtt: %s\n", s.status().ToString().c_str());
    std::exit(1);
  }
  (void)(*s)->Ping()->Wait(std::chrono::seconds(10));  // Warm the stream up.
  return std::move(*s);
}

// Pings back to back from start until end; latencies in µs.
std::vector<double> PingLoop(spill::client::Session& session, Clock::time_point start,
                             Clock::time_point end, int* failures) {
  std::vector<double> lat;
  lat.reserve(1 << 20);
  std::this_thread::sleep_until(start);
  while (Clock::now() < end) {
    auto t0 = Clock::now();
    if (!session.Ping()->Wait(std::chrono::seconds(10)).ok()) ++*failures;
    lat.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  return lat;
}

// Per client, what it pings over: set up, ping from start until end, tear
// down; latencies in µs.
using ClientLoop = std::function<std::vector<double>(int client, Clock::time_point start,
                                                     Clock::time_point end, int* failures)>;

// `clients` threads of this process running `loop`, after time for each to
// set up.
RunResult PingThreads(int clients, std::chrono::milliseconds duration, const ClientLoop& loop) {
  std::vector<std::vector<double>> per_thread(clients);
  std::vector<int> failures(clients, 0);
  std::vector<std::thread> threads;
  const auto start = Clock::now() + std::chrono::milliseconds(500);
  const auto end = start + duration;
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back([&, i] { per_thread[i] = loop(i, start, end, &failures[i]); });
  }
  for (auto& t : threads) t.join();
  RunResult r;
  for (int i = 0; i < clients; ++i) {
    r.latencies_us.insert(r.latencies_us.end(), per_thread[i].begin(), per_thread[i].end());
    r.failures += failures[i];
  }
  r.requests_per_s = static_cast<double>(r.latencies_us.size()) /
                     std::chrono::duration<double>(duration).count();
  return r;
}

// `clients` Spill sessions on threads of this process.
RunResult PingSessions(const std::string& socket, int clients,
                       std::chrono::milliseconds duration) {
  return PingThreads(clients, duration, [&](int i, Clock::time_point start,
                                            Clock::time_point end, int* failures) {
    auto session = OpenSession(socket, i, clients);
    std::vector<double> lat = PingLoop(*session, start, end, failures);
    (void)session->Close();
    return lat;
  });
}

int64_t SinceEpochNs(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

// A client process (--child=SOCKET,RANK,WORLD,START_NS,END_NS; steady_clock
// is CLOCK_MONOTONIC, shared by the processes of a host): pings over its own
// session in the window and writes to stdout, as doubles, how late it
// started (s), how long it pinged (s), then its latencies.
int RunChild(const std::string& spec) {
  std::vector<std::string> f;
  for (size_t pos = 0;;) {
    const size_t comma = spec.find(',', pos);
    f.push_back(spec.substr(pos, comma - pos));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  if (f.size() != 5) {
    std::fprintf(stderr, "control_rtt: --child wants SOCKET,RANK,WORLD,START_NS,END_NS\n");
    return 2;
  }
  auto session = OpenSession(f[0], std::stoi(f[1]), std::stoi(f[2]));
  const Clock::time_point start{std::chrono::nanoseconds(std::stoll(f[3]))};
  const Clock::time_point end{std::chrono::nanoseconds(std::stoll(f[4]))};
  int failures = 0;
  const auto ready = Clock::now();
  const std::vector<double> lat = PingLoop(*session, start, end, &failures);
  const auto began = std::max(ready, start);
  (void)session->Close();
  const double header[2] = {std::chrono::duration<double>(began - start).count(),
                            std::chrono::duration<double>(end - began).count()};
  const size_t bytes = lat.size() * sizeof(double);
  if (std::fwrite(header, sizeof(double), 2, stdout) != 2 ||
      std::fwrite(lat.data(), 1, bytes, stdout) != bytes || std::fflush(stdout) != 0) {
    return 1;
  }
  return failures == 0 ? 0 : 3;
}

// `clients` client processes with one session each, as the ranks of a job
// on one node are.
RunResult PingProcesses(const std::string& socket, int clients,
                        std::chrono::milliseconds duration) {
  // Time for every child to start and open its session before the window.
  const auto start = Clock::now() + std::chrono::milliseconds(1500);
  const auto end = start + duration;
  std::vector<std::pair<pid_t, int>> children;  // pid, read end of its stdout
  RunResult r;
  for (int i = 0; i < clients; ++i) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) std::exit(1);  // dup2 clears it on the child's end
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&actions, fds[0]);
    const std::string spec = "--child=" + socket + "," + std::to_string(i) + "," +
                             std::to_string(clients) + "," + std::to_string(SinceEpochNs(start)) +
                             "," + std::to_string(SinceEpochNs(end));
    char self[] = "/proc/self/exe";
    std::vector<char*> child_argv = {self, const_cast<char*>(spec.c_str()), nullptr};
    pid_t pid = -1;
    const int rc = posix_spawn(&pid, self, &actions, nullptr, child_argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(fds[1]);
    if (rc != 0) {
      std::fprintf(stderr, "control_rtt: cannot start a client process: %s\n", std::strerror(rc));
      std::exit(1);
    }
    children.emplace_back(pid, fds[0]);
  }
  for (auto [pid, fd] : children) {
    std::string bytes;
    char buf[1 << 16];
    for (;;) {
      const ssize_t n = ::read(fd, buf, sizeof(buf));
      if (n > 0) {
        bytes.append(buf, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        break;
      }
    }
    ::close(fd);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    const size_t values = bytes.size() / sizeof(double);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || values < 2) {
      ++r.failures;
      continue;
    }
    std::vector<double> v(values);
    std::memcpy(v.data(), bytes.data(), values * sizeof(double));
    // Each process's rate over the time it pinged; a late starter shows in
    // latest_start_s.
    r.latest_start_s = std::max(r.latest_start_s, v[0]);
    if (v[1] > 0) r.requests_per_s += static_cast<double>(values - 2) / v[1];
    r.latencies_us.insert(r.latencies_us.end(), v.begin() + 2, v.end());
  }
  return r;
}

// p50, p99 and requests/s of one run. The latencies' baseline is the
// socketpair ping-pong; the rate's is gRPC's echo with as many clients
// (0: none).
void EmitRun(const std::string& suffix, const RunResult& r, nlohmann::json extra,
             double socketpair_p50, double echo_rate, const std::string& machine) {
  extra["requests"] = r.latencies_us.size();
  Result p50{"control_rtt",   "p50_us" + suffix, Percentile(r.latencies_us, 0.5), "us",
             "unix_socketpair_pingpong_p50", socketpair_p50, extra};
  p50.extra["target"] = "<= 50 us";
  Emit(p50, machine);
  Result p99{"control_rtt",   "p99_us" + suffix, Percentile(r.latencies_us, 0.99), "us",
             "unix_socketpair_pingpong_p50", socketpair_p50, extra};
  Emit(p99, machine);
  Result rate{"control_rtt", "requests_per_s" + suffix, r.requests_per_s, "req/s",
              echo_rate > 0 ? "grpc_echo_requests_per_s" : "", echo_rate, extra};
  rate.extra["target"] = ">= 50000 req/s";
  Emit(rate, machine);
}

}  // namespace

int main(int argc, char** argv) {
  // Before anything, for the client processes and the echo server too.
  const bool absl_check = spill::ConfigureAbslDeadlockDetection();
  std::chrono::milliseconds duration(3000);
  std::string machine = spill::bench::MachineName();
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--child=", 0) == 0)
      return RunChild(a.substr(8));
    if (a.rfind("--echo-server=", 0) == 0)
      return spill::bench::RunEchoServer(a.substr(14));
    if (a.rfind("--seconds=", 0) == 0)
      duration = std::chrono::milliseconds(
          static_cast<int64_t>(std::stod(a.substr(10)) * 1000));
    else if (a.rfind("--machine=", 0) == 0)
      machine = a.substr(10);
    else {
      std::fprintf(stderr,
                   "usage: control_rtt [--seconds=S] [--machine=NAME]\n");
      return 2;
    }
  }
  int threads =
      static_cast<int>(std::max(2u, std::thread::hardware_concurrency() / 2));
  // gRPC's poller (both ends: spilld inherits the environment), when chosen
  // through GRPC_POLL_STRATEGY, and Abseil's deadlock check, when kept on
  // through SPILL_ABSL_DEADLOCK_CHECK=1 (common/mutex_checks.h; here too,
  // for the gRPC echo), name their own metrics.
  const char* poller = std::getenv("GRPC_POLL_STRATEGY");
  const std::string strategy = poller != nullptr && *poller != '\0' ? poller : "";
  std::string variant = strategy.empty() ? "" : "_grpc_" + strategy;
  if (absl_check) variant += "_absl_deadlock_check";
  std::vector<double> raw = SocketPingPong(duration);
  const double raw_p50 = Percentile(std::move(raw), 0.5);
  // gRPC's floors, by client structure; [0] is the baseline of Spill's rates.
  using spill::bench::EchoClient;
  struct Echo {
    EchoClient client;
    RunResult one, eight;
  };
  std::vector<Echo> echoes = {{EchoClient::kAsyncOneThread, {}, {}},
                              {EchoClient::kSyncReaderThread, {}, {}}};
  {
    char dir[] = "/tmp/spill-rtt-echo-XXXXXX";
    if (::mkdtemp(dir) == nullptr) {
      std::perror("control_rtt: mkdtemp");
      return 1;
    }
    const std::string socket = std::string(dir) + "/echo.sock";
    absl::Status started;
    {
      auto server = spill::bench::EchoServerProcess::Start("/proc/self/exe", socket);
      started = server.status();
      for (Echo& e : echoes) {
        if (!started.ok()) break;
        auto loop = [&](int, Clock::time_point start, Clock::time_point end, int* failures) {
          return spill::bench::EchoPingLoop(e.client, socket, kPingMessageBytes, start, end,
                                            failures);
        };
        e.one = PingThreads(1, duration, loop);
        e.eight = PingThreads(8, duration, loop);
      }
    }  // The server stops here.
    ::unlink(socket.c_str());
    ::rmdir(dir);
    if (!started.ok()) {
      std::fprintf(stderr, "control_rtt: %s\n", started.ToString().c_str());
      return 1;
    }
  }
  for (const Echo& e : echoes) {
    for (const RunResult* r : {&e.one, &e.eight}) {
      const int clients = r == &e.one ? 1 : 8;
      if (r->failures != 0) {
        std::fprintf(stderr, "control_rtt: %d failed gRPC echo round trips\n", r->failures);
        return 1;
      }
      const std::string suffix = "_" + std::to_string(clients) +
                                 (clients == 1 ? "client_" : "clients_") +
                                 spill::bench::EchoClientName(e.client) + variant;
      const nlohmann::json extra = {
          {"clients", clients}, {"what", kEchoWhat}, {"absl_deadlock_check", absl_check}};
      EmitRun(suffix, *r, extra, raw_p50, 0, machine);
    }
  }
  for (const std::string dispatch : {"inline", "pool"}) {
    auto daemon = spill::testing::SpilldProcess::Start(
        {"--pinned-bytes=16MiB", "--segment-bytes=4MiB",
         "--stream-dispatch=" + dispatch,
         "--worker-threads=" + std::to_string(threads)});
    if (!daemon.ok()) {
      std::fprintf(stderr, "control_rtt: %s\n",
                   daemon.status().ToString().c_str());
      return 1;
    }
    // 1 and 8 sessions on threads of this process, and 8 client processes.
    for (const auto& [clients, processes] : {std::pair{1, false}, {8, false}, {8, true}}) {
      RunResult r = processes ? PingProcesses((*daemon)->socket_path(), clients, duration)
                              : PingSessions((*daemon)->socket_path(), clients, duration);
      if (r.failures != 0) {
        std::fprintf(stderr, "control_rtt: %d failed pings\n", r.failures);
        return 1;
      }
      std::string suffix = "_" + std::to_string(clients) +
                           (processes ? "processes_" : clients == 1 ? "client_" : "clients_") +
                           dispatch;
      suffix += variant;
      const RunResult& echo = clients == 1 ? echoes[0].one : echoes[0].eight;
      nlohmann::json extra = {{"clients", clients},
                              {"client_processes", processes ? clients : 1},
                              {"latest_client_start_s", r.latest_start_s},
                              {"dispatch", dispatch},
                              {"grpc_poll_strategy", strategy.empty() ? "default" : strategy},
                              {"absl_deadlock_check", absl_check},
                              {"spilld_worker_threads", threads},
                              {"grpc_echo_p50_us", Percentile(echo.latencies_us, 0.5)}};
      EmitRun(suffix, r, extra, raw_p50, echo.requests_per_s, machine);
    }
    if ((*daemon)->Stop() != 0) return 1;
  }
  return 0;
}
