// Observing a real spilld: the Prometheus endpoint scraped and parsed by
// Prometheus' own Python parser, `spillctl watch`, and `spilld --validate`.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cstdlib>

#include <filesystem>

#include "absl/strings/match.h"
#include "spill/client.h"
#include "tests/integration/spilld_process.h"

namespace spill::testing {
namespace {

// Programs under test: the build's, or a bundle's when run from one
// ($SPILL_SPILLCTL, $SPILL_DEMO, like $SPILL_SPILLD for the harness).
std::string Program(const char* env, const char* built) {
  const char* v = std::getenv(env);
  return v != nullptr && *v ? v : built;
}
std::string Spillctl() { return Program("SPILL_SPILLCTL", SPILLCTL_PATH); }
std::string Demo() { return Program("SPILL_DEMO", SPILL_DEMO_PATH); }


constexpr char kPinned[] = "--pinned-bytes=64MiB";
constexpr uint64_t kPinnedBytes = 64 << 20;

std::string MetricsAddress(SpilldProcess& d) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  spill::v1::HealthResponse health;
  grpc::Status s = d.admin().Health(&ctx, {}, &health);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return health.metrics_address();
}

// Runs argv to completion; returns (exit code, output).
std::pair<int, std::string> RunToEnd(const std::vector<std::string>& argv) {
  auto spawned = Spawn(argv);
  if (!spawned.ok()) return {-1, std::string(spawned.status().message())};
  std::string out = ReadAll(spawned->stdout_fd, std::chrono::seconds(150));
  return {WaitExit(spawned->pid), out};
}

TEST(MetricsEndpointTest, PrometheusParserSeesFamiliesMoveWithClientWork) {
  auto d = SpilldProcess::Start({kPinned, "--metrics-address=127.0.0.1:0"});
  ASSERT_TRUE(d.ok()) << d.status();
  const std::string address = MetricsAddress(**d);
  ASSERT_TRUE(absl::StartsWith(address, "127.0.0.1:")) << address;
  ASSERT_NE(address, "127.0.0.1:0") << "the bound port must be reported";

  // A request that fails with NOT_FOUND, to be counted by code.
  client::SessionOptions options;
  options.socket_path = (*d)->socket_path();
  options.job_id = "errors";
  auto session = client::Session::Open(options);
  ASSERT_TRUE(session.ok()) << session.status();
  absl::Status missing = (*session)->Acquire(987654)->Wait(std::chrono::seconds(10));
  ASSERT_EQ(missing.code(), absl::StatusCode::kNotFound) << missing;

  // The parser is Debian's python3-prometheus-client (scripts/test.sh
  // installs it); a node running a bundle may lack it.
  if (RunToEnd({SPILL_PYTHON3, "-c", "import prometheus_client"}).first != 0) {
    GTEST_SKIP() << SPILL_PYTHON3 << " cannot import prometheus_client "
                 << "(Debian package python3-prometheus-client)";
  }
  // A job id that needs escaping in a label value.
  const std::string job = "we\"ird\\job";
  auto [code, out] = RunToEnd(
      {SPILL_PYTHON3, SPILL_SOURCE_DIR "/tests/integration/check_metrics.py",
       "--url=http://" + address + "/metrics", "--socket=" + (*d)->socket_path(),
       "--demo=" + Demo(), "--job=" + job, "--tensors=5",
       "--pinned-bytes=" + std::to_string(kPinnedBytes), "--error-code=NOT_FOUND",
       "--dashboard=" SPILL_SOURCE_DIR "/deploy/grafana/spill-dashboard.json"});
  EXPECT_EQ(code, 0) << out;
  EXPECT_TRUE(absl::StrContains(out, "metrics check passed")) << out;

  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ((*d)->Stop(), 0) << (*d)->output();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(8))
      << "the metrics server held up shutdown";
  EXPECT_TRUE(absl::StrContains((*d)->output(), "metrics on http://" + address + "/metrics"))
      << (*d)->output();
}

TEST(MetricsEndpointTest, OffByDefault) {
  auto d = SpilldProcess::Start({kPinned});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(MetricsAddress(**d), "");
  EXPECT_EQ((*d)->Stop(), 0);
  EXPECT_TRUE(absl::StrContains((*d)->output(), "metrics off")) << (*d)->output();
}

TEST(MetricsEndpointTest, BusyPortIsAClearStartError) {
  auto first = SpilldProcess::Start({kPinned, "--metrics-address=127.0.0.1:0"});
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string taken = MetricsAddress(**first);
  std::string dir = (*first)->dir() + "/second";
  std::filesystem::create_directories(dir);
  auto [code, out] = RunToEnd({SpilldPath(), "--socket=" + dir + "/s.sock", "--pinned-bytes=8MiB",
                               "--segment-bytes=8MiB", "--metrics-address=" + taken});
  EXPECT_EQ(code, 1) << out;
  EXPECT_TRUE(absl::StrContains(out, "cannot listen for metrics on " + taken)) << out;
  EXPECT_FALSE(std::filesystem::exists(dir + "/s.sock")) << "a failed start left its socket";
  EXPECT_TRUE((*first)->Stats().ok());  // The first daemon is untouched.
  EXPECT_EQ((*first)->Stop(), 0);
}

TEST(SpillctlWatchTest, TwoScreensWithRatesAgainstARealSpilld) {
  auto d = SpilldProcess::Start({kPinned});
  ASSERT_TRUE(d.ok()) << d.status();
  client::SessionOptions options;
  options.socket_path = (*d)->socket_path();
  options.job_id = "watched";
  auto session = client::Session::Open(options);
  ASSERT_TRUE(session.ok()) << session.status();
  auto obj = (*session)->Register("w", client::ObjectKind::kParamShard, client::DType::kFloat32,
                                  1 << 18);
  ASSERT_TRUE(obj.ok()) << obj.status();
  ASSERT_TRUE((*session)->Acquire(obj->object_id)->Wait(std::chrono::seconds(10)).ok());

  auto [code, out] = RunToEnd({Spillctl(), "--socket=" + (*d)->socket_path(), "watch",
                               "--iterations=2", "--interval=100ms"});
  EXPECT_EQ(code, 0) << out;
  size_t first = out.find("--- 1 ---"), second = out.find("--- 2 ---");
  ASSERT_NE(first, std::string::npos) << out;
  ASSERT_NE(second, std::string::npos) << out;
  EXPECT_EQ(out.find("--- 3 ---"), std::string::npos) << out;
  EXPECT_EQ(out.find('\x1b'), std::string::npos) << "no escapes when stdout is not a terminal";
  const std::string screen2 = out.substr(second);
  EXPECT_TRUE(absl::StrContains(screen2, "(rates over")) << out;
  EXPECT_TRUE(absl::StrContains(screen2, "pinned")) << out;
  EXPECT_TRUE(absl::StrContains(screen2, "watched")) << out;
  EXPECT_TRUE(absl::StrContains(screen2, "acquire")) << out;

  auto bad = RunToEnd({Spillctl(), "--socket=" + (*d)->socket_path(), "watch",
                       "--interval=0s"});
  EXPECT_EQ(bad.first, 2) << bad.second;
  EXPECT_TRUE(absl::StrContains(bad.second, "--interval")) << bad.second;
  EXPECT_EQ((*d)->Stop(), 0);
}

TEST(SpillctlWatchTest, RedrawsInPlaceOnATerminal) {
  if (!std::filesystem::exists("/usr/bin/script")) GTEST_SKIP() << "util-linux script not found";
  auto d = SpilldProcess::Start({kPinned});
  ASSERT_TRUE(d.ok()) << d.status();
  // script(1) gives spillctl a pseudo-terminal as stdout.
  auto [code, out] = RunToEnd({"/usr/bin/script", "-qec",
                               Spillctl() + " --socket=" + (*d)->socket_path() +
                                   " watch --iterations=2 --interval=50ms",
                               "/dev/null"});
  EXPECT_EQ(code, 0) << out;
  size_t first = out.find("\x1b[H\x1b[2J");
  ASSERT_NE(first, std::string::npos) << out;
  EXPECT_NE(out.find("\x1b[H\x1b[2J", first + 1), std::string::npos) << "one clear per screen";
  EXPECT_EQ(out.find("--- 1 ---"), std::string::npos) << "numbered blocks are for pipes";
  EXPECT_EQ((*d)->Stop(), 0);
}

TEST(SpilldValidateTest, ChecksConfigWithoutStarting) {
  std::string dir = ::testing::TempDir() + "/spilld-validate";
  std::filesystem::create_directories(dir);
  auto [ok_code, ok_out] = RunToEnd({SpilldPath(), "--validate", "--socket=" + dir + "/s.sock",
                                     "--pinned-bytes=1TiB", "--metrics-address=0.0.0.0:9400"});
  EXPECT_EQ(ok_code, 0) << ok_out;
  EXPECT_TRUE(absl::StrContains(ok_out, "metrics_address=0.0.0.0:9400")) << ok_out;
  EXPECT_FALSE(std::filesystem::exists(dir + "/s.sock")) << "--validate must not start";
  auto [bad_code, bad_out] = RunToEnd({SpilldPath(), "--validate", "--socket=" + dir + "/s.sock",
                                       "--pinned-bytes=1GiB", "--metrics-address=9400"});
  EXPECT_EQ(bad_code, 2) << bad_out;
  EXPECT_TRUE(absl::StrContains(bad_out, "metrics-address")) << bad_out;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace spill::testing
