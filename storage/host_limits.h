// Host limits that decide whether the pinned pool can be created: the
// locked-memory limit, the calling thread's CAP_IPC_LOCK, MemAvailable.
//
// PinnedArena checks these before touching memory, so that a daemon
// misconfigured for its host fails at start with a message an operator can
// act on, instead of being OOM-killed or failing halfway through mlock.
// Internal to storage/.
#ifndef SPILL_STORAGE_HOST_LIMITS_H_
#define SPILL_STORAGE_HOST_LIMITS_H_

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace spill::storage {

// Whether the calling thread has CAP_IPC_LOCK in its effective set, which
// makes mlock ignore RLIMIT_MEMLOCK.
bool HasCapIpcLock();

// The value of a "Key:   123 kB" line (the /proc/meminfo and
// /proc/self/status format) in bytes, or nullopt when key is absent or
// malformed. key is given without the colon ("MemAvailable").
std::optional<uint64_t> ParseProcKibField(absl::string_view text, absl::string_view key);

// OK when the process may mlock need more bytes: it has CAP_IPC_LOCK, or
// RLIMIT_MEMLOCK is unlimited or covers need plus what it already locked
// (VmLck). Else ResourceExhausted naming the limit, its value, the need and
// how to raise it.
absl::Status CheckMemlockLimit(uint64_t need);

// OK when /proc/meminfo's MemAvailable covers need (or cannot be read, in
// which case the kernel decides); ResourceExhausted naming both otherwise.
absl::Status CheckMemAvailable(uint64_t need);

// The status for mlock(bytes) having failed with errno err: for ENOMEM,
// EPERM and EAGAIN a ResourceExhausted of the same form as
// CheckMemlockLimit's; any other errno as absl::ErrnoToStatus.
absl::Status MlockFailure(int err, uint64_t bytes);

}  // namespace spill::storage

#endif  // SPILL_STORAGE_HOST_LIMITS_H_
