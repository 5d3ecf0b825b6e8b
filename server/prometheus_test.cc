#include "server/prometheus.h"

#include <httplib.h>
#include <gtest/gtest.h>

#include <chrono>

#include "server/metrics_http.h"

namespace spill::server {
namespace {

TEST(PrometheusTest, EscapesLabelValuesAndHelp) {
  EXPECT_EQ(EscapeLabelValue("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  MetricsWriter w;
  w.Family("spill_x", "line one\nback\\slash \"quoted\"", MetricType::kGauge);
  w.Sample({{"job", "we\"ird\\job\n"}}, 3);
  EXPECT_EQ(w.text(),
            "# HELP spill_x line one\\nback\\\\slash \"quoted\"\n"
            "# TYPE spill_x gauge\n"
            "spill_x{job=\"we\\\"ird\\\\job\\n\"} 3\n");
}

TEST(PrometheusTest, SampleValues) {
  EXPECT_EQ(FormatSampleValue(0), "0");
  EXPECT_EQ(FormatSampleValue(12345678901234.0), "12345678901234");
  EXPECT_EQ(FormatSampleValue(0.5), "0.5");
  EXPECT_EQ(FormatSampleValue(1e-6), "1e-06");
  EXPECT_EQ(FormatSampleValue(1.0 / 0.0), "+Inf");
  EXPECT_EQ(FormatSampleValue(-1.0 / 0.0), "-Inf");
  EXPECT_EQ(FormatSampleValue(0.0 / 0.0), "NaN");
}

TEST(PrometheusTest, HistogramHasBucketsInfSumAndCount) {
  MetricsWriter w;
  w.Family("spill_d_seconds", "d", MetricType::kHistogram);
  HistogramData h;
  h.upper_bounds = {0.001, 0.01};
  h.bucket_counts = {1, 3};
  h.count = 4;
  h.sum = 2.5;
  w.Histogram({{"method", "acquire"}}, h);
  EXPECT_EQ(w.text(),
            "# HELP spill_d_seconds d\n"
            "# TYPE spill_d_seconds histogram\n"
            "spill_d_seconds_bucket{method=\"acquire\",le=\"0.001\"} 1\n"
            "spill_d_seconds_bucket{method=\"acquire\",le=\"0.01\"} 3\n"
            "spill_d_seconds_bucket{method=\"acquire\",le=\"+Inf\"} 4\n"
            "spill_d_seconds_sum{method=\"acquire\"} 2.5\n"
            "spill_d_seconds_count{method=\"acquire\"} 4\n");
}

TEST(PrometheusTest, Names) {
  EXPECT_TRUE(ValidMetricName("spill_tier_used_bytes"));
  EXPECT_TRUE(ValidMetricName("a:b"));
  EXPECT_FALSE(ValidMetricName("9lives"));
  EXPECT_FALSE(ValidMetricName("spill-x"));
  EXPECT_FALSE(ValidMetricName(""));
  EXPECT_TRUE(ValidLabelName("job"));
  EXPECT_FALSE(ValidLabelName("a:b"));
  EXPECT_FALSE(ValidLabelName("__name"));
}

TEST(PrometheusDeathTest, MisuseAborts) {
  EXPECT_DEATH(
      {
        MetricsWriter w;
        w.Family("bad-name", "x", MetricType::kGauge);
      },
      "invalid metric name");
  EXPECT_DEATH(
      {
        MetricsWriter w;
        w.Family("spill_a", "x", MetricType::kGauge);
        w.Family("spill_a", "x", MetricType::kGauge);
      },
      "written twice");
  EXPECT_DEATH(
      {
        MetricsWriter w;
        w.Family("spill_h", "x", MetricType::kHistogram);
        w.Sample({}, 1);
      },
      "plain sample");
}

class FixedCollector final : public MetricsCollector {
 public:
  void Collect(MetricsWriter& out) const override {
    out.Family("spill_fixed_total", "A test counter.", MetricType::kCounter);
    out.Sample({}, 7);
  }
};

TEST(CollectorSetTest, RendersEveryCollectorInOrder) {
  CollectorSet set;
  set.Add(std::make_unique<FixedCollector>());
  EXPECT_EQ(set.FamilyNames(), std::vector<std::string>{"spill_fixed_total"});
  EXPECT_NE(set.Render().find("spill_fixed_total 7\n"), std::string::npos);
}

TEST(MetricsHttpServerTest, ServesGetMetricsOnly) {
  CollectorSet set;
  set.Add(std::make_unique<FixedCollector>());
  auto server = MetricsHttpServer::Start("127.0.0.1:0", &set);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->port(), 0);
  EXPECT_EQ((*server)->address(), "127.0.0.1:" + std::to_string((*server)->port()));
  httplib::Client client("127.0.0.1", (*server)->port());
  auto ok = client.Get("/metrics");
  ASSERT_TRUE(ok) << httplib::to_string(ok.error());
  EXPECT_EQ(ok->status, 200);
  EXPECT_EQ(ok->get_header_value("Content-Type"), kPrometheusContentType);
  EXPECT_NE(ok->body.find("spill_fixed_total 7"), std::string::npos);
  auto missing = client.Get("/");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  auto post = client.Post("/metrics", "x", "text/plain");
  ASSERT_TRUE(post);
  EXPECT_EQ(post->status, 405);
  EXPECT_EQ(post->get_header_value("Allow"), "GET, HEAD");
  auto start = std::chrono::steady_clock::now();
  (*server)->Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  EXPECT_FALSE(client.Get("/metrics"));  // Nothing listens any more.
}

TEST(MetricsHttpServerTest, StopRightAfterStartReturns) {
  CollectorSet set;
  for (int i = 0; i < 20; ++i) {
    auto server = MetricsHttpServer::Start("127.0.0.1:0", &set);
    ASSERT_TRUE(server.ok()) << server.status();
  }
}

TEST(MetricsHttpServerTest, BusyPortAndBadAddressAreClearErrors) {
  CollectorSet set;
  auto first = MetricsHttpServer::Start("127.0.0.1:0", &set);
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string taken = (*first)->address();
  auto second = MetricsHttpServer::Start(taken, &set);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(second.status().message().find(taken), std::string::npos) << second.status();
  auto bad = MetricsHttpServer::Start("127.0.0.1", &set);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  auto foreign = MetricsHttpServer::Start("192.0.2.1:0", &set);  // TEST-NET, not ours.
  EXPECT_FALSE(foreign.ok());
}

}  // namespace
}  // namespace spill::server
