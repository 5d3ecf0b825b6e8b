#include "common/mutex_checks.h"

#include <cstdlib>
#include <cstring>

#include "absl/synchronization/mutex.h"

namespace spill {

bool ConfigureAbslDeadlockDetection() {
  const char* keep = std::getenv("SPILL_ABSL_DEADLOCK_CHECK");
  if (keep != nullptr && std::strcmp(keep, "1") == 0) return true;
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return false;
}

}  // namespace spill
