#include "client/watch_format.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/admin_format.h"
#include "common/units.h"

namespace spill::client {
namespace {

std::string RateCell(std::optional<double> per_second) {
  if (!per_second.has_value()) return "-";
  return absl::StrFormat("%.1f", *per_second);
}

const v1::JobUsage* FindJobUsage(const v1::StatsResponse& stats, const std::string& job) {
  for (const v1::TierStats& tier : stats.tiers()) {
    for (const v1::JobUsage& usage : tier.jobs()) {
      if (usage.job_id() == job) return &usage;
    }
  }
  return nullptr;
}

const v1::LatencyStats* FindOp(const v1::StatsResponse& stats, const std::string& op) {
  for (const v1::LatencyStats& l : stats.requests()) {
    if (l.op() == op) return &l;
  }
  return nullptr;
}

std::string TiersSection(const v1::StatsResponse& stats) {
  TextTable tiers({"TIER", "CAPACITY", "USED", "FREE", "USE%", "SEGMENTS FREE/TOTAL"},
                  {false, true, true, true, true, true});
  for (const v1::TierStats& tier : stats.tiers()) {
    std::string use = tier.capacity_bytes() == 0
                          ? "-"
                          : absl::StrFormat("%.1f%%", 100.0 * tier.used_bytes() /
                                                          tier.capacity_bytes());
    tiers.AddRow({tier.name(), FormatBytes(tier.capacity_bytes()), FormatBytes(tier.used_bytes()),
                  FormatBytes(tier.free_bytes()), use,
                  absl::StrCat(tier.segments_free(), "/", tier.segments_total())});
  }
  return tiers.empty() ? "no tiers\n" : tiers.Render();
}

std::string JobsSection(const WatchSample* previous, const WatchSample& current, double seconds) {
  if (current.jobs.jobs().empty()) return "no jobs\n";
  TextTable jobs({"JOB", "STATE", "SESSIONS", "OBJECTS", "USED", "ACQUIRE", "WRITE-BACK"},
                 {false, false, true, true, true, true, true});
  for (const v1::JobInfo& job : current.jobs.jobs()) {
    const v1::JobUsage* now = FindJobUsage(current.stats, job.job_id());
    const v1::JobUsage* before =
        previous == nullptr ? nullptr : FindJobUsage(previous->stats, job.job_id());
    std::optional<double> acquire, write_back;
    if (now != nullptr && before != nullptr) {
      acquire = CounterRate(before->acquired_bytes(), now->acquired_bytes(), seconds);
      write_back = CounterRate(before->written_back_bytes(), now->written_back_bytes(), seconds);
    }
    std::string state = job.state() == "grace"
                            ? absl::StrCat("grace ", FormatDurationMs(job.grace_remaining_ms()))
                            : job.state();
    jobs.AddRow({job.job_id(), state, absl::StrCat(job.sessions_size()),
                 absl::StrCat(job.objects()), FormatBytes(job.used_bytes()), FormatRate(acquire),
                 FormatRate(write_back)});
  }
  return jobs.Render();
}

std::string RequestsSection(const WatchSample* previous, const WatchSample& current,
                            double seconds) {
  if (current.stats.requests().empty()) return "no requests yet\n";
  TextTable requests({"REQUEST", "TOTAL", "PER SEC", "ERRORS/S", "P50 us", "P99 us"},
                     {false, true, true, true, true, true});
  for (const v1::LatencyStats& op : current.stats.requests()) {
    const v1::LatencyStats* before =
        previous == nullptr ? nullptr : FindOp(previous->stats, op.op());
    std::optional<double> rate, errors;
    if (before != nullptr) {
      rate = CounterRate(before->count(), op.count(), seconds);
      errors = CounterRate(before->errors(), op.errors(), seconds);
    } else if (previous != nullptr) {  // First seen in this interval.
      rate = CounterRate(0, op.count(), seconds);
      errors = CounterRate(0, op.errors(), seconds);
    }
    requests.AddRow({op.op(), absl::StrCat(op.count()), RateCell(rate), RateCell(errors),
                     absl::StrFormat("%.1f", op.p50_us()), absl::StrFormat("%.1f", op.p99_us())});
  }
  return requests.Render();
}

}  // namespace

std::optional<double> CounterRate(uint64_t before, uint64_t now, double seconds) {
  if (seconds <= 0 || now < before) return std::nullopt;
  return static_cast<double>(now - before) / seconds;
}

std::string FormatRate(std::optional<double> bytes_per_second) {
  if (!bytes_per_second.has_value()) return "-";
  return FormatBytes(static_cast<uint64_t>(*bytes_per_second + 0.5)) + "/s";
}

std::string FormatWatch(const WatchSample* previous, const WatchSample& current) {
  double seconds = 0;
  if (previous != nullptr) {
    seconds = std::chrono::duration<double>(current.at - previous->at).count();
  }
  std::optional<double> out_rate, in_rate;
  if (previous != nullptr) {
    out_rate = CounterRate(previous->stats.bytes_out(), current.stats.bytes_out(), seconds);
    in_rate = CounterRate(previous->stats.bytes_in(), current.stats.bytes_in(), seconds);
  }
  const v1::StatsResponse& stats = current.stats;
  std::string out = absl::StrCat(
      "spilld ", stats.version().empty() ? "" : stats.version() + " ", "up ",
      FormatDurationMs(stats.uptime_ms()),
      previous == nullptr ? "" : absl::StrFormat("  (rates over %.1fs)", seconds), "\n");
  absl::StrAppend(&out, "bandwidth: acquire ", FormatRate(out_rate), ", write-back ",
                  FormatRate(in_rate), "  (totals ", FormatBytes(stats.bytes_out()), " / ",
                  FormatBytes(stats.bytes_in()), ")\n\n");
  out += TiersSection(stats);
  out += "\n";
  out += JobsSection(previous, current, seconds);
  out += "\n";
  out += RequestsSection(previous, current, seconds);
  return out;
}

}  // namespace spill::client
