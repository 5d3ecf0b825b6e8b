#include "server/metrics.h"

#include <gtest/gtest.h>

namespace spill::server {
namespace {

using std::chrono::microseconds;

TEST(LatencyHistogramTest, QuantilesWithinOneBucket) {
  LatencyHistogram h;
  for (int i = 1; i <= 1000; ++i) h.Record(microseconds(i));
  EXPECT_EQ(h.count(), 1000u);
  // Buckets are 2^(1/8) ≈ 9% wide.
  EXPECT_NEAR(h.QuantileMicros(0.5), 500, 500 * 0.1);
  EXPECT_NEAR(h.QuantileMicros(0.99), 990, 990 * 0.1);
  EXPECT_DOUBLE_EQ(h.MaxMicros(), 1000);
  EXPECT_LE(h.QuantileMicros(1.0), 1000);
}

TEST(LatencyHistogramTest, EmptyIsZero) {
  LatencyHistogram h;
  EXPECT_EQ(h.QuantileMicros(0.5), 0);
}

TEST(MetricsTest, CountsErrorsAndBytes) {
  Metrics m;
  m.RecordRequest("acquire", microseconds(10), true);
  m.RecordRequest("acquire", microseconds(20), false);
  m.RecordRequest("release", microseconds(5), true);
  m.AddBytesIn(100);
  m.AddBytesOut(7);
  auto snap = m.Snapshot();
  ASSERT_EQ(snap.size(), 2u);
  EXPECT_EQ(snap[0].op, "acquire");
  EXPECT_EQ(snap[0].count, 2u);
  EXPECT_EQ(snap[0].errors, 1u);
  EXPECT_EQ(m.bytes_in(), 100u);
  EXPECT_EQ(m.bytes_out(), 7u);
}

}  // namespace
}  // namespace spill::server
