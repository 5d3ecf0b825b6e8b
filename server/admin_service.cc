#include "server/admin_service.h"

#include <unistd.h>

#include <map>

#include "proto/grpc_status.h"
#include "server/core_metrics.h"

namespace spill::server {
namespace {

// Runs fill on the pool and finishes the call from there.
template <typename Fn>
grpc::ServerUnaryReactor* Defer(grpc::CallbackServerContext* ctx, ThreadPool* pool, Fn fill) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  bool posted = pool->Post([reactor, fill = std::move(fill)]() mutable {
    fill();
    reactor->Finish(grpc::Status::OK);
  });
  if (!posted) reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "spilld is stopping"));
  return reactor;
}

}  // namespace

uint64_t AdminService::UptimeMs() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                               deps_.started)
      .count();
}

void AdminService::FillStats(spill::v1::StatsResponse* response) const {
  storage::ArenaStats arena = deps_.arena->Stats();
  spill::v1::TierStats* tier = response->add_tiers();
  tier->set_name("pinned");
  tier->set_capacity_bytes(arena.capacity_bytes);
  tier->set_used_bytes(arena.used_bytes);
  tier->set_free_bytes(arena.capacity_bytes - arena.used_bytes);
  tier->set_segment_bytes(arena.segment_bytes);
  tier->set_segments_total(arena.segments_total);
  tier->set_segments_free(arena.segments_free);
  tier->set_huge_pages(arena.huge_pages);
  for (const JobSnapshot& snap : deps_.registry->Jobs()) {
    spill::v1::JobUsage* j = tier->add_jobs();
    j->set_job_id(snap.job_id);
    j->set_used_bytes(snap.used_bytes);
    j->set_reserved_bytes(snap.reserved_bytes);
    j->set_quota_bytes(snap.quota_bytes);
    j->set_acquired_bytes(snap.acquired_bytes);
    j->set_written_back_bytes(snap.written_back_bytes);
    j->set_objects(snap.objects);
    j->set_sessions(static_cast<uint32_t>(snap.sessions.size()));
  }
  if (deps_.nvme != nullptr) {
    const storage::NvmeStats nvme = deps_.nvme->Stats();
    spill::v1::TierStats* t = response->add_tiers();
    t->set_name("nvme");
    t->set_capacity_bytes(nvme.capacity_bytes);
    t->set_used_bytes(nvme.used_bytes);
    t->set_free_bytes(nvme.free_bytes);
    for (const auto& [job, bytes] : nvme.job_used_bytes) {
      spill::v1::JobUsage* j = t->add_jobs();
      j->set_job_id(job);
      j->set_used_bytes(bytes);
    }
  }
  response->set_bytes_in(deps_.metrics->bytes_in());
  response->set_bytes_out(deps_.metrics->bytes_out());
  std::map<std::string, std::map<absl::StatusCode, uint64_t>> codes;
  for (OpDetail& detail : deps_.metrics->Details()) codes[detail.op] = std::move(detail.codes);
  for (const OpStats& op : deps_.metrics->Snapshot()) {
    spill::v1::LatencyStats* l = response->add_requests();
    l->set_op(op.op);
    l->set_count(op.count);
    l->set_errors(op.errors);
    l->set_p50_us(op.p50_us);
    l->set_p90_us(op.p90_us);
    l->set_p99_us(op.p99_us);
    l->set_max_us(op.max_us);
    for (const auto& [code, n] : codes[op.op]) {
      spill::v1::CodeCount* c = l->add_codes();
      c->set_code(StatusCodeName(code));
      c->set_count(n);
    }
  }
  response->set_uptime_ms(UptimeMs());
  response->set_version(SPILL_VERSION);
  response->set_metrics_address(deps_.metrics_address);
}

void AdminService::FillJobs(spill::v1::JobsResponse* response) const {
  for (const JobSnapshot& snap : deps_.registry->Jobs()) {
    spill::v1::JobInfo* job = response->add_jobs();
    job->set_job_id(snap.job_id);
    job->set_uid(snap.uid);
    job->set_state(snap.recovered ? "recovered" : snap.in_grace ? "grace" : "active");
    job->set_nvme_objects(snap.nvme_objects);
    job->set_grace_remaining_ms(snap.grace_remaining.count());
    job->set_objects(snap.objects);
    job->set_used_bytes(snap.used_bytes);
    auto fill = [](const storage::OffloadBudget& b, spill::v1::OffloadBudget* out) {
      out->set_buffer_count(b.buffer_count);
      out->set_buffer_size(b.buffer_size);
      out->set_max_in_cpu(b.max_in_cpu);
    };
    if (snap.budgets.param.has_value()) fill(*snap.budgets.param, job->mutable_param_budget());
    if (snap.budgets.optimizer.has_value()) {
      fill(*snap.budgets.optimizer, job->mutable_optimizer_budget());
    }
    for (const SessionSnapshot& s : snap.sessions) {
      spill::v1::SessionInfo* info = job->add_sessions();
      info->set_session_id(s.session_id);
      info->set_rank(s.rank);
      info->set_world_size(s.world_size);
      info->set_pid(s.peer.pid);
      info->set_uid(s.peer.uid);
      info->set_attached(s.attached);
      info->set_pins(s.pins);
    }
  }
}

grpc::ServerUnaryReactor* AdminService::Stats(grpc::CallbackServerContext* ctx,
                                              const spill::v1::StatsRequest* /*request*/,
                                              spill::v1::StatsResponse* response) {
  return Defer(ctx, deps_.pool, [this, response] { FillStats(response); });
}

grpc::ServerUnaryReactor* AdminService::Jobs(grpc::CallbackServerContext* ctx,
                                             const spill::v1::JobsRequest* /*request*/,
                                             spill::v1::JobsResponse* response) {
  return Defer(ctx, deps_.pool, [this, response] { FillJobs(response); });
}

grpc::ServerUnaryReactor* AdminService::DropJob(grpc::CallbackServerContext* ctx,
                                                const spill::v1::DropJobRequest* request,
                                                spill::v1::DropJobResponse* /*response*/) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  std::optional<PeerCreds> peer =
      deps_.peers != nullptr ? deps_.peers->Get(ctx->peer()) : std::nullopt;
  auto start = std::chrono::steady_clock::now();
  bool posted = deps_.pool->Post([this, reactor, request, peer, start] {
    absl::Status status;
    if (!peer.has_value()) {
      status = absl::PermissionDeniedError("connection has no recorded peer credentials");
    } else if (request->job_id().empty()) {
      status = absl::InvalidArgumentError("drop-job: job_id must not be empty");
    } else {
      status = deps_.registry->DropJob(request->job_id(), peer->uid);
    }
    deps_.metrics->RecordRequest("drop_job", std::chrono::steady_clock::now() - start,
                                 status.code());
    reactor->Finish(ToGrpcStatus(status));
  });
  if (!posted) reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "spilld is stopping"));
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::Health(grpc::CallbackServerContext* ctx,
                                               const spill::v1::HealthRequest* /*request*/,
                                               spill::v1::HealthResponse* response) {
  return Defer(ctx, deps_.pool, [this, response] {
    response->set_status(stopping_.load() ? "NOT_SERVING" : "SERVING");
    response->set_version(SPILL_VERSION);
    response->set_uptime_ms(UptimeMs());
    response->set_pid(::getpid());
    response->set_socket_path(deps_.socket_path);
    response->set_metrics_address(deps_.metrics_address);
  });
}

}  // namespace spill::server
