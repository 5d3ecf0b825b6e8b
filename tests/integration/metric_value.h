// Reads one sample from a test spilld's metrics endpoint (started with
// --metrics-address=127.0.0.1:0).
#ifndef SPILL_TESTS_INTEGRATION_METRIC_VALUE_H_
#define SPILL_TESTS_INTEGRATION_METRIC_VALUE_H_

#include <httplib.h>

#include <string>

#include "tests/integration/spilld_process.h"

namespace spill::testing {

// The value of an unlabelled sample on spilld's metrics endpoint, or -1.
inline double MetricValue(SpilldProcess& d, const std::string& name) {
  auto stats = d.Stats();
  if (!stats.ok()) return -1;
  const std::string& address = stats->metrics_address();
  size_t colon = address.rfind(':');
  httplib::Client http(address.substr(0, colon), std::stoi(address.substr(colon + 1)));
  auto res = http.Get("/metrics");
  if (!res || res->status != 200) return -1;
  const std::string key = "\n" + name + " ";
  size_t at = res->body.find(key);
  if (at == std::string::npos) return -1;
  return std::stod(res->body.substr(at + key.size()));
}

}  // namespace spill::testing

#endif  // SPILL_TESTS_INTEGRATION_METRIC_VALUE_H_
