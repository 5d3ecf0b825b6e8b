#include "server/prometheus.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace spill::server {
namespace {

[[noreturn]] void Misuse(const std::string& what) {
  std::cerr << "spilld: metrics exposition misuse: " << what << std::endl;
  std::abort();
}

const char* TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter: return "counter";
    case MetricType::kGauge: return "gauge";
    case MetricType::kHistogram: return "histogram";
    case MetricType::kUntyped: return "untyped";
  }
  return "untyped";
}

// HELP text escapes only backslash and newline.
std::string EscapeHelp(absl::string_view help) {
  std::string out;
  for (char c : help) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

bool NameChar(char c, bool first, bool allow_colon) {
  if (absl::ascii_isalpha(static_cast<unsigned char>(c)) || c == '_') return true;
  if (c == ':') return allow_colon;
  return !first && absl::ascii_isdigit(static_cast<unsigned char>(c));
}

bool ValidName(absl::string_view name, bool allow_colon) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (!NameChar(name[i], i == 0, allow_colon)) return false;
  }
  return true;
}

}  // namespace

std::string EscapeLabelValue(absl::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string FormatSampleValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  if (value == std::floor(value) && std::fabs(value) < 9.007199254740992e15) {
    return absl::StrCat(static_cast<int64_t>(value));
  }
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.17g", value);
  // Prefer the shortest text that reads back the same.
  for (int precision = 6; precision < 17; ++precision) {
    char shorter[32];
    std::snprintf(shorter, sizeof(shorter), "%.*g", precision, value);
    if (std::strtod(shorter, nullptr) == value) return shorter;
  }
  return buffer;
}

bool ValidMetricName(absl::string_view name) { return ValidName(name, /*allow_colon=*/true); }

bool ValidLabelName(absl::string_view name) {
  return ValidName(name, /*allow_colon=*/false) && !(name.size() >= 2 && name.substr(0, 2) == "__");
}

void MetricsWriter::Family(absl::string_view name, absl::string_view help, MetricType type) {
  if (!ValidMetricName(name)) Misuse(absl::StrCat("invalid metric name '", name, "'"));
  for (const std::string& seen : families_) {
    if (seen == name) Misuse(absl::StrCat("metric family '", name, "' written twice"));
  }
  families_.emplace_back(name);
  current_ = std::string(name);
  current_type_ = type;
  absl::StrAppend(&text_, "# HELP ", name, " ", EscapeHelp(help), "\n");
  absl::StrAppend(&text_, "# TYPE ", name, " ", TypeName(type), "\n");
}

void MetricsWriter::WriteSeries(absl::string_view suffix, const Labels& labels,
                                const std::pair<std::string, std::string>* extra, double value) {
  absl::StrAppend(&text_, current_, suffix);
  if (!labels.empty() || extra != nullptr) {
    text_ += '{';
    bool first = true;
    auto append = [&](const std::string& key, const std::string& val) {
      if (!ValidLabelName(key)) Misuse(absl::StrCat("invalid label name '", key, "'"));
      if (!first) text_ += ',';
      first = false;
      absl::StrAppend(&text_, key, "=\"", EscapeLabelValue(val), "\"");
    };
    for (const auto& [key, val] : labels) append(key, val);
    if (extra != nullptr) append(extra->first, extra->second);
    text_ += '}';
  }
  absl::StrAppend(&text_, " ", FormatSampleValue(value), "\n");
}

void MetricsWriter::Sample(const Labels& labels, double value) {
  if (current_.empty()) Misuse("sample before any family");
  if (current_type_ == MetricType::kHistogram) {
    Misuse(absl::StrCat("plain sample in histogram family '", current_, "'"));
  }
  WriteSeries("", labels, nullptr, value);
}

void MetricsWriter::Histogram(const Labels& labels, const HistogramData& data) {
  if (current_type_ != MetricType::kHistogram || current_.empty()) {
    Misuse(absl::StrCat("histogram sample in non-histogram family '", current_, "'"));
  }
  if (data.upper_bounds.size() != data.bucket_counts.size()) {
    Misuse(absl::StrCat("histogram '", current_, "': bounds and counts differ in length"));
  }
  for (const auto& [key, val] : labels) {
    if (key == "le") Misuse(absl::StrCat("histogram '", current_, "' uses the label 'le'"));
  }
  for (size_t i = 0; i < data.upper_bounds.size(); ++i) {
    std::pair<std::string, std::string> le{"le", FormatSampleValue(data.upper_bounds[i])};
    WriteSeries("_bucket", labels, &le, static_cast<double>(data.bucket_counts[i]));
  }
  std::pair<std::string, std::string> inf{"le", "+Inf"};
  WriteSeries("_bucket", labels, &inf, static_cast<double>(data.count));
  WriteSeries("_sum", labels, nullptr, data.sum);
  WriteSeries("_count", labels, nullptr, static_cast<double>(data.count));
}

void CollectorSet::Add(std::unique_ptr<MetricsCollector> collector) {
  std::lock_guard<std::mutex> lock(mu_);
  collectors_.push_back(std::move(collector));
}

std::string CollectorSet::Render() const {
  MetricsWriter writer;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& collector : collectors_) collector->Collect(writer);
  return writer.text();
}

std::vector<std::string> CollectorSet::FamilyNames() const {
  MetricsWriter writer;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& collector : collectors_) collector->Collect(writer);
  return writer.families();
}

}  // namespace spill::server
