#include "storage/host_limits.h"

#include <linux/capability.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/units.h"

namespace spill::storage {
namespace {

constexpr char kRaiseHint[] =
    "raise it with `ulimit -l unlimited`, LimitMEMLOCK=infinity in the systemd unit, "
    "or grant CAP_IPC_LOCK; or lower --pinned-bytes";

std::string ReadWholeFile(const char* path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// Bytes this process has locked already; they count against the limit too.
uint64_t LockedBytes() {
  return ParseProcKibField(ReadWholeFile("/proc/self/status"), "VmLck").value_or(0);
}

std::string LimitText(rlim_t limit) {
  return limit == RLIM_INFINITY ? std::string("unlimited") : FormatBytes(limit);
}

}  // namespace

bool HasCapIpcLock() {
  __user_cap_header_struct header{};
  header.version = _LINUX_CAPABILITY_VERSION_3;
  header.pid = 0;  // The calling thread.
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (::syscall(SYS_capget, &header, data) != 0) return false;
  return (data[CAP_TO_INDEX(CAP_IPC_LOCK)].effective & CAP_TO_MASK(CAP_IPC_LOCK)) != 0;
}

std::optional<uint64_t> ParseProcKibField(absl::string_view text, absl::string_view key) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::ConsumePrefix(&line, key) || !absl::ConsumePrefix(&line, ":")) continue;
    line = absl::StripAsciiWhitespace(line);
    const bool kib = absl::ConsumeSuffix(&line, "kB");
    uint64_t value = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &value)) return std::nullopt;
    if (!kib) return value;  // HugePages_* lines are counts, not sizes.
    if (value > UINT64_MAX / 1024) return std::nullopt;
    return value * 1024;
  }
  return std::nullopt;
}

absl::Status CheckMemlockLimit(uint64_t need) {
  if (HasCapIpcLock()) return absl::OkStatus();
  rlimit limit{};
  if (::getrlimit(RLIMIT_MEMLOCK, &limit) != 0) {
    return absl::ErrnoToStatus(errno, "getrlimit(RLIMIT_MEMLOCK)");
  }
  if (limit.rlim_cur == RLIM_INFINITY) return absl::OkStatus();
  const uint64_t locked = LockedBytes();
  if (locked <= limit.rlim_cur && need <= limit.rlim_cur - locked) return absl::OkStatus();
  std::string already =
      locked > 0 ? absl::StrCat(" (", FormatBytes(locked), " already locked by this process)")
                 : "";
  return absl::ResourceExhaustedError(absl::StrCat(
      "RLIMIT_MEMLOCK is ", LimitText(limit.rlim_cur), already, " but --pinned-bytes needs ",
      FormatBytes(need), ": ", kRaiseHint));
}

absl::Status CheckMemAvailable(uint64_t need) {
  std::optional<uint64_t> available =
      ParseProcKibField(ReadWholeFile("/proc/meminfo"), "MemAvailable");
  if (!available.has_value() || need <= *available) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "MemAvailable is ", FormatBytes(*available), " but --pinned-bytes needs ",
      FormatBytes(need), ": free memory on the node or lower --pinned-bytes"));
}

absl::Status MlockFailure(int err, uint64_t bytes) {
  if (err != ENOMEM && err != EPERM && err != EAGAIN) {
    return absl::ErrnoToStatus(err, absl::StrCat("mlock of ", FormatBytes(bytes)));
  }
  rlimit limit{};
  std::string limit_text = "unknown";
  if (::getrlimit(RLIMIT_MEMLOCK, &limit) == 0) limit_text = LimitText(limit.rlim_cur);
  return absl::ResourceExhaustedError(absl::StrCat(
      "mlock of ", FormatBytes(bytes), " failed (", std::strerror(err), "): RLIMIT_MEMLOCK is ",
      limit_text, ", CAP_IPC_LOCK ", HasCapIpcLock() ? "present" : "absent", ", ",
      FormatBytes(LockedBytes()), " already locked by this process: ", kRaiseHint,
      "; if the limit is not the cause, the node is short of memory"));
}

}  // namespace spill::storage
