// Stand-ins for the status macros that Debian's abseil (20220623) lacks.
//
//   SPILL_RETURN_IF_ERROR(DoThing());
//   SPILL_ASSIGN_OR_RETURN(auto fd, OpenFile(path));
#ifndef SPILL_COMMON_STATUS_MACROS_H_
#define SPILL_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SPILL_RETURN_IF_ERROR(expr)                  \
  do {                                               \
    ::absl::Status spill_status_ = (expr);           \
    if (!spill_status_.ok()) return spill_status_;   \
  } while (0)

#define SPILL_STATUS_CONCAT_INNER_(a, b) a##b
#define SPILL_STATUS_CONCAT_(a, b) SPILL_STATUS_CONCAT_INNER_(a, b)

#define SPILL_ASSIGN_OR_RETURN(lhs, expr) \
  SPILL_ASSIGN_OR_RETURN_IMPL_(SPILL_STATUS_CONCAT_(spill_statusor_, __LINE__), lhs, expr)

#define SPILL_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                 \
  if (!statusor.ok()) return statusor.status();           \
  lhs = std::move(statusor).value()

#endif  // SPILL_COMMON_STATUS_MACROS_H_
