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
// OptimizerMetricsCollector:
//   spill_optimizer_groups                                        gauge
//   spill_optimizer_steps_total{outcome="applied"|"skipped"|"repeated"}  counter
//   spill_optimizer_step_seconds_total                            counter
//   spill_optimizer_stepped_elements_total                        counter
//   spill_optimizer_grad_ready_total                              counter
#ifndef SPILL_SERVER_SUBSYSTEM_METRICS_H_
#define SPILL_SERVER_SUBSYSTEM_METRICS_H_

#include "server/optimizer_host.h"
#include "server/prometheus.h"
#include "storage/nvme_tier.h"

namespace spill::server {

class NvmeMetricsCollector final : public MetricsCollector {
 public:
  explicit NvmeMetricsCollector(const storage::NvmeTier* tier) : tier_(tier) {}
  void Collect(MetricsWriter& out) const override;

 private:
  const storage::NvmeTier* const tier_;
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
