// Helpers shared by the storage unit tests. Not part of the library.
#ifndef SPILL_STORAGE_TEST_UTIL_H_
#define SPILL_STORAGE_TEST_UTIL_H_

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>

#include "common/status_macros.h"
#include "gtest/gtest.h"
#include "storage/pinned_arena.h"

// Declares lhs from a StatusOr expression, failing the test when not OK.
#define ASSERT_OK_AND_ASSIGN(lhs, expr) \
  ASSERT_OK_AND_ASSIGN_IMPL_(SPILL_STATUS_CONCAT_(statusor_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL_(statusor, lhs, expr)               \
  auto statusor = (expr);                                             \
  ASSERT_TRUE(statusor.ok()) << #expr << ": " << statusor.status();   \
  auto lhs = std::move(statusor).value()

namespace spill::storage::test_util {

// The sanitizer runtimes (ASan, TSan, MSan) turn mlock into a no-op, so
// tests that need the kernel to count locked memory skip under them.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kMlockIsReal = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
inline constexpr bool kMlockIsReal = false;
#else
inline constexpr bool kMlockIsReal = true;
#endif
#else
inline constexpr bool kMlockIsReal = true;
#endif

inline constexpr uint64_t kMiB = uint64_t{1} << 20;

// segments * segment_bytes on base pages, mlocked. The default 4 MiB fits
// the common 8 MiB RLIMIT_MEMLOCK even without CAP_IPC_LOCK.
inline ArenaOptions SmallOptions(uint64_t segments = 4, uint64_t segment_bytes = kMiB) {
  ArenaOptions options;
  options.total_bytes = segments * segment_bytes;
  options.segment_bytes = segment_bytes;
  options.huge_pages = HugePageMode::kOff;
  options.lock = true;
  return options;
}

inline bool AllBytesAre(const uint8_t* p, uint64_t n, uint8_t value) {
  return std::all_of(p, p + n, [value](uint8_t b) { return b == value; });
}

// Forks a child that runs body and exits with its return value. body
// reports failures as distinct nonzero codes (explained on stderr); gtest
// assertions do not cross the fork. Returns the pid, or -1.
inline pid_t StartChild(const std::function<int()>& body) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int code = body();
    std::fflush(nullptr);
    ::_exit(code);
  }
  return pid;
}

// The child's exit code, or 128 + the signal that killed it, or -1.
inline int WaitChild(pid_t pid) {
  if (pid < 0) return -1;
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

inline int RunInChild(const std::function<int()>& body) { return WaitChild(StartChild(body)); }

}  // namespace spill::storage::test_util

#endif  // SPILL_STORAGE_TEST_UTIL_H_
