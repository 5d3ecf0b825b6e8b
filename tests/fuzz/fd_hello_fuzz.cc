// Fuzz target for the fd channel's framing as a client sees it: arbitrary
// bytes (and no descriptor) arrive where an FdReplyHeader is expected. The
// reader must return an error or a header, never crash or over-read.
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "common/fd_protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return 0;
  // A socketpair buffers far more than a fuzz input; cap to be safe.
  const size_t n = size > 65536 ? 65536 : size;
  if (n > 0 && ::write(fds[0], data, n) != static_cast<ssize_t>(n)) std::abort();
  ::shutdown(fds[0], SHUT_WR);
  for (;;) {
    spill::FdReplyHeader header{};
    spill::UniqueFd fd;
    if (!spill::RecvAll(fds[1], &header, sizeof(header), &fd).ok()) break;
    if (fd.valid()) std::abort();  // No descriptor was sent.
    if (header.message_len > spill::kFdMaxMessage) break;  // A client rejects this.
    char message[spill::kFdMaxMessage];
    if (!spill::RecvAll(fds[1], message, header.message_len).ok()) break;
  }
  ::close(fds[0]);
  ::close(fds[1]);
  return 0;
}
