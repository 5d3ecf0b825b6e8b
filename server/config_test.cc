#include "server/config.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>

namespace spill::server {
namespace {

absl::StatusOr<ServerConfig> Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "spilld");
  bool help = false;
  return ParseConfig(args, &help);
}

TEST(ConfigTest, FlagsParse) {
  auto c = Parse({"--socket=/tmp/s.sock", "--pinned-bytes=512MiB", "--job-grace=30s",
                  "--huge-pages=off", "--worker-threads=8", "--job_pinned_quota=1GiB"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->socket_path, "/tmp/s.sock");
  EXPECT_EQ(c->pinned_bytes, 512u << 20);
  EXPECT_EQ(c->job_grace, std::chrono::seconds(30));
  EXPECT_EQ(c->huge_pages, storage::HugePageMode::kOff);
  EXPECT_EQ(c->worker_threads, 8);
  EXPECT_EQ(c->parent_pid, 0);  // Off unless given.
  EXPECT_EQ(Parse({"--socket=/x", "--pinned-bytes=1G", "--parent-pid=4242"})->parent_pid, 4242);
  EXPECT_EQ(c->job_pinned_quota, 1u << 30);
}

TEST(ConfigTest, ErrorsNameTheFlag) {
  struct Case {
    std::vector<std::string> args;
    std::string needle;
  } cases[] = {
      {{"--pinned-bytes=1GiB"}, "--socket"},
      {{"--socket=/x"}, "--pinned-bytes"},
      {{"--socket=/x", "--pinned-bytes=12XB"}, "pinned-bytes"},
      {{"--socket=/x", "--pinned-bytes=-5"}, "pinned-bytes"},
      {{"--socket=/x", "--pinned-bytes=1G", "--bogus=1"}, "bogus"},
      {{"--socket=/x", "--pinned-bytes=1G", "--huge-pages=maybe"}, "huge_pages"},
      {{"--socket=/x", "--pinned-bytes=1G", "--job-grace=10"}, "job-grace"},
      {{"--socket=/x", "--pinned-bytes=1G", "--worker-threads=0"}, "worker_threads"},
      {{"--socket=/x", "--pinned-bytes=1G", "--parent-pid=0"}, "parent_pid"},
      {{"--socket=/x", "--pinned-bytes=1G", "--parent-pid=me"}, "parent_pid"},
      {{"--socket=/x", "--pinned-bytes=1G", "positional"}, "positional"},
      {{"--socket=/x", "--pinned-bytes=1G", "--config=/nonexistent/spilld.json"},
       "/nonexistent/spilld.json"},
  };
  for (const Case& c : cases) {
    auto r = Parse(c.args);
    ASSERT_FALSE(r.ok()) << c.needle;
    EXPECT_NE(r.status().message().find(c.needle), std::string::npos)
        << c.needle << " not in: " << r.status().message();
  }
}

TEST(ConfigTest, FileThenFlagsOverride) {
  std::string path = ::testing::TempDir() + "/spilld_config_test.json";
  {
    std::ofstream out(path);
    out << R"({"socket": "/run/spill/spilld.sock", "pinned_bytes": "2GiB", "job-grace": "1m",
              "worker_threads": 3})";
  }
  auto c = Parse({"--config=" + path, "--pinned-bytes=1GiB"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->socket_path, "/run/spill/spilld.sock");
  EXPECT_EQ(c->pinned_bytes, 1u << 30);
  EXPECT_EQ(c->job_grace, std::chrono::minutes(1));
  EXPECT_EQ(c->worker_threads, 3);
  std::remove(path.c_str());
}

TEST(ConfigTest, BadFilesAreRejectedWhole) {
  ServerConfig config;
  config.pinned_bytes = 7;
  EXPECT_FALSE(ApplyConfigJson("{not json", "f.json", &config).ok());
  EXPECT_FALSE(ApplyConfigJson("[1,2]", "f.json", &config).ok());
  auto unknown = ApplyConfigJson(R"({"pinned_bytes": "1GiB", "colour": "red"})", "f.json", &config);
  EXPECT_NE(unknown.message().find("colour"), std::string::npos) << unknown;
  auto wrong_type = ApplyConfigJson(R"({"pinned_bytes": [1]})", "f.json", &config);
  EXPECT_NE(wrong_type.message().find("pinned_bytes"), std::string::npos) << wrong_type;
  EXPECT_EQ(config.pinned_bytes, 7u);  // Nothing applied from the bad files.
}

TEST(ConfigTest, MetricsAddressIsOffByDefaultAndParsed) {
  auto off = Parse({"--socket=/x", "--pinned-bytes=1G"});
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_EQ(off->metrics_address, "");
  for (const char* good : {"127.0.0.1:9400", "0.0.0.0:0", "[::1]:9400", "localhost:65535"}) {
    auto c = Parse({"--socket=/x", "--pinned-bytes=1G", std::string("--metrics-address=") + good});
    ASSERT_TRUE(c.ok()) << good << ": " << c.status();
    EXPECT_EQ(c->metrics_address, good);
  }
  ServerConfig config;
  ASSERT_TRUE(ApplyConfigJson(R"({"metrics_address": "127.0.0.1:9400"})", "f.json", &config).ok());
  EXPECT_EQ(config.metrics_address, "127.0.0.1:9400");
}

TEST(ConfigTest, BadMetricsAddressesNameTheFlagAndTheProblem) {
  struct Case {
    std::string value;
    std::string needle;
  } cases[] = {
      {"9400", "has no port"},
      {":9400", "has no host"},
      {"127.0.0.1:", "port ''"},
      {"127.0.0.1:65536", "port '65536'"},
      {"127.0.0.1:-1", "port '-1'"},
      {"127.0.0.1:http", "port 'http'"},
      {"::1:9400", "IPv6 host in brackets"},
      {"[::1:9400", "unbalanced"},
  };
  for (const Case& c : cases) {
    auto r = Parse({"--socket=/x", "--pinned-bytes=1G", "--metrics-address=" + c.value});
    ASSERT_FALSE(r.ok()) << c.value;
    EXPECT_NE(r.status().message().find("metrics-address"), std::string::npos) << r.status();
    EXPECT_NE(r.status().message().find(c.needle), std::string::npos)
        << c.needle << " not in: " << r.status().message();
  }
  ServerConfig config;
  config.metrics_address = "127.0.0.1:1";
  auto bad = ApplyConfigJson(R"({"metrics_address": "nope"})", "f.json", &config);
  EXPECT_NE(bad.message().find("metrics_address"), std::string::npos) << bad;
  EXPECT_EQ(config.metrics_address, "127.0.0.1:1");  // Unchanged.
}

TEST(ConfigTest, ValidateFlagAndKeyList) {
  auto c = Parse({"--socket=/x", "--pinned-bytes=1G", "--validate"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->validate_only);
  EXPECT_NE(DescribeConfig(*c).find("metrics_address=off"), std::string::npos);
  EXPECT_FALSE(Parse({"--socket=/x", "--validate"}).ok());  // Still validated.
  std::vector<std::string> keys = ConfigKeys();
  EXPECT_TRUE(std::is_sorted(keys.begin(), keys.end()));
  for (const char* key : {"socket", "pinned_bytes", "metrics_address", "worker_threads"}) {
    EXPECT_NE(std::find(keys.begin(), keys.end(), key), keys.end()) << key;
  }
}

TEST(ConfigTest, Help) {
  bool help = false;
  auto c = ParseConfig({"spilld", "--help"}, &help);
  EXPECT_TRUE(help);
  EXPECT_NE(ConfigUsage().find("--pinned-bytes"), std::string::npos);
}

}  // namespace
}  // namespace spill::server

namespace spill::server {
namespace {

TEST(ConfigTest, NvmeAndOptimizerSettings) {
  auto c = Parse({"--socket=/x", "--pinned-bytes=1G", "--nvme-dirs=/mnt/a,/mnt/b",
                  "--nvme-capacity=64GiB", "--aio-block-size=2MiB", "--aio-queue-depth=64",
                  "--aio-thread-count=4", "--aio-single-submit=true",
                  "--aio-overlap-events=false", "--nvme-sqpoll=on", "--job-nvme-quota=1TiB",
                  "--optim-threads=12", "--optim-threads-per-job=6", "--optim-concurrency=2",
                  "--optim-nice=3",
                  "--manifest-dir=/var/lib/spill"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->manifest_dir, "/var/lib/spill");
  EXPECT_EQ(c->nvme_dirs, (std::vector<std::string>{"/mnt/a", "/mnt/b"}));
  EXPECT_EQ(c->nvme_capacity, uint64_t{64} << 30);
  EXPECT_EQ(c->aio_block_size, 2u << 20);
  EXPECT_EQ(c->aio_queue_depth, 64);
  EXPECT_EQ(c->aio_thread_count, 4);
  EXPECT_TRUE(c->aio_single_submit);
  EXPECT_FALSE(c->aio_overlap_events);
  EXPECT_TRUE(c->nvme_sqpoll);
  EXPECT_EQ(c->job_nvme_quota, uint64_t{1} << 40);
  EXPECT_EQ(c->optim_threads, 12);
  EXPECT_EQ(c->optim_threads_per_job, 6);
  EXPECT_EQ(c->optim_concurrency, 2);
  EXPECT_EQ(c->optim_nice, 3);
}

TEST(ConfigTest, NvmeErrorsNameTheSetting) {
  struct Case {
    std::vector<std::string> args;
    std::string needle;
  } cases[] = {
      {{"--nvme-dirs=relative/dir", "--nvme-capacity=1G"}, "nvme_dirs"},
      {{"--nvme-dirs=/mnt/a"}, "--nvme-capacity"},
      {{"--nvme-dirs=/mnt/a", "--nvme-capacity=1G", "--manifest-dir=rel"}, "manifest_dir"},
      {{"--manifest-dir=/var/lib/spill"}, "--nvme-dirs"},
      {{"--aio-block-size=5000"}, "aio_block_size"},
      {{"--aio-queue-depth=0"}, "aio_queue_depth"},
      {{"--aio-thread-count=65"}, "aio_thread_count"},
      {{"--aio-single-submit=maybe"}, "aio_single_submit"},
      {{"--optim-concurrency=0"}, "optim_concurrency"},
      {{"--optim-nice=20"}, "optim_nice"},
      {{"--optim-nice=-1"}, "optim_nice"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"--socket=/x", "--pinned-bytes=1G"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    auto r = Parse(args);
    ASSERT_FALSE(r.ok()) << c.needle;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(c.needle), std::string::npos) << r.status();
  }
}

TEST(ConfigTest, JsonBooleans) {
  ServerConfig c;
  ASSERT_TRUE(ApplyConfigJson(R"({"aio_single_submit": true, "nvme_sqpoll": false})", "f", &c)
                  .ok());
  EXPECT_TRUE(c.aio_single_submit);
  EXPECT_FALSE(c.nvme_sqpoll);
  EXPECT_FALSE(ApplyConfigJson(R"({"aio_queue_depth": [1]})", "f", &c).ok());
}

}  // namespace
}  // namespace spill::server
