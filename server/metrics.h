// Request counters and latency percentiles for the admin service and the
// Prometheus endpoint (server/core_metrics.h).
//
// Latencies go into a log-spaced histogram (buckets grow by 2^(1/8), about
// 9%, from 1 µs to ~70 s), so a percentile is exact to within one bucket.
// Every 8th bucket bound is a power of two microseconds, which is what the
// Prometheus histogram exposes (exact cumulative counts, no interpolation).
#ifndef SPILL_SERVER_METRICS_H_
#define SPILL_SERVER_METRICS_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace spill::server {

class LatencyHistogram {
 public:
  static constexpr int kBuckets = 8 * 26 + 1;

  void Record(std::chrono::nanoseconds latency);
  uint64_t count() const { return count_; }
  // The upper bound of the bucket holding the q-quantile, in microseconds;
  // 0 when empty. q in [0, 1].
  double QuantileMicros(double q) const;
  double MaxMicros() const { return max_ns_ / 1000.0; }
  // Sum of every recorded latency, in seconds.
  double SumSeconds() const { return static_cast<double>(sum_ns_) / 1e9; }
  // Observations <= 2^k microseconds, for k in [0, kBuckets / 8); exact (a
  // bucket bound). The last bucket also holds everything above its bound, so
  // the largest k that is exact is kBuckets / 8 - 1.
  uint64_t CountAtMostPow2Micros(int k) const;
  static constexpr int kPow2Bounds = (kBuckets - 1) / 8;  // k < this is exact.

 private:
  std::array<uint64_t, kBuckets> buckets_{};
  uint64_t count_ = 0;
  uint64_t max_ns_ = 0;
  uint64_t sum_ns_ = 0;
};

struct OpStats {
  std::string op;
  uint64_t count = 0;
  uint64_t errors = 0;
  double p50_us = 0, p90_us = 0, p99_us = 0, max_us = 0;
};

// One request kind in full: its latency histogram and how many requests
// ended with each status code.
struct OpDetail {
  std::string op;
  LatencyHistogram histogram;
  std::map<absl::StatusCode, uint64_t> codes;
};

// Thread-safe.
class Metrics {
 public:
  // Records one finished request of kind op (e.g. "acquire", "open_session")
  // and the code it ended with (absl::StatusCode::kOk for success).
  void RecordRequest(const std::string& op, std::chrono::nanoseconds latency,
                     absl::StatusCode code);
  void AddBytesIn(uint64_t n) { bytes_in_.fetch_add(n, std::memory_order_relaxed); }
  void AddBytesOut(uint64_t n) { bytes_out_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t bytes_in() const { return bytes_in_.load(std::memory_order_relaxed); }
  uint64_t bytes_out() const { return bytes_out_.load(std::memory_order_relaxed); }
  std::vector<OpStats> Snapshot() const;
  // Copies of every request kind's histogram and code counts, by op name.
  std::vector<OpDetail> Details() const;

 private:
  struct Op {
    LatencyHistogram histogram;
    uint64_t errors = 0;
    std::map<absl::StatusCode, uint64_t> codes;
  };
  mutable std::mutex mu_;
  std::map<std::string, Op> ops_;
  std::atomic<uint64_t> bytes_in_{0};
  std::atomic<uint64_t> bytes_out_{0};
};

}  // namespace spill::server

#endif  // SPILL_SERVER_METRICS_H_
