// A real spilld for worker tests, behind a header free of gRPC and protobuf
// (worker test sources also include LibTorch, whose include directory holds
// an older protobuf). Wraps tests/integration/spilld_process.h.
#ifndef SPILL_WORKER_TESTING_SPILLD_FIXTURE_H_
#define SPILL_WORKER_TESTING_SPILLD_FIXTURE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace spill::worker::testing {

class SpilldFixture {
 public:
  // Starts spilld on a private socket with the given flags and waits until it
  // is healthy. The error of SpilldProcess::Start otherwise.
  static absl::StatusOr<std::unique_ptr<SpilldFixture>> Start(std::vector<std::string> flags = {});
  virtual ~SpilldFixture() = default;
  virtual const std::string& socket_path() const = 0;
  // SIGTERM, wait; spilld's exit code.
  virtual int Stop() = 0;
  // spilld's output (after Stop).
  virtual std::string output() const = 0;
  // An unlabelled sample of spilld's metrics endpoint (started with
  // --metrics-address), or -1 when there is none.
  virtual double Metric(const std::string& name) = 0;
};

}  // namespace spill::worker::testing

#endif  // SPILL_WORKER_TESTING_SPILLD_FIXTURE_H_
