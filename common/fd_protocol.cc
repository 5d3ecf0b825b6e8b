#include "common/fd_protocol.h"

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace spill {

absl::Status SendAll(int sock, const void* buf, size_t len, int fd_to_send) {
  const auto* p = static_cast<const uint8_t*>(buf);
  size_t sent = 0;
  while (sent < len) {
    iovec iov{const_cast<uint8_t*>(p + sent), len - sent};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    if (fd_to_send >= 0 && sent == 0) {
      std::memset(control, 0, sizeof(control));
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      cmsghdr* cm = CMSG_FIRSTHDR(&msg);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(cm), &fd_to_send, sizeof(int));
    }
    ssize_t n = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, "sendmsg on fd channel");
    }
    sent += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status RecvAll(int sock, void* buf, size_t len, UniqueFd* received_fd) {
  auto* p = static_cast<uint8_t*>(buf);
  size_t got = 0;
  while (got < len) {
    iovec iov{p + got, len - got};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, "recvmsg on fd channel");
    }
    if (n == 0) return absl::UnavailableError("fd channel closed by peer");
    for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm != nullptr; cm = CMSG_NXTHDR(&msg, cm)) {
      if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
        if (received_fd != nullptr && !received_fd->valid()) {
          received_fd->Reset(fd);
        } else {
          ::close(fd);  // Unexpected extra descriptors are never kept.
        }
      }
    }
    got += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status SendFdError(int sock, const absl::Status& status) {
  std::string text(status.message().substr(0, kFdMaxMessage));
  FdReplyHeader header{};
  header.code = static_cast<int32_t>(status.code());
  header.message_len = static_cast<uint32_t>(text.size());
  std::string out(reinterpret_cast<const char*>(&header), sizeof(header));
  out += text;
  return SendAll(sock, out.data(), out.size());
}

}  // namespace spill
