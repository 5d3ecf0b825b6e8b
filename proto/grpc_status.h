// The one pair of functions that converts between absl::Status and
// grpc::Status. absl's codes are gRPC's codes, so the code carries over
// unchanged and the message is kept verbatim.
#ifndef SPILL_PROTO_GRPC_STATUS_H_
#define SPILL_PROTO_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace spill {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace spill

#endif  // SPILL_PROTO_GRPC_STATUS_H_
