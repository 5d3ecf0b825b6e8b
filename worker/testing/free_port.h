// A TCP port on 127.0.0.1 that nothing listens on right now, for the
// rendezvous store of multi-process worker tests.
#ifndef SPILL_WORKER_TESTING_FREE_PORT_H_
#define SPILL_WORKER_TESTING_FREE_PORT_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace spill::worker::testing {

inline int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

}  // namespace spill::worker::testing

#endif  // SPILL_WORKER_TESTING_FREE_PORT_H_
