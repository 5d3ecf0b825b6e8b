// Abseil's mutex deadlock detection, off in Spill's processes.
//
// Debian builds Abseil with its debug checks on, so every absl::Mutex (and
// gRPC locks through them on every request) updates a global lock graph and
// records stack traces: about a tenth of spilld's CPU time per control
// request. Spill turns that off in spilld and, at the first session opened,
// in client processes; SPILL_ABSL_DEADLOCK_CHECK=1 keeps Abseil's default,
// for debugging gRPC's or Abseil's locking.
#ifndef SPILL_COMMON_MUTEX_CHECKS_H_
#define SPILL_COMMON_MUTEX_CHECKS_H_

namespace spill {

// Applies the setting above to this process; returns whether Abseil's check
// was left as it was. Cheap to call again.
bool ConfigureAbslDeadlockDetection();

}  // namespace spill

#endif  // SPILL_COMMON_MUTEX_CHECKS_H_
