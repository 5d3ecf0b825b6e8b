// Daemon: spilld assembled — arena, registry, services, listener — with an
// orderly start and stop. spilld_main.cc wires it to signals.
#ifndef SPILL_SERVER_DAEMON_H_
#define SPILL_SERVER_DAEMON_H_

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/status/statusor.h"
#include "server/config.h"
#include "storage/nvme_tier.h"
#include "storage/tier_manager.h"

namespace grpc {
class Server;
}

namespace spill::server {

class AdminService;
class CollectorSet;
class MetricsHttpServer;
class Listener;
class Metrics;
class OptimizerHost;
class PeerTable;
class Registry;
class ThreadPool;
class WorkerService;

class Daemon {
 public:
  // Pins the pool, binds the socket and starts serving. Errors name the
  // setting or system limit at fault (see PinnedArena::Create, Listener).
  static absl::StatusOr<std::unique_ptr<Daemon>> Start(const ServerConfig& config);

  // Stops accepting, answers requests already read, closes every session
  // stream, frees every job and unmaps the pool. Idempotent.
  void Stop();
  ~Daemon();

  // One line describing what is being served.
  std::string Describe() const;

  // The collectors the metrics endpoint serves. Subsystems started after the
  // daemon add theirs here (see server/prometheus.h); valid until Stop().
  CollectorSet& collectors() { return *collectors_; }
  // "HOST:PORT" the metrics endpoint listens on (the port chosen when the
  // config asked for port 0); empty when metrics are off.
  std::string metrics_address() const;

 private:
  Daemon() = default;
  void TickLoop();

  ServerConfig config_;
  std::unique_ptr<storage::PinnedArena> arena_;
  std::unique_ptr<storage::NvmeTier> nvme_;
  // Objects with home NVME; null without an NVMe tier. Destroyed (in Stop,
  // after a flush) before the registry is cleared.
  std::unique_ptr<storage::TierManager> tiers_;
  size_t recovered_jobs_ = 0;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<OptimizerHost> optimizer_;
  std::unique_ptr<ThreadPool> compute_pool_;
  std::unique_ptr<PeerTable> peers_;
  std::unique_ptr<WorkerService> worker_;
  std::unique_ptr<AdminService> admin_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Listener> listener_;
  std::unique_ptr<CollectorSet> collectors_;
  std::unique_ptr<MetricsHttpServer> metrics_http_;
  std::thread ticker_;
  std::mutex tick_mu_;
  std::condition_variable tick_cv_;
  bool stopping_ = false;
  bool stopped_ = true;  // Until Start() has brought everything up.
};

}  // namespace spill::server

#endif  // SPILL_SERVER_DAEMON_H_
