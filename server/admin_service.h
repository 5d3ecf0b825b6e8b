// spill.v1.Admin: tier stats, jobs and health for spillctl and monitoring.
#ifndef SPILL_SERVER_ADMIN_SERVICE_H_
#define SPILL_SERVER_ADMIN_SERVICE_H_

#include <atomic>
#include <chrono>
#include <string>

#include "server/listener.h"
#include "server/metrics.h"
#include "server/registry.h"
#include "server/thread_pool.h"
#include "spill/v1/spill.grpc.pb.h"
#include "storage/nvme_tier.h"
#include "storage/pinned_arena.h"

namespace spill::server {

struct AdminServiceDeps {
  Registry* registry = nullptr;
  storage::PinnedArena* arena = nullptr;
  const storage::NvmeTier* nvme = nullptr;  // nullptr without an NVMe tier.
  ThreadPool* pool = nullptr;
  Metrics* metrics = nullptr;
  PeerTable* peers = nullptr;  // SO_PEERCRED of each connection (DropJob)
  std::string socket_path;
  std::string metrics_address;  // Empty when metrics are off.
  std::chrono::steady_clock::time_point started;
};

class AdminService final : public spill::v1::Admin::CallbackService {
 public:
  explicit AdminService(AdminServiceDeps deps) : deps_(std::move(deps)) {}

  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* ctx,
                                  const spill::v1::StatsRequest* request,
                                  spill::v1::StatsResponse* response) override;
  grpc::ServerUnaryReactor* Jobs(grpc::CallbackServerContext* ctx,
                                 const spill::v1::JobsRequest* request,
                                 spill::v1::JobsResponse* response) override;
  grpc::ServerUnaryReactor* Health(grpc::CallbackServerContext* ctx,
                                   const spill::v1::HealthRequest* request,
                                   spill::v1::HealthResponse* response) override;

  // Frees a job for root or the job's uid (the caller's SO_PEERCRED).
  // PermissionDenied for another uid or a connection without credentials;
  // NotFound; InvalidArgument for an empty job id.
  grpc::ServerUnaryReactor* DropJob(grpc::CallbackServerContext* ctx,
                                    const spill::v1::DropJobRequest* request,
                                    spill::v1::DropJobResponse* response) override;

  // Health reports NOT_SERVING from now on (shutdown has begun).
  void SetStopping() { stopping_.store(true); }

 private:
  uint64_t UptimeMs() const;
  void FillStats(spill::v1::StatsResponse* response) const;
  void FillJobs(spill::v1::JobsResponse* response) const;

  const AdminServiceDeps deps_;
  std::atomic<bool> stopping_{false};
};

}  // namespace spill::server

#endif  // SPILL_SERVER_ADMIN_SERVICE_H_
