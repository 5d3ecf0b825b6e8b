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
  m.RecordRequest("acquire", microseconds(10), absl::StatusCode::kOk);
  m.RecordRequest("acquire", microseconds(20), absl::StatusCode::kNotFound);
  m.RecordRequest("release", microseconds(5), absl::StatusCode::kOk);
  m.AddBytesIn(100);
  m.AddBytesOut(7);
  auto snap = m.Snapshot();
  ASSERT_EQ(snap.size(), 2u);
  EXPECT_EQ(snap[0].op, "acquire");
  EXPECT_EQ(snap[0].count, 2u);
  EXPECT_EQ(snap[0].errors, 1u);
  EXPECT_EQ(m.bytes_in(), 100u);
  EXPECT_EQ(m.bytes_out(), 7u);
  auto details = m.Details();
  ASSERT_EQ(details.size(), 2u);
  EXPECT_EQ(details[0].codes.at(absl::StatusCode::kOk), 1u);
  EXPECT_EQ(details[0].codes.at(absl::StatusCode::kNotFound), 1u);
  EXPECT_NEAR(details[0].histogram.SumSeconds(), 30e-6, 1e-12);
}

TEST(LatencyHistogramTest, PowerOfTwoBoundsAreExactCumulativeCounts) {
  LatencyHistogram h;
  h.Record(microseconds(1));     // <= 2^0 us
  h.Record(microseconds(3));     // <= 2^2 us
  h.Record(microseconds(4));     // <= 2^2 us (bound is inclusive)
  h.Record(microseconds(1000));  // <= 2^10 us
  h.Record(std::chrono::hours(1));  // Above every bound.
  EXPECT_EQ(h.CountAtMostPow2Micros(0), 1u);
  EXPECT_EQ(h.CountAtMostPow2Micros(1), 1u);
  EXPECT_EQ(h.CountAtMostPow2Micros(2), 3u);
  EXPECT_EQ(h.CountAtMostPow2Micros(9), 3u);
  EXPECT_EQ(h.CountAtMostPow2Micros(10), 4u);
  EXPECT_EQ(h.CountAtMostPow2Micros(LatencyHistogram::kPow2Bounds - 1), 4u);
  EXPECT_EQ(h.count(), 5u);
}

}  // namespace
}  // namespace spill::server
