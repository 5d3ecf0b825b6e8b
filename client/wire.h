// Conversions between spill.v1 messages and the public client types.
#ifndef SPILL_CLIENT_WIRE_H_
#define SPILL_CLIENT_WIRE_H_

#include "absl/status/status.h"
#include "spill/object.h"
#include "spill/optimizer.h"
#include "spill/v1/spill.pb.h"

namespace spill::client::internal {

ObjectInfo FromProto(const v1::ObjectInfo& info);
GroupInfo FromProto(const v1::GroupInfo& info);
StepOutcome FromProto(const v1::StepOutcome& outcome);
void ToProto(const GroupSpec& spec, v1::CreateGroupRequest* out);

// A StreamEvent's or fd reply's (code, message) as a Status; a code that is
// not a google.rpc.Code becomes Unknown, keeping the message.
absl::Status StatusFromCode(int code, const std::string& message);

}  // namespace spill::client::internal

#endif  // SPILL_CLIENT_WIRE_H_
