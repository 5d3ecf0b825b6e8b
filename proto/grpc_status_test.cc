#include "proto/grpc_status.h"

#include <gtest/gtest.h>

namespace spill {
namespace {

TEST(GrpcStatusTest, OkRoundTrips) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

TEST(GrpcStatusTest, EveryCodeAndMessageRoundTrips) {
  for (int code = 1; code <= 16; ++code) {
    absl::Status in(static_cast<absl::StatusCode>(code), "quota is 1 GiB, 900 MiB in use");
    grpc::Status wire = ToGrpcStatus(in);
    EXPECT_EQ(static_cast<int>(wire.error_code()), code);
    EXPECT_EQ(wire.error_message(), "quota is 1 GiB, 900 MiB in use");
    EXPECT_EQ(FromGrpcStatus(wire), in);
  }
}

TEST(GrpcStatusTest, ResourceExhaustedKeepsItsCode) {
  grpc::Status wire = ToGrpcStatus(absl::ResourceExhaustedError("job 'a' pinned quota"));
  EXPECT_EQ(wire.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST(GrpcStatusTest, OutOfRangeCodeBecomesUnknown) {
  // 20 is no gRPC code but lies within the enum's range (no UB in the cast).
  grpc::Status wire(static_cast<grpc::StatusCode>(20), "odd");
  absl::Status out = FromGrpcStatus(wire);
  EXPECT_EQ(out.code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(out.message(), "odd");
}

}  // namespace
}  // namespace spill
