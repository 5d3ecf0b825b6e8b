// The metric families spilld's core exports: the pinned tier, jobs, sessions,
// objects, requests and their latencies, bytes moved, build and uptime.
//
// Families (all always present, possibly without samples):
//   spill_build_info{version}                        gauge, 1
//   spill_start_time_seconds                         gauge, Unix time
//   spill_uptime_seconds                             gauge
//   spill_tier_capacity_bytes{tier}                  gauge (tier: pinned, nvme)
//   spill_tier_used_bytes{tier}                      gauge
//   spill_tier_free_bytes{tier}                      gauge
//   spill_tier_segment_bytes{tier}                   gauge
//   spill_tier_segments{tier}                        gauge
//   spill_tier_free_segments{tier}                   gauge
//   spill_tier_huge_pages{tier}                      gauge, 0 or 1
//   spill_jobs{state="active"|"grace"}               gauge
//   spill_sessions{state="attached"|"detached"}      gauge
//   spill_objects                                    gauge
//   spill_pins                                       gauge
//   spill_job_used_bytes{tier,job}                   gauge
//   spill_job_reserved_bytes{tier,job}               gauge
//   spill_job_quota_bytes{tier,job}                  gauge
//   spill_job_objects{job}                           gauge
//   spill_job_sessions{job}                          gauge
//   spill_job_acquired_bytes_total{job}              counter (ends with the job)
//   spill_job_written_back_bytes_total{job}          counter (ends with the job)
//   spill_acquired_bytes_total                       counter (all jobs, ever)
//   spill_written_back_bytes_total                   counter (all jobs, ever)
//   spill_requests_total{method,code}                counter (code: OK, NOT_FOUND, ...)
//   spill_request_duration_seconds{method}           histogram, le = 2^k µs
//
// The NVMe tier's I/O and the CPU optimizer export their own families
// (server/subsystem_metrics.h); prefetch and eviction families come with the
// tier manager.
#ifndef SPILL_SERVER_CORE_METRICS_H_
#define SPILL_SERVER_CORE_METRICS_H_

#include <chrono>
#include <string>

#include "server/metrics.h"
#include "server/prometheus.h"
#include "server/registry.h"
#include "storage/nvme_tier.h"
#include "storage/pinned_arena.h"

namespace spill::server {

struct CoreMetricsDeps {
  const Registry* registry = nullptr;
  const storage::PinnedArena* arena = nullptr;
  // The NVMe tier (its capacity/used/free join the tier gauges), or nullptr.
  const storage::NvmeTier* nvme = nullptr;
  const Metrics* metrics = nullptr;
  std::string version;
  std::chrono::steady_clock::time_point started;
  std::chrono::system_clock::time_point started_wall;
};

// Thread-safe: reads only the registry's, arena's and metrics' snapshots.
class CoreMetricsCollector final : public MetricsCollector {
 public:
  explicit CoreMetricsCollector(CoreMetricsDeps deps) : deps_(std::move(deps)) {}
  void Collect(MetricsWriter& out) const override;

 private:
  void CollectTiers(MetricsWriter& out) const;
  void CollectJobs(MetricsWriter& out) const;
  void CollectRequests(MetricsWriter& out) const;

  const CoreMetricsDeps deps_;
};

// "OK", "NOT_FOUND", ... (gRPC's spelling of each code).
std::string StatusCodeName(absl::StatusCode code);

}  // namespace spill::server

#endif  // SPILL_SERVER_CORE_METRICS_H_
