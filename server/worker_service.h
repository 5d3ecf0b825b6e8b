// spill.v1.Worker: sessions, objects and the per-session stream.
//
// Every handler posts its work to the thread pool and returns at once; the
// pool finishes the unary reactor or queues the stream's completion event,
// and the stream reactor drives its writes from OnWriteDone.
#ifndef SPILL_SERVER_WORKER_SERVICE_H_
#define SPILL_SERVER_WORKER_SERVICE_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "server/listener.h"
#include "server/metrics.h"
#include "server/optimizer_host.h"
#include "server/registry.h"
#include "server/thread_pool.h"
#include "spill/v1/spill.grpc.pb.h"

namespace spill::server {

struct WorkerServiceDeps {
  Registry* registry = nullptr;
  PeerTable* peers = nullptr;
  ThreadPool* pool = nullptr;
  Metrics* metrics = nullptr;
  // The CPU optimizer and the pool its stream requests run on (they take
  // milliseconds to seconds, so they never run on a reactor thread, and the
  // stream goes on reading while they run).
  OptimizerHost* optimizer = nullptr;
  ThreadPool* compute_pool = nullptr;
  uint64_t alignment_bytes = 0;
  std::chrono::milliseconds attach_timeout{0};
  // See ServerConfig::stream_inline.
  bool stream_inline = true;
  // The registry has a TierManager: stream requests on objects with home
  // NVME run on the pool (never inline: they may allocate pinned memory)
  // and acquires/prefetches are answered when their read completes.
  bool tiered = false;
};

class SessionReactor;

class WorkerService final : public spill::v1::Worker::CallbackService {
 public:
  explicit WorkerService(WorkerServiceDeps deps) : deps_(deps) {}

  grpc::ServerUnaryReactor* OpenSession(grpc::CallbackServerContext* ctx,
                                        const spill::v1::OpenSessionRequest* request,
                                        spill::v1::OpenSessionResponse* response) override;
  grpc::ServerUnaryReactor* CloseSession(grpc::CallbackServerContext* ctx,
                                         const spill::v1::CloseSessionRequest* request,
                                         spill::v1::CloseSessionResponse* response) override;
  grpc::ServerUnaryReactor* RegisterObject(grpc::CallbackServerContext* ctx,
                                           const spill::v1::RegisterObjectRequest* request,
                                           spill::v1::RegisterObjectResponse* response) override;
  grpc::ServerUnaryReactor* FreeObject(grpc::CallbackServerContext* ctx,
                                       const spill::v1::FreeObjectRequest* request,
                                       spill::v1::FreeObjectResponse* response) override;
  grpc::ServerUnaryReactor* ListObjects(grpc::CallbackServerContext* ctx,
                                        const spill::v1::ListObjectsRequest* request,
                                        spill::v1::ListObjectsResponse* response) override;
  // Answered when the job's written-back NVME objects are durable.
  grpc::ServerUnaryReactor* Flush(grpc::CallbackServerContext* ctx,
                                  const spill::v1::FlushRequest* request,
                                  spill::v1::FlushResponse* response) override;
  grpc::ServerUnaryReactor* CreateGroup(grpc::CallbackServerContext* ctx,
                                        const spill::v1::CreateGroupRequest* request,
                                        spill::v1::CreateGroupResponse* response) override;
  grpc::ServerUnaryReactor* DropGroup(grpc::CallbackServerContext* ctx,
                                      const spill::v1::DropGroupRequest* request,
                                      spill::v1::DropGroupResponse* response) override;
  grpc::ServerUnaryReactor* ListGroups(grpc::CallbackServerContext* ctx,
                                       const spill::v1::ListGroupsRequest* request,
                                       spill::v1::ListGroupsResponse* response) override;
  // Runs on the pool (it blocks on NVMe I/O for states_on_nvme groups).
  grpc::ServerUnaryReactor* CopyGroupState(grpc::CallbackServerContext* ctx,
                                           const spill::v1::CopyGroupStateRequest* request,
                                           spill::v1::CopyGroupStateResponse* response) override;
  grpc::ServerBidiReactor<spill::v1::StreamRequest, spill::v1::StreamEvent>* Session(
      grpc::CallbackServerContext* ctx) override;

  const WorkerServiceDeps& deps() const { return deps_; }

  // Shutdown: every session stream finishes with UNAVAILABLE as soon as the
  // requests it already read have been answered; new requests are not read.
  void StopStreams();
  // Unary calls not yet finished plus streams not yet done.
  size_t InFlight();

 private:
  friend class SessionReactor;
  void Untrack(SessionReactor* reactor);

  template <typename Fn>
  grpc::ServerUnaryReactor* RunUnary(grpc::CallbackServerContext* ctx, const char* op, Fn fn);

  const WorkerServiceDeps deps_;
  std::mutex streams_mu_;
  std::set<SessionReactor*> streams_;
  bool stopping_ = false;
  std::atomic<size_t> unary_in_flight_{0};
};

// Fills a wire ObjectInfo from a registry record.
void ToProto(const ObjectRecord& record, spill::v1::ObjectInfo* out);

}  // namespace spill::server

#endif  // SPILL_SERVER_WORKER_SERVICE_H_
