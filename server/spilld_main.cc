// spilld: the per-node offload daemon. See `spilld --help`.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "common/mutex_checks.h"
#include "server/config.h"
#include "server/daemon.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv, argv + argc);
  bool help = false;
  auto config = spill::server::ParseConfig(args, &help);
  if (help) {
    std::cout << spill::server::ConfigUsage();
    return 0;
  }
  if (!config.ok()) {
    std::cerr << "spilld: " << config.status().message() << "\n"
              << "run 'spilld --help' for usage\n";
    return 2;
  }
  if (config->validate_only) {
    std::cout << spill::server::DescribeConfig(*config) << "spilld: configuration is valid\n";
    return 0;
  }
  // A spilld started for one process (a test, a benchmark) goes when that
  // process does, however it ends: SIGTERM, taken below once the daemon runs,
  // stops it cleanly. Checked before the pool is pinned.
  if (config->parent_pid > 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (const pid_t parent = getppid(); parent != config->parent_pid) {
      std::cerr << "spilld: --parent-pid=" << config->parent_pid
                << " is not spilld's parent (process " << parent
                << "): that process has exited or never started spilld\n";
      return 2;
    }
  }
  spill::ConfigureAbslDeadlockDetection();  // See common/mutex_checks.h.
  // Every segment is an open memfd, and every connection a socket: take the
  // whole hard limit on descriptors (the soft default is often 1024).
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }
  // Signals are taken synchronously by this thread; every thread started
  // from here on inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto daemon = spill::server::Daemon::Start(*config);
  if (!daemon.ok()) {
    std::cerr << "spilld: cannot start: " << daemon.status().message() << "\n";
    return 1;
  }
  std::cerr << (*daemon)->Describe() << std::endl;
  int sig = 0;
  sigwait(&signals, &sig);
  std::cerr << "spilld: " << (sig == SIGTERM ? "SIGTERM" : "SIGINT")
            << ": finishing in-flight requests and stopping" << std::endl;
  (*daemon)->Stop();
  daemon->reset();
  std::cerr << "spilld: stopped cleanly" << std::endl;
  return 0;
}
