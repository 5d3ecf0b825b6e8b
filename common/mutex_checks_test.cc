#include "common/mutex_checks.h"

#include <cstdlib>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace spill {
namespace {

// Takes a then b, then b then a: a lock-order inversion, which Abseil's
// deadlock detection reports (and aborts on) when it is on.
void InvertLockOrder() {
  absl::Mutex a, b;
  {
    absl::MutexLock la(&a);
    absl::MutexLock lb(&b);
  }
  {
    absl::MutexLock lb(&b);
    absl::MutexLock la(&a);
  }
}

TEST(MutexChecksDeathTest, AbseilAbortsOnAnInversionWhenTheCheckIsOn) {
  // Shows that the case below can fail: with the check on, this dies.
  EXPECT_DEATH(
      {
        absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kAbort);
        InvertLockOrder();
      },
      "deadlock");
}

TEST(MutexChecksDeathTest, ConfigureTurnsTheCheckOff) {
  EXPECT_EXIT(
      {
        ::unsetenv("SPILL_ABSL_DEADLOCK_CHECK");
        absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kAbort);
        if (ConfigureAbslDeadlockDetection()) std::exit(3);
        InvertLockOrder();
        std::exit(0);
      },
      testing::ExitedWithCode(0), "");
}

TEST(MutexChecksDeathTest, TheEnvironmentKeepsTheCheck) {
  EXPECT_DEATH(
      {
        ::setenv("SPILL_ABSL_DEADLOCK_CHECK", "1", 1);
        absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kAbort);
        if (!ConfigureAbslDeadlockDetection()) std::exit(3);
        InvertLockOrder();
      },
      "deadlock");
}

}  // namespace
}  // namespace spill
