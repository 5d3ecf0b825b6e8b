#include "server/core_metrics.h"

#include <cmath>

namespace spill::server {
namespace {

constexpr char kPinned[] = "pinned";

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

HistogramData ToPrometheus(const LatencyHistogram& h) {
  HistogramData data;
  for (int k = 0; k < LatencyHistogram::kPow2Bounds; ++k) {
    data.upper_bounds.push_back(std::ldexp(1e-6, k));  // 2^k µs in seconds.
    data.bucket_counts.push_back(h.CountAtMostPow2Micros(k));
  }
  data.count = h.count();
  data.sum = h.SumSeconds();
  return data;
}

void Gauge(MetricsWriter& out, const char* name, const char* help, double value) {
  out.Family(name, help, MetricType::kGauge);
  out.Sample({}, value);
}

}  // namespace

std::string StatusCodeName(absl::StatusCode code) { return absl::StatusCodeToString(code); }

void CoreMetricsCollector::Collect(MetricsWriter& out) const {
  out.Family("spill_build_info", "spilld's version; the value is always 1.", MetricType::kGauge);
  out.Sample({{"version", deps_.version}}, 1);
  Gauge(out, "spill_start_time_seconds", "When spilld started, in seconds since the Unix epoch.",
        std::chrono::duration<double>(deps_.started_wall.time_since_epoch()).count());
  Gauge(out, "spill_uptime_seconds", "Seconds since spilld started.",
        Seconds(std::chrono::steady_clock::now() - deps_.started));
  CollectTiers(out);
  CollectJobs(out);
  CollectRequests(out);
}

void CoreMetricsCollector::CollectTiers(MetricsWriter& out) const {
  const storage::ArenaStats a = deps_.arena->Stats();
  const Labels tier = {{"tier", kPinned}};
  struct {
    const char* name;
    const char* help;
    double value;
  } const gauges[] = {
      {"spill_tier_capacity_bytes", "Bytes the tier holds in all.",
       static_cast<double>(a.capacity_bytes)},
      {"spill_tier_used_bytes", "Bytes of the tier allocated to objects.",
       static_cast<double>(a.used_bytes)},
      {"spill_tier_free_bytes", "Bytes of the tier not allocated to objects.",
       static_cast<double>(a.capacity_bytes - a.used_bytes)},
      {"spill_tier_segment_bytes", "Size of one segment of the tier.",
       static_cast<double>(a.segment_bytes)},
      {"spill_tier_segments", "Segments of the tier.", static_cast<double>(a.segments_total)},
      {"spill_tier_free_segments", "Segments of the tier that no job owns.",
       static_cast<double>(a.segments_free)},
      {"spill_tier_huge_pages", "1 when the tier's segments use 2 MiB pages.",
       a.huge_pages ? 1.0 : 0.0},
  };
  storage::NvmeStats nvme;
  if (deps_.nvme != nullptr) nvme = deps_.nvme->Stats();
  const Labels nvme_tier = {{"tier", "nvme"}};
  for (const auto& g : gauges) {
    out.Family(g.name, g.help, MetricType::kGauge);
    out.Sample(tier, g.value);
    if (deps_.nvme == nullptr) continue;
    const std::string name = g.name;
    if (name == "spill_tier_capacity_bytes") out.Sample(nvme_tier, nvme.capacity_bytes);
    if (name == "spill_tier_used_bytes") out.Sample(nvme_tier, nvme.used_bytes);
    if (name == "spill_tier_free_bytes") out.Sample(nvme_tier, nvme.free_bytes);
  }
}

void CoreMetricsCollector::CollectJobs(MetricsWriter& out) const {
  const std::vector<JobSnapshot> jobs = deps_.registry->Jobs();
  uint64_t active = 0, grace = 0, attached = 0, detached = 0, objects = 0, pins = 0;
  for (const JobSnapshot& j : jobs) {
    (j.in_grace ? grace : active) += 1;
    objects += j.objects;
    for (const SessionSnapshot& s : j.sessions) {
      (s.attached ? attached : detached) += 1;
      pins += s.pins;
    }
  }
  out.Family("spill_jobs", "Jobs known to spilld, by state.", MetricType::kGauge);
  out.Sample({{"state", "active"}}, static_cast<double>(active));
  out.Sample({{"state", "grace"}}, static_cast<double>(grace));
  out.Family("spill_sessions", "Open sessions, by whether their stream is attached.",
             MetricType::kGauge);
  out.Sample({{"state", "attached"}}, static_cast<double>(attached));
  out.Sample({{"state", "detached"}}, static_cast<double>(detached));
  Gauge(out, "spill_objects", "Objects registered by all jobs.", static_cast<double>(objects));
  Gauge(out, "spill_pins", "Pins held by all sessions.", static_cast<double>(pins));

  struct PerJob {
    const char* name;
    const char* help;
    MetricType type;
    bool tier;
    double (*value)(const JobSnapshot&);
  } const per_job[] = {
      {"spill_job_used_bytes", "Bytes of the tier the job's objects occupy.", MetricType::kGauge,
       true, [](const JobSnapshot& j) { return static_cast<double>(j.used_bytes); }},
      {"spill_job_reserved_bytes", "Bytes of the segments the job owns.", MetricType::kGauge,
       true, [](const JobSnapshot& j) { return static_cast<double>(j.reserved_bytes); }},
      {"spill_job_quota_bytes", "Bytes of the tier the job may hold.", MetricType::kGauge, true,
       [](const JobSnapshot& j) { return static_cast<double>(j.quota_bytes); }},
      {"spill_job_objects", "Objects the job registered.", MetricType::kGauge, false,
       [](const JobSnapshot& j) { return static_cast<double>(j.objects); }},
      {"spill_job_sessions", "Open sessions of the job.", MetricType::kGauge, false,
       [](const JobSnapshot& j) { return static_cast<double>(j.sessions.size()); }},
      {"spill_job_acquired_bytes_total",
       "Bytes of objects the job's sessions acquired since the job was created.",
       MetricType::kCounter, false,
       [](const JobSnapshot& j) { return static_cast<double>(j.acquired_bytes); }},
      {"spill_job_written_back_bytes_total",
       "Bytes of objects the job's sessions wrote back since the job was created.",
       MetricType::kCounter, false,
       [](const JobSnapshot& j) { return static_cast<double>(j.written_back_bytes); }},
  };
  for (const PerJob& family : per_job) {
    out.Family(family.name, family.help, family.type);
    for (const JobSnapshot& j : jobs) {
      Labels labels = {{"job", j.job_id}};
      if (family.tier) labels.insert(labels.begin(), {"tier", kPinned});
      out.Sample(labels, family.value(j));
    }
  }
}

void CoreMetricsCollector::CollectRequests(MetricsWriter& out) const {
  out.Family("spill_acquired_bytes_total", "Bytes of objects handed out by acquire, all jobs.",
             MetricType::kCounter);
  out.Sample({}, static_cast<double>(deps_.metrics->bytes_out()));
  out.Family("spill_written_back_bytes_total", "Bytes of objects recorded by write-back, all jobs.",
             MetricType::kCounter);
  out.Sample({}, static_cast<double>(deps_.metrics->bytes_in()));

  const std::vector<OpDetail> ops = deps_.metrics->Details();
  out.Family("spill_requests_total", "Requests finished, by method and gRPC status code.",
             MetricType::kCounter);
  for (const OpDetail& op : ops) {
    for (const auto& [code, n] : op.codes) {
      out.Sample({{"method", op.op}, {"code", StatusCodeName(code)}}, static_cast<double>(n));
    }
  }
  out.Family("spill_request_duration_seconds",
             "Time from reading a request to having its answer, by method.",
             MetricType::kHistogram);
  for (const OpDetail& op : ops) out.Histogram({{"method", op.op}}, ToPrometheus(op.histogram));
}

}  // namespace spill::server
