// The floor gRPC itself sets for control_rtt: a bare echo of small messages
// over one bidirectional stream on a Unix socket, with nothing of Spill in
// it. The server is a callback service in its own process (spilld's
// threading). Two clients: one thread driving an async stream on its own
// completion queue (no thread hand-off on the client side), and the
// structure of Spill's client (a synchronous stream written by the caller,
// read by a reader thread that wakes it).
#ifndef SPILL_BENCH_GRPC_ECHO_H_
#define SPILL_BENCH_GRPC_ECHO_H_

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace spill::bench {

// Serves echo streams on `socket_path` until SIGTERM (or its parent's
// exit); prints "ready" once listening. The body of
// `control_rtt --echo-server=PATH`.
int RunEchoServer(const std::string& socket_path);

// A `self --echo-server=PATH` child, stopped with SIGTERM (and waited for)
// on destruction.
class EchoServerProcess {
 public:
  static absl::StatusOr<EchoServerProcess> Start(const std::string& self,
                                                 const std::string& socket_path);
  EchoServerProcess(EchoServerProcess&& other) noexcept;
  EchoServerProcess& operator=(EchoServerProcess&&) = delete;
  ~EchoServerProcess();

 private:
  EchoServerProcess() = default;
  pid_t pid_ = -1;
  int output_fd_ = -1;  // the child's stdout and stderr
};

enum class EchoClient { kAsyncOneThread, kSyncReaderThread };

// The metric name part of each: "grpc_echo", "grpc_echo_reader_thread".
const char* EchoClientName(EchoClient client);

// Round trips of `message_bytes` on one echo stream, back to back from
// start until end; latencies in µs. A failed round trip counts in
// *failures and ends the loop.
std::vector<double> EchoPingLoop(EchoClient client, const std::string& socket_path,
                                 size_t message_bytes,
                                 std::chrono::steady_clock::time_point start,
                                 std::chrono::steady_clock::time_point end, int* failures);

}  // namespace spill::bench

#endif  // SPILL_BENCH_GRPC_ECHO_H_
