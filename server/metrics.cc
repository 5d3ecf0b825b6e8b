#include "server/metrics.h"

#include <algorithm>
#include <cmath>

namespace spill::server {
namespace {

constexpr double kStepsPerDoubling = 8.0;

int BucketOf(uint64_t ns) {
  if (ns <= 1000) return 0;
  double steps = std::log2(static_cast<double>(ns) / 1000.0) * kStepsPerDoubling;
  int b = static_cast<int>(std::ceil(steps));
  return std::min(b, LatencyHistogram::kBuckets - 1);
}

double BucketUpperMicros(int b) { return std::exp2(b / kStepsPerDoubling); }

}  // namespace

void LatencyHistogram::Record(std::chrono::nanoseconds latency) {
  uint64_t ns = latency.count() < 0 ? 0 : static_cast<uint64_t>(latency.count());
  ++buckets_[BucketOf(ns)];
  ++count_;
  max_ns_ = std::max(max_ns_, ns);
  sum_ns_ += ns;
}

uint64_t LatencyHistogram::CountAtMostPow2Micros(int k) const {
  const int last = std::clamp(k * 8, 0, kBuckets - 1);
  uint64_t total = 0;
  for (int b = 0; b <= last; ++b) total += buckets_[b];
  return total;
}

double LatencyHistogram::QuantileMicros(double q) const {
  if (count_ == 0) return 0;
  uint64_t rank = static_cast<uint64_t>(std::ceil(q * static_cast<double>(count_)));
  rank = std::clamp<uint64_t>(rank, 1, count_);
  uint64_t seen = 0;
  for (int b = 0; b < kBuckets; ++b) {
    seen += buckets_[b];
    if (seen >= rank) return std::min(BucketUpperMicros(b), MaxMicros());
  }
  return MaxMicros();
}

void Metrics::RecordRequest(const std::string& op, std::chrono::nanoseconds latency,
                            absl::StatusCode code) {
  std::lock_guard<std::mutex> lock(mu_);
  Op& entry = ops_[op];
  entry.histogram.Record(latency);
  ++entry.codes[code];
  if (code != absl::StatusCode::kOk) ++entry.errors;
}

std::vector<OpDetail> Metrics::Details() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<OpDetail> out;
  out.reserve(ops_.size());
  for (const auto& [name, op] : ops_) out.push_back({name, op.histogram, op.codes});
  return out;
}

std::vector<OpStats> Metrics::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<OpStats> out;
  out.reserve(ops_.size());
  for (const auto& [name, op] : ops_) {
    OpStats s;
    s.op = name;
    s.count = op.histogram.count();
    s.errors = op.errors;
    s.p50_us = op.histogram.QuantileMicros(0.50);
    s.p90_us = op.histogram.QuantileMicros(0.90);
    s.p99_us = op.histogram.QuantileMicros(0.99);
    s.max_us = op.histogram.MaxMicros();
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace spill::server
