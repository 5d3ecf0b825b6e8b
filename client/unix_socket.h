// Reaching spilld's Unix socket, with errors that name the path.
#ifndef SPILL_CLIENT_UNIX_SOCKET_H_
#define SPILL_CLIENT_UNIX_SOCKET_H_

#include <chrono>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/unique_fd.h"

namespace spill::client::internal {

// Checks that path names a Unix socket this process may connect to, without
// connecting. Unavailable ("cannot connect to spilld at PATH: no such
// socket ...") when it is missing, PermissionDenied when it may not be
// reached, FailedPrecondition when it is not a socket.
absl::Status CheckSocketPath(const std::string& path);

// Connects a SOCK_STREAM socket to path. The socket's send and receive
// timeouts are set to io_timeout so that no exchange on it blocks forever.
// Errors as CheckSocketPath's, plus Unavailable when nothing accepts.
absl::StatusOr<UniqueFd> ConnectUnixSocket(const std::string& path,
                                           std::chrono::milliseconds io_timeout);

// "cannot connect to spilld at PATH: <detail>" with code.
absl::Status CannotConnect(absl::StatusCode code, const std::string& path,
                           const std::string& detail);

}  // namespace spill::client::internal

#endif  // SPILL_CLIENT_UNIX_SOCKET_H_
