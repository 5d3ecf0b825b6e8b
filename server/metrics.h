// Request counters and latency percentiles for the admin service.
//
// Latencies go into a log-spaced histogram (buckets grow by 2^(1/8), about
// 9%, from 1 µs to ~70 s), so a percentile is exact to within one bucket.
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

 private:
  std::array<uint64_t, kBuckets> buckets_{};
  uint64_t count_ = 0;
  uint64_t max_ns_ = 0;
};

struct OpStats {
  std::string op;
  uint64_t count = 0;
  uint64_t errors = 0;
  double p50_us = 0, p90_us = 0, p99_us = 0, max_us = 0;
};

// Thread-safe.
class Metrics {
 public:
  void RecordRequest(const std::string& op, std::chrono::nanoseconds latency, bool ok);
  void AddBytesIn(uint64_t n) { bytes_in_.fetch_add(n, std::memory_order_relaxed); }
  void AddBytesOut(uint64_t n) { bytes_out_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t bytes_in() const { return bytes_in_.load(std::memory_order_relaxed); }
  uint64_t bytes_out() const { return bytes_out_.load(std::memory_order_relaxed); }
  std::vector<OpStats> Snapshot() const;

 private:
  struct Op {
    LatencyHistogram histogram;
    uint64_t errors = 0;
  };
  mutable std::mutex mu_;
  std::map<std::string, Op> ops_;
  std::atomic<uint64_t> bytes_in_{0};
  std::atomic<uint64_t> bytes_out_{0};
};

}  // namespace spill::server

#endif  // SPILL_SERVER_METRICS_H_
