// Internal to config.cc: typed access to one JSON object of a DeepSpeed
// config, recording which keys were read (the rest are reported as unknown),
// which held "auto" and which were present.
#ifndef SPILL_WORKER_CONFIG_READER_H_
#define SPILL_WORKER_CONFIG_READER_H_

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace spill::worker::internal {

struct ReadContext {
  std::set<std::string> autos;    // Full keys whose value was "auto".
  std::set<std::string> present;  // Full keys given with a non-"auto" value.
  std::vector<std::string> warnings;
  std::vector<std::string> unsupported;
};

// "a string \"x\"", "a number 3", ... for messages.
std::string DescribeJson(const nlohmann::json& value);
// Shortest text that reads back as the same double (0.0003, 1e-08, 8).
std::string FormatNumber(double value);

class Section {
 public:
  // obj may be null: an absent section reads as all-defaults.
  Section(const nlohmann::json* obj, std::string prefix, ReadContext* ctx);

  // Full dotted key ("zero_optimization.stage").
  std::string Key(const std::string& key) const;
  bool Has(const std::string& key) const;

  // Each reader leaves *out unchanged when the key is absent or "auto"
  // (allowed only with allow_auto; recorded in ctx->autos), and fails with
  // InvalidArgument naming the key for a wrong type or a value outside
  // [min, max]. Integers accept integral floating-point numbers (1e9).
  absl::Status Bool(const std::string& key, bool* out, bool allow_auto = false);
  absl::Status Int(const std::string& key, int64_t* out, int64_t min, int64_t max,
                   bool allow_auto = false);
  absl::Status Double(const std::string& key, double* out, double min, double max,
                      bool allow_auto = false);
  absl::Status String(const std::string& key, std::string* out);
  // A JSON object (or absent: an empty Section). InvalidArgument otherwise.
  absl::Status Child(const std::string& key, Section* out);
  // A key DeepSpeed knows that spill-train does not implement: noted in
  // ctx->unsupported with why when present.
  void Unsupported(const std::string& key, const std::string& why);
  // Marks a key as read without interpreting it.
  void Consume(const std::string& key);
  // Reports every key that no reader asked for as a warning.
  void Finish();

  const nlohmann::json* Raw(const std::string& key) const;
  ReadContext* ctx() const { return ctx_; }
  const std::string& prefix() const { return prefix_; }

 private:
  // The value, or nullptr when absent; records "auto" (or rejects it).
  absl::StatusOr<const nlohmann::json*> Lookup(const std::string& key, bool allow_auto);

  const nlohmann::json* obj_ = nullptr;
  std::string prefix_;
  ReadContext* ctx_ = nullptr;
  std::set<std::string> consumed_;
};

}  // namespace spill::worker::internal

#endif  // SPILL_WORKER_CONFIG_READER_H_
