// One benchmark result as a JSON line, the format bench/results/ holds:
// {"bench","metric","value","unit","baseline","baseline_value","ratio","machine"}.
#ifndef SPILL_BENCH_BENCH_JSON_H_
#define SPILL_BENCH_BENCH_JSON_H_

#include <cstdio>
#include <fstream>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

namespace spill::bench {

struct Result {
  std::string bench;
  std::string metric;
  double value = 0;
  std::string unit;
  // Empty when no baseline was measured.
  std::string baseline;
  double baseline_value = 0;
  nlohmann::json extra = nlohmann::json::object();
};

// $SPILL_BENCH_MACHINE, else "<cpu model> x<threads>".
inline std::string MachineName() {
  if (const char* env = std::getenv("SPILL_BENCH_MACHINE"); env != nullptr && *env) return env;
  std::ifstream in("/proc/cpuinfo");
  std::string line, model = "unknown-cpu";
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  }
  return model + " x" + std::to_string(std::thread::hardware_concurrency());
}

inline void Emit(const Result& r, const std::string& machine) {
  nlohmann::json j = {{"bench", r.bench}, {"metric", r.metric}, {"value", r.value},
                      {"unit", r.unit}, {"machine", machine}};
  if (!r.baseline.empty()) {
    j["baseline"] = r.baseline;
    j["baseline_value"] = r.baseline_value;
    j["ratio"] = r.baseline_value != 0 ? r.value / r.baseline_value : 0.0;
  }
  for (const auto& [k, v] : r.extra.items()) j[k] = v;
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

// The value of `arg` when it is --name=VALUE, else nullptr (points into arg).
inline const char* FlagValue(const char* arg, const char* name) {
  const std::string prefix = std::string("--") + name + "=";
  return std::string(arg).rfind(prefix, 0) == 0 ? arg + prefix.size() : nullptr;
}

}  // namespace spill::bench

#endif  // SPILL_BENCH_BENCH_JSON_H_
