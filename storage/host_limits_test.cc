#include "storage/host_limits.h"

#include <cerrno>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace spill::storage {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr char kMeminfo[] =
    "MemTotal:       24683520 kB\n"
    "MemFree:        24555000 kB\n"
    "MemAvailable:    2048 kB\n"
    "HugePages_Free:        3\n"
    "Broken:         x kB\n";

TEST(HostLimitsTest, ParseProcKibField) {
  EXPECT_EQ(ParseProcKibField(kMeminfo, "MemAvailable"), uint64_t{2048} * 1024);
  EXPECT_EQ(ParseProcKibField(kMeminfo, "MemTotal"), uint64_t{24683520} * 1024);
  EXPECT_EQ(ParseProcKibField(kMeminfo, "HugePages_Free"), uint64_t{3});  // A count.
  EXPECT_EQ(ParseProcKibField(kMeminfo, "Mem"), std::nullopt);  // Not a key prefix match.
  EXPECT_EQ(ParseProcKibField(kMeminfo, "Missing"), std::nullopt);
  EXPECT_EQ(ParseProcKibField(kMeminfo, "Broken"), std::nullopt);
  EXPECT_EQ(ParseProcKibField("", "MemAvailable"), std::nullopt);
  EXPECT_EQ(ParseProcKibField("Big: 99999999999999999999 kB\n", "Big"), std::nullopt);
}

// Reads bit 14 of CapEff the other way (the brief for HasCapIpcLock allows
// either), so the two implementations check each other.
TEST(HostLimitsTest, HasCapIpcLockMatchesProcStatus) {
  std::ifstream in("/proc/self/status");
  std::string line;
  uint64_t cap_eff = 0;
  bool found = false;
  while (std::getline(in, line)) {
    if (line.rfind("CapEff:", 0) == 0) {
      std::istringstream(line.substr(7)) >> std::hex >> cap_eff;
      found = true;
    }
  }
  ASSERT_TRUE(found);
  EXPECT_EQ(HasCapIpcLock(), (cap_eff >> 14 & 1) == 1);
}

TEST(HostLimitsTest, MemAvailable) {
  EXPECT_TRUE(CheckMemAvailable(1).ok());
  absl::Status status = CheckMemAvailable(UINT64_MAX);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(status.message()),
              AllOf(HasSubstr("MemAvailable is "), HasSubstr("--pinned-bytes needs 16384.0 PiB")));
}

TEST(HostLimitsTest, MlockFailureMessages) {
  for (int err : {ENOMEM, EPERM, EAGAIN}) {
    absl::Status status = MlockFailure(err, 512 << 20);
    EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << err;
    EXPECT_THAT(std::string(status.message()),
                AllOf(HasSubstr("mlock of 512.0 MiB failed"), HasSubstr("RLIMIT_MEMLOCK is "),
                      HasSubstr("ulimit -l unlimited"), HasSubstr("LimitMEMLOCK=infinity"),
                      HasSubstr("CAP_IPC_LOCK")));
  }
  EXPECT_EQ(MlockFailure(EINVAL, 4096).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace spill::storage
