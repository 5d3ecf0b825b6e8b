#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "spill/client.h"

namespace spill::client {
namespace {

SessionOptions Valid() {
  SessionOptions options;
  options.socket_path = "/tmp/does-not-matter.sock";
  options.job_id = "job";
  options.rank = 1;
  options.world_size = 2;
  return options;
}

TEST(ValidateSessionOptionsTest, AcceptsValidOptions) {
  EXPECT_TRUE(ValidateSessionOptions(Valid()).ok());
}

TEST(ValidateSessionOptionsTest, RejectsEmptyJobId) {
  SessionOptions options = Valid();
  options.job_id.clear();
  absl::Status status = ValidateSessionOptions(options);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(status.message(), "job_id")) << status;
}

TEST(ValidateSessionOptionsTest, RejectsRankOutsideWorld) {
  SessionOptions options = Valid();
  options.rank = 2;
  absl::Status status = ValidateSessionOptions(options);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(status.message(), "rank is 2")) << status;
  options.rank = -1;
  EXPECT_EQ(ValidateSessionOptions(options).code(), absl::StatusCode::kInvalidArgument);
  options.rank = 0;
  options.world_size = 0;
  EXPECT_TRUE(absl::StrContains(ValidateSessionOptions(options).message(), "world_size"));
}

TEST(ValidateSessionOptionsTest, RejectsNonPositiveTimeoutAndLongPath) {
  SessionOptions options = Valid();
  options.timeout = std::chrono::milliseconds(0);
  EXPECT_EQ(ValidateSessionOptions(options).code(), absl::StatusCode::kInvalidArgument);
  options = Valid();
  options.socket_path = "/tmp/" + std::string(200, 'x');
  EXPECT_TRUE(absl::StrContains(ValidateSessionOptions(options).message(), "shorter than"));
}

TEST(ValidateSessionOptionsTest, ChecksOffloadBudgetsByField) {
  SessionOptions options = Valid();
  options.param_budget = OffloadBudget{5, 100 << 20, 1 << 30};
  options.optimizer_budget = OffloadBudget{4, 64 << 20, 256 << 20};
  EXPECT_TRUE(ValidateSessionOptions(options).ok());
  options.param_budget->buffer_count = 0;
  absl::Status status = ValidateSessionOptions(options);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(status.message(), "param_budget.buffer_count")) << status;
  options.param_budget->buffer_count = 5;
  options.optimizer_budget->max_in_cpu = 1 << 20;  // below buffer_size
  status = ValidateSessionOptions(options);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(status.message(), "optimizer_budget.max_in_cpu")) << status;
  options.optimizer_budget.reset();
  EXPECT_TRUE(ValidateSessionOptions(options).ok());
}

TEST(SessionOpenTest, InvalidOptionsFailBeforeConnecting) {
  SessionOptions options = Valid();
  options.world_size = 1;
  options.rank = 3;
  EXPECT_EQ(Session::Open(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SessionOpenTest, MissingSocketNamesThePath) {
  SessionOptions options = Valid();
  options.socket_path = "/tmp/spill-no-such-dir/spilld.sock";
  absl::Status status = Session::Open(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(
      status.message(), "cannot connect to spilld at /tmp/spill-no-such-dir/spilld.sock"))
      << status;
}

TEST(SessionOpenTest, ARegularFileIsNotASocket) {
  std::string path = ::testing::TempDir() + "not_a_socket";
  std::ofstream(path) << "x";
  SessionOptions options = Valid();
  options.socket_path = path;
  absl::Status status = Session::Open(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(status.message(), "not a Unix socket")) << status;
  std::remove(path.c_str());
}

TEST(SessionOpenTest, NobodyListeningIsUnavailableAndNamesThePath) {
  // A bound socket that nobody listens on refuses connections.
  std::string path = ::testing::TempDir() + "spill_dead.sock";
  ::unlink(path.c_str());
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  SessionOptions options = Valid();
  options.socket_path = path;
  options.timeout = std::chrono::milliseconds(2000);
  absl::Status status = Session::Open(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), path)) << status;
  ::close(fd);
  ::unlink(path.c_str());
}

TEST(DefaultSocketPathTest, UsesEnvironmentThenDefault) {
  ::setenv("SPILL_SOCKET", "/tmp/custom.sock", 1);
  EXPECT_EQ(DefaultSocketPath(), "/tmp/custom.sock");
  ::setenv("SPILL_SOCKET", "", 1);
  EXPECT_EQ(DefaultSocketPath(), "/run/spill/spilld.sock");
  ::unsetenv("SPILL_SOCKET");
  EXPECT_EQ(DefaultSocketPath(), "/run/spill/spilld.sock");
}

TEST(CheckElementTypeTest, MatchesSizeAndFloatingPointness) {
  ObjectInfo object;
  object.name = "w";
  object.dtype = DType::kFloat32;
  EXPECT_TRUE(CheckElementType(object, sizeof(float), true).ok());
  EXPECT_TRUE(CheckElementType(object, sizeof(uint32_t), false).ok());
  absl::Status wrong_size = CheckElementType(object, 2, false);
  EXPECT_EQ(wrong_size.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(wrong_size.message(), "float32")) << wrong_size;

  object.dtype = DType::kBFloat16;
  EXPECT_TRUE(CheckElementType(object, sizeof(uint16_t), false).ok());
  object.dtype = DType::kInt32;
  EXPECT_EQ(CheckElementType(object, sizeof(float), true).code(),
            absl::StatusCode::kInvalidArgument);
  object.dtype = DType::kUnspecified;
  EXPECT_EQ(CheckElementType(object, 1, false).code(), absl::StatusCode::kInvalidArgument);
}

TEST(DTypeTest, SizesAndNames) {
  EXPECT_EQ(DTypeSize(DType::kBFloat16), 2u);
  EXPECT_EQ(DTypeSize(DType::kFloat64), 8u);
  EXPECT_EQ(DTypeSize(DType::kUnspecified), 0u);
  EXPECT_STREQ(DTypeName(DType::kFloat16), "float16");
  EXPECT_STREQ(ObjectKindName(ObjectKind::kMoment), "moment");
  ObjectInfo object;
  object.dtype = DType::kFloat32;
  object.num_elements = 10;
  EXPECT_EQ(object.byte_size(), 40u);
  EXPECT_FALSE(object.resident());
}

}  // namespace
}  // namespace spill::client
