#include "client/admin_format.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/units.h"

namespace spill::client {
namespace {

using json = nlohmann::ordered_json;

// "-" for a zero quota, which spilld reports for a job without one.
std::string QuotaCell(uint64_t quota_bytes) {
  return quota_bytes == 0 ? "-" : FormatBytes(quota_bytes);
}

std::string Micros(double us) { return absl::StrFormat("%.1f", us); }

std::string Percent(uint64_t part, uint64_t whole) {
  if (whole == 0) return "-";
  return absl::StrFormat("%.1f%%", 100.0 * static_cast<double>(part) / static_cast<double>(whole));
}

json TierToJson(const v1::TierStats& tier) {
  json jobs = json::array();
  for (const v1::JobUsage& job : tier.jobs()) {
    jobs.push_back({{"job_id", job.job_id()},
                    {"used_bytes", job.used_bytes()},
                    {"reserved_bytes", job.reserved_bytes()},
                    {"quota_bytes", job.quota_bytes()},
                    {"acquired_bytes", job.acquired_bytes()},
                    {"written_back_bytes", job.written_back_bytes()},
                    {"objects", job.objects()},
                    {"sessions", job.sessions()}});
  }
  return {{"name", tier.name()},
          {"capacity_bytes", tier.capacity_bytes()},
          {"used_bytes", tier.used_bytes()},
          {"free_bytes", tier.free_bytes()},
          {"segment_bytes", tier.segment_bytes()},
          {"segments_total", tier.segments_total()},
          {"segments_free", tier.segments_free()},
          {"huge_pages", tier.huge_pages()},
          {"jobs", std::move(jobs)}};
}

json SessionToJson(const v1::SessionInfo& session) {
  return {{"session_id", session.session_id()}, {"rank", session.rank()},
          {"world_size", session.world_size()}, {"pid", session.pid()},
          {"uid", session.uid()},               {"attached", session.attached()},
          {"pins", session.pins()}};
}

std::string TiersTable(const v1::StatsResponse& stats) {
  if (stats.tiers().empty()) return "no tiers\n";
  TextTable tiers({"TIER", "CAPACITY", "USED", "FREE", "USE%", "SEGMENTS", "FREE SEGS", "HUGE PAGES"},
                  {false, true, true, true, true, true, true, false});
  TextTable jobs({"TIER", "JOB", "USED", "RESERVED", "QUOTA"}, {false, false, true, true, true});
  for (const v1::TierStats& tier : stats.tiers()) {
    tiers.AddRow({tier.name(), FormatBytes(tier.capacity_bytes()), FormatBytes(tier.used_bytes()),
                  FormatBytes(tier.free_bytes()), Percent(tier.used_bytes(), tier.capacity_bytes()),
                  absl::StrCat(tier.segments_total(), " x ", FormatBytes(tier.segment_bytes())),
                  absl::StrCat(tier.segments_free()), tier.huge_pages() ? "yes" : "no"});
    for (const v1::JobUsage& job : tier.jobs()) {
      jobs.AddRow({tier.name(), job.job_id(), FormatBytes(job.used_bytes()),
                   FormatBytes(job.reserved_bytes()), QuotaCell(job.quota_bytes())});
    }
  }
  std::string out = tiers.Render();
  out += "\n";
  out += jobs.empty() ? "no jobs hold memory\n" : jobs.Render();
  return out;
}

std::string RequestsTable(const v1::StatsResponse& stats) {
  if (stats.requests().empty()) return "no requests yet\n";
  TextTable requests({"REQUEST", "COUNT", "ERRORS", "P50 us", "P90 us", "P99 us", "MAX us"},
                     {false, true, true, true, true, true, true});
  for (const v1::LatencyStats& op : stats.requests()) {
    requests.AddRow({op.op(), absl::StrCat(op.count()), absl::StrCat(op.errors()),
                     Micros(op.p50_us()), Micros(op.p90_us()), Micros(op.p99_us()),
                     Micros(op.max_us())});
  }
  return requests.Render();
}

}  // namespace

nlohmann::ordered_json StatsToJson(const v1::StatsResponse& stats) {
  json tiers = json::array();
  for (const v1::TierStats& tier : stats.tiers()) tiers.push_back(TierToJson(tier));
  json requests = json::array();
  for (const v1::LatencyStats& op : stats.requests()) {
    json codes = json::object();
    for (const v1::CodeCount& c : op.codes()) codes[c.code()] = c.count();
    requests.push_back({{"op", op.op()},
                        {"count", op.count()},
                        {"errors", op.errors()},
                        {"p50_us", op.p50_us()},
                        {"p90_us", op.p90_us()},
                        {"p99_us", op.p99_us()},
                        {"max_us", op.max_us()},
                        {"codes", std::move(codes)}});
  }
  return {{"tiers", std::move(tiers)},
          {"bytes_in", stats.bytes_in()},
          {"bytes_out", stats.bytes_out()},
          {"requests", std::move(requests)},
          {"uptime_ms", stats.uptime_ms()},
          {"version", stats.version()},
          {"metrics_address", stats.metrics_address()}};
}

namespace {
// null when the job's first session set no budget.
json BudgetToJson(bool set, const v1::OffloadBudget& budget) {
  if (!set) return nullptr;
  return {{"buffer_count", budget.buffer_count()},
          {"buffer_size", budget.buffer_size()},
          {"max_in_cpu", budget.max_in_cpu()}};
}

void AddBudgetRow(TextTable& table, const std::string& job, const char* stream, bool set,
                  const v1::OffloadBudget& b) {
  if (!set) return;
  table.AddRow({job, stream, absl::StrCat(b.buffer_count()), FormatBytes(b.buffer_size()),
                FormatBytes(b.max_in_cpu())});
}
}  // namespace

nlohmann::ordered_json JobsToJson(const v1::JobsResponse& jobs) {
  json list = json::array();
  for (const v1::JobInfo& job : jobs.jobs()) {
    json sessions = json::array();
    for (const v1::SessionInfo& session : job.sessions()) sessions.push_back(SessionToJson(session));
    list.push_back({{"job_id", job.job_id()},
                    {"uid", job.uid()},
                    {"state", job.state()},
                    {"grace_remaining_ms", job.grace_remaining_ms()},
                    {"objects", job.objects()},
                    {"nvme_objects", job.nvme_objects()},
                    {"used_bytes", job.used_bytes()},
                    {"param_budget", BudgetToJson(job.has_param_budget(), job.param_budget())},
                    {"optimizer_budget",
                     BudgetToJson(job.has_optimizer_budget(), job.optimizer_budget())},
                    {"sessions", std::move(sessions)}});
  }
  return {{"jobs", std::move(list)}};
}

nlohmann::ordered_json HealthToJson(const v1::HealthResponse& health) {
  return {{"status", health.status()},
          {"version", health.version()},
          {"uptime_ms", health.uptime_ms()},
          {"pid", health.pid()},
          {"socket_path", health.socket_path()},
          {"metrics_address", health.metrics_address()}};
}

std::string FormatStats(const v1::StatsResponse& stats) {
  std::string out = absl::StrCat("spilld up ", FormatDurationMs(stats.uptime_ms()),
                                 "; bytes in ", FormatBytes(stats.bytes_in()), ", out ",
                                 FormatBytes(stats.bytes_out()), "\n\n");
  out += TiersTable(stats);
  out += "\n";
  out += RequestsTable(stats);
  return out;
}

std::string FormatJobs(const v1::JobsResponse& jobs) {
  if (jobs.jobs().empty()) return "no jobs\n";
  TextTable table({"JOB", "STATE", "GRACE LEFT", "OBJECTS", "NVME", "USED", "SESSIONS", "UID"},
                  {false, false, true, true, true, true, true, true});
  bool recovered = false;
  TextTable sessions({"JOB", "SESSION", "RANK", "PID", "UID", "ATTACHED", "PINS"},
                     {false, true, true, true, true, false, true});
  TextTable budgets({"JOB", "OFFLOAD", "BUFFER COUNT", "BUFFER SIZE", "MAX IN CPU"},
                    {false, false, true, true, true});
  for (const v1::JobInfo& job : jobs.jobs()) {
    const bool waiting = job.state() == "grace" || job.state() == "recovered";
    recovered = recovered || job.state() == "recovered";
    std::string grace = waiting ? FormatDurationMs(job.grace_remaining_ms()) : "-";
    table.AddRow({job.job_id(), job.state(), grace, absl::StrCat(job.objects()),
                  absl::StrCat(job.nvme_objects()), FormatBytes(job.used_bytes()),
                  absl::StrCat(job.sessions_size()), absl::StrCat(job.uid())});
    AddBudgetRow(budgets, job.job_id(), "param", job.has_param_budget(), job.param_budget());
    AddBudgetRow(budgets, job.job_id(), "optimizer", job.has_optimizer_budget(),
                 job.optimizer_budget());
    for (const v1::SessionInfo& s : job.sessions()) {
      sessions.AddRow({job.job_id(), absl::StrCat(s.session_id()),
                       absl::StrCat(s.rank(), "/", s.world_size()), absl::StrCat(s.pid()),
                       absl::StrCat(s.uid()), s.attached() ? "yes" : "no", absl::StrCat(s.pins())});
    }
  }
  std::string out = table.Render();
  if (recovered) {
    out += "recovered: found on NVMe at spilld's start; a worker of the same uid that opens "
           "the job re-attaches to its objects before GRACE LEFT ends (spillctl drop-job JOB "
           "frees it now)\n";
  }
  if (!sessions.empty()) out += "\n" + sessions.Render();
  if (!budgets.empty()) out += "\n" + budgets.Render();
  return out;
}

std::string FormatHealth(const v1::HealthResponse& health) {
  TextTable table({"", ""}, {false, false});
  table.AddRow({"status", health.status()});
  table.AddRow({"version", health.version()});
  table.AddRow({"pid", absl::StrCat(health.pid())});
  table.AddRow({"uptime", FormatDurationMs(health.uptime_ms())});
  table.AddRow({"socket", health.socket_path()});
  table.AddRow({"metrics", health.metrics_address().empty()
                               ? "off"
                               : absl::StrCat("http://", health.metrics_address(), "/metrics")});
  std::string rendered = table.Render();
  // Drop the (empty) header line.
  return rendered.substr(rendered.find('\n') + 1);
}

std::string FormatDurationMs(uint64_t ms) {
  constexpr uint64_t kSecond = 1000, kMinute = 60 * kSecond, kHour = 60 * kMinute,
                     kDay = 24 * kHour;
  if (ms < kSecond) return absl::StrCat(ms, "ms");
  if (ms < kMinute) return absl::StrFormat("%.1fs", static_cast<double>(ms) / kSecond);
  if (ms < kHour) return absl::StrFormat("%dm %02ds", ms / kMinute, (ms % kMinute) / kSecond);
  if (ms < kDay) return absl::StrFormat("%dh %02dm", ms / kHour, (ms % kHour) / kMinute);
  return absl::StrFormat("%dd %dh", ms / kDay, (ms % kDay) / kHour);
}

TextTable::TextTable(std::vector<std::string> header, std::vector<bool> right_aligned)
    : header_(std::move(header)), right_aligned_(std::move(right_aligned)) {
  right_aligned_.resize(header_.size(), false);
}

void TextTable::AddRow(std::vector<std::string> row) {
  row.resize(std::max(row.size(), header_.size()));
  rows_.push_back(std::move(row));
}

std::string TextTable::Render(const std::string& indent) const {
  size_t columns = header_.size();
  for (const auto& row : rows_) columns = std::max(columns, row.size());
  std::vector<size_t> width(columns, 0);
  auto measure = [&](const std::vector<std::string>& row) {
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  };
  measure(header_);
  for (const auto& row : rows_) measure(row);
  auto render_row = [&](const std::vector<std::string>& row) {
    std::string line = indent;
    for (size_t i = 0; i < columns; ++i) {
      const std::string cell = i < row.size() ? row[i] : "";
      std::string pad(width[i] - cell.size(), ' ');
      bool right = i < right_aligned_.size() && right_aligned_[i];
      line += right ? pad + cell : cell + pad;
      if (i + 1 < columns) line += "  ";
    }
    line.erase(line.find_last_not_of(' ') + 1);
    return line + "\n";
  };
  std::string out = render_row(header_);
  for (const auto& row : rows_) out += render_row(row);
  return out;
}

}  // namespace spill::client
