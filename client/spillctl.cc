// spillctl: the node administrator's view of spilld (tier stats, jobs,
// health) through its Admin service. Human tables by default, --json for
// scripts. Exit status: 0 success, 1 error (or health not SERVING), 2 usage.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <thread>

#include <unistd.h>

#include "absl/strings/numbers.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/admin_format.h"
#include "client/watch_format.h"
#include "client/unix_socket.h"
#include "common/units.h"
#include "spill/v1/spill.grpc.pb.h"

namespace spill::client {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

constexpr char kUsage[] = R"(usage: spillctl [--socket=PATH] [--json] [--timeout=DURATION] COMMAND

Shows what spilld, the node's parameter and optimizer offload daemon, holds.

commands:
  stats    tiers (capacity, used, free, per-job usage), bytes moved, request
           counts and latency percentiles
  jobs     jobs with their state, grace period left, objects and sessions
  drop-job JOB
           frees job JOB now: closes its sessions, frees its objects and
           their NVMe copies (root or the job's uid only)
  health   daemon status, version, pid, uptime, metrics address (exit status
           1 unless SERVING)
  watch    a live view like top: tiers, jobs, bandwidth and request rates,
           refreshed every --interval (redrawn in place on a terminal,
           repeated blocks otherwise); stops after --iterations screens or
           on Ctrl-C. Use `stats --json` for scripts.

options:
  --socket=PATH       spilld's socket (default: $SPILL_SOCKET, else
                      /run/spill/spilld.sock)
  --json              print JSON (numbers as JSON numbers) instead of tables
  --timeout=DURATION  give up after DURATION, e.g. 500ms, 10s (default 5s)
  --interval=DURATION watch: time between screens (default 1s)
  --iterations=N      watch: screens to show, then exit 0 (default 0: forever)
  -h, --help          print this help

exit status: 0 success, 1 error, 2 usage error
)";

struct Args {
  std::string socket_path;
  std::string command;
  std::string job_id;  // drop-job's argument
  bool json = false;
  bool help = false;
  std::chrono::milliseconds timeout{5000};
  std::chrono::milliseconds interval{1000};
  uint64_t iterations = 0;  // 0: until interrupted.
};

bool KnownCommand(const std::string& command) {
  return command == "stats" || command == "jobs" || command == "health" || command == "watch" ||
         command == "drop-job";
}

// Parses argv; on a usage error returns the message to print.
std::optional<std::string> ParseArgs(int argc, char** argv, Args* args) {
  const char* env = std::getenv("SPILL_SOCKET");
  args->socket_path = env != nullptr && env[0] != '\0' ? env : "/run/spill/spilld.sock";
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value_of = [&](const std::string& flag) -> std::optional<std::string> {
      if (absl::StartsWith(arg, flag + "=")) return arg.substr(flag.size() + 1);
      if (arg == flag && i + 1 < argc) return std::string(argv[++i]);
      return std::nullopt;
    };
    if (arg == "-h" || arg == "--help" || arg == "help") {
      args->help = true;
    } else if (arg == "--json") {
      args->json = true;
    } else if (auto socket = value_of("--socket")) {
      if (socket->empty()) return "--socket needs a path";
      args->socket_path = *socket;
    } else if (auto timeout = value_of("--timeout")) {
      absl::StatusOr<std::chrono::milliseconds> parsed = ParseDuration(*timeout);
      if (!parsed.ok()) return absl::StrCat("--timeout: ", parsed.status().message());
      if (parsed->count() == 0) return "--timeout must be positive";
      args->timeout = *parsed;
    } else if (auto interval = value_of("--interval")) {
      absl::StatusOr<std::chrono::milliseconds> parsed = ParseDuration(*interval);
      if (!parsed.ok()) return absl::StrCat("--interval: ", parsed.status().message());
      if (parsed->count() == 0) return "--interval must be positive";
      args->interval = *parsed;
    } else if (auto iterations = value_of("--iterations")) {
      if (!absl::SimpleAtoi(*iterations, &args->iterations) ||
          iterations->find_first_not_of("0123456789") != std::string::npos) {
        return absl::StrCat("--iterations: '", *iterations, "' is not a non-negative integer");
      }
    } else if (absl::StartsWith(arg, "-")) {
      return absl::StrCat("unknown option '", arg, "'");
    } else if (args->command == "drop-job" && args->job_id.empty()) {
      args->job_id = arg;
    } else if (!args->command.empty()) {
      return absl::StrCat("unexpected argument '", arg, "' after command '", args->command, "'");
    } else {
      args->command = arg;
    }
  }
  if (args->help) return std::nullopt;
  if (args->command.empty()) return "no command given (stats, jobs, health or watch)";
  if (!KnownCommand(args->command)) {
    return absl::StrCat("unknown command '", args->command,
                        "' (expected stats, jobs, health or watch)");
  }
  if (args->command == "drop-job" && args->job_id.empty()) {
    return "drop-job needs a job id: spillctl drop-job JOB";
  }
  if (args->command == "watch" && args->json) {
    return "watch has no --json output; use 'spillctl stats --json' for scripts";
  }
  return std::nullopt;
}

int Fail(const std::string& message) {
  std::cerr << "spillctl: " << message << "\n";
  return kExitError;
}

// One Admin call, with the errors a user can act on.
template <typename Request, typename Response, typename Method>
int Call(const Args& args, v1::Admin::Stub* stub, Method method, const char* name,
         Response* response, const Request& request = Request()) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + args.timeout);
  grpc::Status status = (stub->*method)(&context, request, response);
  if (status.ok()) return kExitOk;
  const std::string& path = args.socket_path;
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
      return Fail(absl::StrCat("cannot connect to spilld at ", path, ": ", status.error_message()));
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return Fail(absl::StrCat("spilld at ", path, " did not answer ", name, " within ",
                               args.timeout.count(), " ms"));
    case grpc::StatusCode::UNIMPLEMENTED:
      return Fail(absl::StrCat("spilld at ", path, " does not implement Admin.", name,
                               " (a different version of spilld?)"));
    default:
      return Fail(absl::StrCat(name, " failed: ", status.error_message(), " (gRPC code ",
                               static_cast<int>(status.error_code()), ")"));
  }
}

void Print(const Args& args, const nlohmann::ordered_json& json, const std::string& table) {
  if (args.json) {
    std::cout << json.dump(2) << "\n";
  } else {
    std::cout << table;
  }
}

// Refreshes until --iterations screens were shown; the first screen has no
// rates, each later one rates over the interval before it.
int Watch(const Args& args, v1::Admin::Stub* stub) {
  const bool tty = ::isatty(STDOUT_FILENO) == 1;
  std::optional<WatchSample> previous;
  for (uint64_t i = 0; args.iterations == 0 || i < args.iterations; ++i) {
    if (i > 0) std::this_thread::sleep_for(args.interval);
    WatchSample sample;
    int rc = Call<v1::StatsRequest>(args, stub, &v1::Admin::Stub::Stats, "Stats", &sample.stats);
    if (rc == kExitOk) {
      rc = Call<v1::JobsRequest>(args, stub, &v1::Admin::Stub::Jobs, "Jobs", &sample.jobs);
    }
    if (rc != kExitOk) return rc;
    sample.at = std::chrono::steady_clock::now();
    std::string screen = FormatWatch(previous ? &*previous : nullptr, sample);
    if (tty) {
      std::cout << kClearScreen << screen << std::flush;
    } else {
      std::cout << (i > 0 ? "\n" : "") << "--- " << i + 1 << " ---\n" << screen << std::flush;
    }
    previous = std::move(sample);
  }
  return kExitOk;
}

int Run(const Args& args) {
  absl::Status reachable = internal::CheckSocketPath(args.socket_path);
  if (!reachable.ok()) return Fail(std::string(reachable.message()));
  grpc::ChannelArguments channel_args;
  channel_args.SetMaxSendMessageSize(64 << 10);
  channel_args.SetMaxReceiveMessageSize(256 << 20);
  auto channel = grpc::CreateCustomChannel("unix:" + args.socket_path,
                                           grpc::InsecureChannelCredentials(), channel_args);
  std::unique_ptr<v1::Admin::Stub> stub = v1::Admin::NewStub(channel);
  if (args.command == "watch") return Watch(args, stub.get());
  if (args.command == "stats") {
    v1::StatsResponse stats;
    int rc = Call<v1::StatsRequest>(args, stub.get(), &v1::Admin::Stub::Stats, "Stats", &stats);
    if (rc == kExitOk) Print(args, StatsToJson(stats), FormatStats(stats));
    return rc;
  }
  if (args.command == "jobs") {
    v1::JobsResponse jobs;
    int rc = Call<v1::JobsRequest>(args, stub.get(), &v1::Admin::Stub::Jobs, "Jobs", &jobs);
    if (rc == kExitOk) Print(args, JobsToJson(jobs), FormatJobs(jobs));
    return rc;
  }
  if (args.command == "drop-job") {
    v1::DropJobRequest request;
    request.set_job_id(args.job_id);
    v1::DropJobResponse response;
    int rc = Call<v1::DropJobRequest>(args, stub.get(), &v1::Admin::Stub::DropJob, "DropJob",
                                      &response, request);
    if (rc == kExitOk && !args.json) std::cout << "dropped job " << args.job_id << "\n";
    if (rc == kExitOk && args.json) std::cout << "{\"dropped\": true}\n";
    return rc;
  }
  v1::HealthResponse health;
  int rc = Call<v1::HealthRequest>(args, stub.get(), &v1::Admin::Stub::Health, "Health", &health);
  if (rc != kExitOk) return rc;
  Print(args, HealthToJson(health), FormatHealth(health));
  return health.status() == "SERVING" ? kExitOk : kExitError;
}

}  // namespace
}  // namespace spill::client

int main(int argc, char** argv) {
  spill::client::Args args;
  if (std::optional<std::string> error = spill::client::ParseArgs(argc, argv, &args)) {
    std::cerr << "spillctl: " << *error << "\nrun 'spillctl --help' for usage\n";
    return spill::client::kExitUsage;
  }
  if (args.help) {
    std::cout << spill::client::kUsage;
    return spill::client::kExitOk;
  }
  return spill::client::Run(args);
}
