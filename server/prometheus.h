// Prometheus text exposition (format 0.0.4) and the collector interface that
// every spilld subsystem implements to export its metrics.
//
// Adding a metric family from a subsystem (NVMe tier, optimizer, ...):
//
//   class NvmeCollector final : public spill::server::MetricsCollector {
//    public:
//     explicit NvmeCollector(const storage::NvmeTier* tier) : tier_(tier) {}
//     void Collect(spill::server::MetricsWriter& out) const override {
//       storage::NvmeStats s = tier_->Stats();
//       out.Family("spill_nvme_read_bytes_total", "Bytes read from NVMe.",
//                  spill::server::MetricType::kCounter);
//       out.Sample({}, s.read_bytes);
//       out.Family("spill_nvme_queue_depth", "Requests in flight on the ring.",
//                  spill::server::MetricType::kGauge);
//       out.Sample({{"device", s.device}}, s.in_flight);
//     }
//    private:
//     const storage::NvmeTier* tier_;
//   };
//   ...
//   collectors.Add(std::make_unique<NvmeCollector>(tier));   // in Daemon::Start
//
// Collect runs on an HTTP server thread for every scrape, concurrently with
// the daemon's other threads: it must only read thread-safe snapshots (the
// subsystem's own Stats()), never block on I/O, and never fail — a value it
// cannot compute is left out, not invented.
//
// Conventions (https://prometheus.io/docs/practices/naming/): names start
// with spill_, counters end in _total, sizes are _bytes, times _seconds; a
// label's set of values stays small (tier, method, code, job).
#ifndef SPILL_SERVER_PROMETHEUS_H_
#define SPILL_SERVER_PROMETHEUS_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace spill::server {

enum class MetricType { kCounter, kGauge, kHistogram, kUntyped };

using Labels = std::vector<std::pair<std::string, std::string>>;

// One histogram's data, cumulative as Prometheus wants it: bucket_counts[i]
// is the number of observations <= upper_bounds[i]; count includes the ones
// above the last bound (+Inf is written from it).
struct HistogramData {
  std::vector<double> upper_bounds;
  std::vector<uint64_t> bucket_counts;
  uint64_t count = 0;
  double sum = 0;
};

// Builds one exposition text. Not thread-safe (one per scrape).
//
// Misuse is a programming error and aborts (an invalid metric or label name,
// a sample before any family, a histogram sample in a non-histogram family or
// the reverse, a family name used twice): these are fixed by the code that
// exports, not by an operator. Label values may be any UTF-8 string; they are
// escaped (\\, \", \n).
class MetricsWriter {
 public:
  // Starts a family: writes # HELP and # TYPE. A family may have no samples.
  void Family(absl::string_view name, absl::string_view help, MetricType type);
  // A sample of the current counter, gauge or untyped family.
  void Sample(const Labels& labels, double value);
  // The current histogram family's series with these labels: name_bucket for
  // each bound and +Inf, name_sum and name_count.
  void Histogram(const Labels& labels, const HistogramData& data);

  // The text so far; every line ends with '\n'.
  const std::string& text() const { return text_; }
  // Names of the families written, in order.
  const std::vector<std::string>& families() const { return families_; }

 private:
  void WriteSeries(absl::string_view suffix, const Labels& labels,
                   const std::pair<std::string, std::string>* extra, double value);

  std::string text_;
  std::vector<std::string> families_;
  std::string current_;
  MetricType current_type_ = MetricType::kUntyped;
};

// What a subsystem implements to export metrics (see the header comment).
class MetricsCollector {
 public:
  virtual ~MetricsCollector() = default;
  // Writes this subsystem's families. Called from any thread, concurrently
  // with the subsystem's own work; must not block or fail.
  virtual void Collect(MetricsWriter& out) const = 0;
};

// The collectors a scrape runs, in the order added. Thread-safe: Add may be
// called while scrapes run.
class CollectorSet {
 public:
  void Add(std::unique_ptr<MetricsCollector> collector);
  // Runs every collector into one exposition text.
  std::string Render() const;
  // The family names Render would write now (for documentation and tests).
  std::vector<std::string> FamilyNames() const;

 private:
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<MetricsCollector>> collectors_;
};

// Escapes a label value for the exposition format (\ -> \\, " -> \", newline
// -> \n).
std::string EscapeLabelValue(absl::string_view value);
// Formats a sample value: integers without a fraction, +Inf/-Inf/NaN spelt
// as Prometheus spells them, otherwise shortest round-trip text.
std::string FormatSampleValue(double value);
// [a-zA-Z_:][a-zA-Z0-9_:]* for metric names; labels may not contain ':' and
// may not start with "__".
bool ValidMetricName(absl::string_view name);
bool ValidLabelName(absl::string_view name);

// The content type of format 0.0.4.
inline constexpr char kPrometheusContentType[] = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace spill::server

#endif  // SPILL_SERVER_PROMETHEUS_H_
