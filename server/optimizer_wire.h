// Conversions between spill.v1's optimizer messages and OptimizerHost's types.
#ifndef SPILL_SERVER_OPTIMIZER_WIRE_H_
#define SPILL_SERVER_OPTIMIZER_WIRE_H_

#include "absl/status/statusor.h"
#include "server/optimizer_host.h"
#include "spill/v1/spill.pb.h"

namespace spill::server {

// InvalidArgument for an unspecified or unknown optimizer type. The values
// themselves are checked by OptimizerHost (optim::ValidateHyper).
absl::StatusOr<optim::Hyper> HyperFromProto(const spill::v1::OptimizerParams& params);
absl::StatusOr<GroupSpec> GroupSpecFromProto(const spill::v1::CreateGroupRequest& request);

// InvalidArgument for an unspecified or unknown direction.
absl::StatusOr<StateCopy> StateCopyFromProto(spill::v1::GroupStateDirection direction);

// InvalidArgument for an unknown mode.
absl::StatusOr<StepMode> StepModeFromProto(spill::v1::StepMode mode);

void ToProto(const optim::Hyper& hyper, spill::v1::OptimizerParams* out);
void ToProto(const GroupInfo& group, spill::v1::GroupInfo* out);
void ToProto(const StepOutcome& outcome, spill::v1::StepOutcome* out);

}  // namespace spill::server

#endif  // SPILL_SERVER_OPTIMIZER_WIRE_H_
