// A TCP port on 127.0.0.1 that nothing listens on right now, for the
// rendezvous store of multi-process worker tests.
//
// The port comes from below the kernel's ephemeral range
// (net.ipv4.ip_local_port_range). A port from inside it (what binding port 0
// returns) can be handed to another socket's outgoing connection before the
// test's rank 0 binds it: rank 0 then fails with EADDRINUSE, or a rank
// connecting to it meets its own socket (a TCP self-connect) and waits for a
// store that is not there.
#ifndef SPILL_WORKER_TESTING_FREE_PORT_H_
#define SPILL_WORKER_TESTING_FREE_PORT_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <random>

namespace spill::worker::testing {

// Whether a listening socket could bind port on every address now (c10d's
// TCPStore listens on all of them, not only on 127.0.0.1).
inline bool PortBindable(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

inline int FreePort() {
  int low = 32768;  // the kernel's default start of the ephemeral range
  std::ifstream("/proc/sys/net/ipv4/ip_local_port_range") >> low;
  const int first = 10000, last = low - 1;
  if (last - first >= 1000) {
    std::mt19937 rng(std::random_device{}());
    std::uniform_int_distribution<int> pick(first, last);
    for (int attempt = 0; attempt < 100; ++attempt) {
      const int port = pick(rng);
      if (PortBindable(port)) return port;
    }
  }
  // An unusual range: fall back to one the kernel picks.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
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
