#include "server/daemon.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <cstdio>
#include <future>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "server/admin_service.h"
#include "server/core_metrics.h"
#include "server/listener.h"
#include "server/metrics.h"
#include "server/metrics_http.h"
#include "server/optimizer_host.h"
#include "server/prometheus.h"
#include "server/registry.h"
#include "server/subsystem_metrics.h"
#include "server/thread_pool.h"
#include "server/worker_service.h"

namespace spill::server {
namespace {

constexpr int kMaxAnswerBytes = 256 << 20;

}  // namespace

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const ServerConfig& config) {
  std::unique_ptr<Daemon> d(new Daemon());
  d->config_ = config;
  storage::ArenaOptions arena_options;
  arena_options.total_bytes = config.pinned_bytes;
  arena_options.segment_bytes = config.segment_bytes;
  arena_options.huge_pages = config.huge_pages;
  SPILL_ASSIGN_OR_RETURN(d->arena_, storage::PinnedArena::Create(arena_options));
  if (!config.nvme_dirs.empty()) {
    storage::NvmeOptions nvme;
    nvme.dirs = config.nvme_dirs;
    nvme.capacity_bytes = config.nvme_capacity;
    nvme.block_size = config.aio_block_size;
    nvme.queue_depth = static_cast<uint32_t>(config.aio_queue_depth);
    nvme.thread_count = static_cast<uint32_t>(config.aio_thread_count);
    nvme.single_submit = config.aio_single_submit;
    nvme.overlap_events = config.aio_overlap_events;
    nvme.sqpoll = config.nvme_sqpoll;
    nvme.job_quota_bytes = config.job_nvme_quota;
    SPILL_ASSIGN_OR_RETURN(d->nvme_, storage::NvmeTier::Open(nvme));
    storage::TierManagerOptions tier_options;
    tier_options.manifest_dir =
        config.manifest_dir.empty() ? config.nvme_dirs.front() : config.manifest_dir;
    SPILL_ASSIGN_OR_RETURN(d->tiers_, storage::TierManager::Create(d->arena_.get(),
                                                                   d->nvme_.get(), tier_options));
  }

  RegistryOptions registry_options;
  registry_options.job_pinned_quota = config.job_pinned_quota;
  registry_options.job_grace = config.job_grace;
  registry_options.attach_timeout = config.attach_timeout;
  d->registry_ = std::make_unique<Registry>(d->arena_.get(), registry_options,
                                            [] { return std::chrono::steady_clock::now(); },
                                            d->tiers_.get());
  if (d->tiers_ != nullptr) {
    // A torn or corrupt manifest stops the start (DataLoss naming it):
    // nothing is half-loaded, and the operator decides.
    SPILL_ASSIGN_OR_RETURN(std::vector<storage::RecoveredJob> recovered,
                           d->tiers_->Recover(StreamOfKind));
    SPILL_RETURN_IF_ERROR(d->registry_->AddRecoveredJobs(recovered));
    d->recovered_jobs_ = recovered.size();
  }
  d->metrics_ = std::make_unique<Metrics>();
  d->pool_ = std::make_unique<ThreadPool>(config.worker_threads);
  d->peers_ = std::make_unique<PeerTable>();
  OptimizerHostOptions optimizer_options;
  optimizer_options.threads = static_cast<uint32_t>(config.optim_threads);
  optimizer_options.threads_per_job = static_cast<uint32_t>(config.optim_threads_per_job);
  optimizer_options.nice = config.optim_nice;
  optimizer_options.nvme = d->nvme_.get();
  d->optimizer_ = std::make_unique<OptimizerHost>(d->registry_.get(), optimizer_options);
  d->compute_pool_ = std::make_unique<ThreadPool>(config.optim_concurrency, config.optim_nice);

  WorkerServiceDeps worker_deps;
  worker_deps.registry = d->registry_.get();
  worker_deps.peers = d->peers_.get();
  worker_deps.pool = d->pool_.get();
  worker_deps.metrics = d->metrics_.get();
  worker_deps.optimizer = d->optimizer_.get();
  worker_deps.compute_pool = d->compute_pool_.get();
  worker_deps.alignment_bytes = d->arena_->alignment();
  worker_deps.attach_timeout = config.attach_timeout;
  worker_deps.stream_inline = config.stream_inline;
  worker_deps.tiered = d->tiers_ != nullptr;
  d->worker_ = std::make_unique<WorkerService>(worker_deps);

  d->collectors_ = std::make_unique<CollectorSet>();
  CoreMetricsDeps core;
  core.registry = d->registry_.get();
  core.arena = d->arena_.get();
  core.nvme = d->nvme_.get();
  core.metrics = d->metrics_.get();
  core.version = SPILL_VERSION;
  core.started = std::chrono::steady_clock::now();
  core.started_wall = std::chrono::system_clock::now();
  d->collectors_->Add(std::make_unique<CoreMetricsCollector>(core));
  d->collectors_->Add(std::make_unique<OptimizerMetricsCollector>(d->optimizer_.get()));
  if (d->nvme_ != nullptr) {
    d->collectors_->Add(std::make_unique<NvmeMetricsCollector>(d->nvme_.get()));
    d->collectors_->Add(std::make_unique<TierMetricsCollector>(d->tiers_.get()));
  }
  if (!config.metrics_address.empty()) {
    SPILL_ASSIGN_OR_RETURN(d->metrics_http_,
                           MetricsHttpServer::Start(config.metrics_address, d->collectors_.get()));
  }

  AdminServiceDeps admin_deps;
  admin_deps.registry = d->registry_.get();
  admin_deps.arena = d->arena_.get();
  admin_deps.nvme = d->nvme_.get();
  admin_deps.pool = d->pool_.get();
  admin_deps.metrics = d->metrics_.get();
  admin_deps.peers = d->peers_.get();
  admin_deps.socket_path = config.socket_path;
  admin_deps.started = core.started;
  if (d->metrics_http_ != nullptr) admin_deps.metrics_address = d->metrics_http_->address();
  d->admin_ = std::make_unique<AdminService>(admin_deps);

  ListenerOptions listener_options;
  listener_options.socket_path = config.socket_path;
  listener_options.socket_group = config.socket_group;
  SPILL_ASSIGN_OR_RETURN(d->listener_,
                         Listener::Create(listener_options, d->registry_.get(), d->peers_.get()));

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.RegisterService(d->worker_.get());
  builder.RegisterService(d->admin_.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_message_bytes));
  // Answers may be larger than requests (a job's object list, its sessions):
  // they are bounded by what the job registered, not by what a client sends.
  builder.SetMaxSendMessageSize(kMaxAnswerBytes);
  // No listening port: the listener hands over each connection's fd.
  d->server_ = builder.BuildAndStart();
  if (d->server_ == nullptr) return absl::InternalError("gRPC server failed to start");
  d->listener_->Start(d->server_.get());
  d->ticker_ = std::thread([raw = d.get()] { raw->TickLoop(); });
  d->stopped_ = false;
  return d;
}

void Daemon::TickLoop() {
  std::unique_lock<std::mutex> lock(tick_mu_);
  while (!stopping_) {
    tick_cv_.wait_for(lock, std::chrono::milliseconds(100));
    if (stopping_) break;
    lock.unlock();
    registry_->Tick();
    lock.lock();
  }
}

std::string Daemon::Describe() const {
  storage::ArenaStats stats = arena_->Stats();
  return absl::StrCat("spilld ", SPILL_VERSION, " serving ", config_.socket_path, ": pinned ",
                      FormatBytes(stats.capacity_bytes), " in ", stats.segments_total,
                      " segment(s) of ", FormatBytes(stats.segment_bytes),
                      stats.huge_pages ? " (2 MiB pages)" : " (4 KiB pages)",
                      nvme_ == nullptr
                          ? "; no NVMe tier"
                          : absl::StrCat("; NVMe ", FormatBytes(nvme_->Stats().capacity_bytes),
                                         " over ", config_.nvme_dirs.size(), " dir(s), ",
                                         recovered_jobs_, " job(s) recovered"),
                      metrics_http_ == nullptr
                          ? "; metrics off"
                          : absl::StrCat("; metrics on http://", metrics_http_->address(),
                                         "/metrics"));
}

std::string Daemon::metrics_address() const {
  return metrics_http_ == nullptr ? "" : metrics_http_->address();
}

void Daemon::Stop() {
  if (stopped_) return;
  stopped_ = true;
  admin_->SetStopping();
  // Scrapes read the registry and arena: end them first.
  if (metrics_http_ != nullptr) metrics_http_->Stop();
  if (auto* health = server_->GetHealthCheckService()) health->SetServingStatus(false);
  listener_->Stop();
  worker_->StopStreams();
  // In-flight requests get up to shutdown_timeout to finish. gRPC's own
  // Shutdown deadline would also wait that long for idle connections to
  // close (it does for connections added from fds), so wait here for the
  // calls, then give gRPC only a moment.
  const auto deadline = std::chrono::steady_clock::now() + config_.shutdown_timeout;
  while (worker_->InFlight() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
  server_->Wait();
  {
    std::lock_guard<std::mutex> lock(tick_mu_);
    stopping_ = true;
  }
  tick_cv_.notify_all();
  if (ticker_.joinable()) ticker_.join();
  pool_.reset();  // Runs what is queued, then joins.
  compute_pool_.reset();  // Finishes running optimizer steps.
  if (tiers_ != nullptr) {
    // Written-back objects become durable before spilld exits; then the
    // manager waits for its I/O. Clear() leaves the NVMe copies alone.
    auto done = std::make_shared<std::promise<absl::Status>>();
    std::future<absl::Status> flushed = done->get_future();
    tiers_->Flush("", [done](absl::Status s) { done->set_value(std::move(s)); });
    if (flushed.wait_for(config_.shutdown_timeout) != std::future_status::ready) {
      std::fprintf(stderr, "spilld: NVMe flush did not finish within the shutdown timeout\n");
    } else if (absl::Status s = flushed.get(); !s.ok()) {
      std::fprintf(stderr, "spilld: NVMe flush at shutdown: %s\n", s.ToString().c_str());
    }
    tiers_.reset();
  }
  registry_->Clear();
  optimizer_.reset();
}

Daemon::~Daemon() { Stop(); }

}  // namespace spill::server
