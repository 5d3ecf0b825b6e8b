#include "server/subsystem_metrics.h"

namespace spill::server {
namespace {

void Counter(MetricsWriter& out, const char* name, const char* help, double value) {
  out.Family(name, help, MetricType::kCounter);
  out.Sample({}, value);
}

void Gauge(MetricsWriter& out, const char* name, const char* help, double value) {
  out.Family(name, help, MetricType::kGauge);
  out.Sample({}, value);
}

}  // namespace

void NvmeMetricsCollector::Collect(MetricsWriter& out) const {
  const storage::NvmeStats s = tier_->Stats();
  Counter(out, "spill_nvme_read_bytes_total", "Bytes read from the NVMe tier (verified).",
          static_cast<double>(s.bytes_read));
  Counter(out, "spill_nvme_written_bytes_total", "Bytes written to the NVMe tier.",
          static_cast<double>(s.bytes_written));
  out.Family("spill_nvme_ops_total", "NVMe tier reads and writes finished, ok or not.",
             MetricType::kCounter);
  out.Sample({{"op", "read"}}, static_cast<double>(s.read_ops));
  out.Sample({{"op", "write"}}, static_cast<double>(s.write_ops));
  Counter(out, "spill_nvme_requests_total", "io_uring requests submitted (resubmissions included).",
          static_cast<double>(s.requests));
  Counter(out, "spill_nvme_retries_total", "io_uring requests retried after EAGAIN or EINTR.",
          static_cast<double>(s.retries));
  Counter(out, "spill_nvme_checksum_failures_total",
          "NVMe blocks whose CRC32C did not match on read.", static_cast<double>(s.crc_failures));
  out.Family("spill_nvme_errors_total", "Failed NVMe tier operations, by status code.",
             MetricType::kCounter);
  for (const auto& [code, n] : s.errors) out.Sample({{"code", code}}, static_cast<double>(n));
  out.Family("spill_job_nvme_used_bytes", "NVMe bytes each job holds.", MetricType::kGauge);
  for (const auto& [job, bytes] : s.job_used_bytes) {
    out.Sample({{"job", job}}, static_cast<double>(bytes));
  }
}

void TierMetricsCollector::Collect(MetricsWriter& out) const {
  const storage::TierManagerStats s = tiers_->Stats();
  const storage::TierCounters& t = s.total;
  Counter(out, "spill_tiering_evictions_total",
          "Clean NVMe-homed copies evicted from pinned memory.",
          static_cast<double>(t.evictions));
  Counter(out, "spill_tiering_evicted_bytes_total", "Bytes of the evicted copies.",
          static_cast<double>(t.evicted_bytes));
  out.Family("spill_tiering_acquires_total",
             "Acquires of NVMe-homed objects: hit (resident thanks to a prefetch), late (joined "
             "a prefetch's read), miss (had to read).",
             MetricType::kCounter);
  out.Sample({{"result", "hit"}}, static_cast<double>(t.prefetch_hits));
  out.Sample({{"result", "late"}}, static_cast<double>(t.prefetch_late));
  out.Sample({{"result", "miss"}}, static_cast<double>(t.prefetch_misses));
  Counter(out, "spill_tiering_reads_total", "Reads of NVMe-homed objects into pinned memory.",
          static_cast<double>(t.reads));
  Counter(out, "spill_tiering_read_errors_total", "Failed reads (checksum, I/O).",
          static_cast<double>(t.read_errors));
  Counter(out, "spill_tiering_writebacks_total", "Write-backs of NVMe-homed objects completed.",
          static_cast<double>(t.writes));
  Counter(out, "spill_tiering_writeback_errors_total", "Failed write-backs (retried).",
          static_cast<double>(t.write_errors));
  Gauge(out, "spill_tiering_resident_bytes", "Pinned bytes of NVMe-homed objects.",
        static_cast<double>(t.resident_bytes));
  Gauge(out, "spill_tiering_dirty_bytes", "Pinned bytes newer than their NVMe copy.",
        static_cast<double>(t.dirty_bytes));
  Gauge(out, "spill_tiering_writebacks_in_flight", "Write-backs in flight.",
        static_cast<double>(s.writebacks_in_flight));
  out.Family("spill_tiering_manifest_publishes_total", "Manifest publishes, by result.",
             MetricType::kCounter);
  out.Sample({{"result", "ok"}}, static_cast<double>(s.publishes));
  out.Sample({{"result", "error"}}, static_cast<double>(s.publish_errors));
  Gauge(out, "spill_tiering_manifest_generation", "Generation of the last published manifest.",
        static_cast<double>(s.manifest_generation));
}

void OptimizerMetricsCollector::Collect(MetricsWriter& out) const {
  const OptimizerStats s = host_->Stats();
  out.Family("spill_optimizer_groups", "Optimizer groups defined, all jobs.", MetricType::kGauge);
  out.Sample({}, s.groups);
  out.Family("spill_optimizer_steps_total", "Optimizer steps answered, by outcome.",
             MetricType::kCounter);
  out.Sample({{"outcome", "applied"}}, static_cast<double>(s.steps_applied));
  out.Sample({{"outcome", "skipped"}}, static_cast<double>(s.steps_skipped));
  out.Sample({{"outcome", "repeated"}}, static_cast<double>(s.steps_repeated));
  Counter(out, "spill_optimizer_speculative_steps_total",
          "Steps run before their clip coefficient was known (also counted as applied).",
          static_cast<double>(s.steps_speculative));
  out.Family("spill_optimizer_commits_total",
             "Speculative steps committed, by whether the commit rescaled them.",
             MetricType::kCounter);
  out.Sample({{"commit", "as_run"}}, static_cast<double>(s.steps_committed - s.steps_rescaled));
  out.Sample({{"commit", "rescaled"}}, static_cast<double>(s.steps_rescaled));
  Counter(out, "spill_optimizer_rescale_seconds_total",
          "Wall time of the passes that rescaled speculative steps.", s.rescale_seconds);
  Counter(out, "spill_optimizer_step_seconds_total", "Wall time of applied optimizer steps.",
          s.step_seconds);
  Counter(out, "spill_optimizer_grad_ready_seconds_total",
          "Wall time of gradient accumulation and sum-of-squares passes.", s.grad_ready_seconds);
  Counter(out, "spill_optimizer_busy_seconds_total",
          "Wall time with at least one optimizer step or gradient pass running.",
          s.busy_seconds);
  Counter(out, "spill_optimizer_stepped_elements_total",
          "Parameter elements updated by applied steps.", static_cast<double>(s.elements_stepped));
  Counter(out, "spill_optimizer_grad_ready_total", "Gradient shards accumulated or summed.",
          static_cast<double>(s.grad_ready));
}

}  // namespace spill::server
