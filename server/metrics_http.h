// MetricsHttpServer: serves a CollectorSet as Prometheus text on
// http://HOST:PORT/metrics (cpp-httplib, a small thread pool).
//
//   GET|HEAD /metrics  -> 200, text/plain; version=0.0.4
//   other method on /metrics -> 405 (Allow: GET, HEAD)
//   any other path     -> 404
//
// Its threads are spilld's but never hold up shutdown: Stop() closes the
// listening socket, and connection threads give up within the read timeout
// (2 s) or the keep-alive poll (about 10 ms).
#ifndef SPILL_SERVER_METRICS_HTTP_H_
#define SPILL_SERVER_METRICS_HTTP_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "server/prometheus.h"

namespace httplib {
class Server;
}

namespace spill::server {

// A parsed --metrics-address: "HOST:PORT" or "[IPV6]:PORT"; PORT 0 picks a
// free port.
struct HostPort {
  std::string host;
  int port = 0;
};

// InvalidArgument naming what is wrong (no port, port not in [0, 65535],
// empty host, unbalanced brackets).
absl::StatusOr<HostPort> ParseHostPort(const std::string& address);

class MetricsHttpServer {
 public:
  // Binds address and starts serving collectors (which must outlive the
  // server). InvalidArgument for a malformed address; Unavailable naming the
  // address when it cannot be bound (in use, not local, permission).
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const std::string& address,
                                                                   const CollectorSet* collectors);
  ~MetricsHttpServer();

  // The port bound (the chosen one when the address asked for port 0).
  int port() const { return port_; }
  // "HOST:PORT" as bound, IPv6 hosts in brackets.
  std::string address() const;

  // Stops serving and joins every thread. Idempotent.
  void Stop();

 private:
  MetricsHttpServer() = default;

  HostPort bound_;
  int port_ = 0;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  std::shared_ptr<std::atomic<bool>> listen_returned_ = std::make_shared<std::atomic<bool>>(false);
};

}  // namespace spill::server

#endif  // SPILL_SERVER_METRICS_HTTP_H_
