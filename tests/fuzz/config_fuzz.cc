// Fuzz target for what spilld parses from operators: the JSON config file,
// sizes and durations. Every input must either parse or fail with
// InvalidArgument/OutOfRange/NotFound — never crash, hang or leave a config
// half-applied.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "common/units.h"
#include "server/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  (void)spill::ParseSize(text);
  (void)spill::ParseDuration(text);
  spill::server::ServerConfig config;
  config.pinned_bytes = 12345;
  const spill::server::ServerConfig before = config;
  absl::Status s = spill::server::ApplyConfigJson(text, "fuzz.json", &config);
  if (!s.ok()) {
    if (s.code() != absl::StatusCode::kInvalidArgument &&
        s.code() != absl::StatusCode::kOutOfRange) {
      std::abort();  // An unexpected kind of failure.
    }
    // All or nothing: a rejected file changes no setting.
    if (config.pinned_bytes != before.pinned_bytes || config.socket_path != before.socket_path ||
        config.worker_threads != before.worker_threads) {
      std::abort();
    }
  }
  return 0;
}
