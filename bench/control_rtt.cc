// control_rtt: the control round trip over spilld's Unix socket.
//
// Starts a real spilld, opens one session per client thread, and has each
// thread send Ping requests on its session stream back to back for a fixed
// time. Reports p50/p99 latency and requests/s for 1 and 8 clients. The
// baseline, measured in the same run, is a bare ping-pong of 8-byte messages
// over a Unix socketpair between two threads: the floor any protocol over
// that socket can reach on this machine.
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_json.h"
#include "spill/client.h"
#include "tests/integration/spilld_process.h"

namespace {

using Clock = std::chrono::steady_clock;
using spill::bench::Emit;
using spill::bench::Result;

double Percentile(std::vector<double>& v, double q) {
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
  double seconds = 0;
  int failures = 0;
};

RunResult PingClients(const std::string& socket, int clients,
                      std::chrono::milliseconds duration) {
  std::vector<std::unique_ptr<spill::client::Session>> sessions;
  for (int i = 0; i < clients; ++i) {
    spill::client::SessionOptions options;
    options.socket_path = socket;
    options.job_id = "rtt-" + std::to_string(clients);
    options.rank = i;
    options.world_size = clients;
    auto s = spill::client::Session::Open(options);
    if (!s.ok()) {
      std::fprintf(stderr, "control_rtt: %s\n", s.status().ToString().c_str());
      std::exit(1);
    }
    sessions.push_back(std::move(*s));
  }
  // Warm up every stream.
  for (auto& s : sessions) (void)s->Ping()->Wait(std::chrono::seconds(10));
  std::vector<std::vector<double>> per_thread(clients);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  auto start = Clock::now();
  auto end = start + duration;
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back([&, i] {
      auto& lat = per_thread[i];
      lat.reserve(1 << 20);
      while (Clock::now() < end) {
        auto t0 = Clock::now();
        if (!sessions[i]->Ping()->Wait(std::chrono::seconds(10)).ok())
          ++failures;
        lat.push_back(
            std::chrono::duration<double, std::micro>(Clock::now() - t0)
                .count());
      }
    });
  }
  for (auto& t : threads) t.join();
  RunResult r;
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  for (auto& v : per_thread)
    r.latencies_us.insert(r.latencies_us.end(), v.begin(), v.end());
  r.failures = failures.load();
  for (auto& s : sessions) (void)s->Close();
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::chrono::milliseconds duration(3000);
  std::string machine = spill::bench::MachineName();
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
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
  std::vector<double> raw = SocketPingPong(duration);
  const double raw_p50 = Percentile(raw, 0.5);
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
    for (int clients : {1, 8}) {
      RunResult r = PingClients((*daemon)->socket_path(), clients, duration);
      if (r.failures != 0) {
        std::fprintf(stderr, "control_rtt: %d failed pings\n", r.failures);
        return 1;
      }
      const double n = static_cast<double>(r.latencies_us.size());
      std::string suffix = "_" + std::to_string(clients) +
                           (clients == 1 ? "client_" : "clients_") + dispatch;
      // gRPC's poller (both ends: spilld inherits the environment), when
      // chosen through GRPC_POLL_STRATEGY, names its own metrics.
      const char* poller = std::getenv("GRPC_POLL_STRATEGY");
      const std::string strategy = poller != nullptr && *poller != '\0' ? poller : "";
      if (!strategy.empty()) suffix += "_grpc_" + strategy;
      nlohmann::json extra = {{"clients", clients},
                              {"requests", n},
                              {"dispatch", dispatch},
                              {"grpc_poll_strategy", strategy.empty() ? "default" : strategy},
                              {"spilld_worker_threads", threads}};
      Result p50{"control_rtt",
                 "p50_us" + suffix,
                 Percentile(r.latencies_us, 0.5),
                 "us",
                 "unix_socketpair_pingpong_p50",
                 raw_p50,
                 extra};
      p50.extra["target"] = "<= 50 us";
      Emit(p50, machine);
      Result p99{"control_rtt",
                 "p99_us" + suffix,
                 Percentile(r.latencies_us, 0.99),
                 "us",
                 "unix_socketpair_pingpong_p50",
                 raw_p50,
                 extra};
      Emit(p99, machine);
      Result rate{"control_rtt",
                  "requests_per_s" + suffix,
                  n / r.seconds,
                  "req/s",
                  "",
                  0,
                  extra};
      rate.extra["target"] = ">= 50000 req/s";
      Emit(rate, machine);
    }
    if ((*daemon)->Stop() != 0) return 1;
  }
  return 0;
}
