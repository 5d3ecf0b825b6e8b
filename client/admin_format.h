// spillctl's output: the Admin service's answers as JSON (numbers as JSON
// numbers, unlike protobuf's JSON mapping, which quotes 64-bit integers) and
// as human tables. Pure functions of the responses, so tests build responses
// by hand.
#ifndef SPILL_CLIENT_ADMIN_FORMAT_H_
#define SPILL_CLIENT_ADMIN_FORMAT_H_

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "spill/v1/spill.pb.h"

namespace spill::client {

// Keys keep the order shown.
// {"tiers": [{"name", "capacity_bytes", "used_bytes", "free_bytes",
//   "segment_bytes", "segments_total", "segments_free", "huge_pages",
//   "jobs": [{"job_id", "used_bytes", "reserved_bytes", "quota_bytes",
//     "acquired_bytes", "written_back_bytes", "objects", "sessions"}]}],
//  "bytes_in", "bytes_out",
//  "requests": [{"op", "count", "errors", "p50_us", "p90_us", "p99_us", "max_us",
//    "codes": {"OK": n, "NOT_FOUND": n, ...}}],
//  "uptime_ms", "version", "metrics_address"}
nlohmann::ordered_json StatsToJson(const v1::StatsResponse& stats);

// {"jobs": [{"job_id", "uid", "state", "grace_remaining_ms", "objects",
//   "used_bytes", "sessions": [{"session_id", "rank", "world_size", "pid",
//   "uid", "attached", "pins"}]}]}
nlohmann::ordered_json JobsToJson(const v1::JobsResponse& jobs);

// {"status", "version", "uptime_ms", "pid", "socket_path", "metrics_address"}
nlohmann::ordered_json HealthToJson(const v1::HealthResponse& health);

// Human tables; each ends with a newline.
std::string FormatStats(const v1::StatsResponse& stats);
std::string FormatJobs(const v1::JobsResponse& jobs);
std::string FormatHealth(const v1::HealthResponse& health);

// "3d 4h", "1h 02m", "5m 07s", "12.3s", "250ms".
std::string FormatDurationMs(uint64_t ms);

// A plain-text table: a header row and rows of cells, columns padded to the
// widest cell and separated by two spaces; right-aligned columns suit
// numbers. Rows shorter than the header are padded with empty cells.
class TextTable {
 public:
  TextTable(std::vector<std::string> header, std::vector<bool> right_aligned);
  void AddRow(std::vector<std::string> row);
  bool empty() const { return rows_.empty(); }
  // Every line is prefixed with indent and ends with a newline; no trailing
  // spaces.
  std::string Render(const std::string& indent = "") const;

 private:
  std::vector<std::string> header_;
  std::vector<bool> right_aligned_;
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace spill::client

#endif  // SPILL_CLIENT_ADMIN_FORMAT_H_
