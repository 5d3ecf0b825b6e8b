#include "client/wire.h"

#include "absl/strings/str_cat.h"

namespace spill::client::internal {

ObjectInfo FromProto(const v1::ObjectInfo& info) {
  ObjectInfo out;
  out.object_id = info.object_id();
  out.name = info.name();
  out.kind = static_cast<ObjectKind>(info.kind());
  out.dtype = static_cast<DType>(info.dtype());
  out.num_elements = info.num_elements();
  out.location.segment_id = info.location().segment_id();
  out.location.offset = info.location().offset();
  out.location.size_bytes = info.location().size_bytes();
  out.version = info.version();
  out.pin_count = info.pin_count();
  return out;
}

absl::Status StatusFromCode(int code, const std::string& message) {
  if (code == 0) return absl::OkStatus();
  if (code < 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::UnknownError(absl::StrCat("status code ", code, ": ", message));
  }
  return absl::Status(static_cast<absl::StatusCode>(code), message);
}

}  // namespace spill::client::internal
