#include "client/unix_socket.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace spill::client::internal {

absl::Status CannotConnect(absl::StatusCode code, const std::string& path,
                           const std::string& detail) {
  return absl::Status(code, absl::StrCat("cannot connect to spilld at ", path, ": ", detail));
}

absl::Status CheckSocketPath(const std::string& path) {
  if (path.empty()) {
    return absl::InvalidArgumentError("no spilld socket path given");
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      return CannotConnect(absl::StatusCode::kUnavailable, path,
                           "no such socket (is spilld running? pass its --socket path or set "
                           "SPILL_SOCKET)");
    }
    if (err == EACCES) {
      return CannotConnect(absl::StatusCode::kPermissionDenied, path,
                           "permission denied (the socket's directory is 0750: is this user in "
                           "spilld's group?)");
    }
    return CannotConnect(absl::StatusCode::kUnavailable, path, std::strerror(err));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return CannotConnect(absl::StatusCode::kFailedPrecondition, path, "not a Unix socket");
  }
  return absl::OkStatus();
}

namespace {

void SetIoTimeout(int fd, std::chrono::milliseconds timeout) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  // Best effort: a socket without a timeout still works, it just may block.
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

}  // namespace

absl::StatusOr<UniqueFd> ConnectUnixSocket(const std::string& path,
                                           std::chrono::milliseconds io_timeout) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("socket path '", path, "' is too long for a Unix socket"));
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, "socket(AF_UNIX)");
  SetIoTimeout(fd.get(), io_timeout);
  while (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    if (err == EINTR) continue;
    if (err == EACCES || err == EPERM) {
      return CannotConnect(absl::StatusCode::kPermissionDenied, path,
                           "permission denied (the socket is 0660: is this user in spilld's "
                           "group?)");
    }
    if (err == ENOENT || err == ECONNREFUSED) {
      absl::Status missing = CheckSocketPath(path);
      if (!missing.ok()) return missing;
      return CannotConnect(absl::StatusCode::kUnavailable, path,
                           "connection refused (stale socket file? is spilld running?)");
    }
    return CannotConnect(absl::StatusCode::kUnavailable, path, std::strerror(err));
  }
  return fd;
}

}  // namespace spill::client::internal
