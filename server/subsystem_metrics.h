// Metric families of spilld's subsystems beyond the core (core_metrics.h):
//
// NvmeMetricsCollector (when spilld has an NVMe tier):
//   spill_nvme_read_bytes_total, spill_nvme_written_bytes_total   counters
//   spill_nvme_ops_total{op="read"|"write"}                       counter
//   spill_nvme_requests_total                                     counter (io_uring requests)
//   spill_nvme_retries_total                                      counter (-EAGAIN/-EINTR)
//   spill_nvme_checksum_failures_total                            counter (blocks)
//   spill_nvme_errors_total{code}                                 counter (failed ops)
//   spill_job_nvme_used_bytes{job}                                gauge
// TierMetricsCollector (objects with home NVMe; with the NVMe tier):
//   spill_tiering_evictions_total, spill_tiering_evicted_bytes_total    counters
//   spill_tiering_acquires_total{result="hit"|"late"|"miss"}         counter
//     (acquires of NVMe objects: resident thanks to a prefetch, joined a
//     prefetch's read, or had to read)
//   spill_tiering_reads_total, spill_tiering_read_errors_total          counters
//   spill_tiering_writebacks_total, spill_tiering_writeback_errors_total  counters
//   spill_tiering_resident_bytes, spill_tiering_dirty_bytes             gauges
//   spill_tiering_writebacks_in_flight                               gauge
//   spill_tiering_manifest_publishes_total{result="ok"|"error"}      counter
//   spill_tiering_manifest_generation                                gauge
// OptimizerMetricsCollector:
//   spill_optimizer_groups                                        gauge
//   spill_optimizer_steps_total{outcome="applied"|"skipped"|"repeated"}  counter
//   spill_optimizer_step_seconds_total                            counter
//   spill_optimizer_grad_ready_seconds_total                      counter
//   spill_optimizer_busy_seconds_total                            counter
//   spill_optimizer_stepped_elements_total                        counter
//   spill_optimizer_grad_ready_total                              counter
#ifndef SPILL_SERVER_SUBSYSTEM_METRICS_H_
#define SPILL_SERVER_SUBSYSTEM_METRICS_H_

#include "server/optimizer_host.h"
#include "server/prometheus.h"
#include "storage/nvme_tier.h"
#include "storage/tier_manager.h"

namespace spill::server {

class NvmeMetricsCollector final : public MetricsCollector {
 public:
  explicit NvmeMetricsCollector(const storage::NvmeTier* tier) : tier_(tier) {}
  void Collect(MetricsWriter& out) const override;

 private:
  const storage::NvmeTier* const tier_;
};

class TierMetricsCollector final : public MetricsCollector {
 public:
  explicit TierMetricsCollector(const storage::TierManager* tiers) : tiers_(tiers) {}
  void Collect(MetricsWriter& out) const override;

 private:
  const storage::TierManager* const tiers_;
};

class OptimizerMetricsCollector final : public MetricsCollector {
 public:
  explicit OptimizerMetricsCollector(const OptimizerHost* host) : host_(host) {}
  void Collect(MetricsWriter& out) const override;

 private:
  const OptimizerHost* const host_;
};

}  // namespace spill::server

#endif  // SPILL_SERVER_SUBSYSTEM_METRICS_H_
