// The plain, connection-free parts of the public API: option checks, enum
// names, element-type checks.
#include <sys/un.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/status_macros.h"
#include "spill/client.h"

namespace spill::client {

// The public enums are spelled independently of the wire enums; keep them equal.
static_assert(static_cast<int>(DType::kFloat32) == static_cast<int>(spill::DType::kFloat32));
static_assert(static_cast<int>(DType::kBFloat16) == static_cast<int>(spill::DType::kBFloat16));
static_assert(static_cast<int>(DType::kInt64) == static_cast<int>(spill::DType::kInt64));

size_t DTypeSize(DType dtype) { return spill::DTypeSize(static_cast<int>(dtype)); }

bool DTypeIsFloatingPoint(DType dtype) {
  return dtype == DType::kFloat32 || dtype == DType::kFloat16 || dtype == DType::kBFloat16 ||
         dtype == DType::kFloat64;
}

const char* DTypeName(DType dtype) { return spill::DTypeName(static_cast<int>(dtype)); }

const char* ObjectKindName(ObjectKind kind) {
  switch (kind) {
    case ObjectKind::kUnspecified: return "unspecified";
    case ObjectKind::kParamShard: return "param_shard";
    case ObjectKind::kGradShard: return "grad_shard";
    case ObjectKind::kMaster: return "master";
    case ObjectKind::kMoment: return "moment";
    case ObjectKind::kOther: return "other";
  }
  return "invalid";
}

std::string DefaultSocketPath() {
  const char* env = std::getenv("SPILL_SOCKET");
  if (env != nullptr && env[0] != '\0') return env;
  return "/run/spill/spilld.sock";
}

namespace {
absl::Status CheckBudget(const char* name, const std::optional<OffloadBudget>& budget) {
  if (!budget.has_value()) return absl::OkStatus();
  for (const auto& [field, value] : {std::pair{"buffer_count", uint64_t{budget->buffer_count}},
                                     std::pair{"buffer_size", budget->buffer_size},
                                     std::pair{"max_in_cpu", budget->max_in_cpu}}) {
    if (value == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("SessionOptions.", name, ".", field,
                       " is 0: it must be > 0 (leave the budget unset for spilld's defaults)"));
    }
  }
  if (budget->max_in_cpu < budget->buffer_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SessionOptions.", name, ".max_in_cpu is ", budget->max_in_cpu,
        " bytes: it must be at least buffer_size (", budget->buffer_size, " bytes)"));
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status ValidateSessionOptions(const SessionOptions& options) {
  if (options.job_id.empty()) {
    return absl::InvalidArgumentError("SessionOptions.job_id is empty: every rank of a job "
                                      "must pass the same non-empty job id");
  }
  if (options.world_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("SessionOptions.world_size is ", options.world_size, ": it must be >= 1"));
  }
  if (options.rank < 0 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("SessionOptions.rank is ", options.rank,
                                                   ": it must be in [0, world_size = ",
                                                   options.world_size, ")"));
  }
  if (options.timeout.count() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("SessionOptions.timeout is ",
                                                   options.timeout.count(), " ms: it must be positive"));
  }
  SPILL_RETURN_IF_ERROR(CheckBudget("param_budget", options.param_budget));
  SPILL_RETURN_IF_ERROR(CheckBudget("optimizer_budget", options.optimizer_budget));
  if (options.socket_path.size() >= sizeof(sockaddr_un::sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("socket path '", options.socket_path, "' is ", options.socket_path.size(),
                     " bytes long; a Unix socket path must be shorter than ",
                     sizeof(sockaddr_un::sun_path)));
  }
  return absl::OkStatus();
}

absl::Status CheckElementType(const ObjectInfo& object, size_t element_size,
                              bool t_is_floating_point) {
  size_t dtype_size = DTypeSize(object.dtype);
  if (dtype_size == 0) {
    return absl::InvalidArgumentError(absl::StrCat("object '", object.name, "' has no valid dtype (",
                                                   static_cast<int>(object.dtype), ")"));
  }
  if (element_size != dtype_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot view object '", object.name, "' of dtype ", DTypeName(object.dtype),
                     " (", dtype_size, "-byte elements) as a ", element_size, "-byte type"));
  }
  if (t_is_floating_point && !DTypeIsFloatingPoint(object.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot view object '", object.name, "' of integer dtype ",
                     DTypeName(object.dtype), " as a floating-point type"));
  }
  return absl::OkStatus();
}

}  // namespace spill::client
