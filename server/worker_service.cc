#include "server/worker_service.h"

#include <deque>
#include <vector>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/status_macros.h"
#include "proto/grpc_status.h"
#include "server/optimizer_wire.h"

namespace spill::server {
namespace {

using spill::v1::StreamEvent;
using spill::v1::StreamRequest;
using SteadyClock = std::chrono::steady_clock;

storage::OffloadBudget BudgetFromWire(const spill::v1::OffloadBudget& wire) {
  storage::OffloadBudget budget;
  budget.buffer_count = wire.buffer_count();
  budget.buffer_size = wire.buffer_size();
  budget.max_in_cpu = wire.max_in_cpu();
  return budget;
}

absl::StatusOr<Token> TokenOf(const spill::v1::SessionRef& ref) {
  return TokenFromBytes(ref.token());
}

const char* OpName(StreamRequest::OpCase op) {
  switch (op) {
    case StreamRequest::kAttach: return "attach";
    case StreamRequest::kAcquire: return "acquire";
    case StreamRequest::kPrefetch: return "prefetch";
    case StreamRequest::kAccessOrder: return "access-order";
    case StreamRequest::kRelease: return "release";
    case StreamRequest::kWriteBack: return "write_back";
    case StreamRequest::kPing: return "ping";
    case StreamRequest::kGradReady: return "grad_ready";
    case StreamRequest::kOptimizerStep: return "optimizer_step";
    default: return "invalid";
  }
}

// Requests that run the CPU optimizer: they go to the compute pool and are
// answered when done, while the stream goes on reading.
bool IsCompute(StreamRequest::OpCase op) {
  return op == StreamRequest::kGradReady || op == StreamRequest::kOptimizerStep;
}

}  // namespace

// One session's stream. Each request read produces one event, queued and
// written in order. Requests run one at a time per stream, in the order read
// (inline on the reactor thread, or on the pool), so a pipelined acquire then
// release of one object keep their order. At most kMaxQueuedEvents answers
// wait to be written; past that, reading pauses until the client catches up.
class SessionReactor final : public grpc::ServerBidiReactor<StreamRequest, StreamEvent> {
 public:
  static constexpr size_t kMaxQueuedEvents = 1024;

  SessionReactor(WorkerService* service, bool stopping)
      : service_(service), deps_(service->deps()), stopping_(stopping) {
    if (stopping_) {
      finished_ = true;
      Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "spilld is shutting down"));
      return;
    }
    StartRead(&request_);
  }

  // Called with the service's stream lock held. Returns true when the caller
  // must call Finish (nothing is in flight); otherwise the reactor finishes
  // itself once its in-flight requests are answered.
  bool BeginShutdown() {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    if (finished_ || Busy()) return false;
    finished_ = true;
    return true;
  }

  void FinishStopping() {
    Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "spilld is shutting down"));
  }

  void OnReadDone(bool ok) override {
    StreamRequest request;
    bool binds_stream = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (ok && !stopping_ && !finished_) {
        request = std::move(request_);
        ++pending_;
        binds_stream = request.op_case() == StreamRequest::kAttach && session_id_ == 0;
        ok = true;
      } else {
        ok = false;
      }
    }
    if (!ok) {
      OnReadsDone();
      return;
    }
    auto start = SteadyClock::now();
    if (IsCompute(request.op_case())) {
      if (!AnswerQuickCommit(request, start)) DispatchCompute(std::move(request), start);
      ReadNext();
      return;
    }
    const bool may_wait = MayWait(request);
    if (may_wait && (request.op_case() == StreamRequest::kAcquire ||
                     request.op_case() == StreamRequest::kPrefetch)) {
      DispatchTiered(std::move(request), start);
      return;
    }
    auto run = [this, request = std::move(request), start, binds_stream] {
      absl::Status status = Process(request, start);
      if (binds_stream && !status.ok()) {
        OnReadsDone();  // A failed attach ends the stream.
      } else {
        ReadNext();
      }
    };
    if (deps_.stream_inline && !may_wait) {
      // Every stream operation of the pinned tier is a short in-memory
      // update: it does not block, so it may run on the reactor thread.
      run();
      return;
    }
    if (!deps_.pool->Post(std::move(run))) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        --pending_;
      }
      OnReadsDone();
    }
  }

  void OnWriteDone(bool ok) override {
    const StreamEvent* next = nullptr;
    bool resume_reading = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      writes_.pop_front();
      if (!ok) {
        broken_ = true;  // The client is gone; drop what is queued.
        writes_.clear();
      }
      writing_ = !writes_.empty();
      if (writing_) next = &writes_.front();
      if (read_paused_ && writes_.size() <= kMaxQueuedEvents / 2) {
        read_paused_ = false;
        resume_reading = true;
      }
    }
    if (next != nullptr) StartWrite(next);
    if (resume_reading) ReadNext();
    MaybeFinish();
  }

  void OnDone() override {
    service_->Untrack(this);
    delete this;
  }

 private:
  // Something is in flight that Finish must wait for. Requires mu_.
  bool Busy() const { return pending_ != 0 || writing_ || starting_read_; }

  // Reads the next request unless the stream is ending or too many answers
  // wait to be written. starting_read_ keeps Finish from racing StartRead.
  void ReadNext() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_ || stopping_ || reads_done_) return;
      if (writes_.size() >= kMaxQueuedEvents) {
        read_paused_ = true;
        return;
      }
      starting_read_ = true;
    }
    StartRead(&request_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      starting_read_ = false;
    }
    MaybeFinish();
  }

  void OnReadsDone() {
    uint64_t session = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      reads_done_ = true;
      session = session_id_;
    }
    // The lease ends with the stream: pins are dropped at once.
    if (session != 0) deps_.registry->DetachStream(session);
    MaybeFinish();
  }

  // Whether the request names an object with home NVME (see
  // WorkerServiceDeps::tiered).
  bool MayWait(const StreamRequest& request) {
    if (!deps_.tiered) return false;
    uint64_t object_id = 0;
    switch (request.op_case()) {
      case StreamRequest::kAcquire: object_id = request.acquire().object_id(); break;
      case StreamRequest::kPrefetch: object_id = request.prefetch().object_id(); break;
      case StreamRequest::kRelease: object_id = request.release().object_id(); break;
      case StreamRequest::kWriteBack: object_id = request.write_back().object_id(); break;
      default: return false;
    }
    uint64_t session;
    {
      std::lock_guard<std::mutex> lock(mu_);
      session = session_id_;
    }
    return session != 0 && deps_.registry->MayWait(session, object_id);
  }

  // Acquire or prefetch of an NVME object: started on the pool, answered
  // from the TierManager's callback. An acquire holds the stream's reading
  // until it is answered (so a release or write-back read after it finds
  // the pin); a prefetch does not (its answer may come out of order).
  void DispatchTiered(StreamRequest request, SteadyClock::time_point start) {
    const bool acquire = request.op_case() == StreamRequest::kAcquire;
    const uint64_t tag = request.tag();
    const char* op = OpName(request.op_case());
    uint64_t session;
    {
      std::lock_guard<std::mutex> lock(mu_);
      session = session_id_;
    }
    auto answer = [this, tag, op, start, acquire](absl::StatusOr<ObjectRecord> record) {
      Answer(tag, op, start, record);
      if (acquire) ReadNext();
      EndPending();  // Last: the reactor may be deleted once it is done.
    };
    // A prefetch lets the stream go on at once (its pending_ keeps the
    // reactor alive until it is answered).
    if (!acquire) ReadNext();
    bool posted = deps_.pool->Post([this, request = std::move(request), session, answer] {
      if (request.op_case() == StreamRequest::kAcquire) {
        deps_.registry->AcquireAsync(session, request.acquire().object_id(),
                                     request.acquire().for_write(), answer);
      } else {
        deps_.registry->PrefetchAsync(session, request.prefetch().object_id(), answer);
      }
    });
    if (!posted) {
      Answer(tag, op, start, absl::UnavailableError("spilld is stopping"));
      if (!acquire) {
        EndPending();
        return;
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        --pending_;
      }
      OnReadsDone();
    }
  }

  void EndPending() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      --pending_;
    }
    MaybeFinish();
  }

  // Queues the answer of a request that completed later (its pending_ is
  // ended by the caller).
  void Answer(uint64_t tag, const char* op, SteadyClock::time_point start,
              const absl::StatusOr<ObjectRecord>& record) {
    StreamEvent event;
    event.set_tag(tag);
    if (record.ok()) {
      ToProto(*record, event.mutable_object());
      deps_.metrics->AddBytesOut(record->extent.size);  // 0 for a prefetch
    } else {
      event.set_code(static_cast<int>(record.status().code()));
      event.set_message(std::string(record.status().message()));
    }
    deps_.metrics->RecordRequest(op, SteadyClock::now() - start, record.status().code());
    Enqueue(std::move(event));
  }

  // A commit of a speculative step with the grad_scale it ran with only
  // ends the group's pending state: answered here, on the reactor thread,
  // when that needs no wait (OptimizerHost::TryCommitAsRun), rather than
  // queued on the compute pool behind optimizer passes while the worker's
  // next gather of the layer waits for it. Returns false when the request
  // must go to the pool.
  bool AnswerQuickCommit(const StreamRequest& request, SteadyClock::time_point start) {
    if (request.op_case() != StreamRequest::kOptimizerStep ||
        request.optimizer_step().mode() != spill::v1::STEP_MODE_COMMIT) {
      return false;
    }
    uint64_t session;
    {
      std::lock_guard<std::mutex> lock(mu_);
      session = session_id_;
    }
    const auto& st = request.optimizer_step();
    if (session == 0 || deps_.optimizer == nullptr) return false;
    std::optional<StepOutcome> outcome =
        deps_.optimizer->TryCommitAsRun(session, st.group_id(), st.step(), st.grad_scale());
    if (!outcome.has_value()) return false;
    StreamEvent event;
    event.set_tag(request.tag());
    ToProto(*outcome, event.mutable_step());
    Complete(std::move(event), OpName(request.op_case()), start, absl::StatusCode::kOk);
    return true;
  }

  // Runs an optimizer request on the compute pool. Answers complete out of
  // order with the stream's other requests; the tag matches them up.
  void DispatchCompute(StreamRequest request, SteadyClock::time_point start) {
    uint64_t tag = request.tag();
    const char* op = OpName(request.op_case());
    bool posted = deps_.compute_pool != nullptr &&
                  deps_.compute_pool->Post([this, request = std::move(request), start] {
                    (void)Process(request, start);
                  });
    if (posted) return;
    StreamEvent event;
    event.set_tag(tag);
    event.set_code(static_cast<int>(absl::StatusCode::kUnavailable));
    event.set_message("spilld is stopping");
    Complete(std::move(event), op, start, absl::StatusCode::kUnavailable);
  }

  absl::Status Process(const StreamRequest& request, SteadyClock::time_point start) {
    StreamEvent event;
    event.set_tag(request.tag());
    absl::Status status = Execute(request, &event);
    if (!status.ok()) {
      event.clear_object();
      event.set_code(static_cast<int>(status.code()));
      event.set_message(std::string(status.message()));
    }
    Complete(std::move(event), OpName(request.op_case()), start, status.code());
    return status;
  }

  // Ends a request counted in pending_: records it, queues its answer and
  // finishes the stream if it was the last thing it waited for.
  void Complete(StreamEvent event, const char* op, SteadyClock::time_point start,
                absl::StatusCode code) {
    deps_.metrics->RecordRequest(op, SteadyClock::now() - start, code);
    Enqueue(std::move(event));
    {
      std::lock_guard<std::mutex> lock(mu_);
      --pending_;
    }
    MaybeFinish();
  }

  absl::Status Execute(const StreamRequest& request, StreamEvent* event) {
    uint64_t session;
    {
      std::lock_guard<std::mutex> lock(mu_);
      session = session_id_;
    }
    if (request.op_case() == StreamRequest::kAttach) {
      if (session != 0) return absl::FailedPreconditionError("stream is already attached");
      auto token = TokenOf(request.attach().session());
      if (!token.ok()) return token.status();
      uint64_t id = request.attach().session().session_id();
      auto job = deps_.registry->AttachStream(id, *token);
      if (!job.ok()) return job.status();
      std::lock_guard<std::mutex> lock(mu_);
      session_id_ = id;
      return absl::OkStatus();
    }
    if (session == 0) {
      return absl::FailedPreconditionError(
          "the first message on a session stream must be an attach");
    }
    absl::StatusOr<ObjectRecord> record;
    switch (request.op_case()) {
      case StreamRequest::kAcquire:
        record = deps_.registry->Acquire(session, request.acquire().object_id());
        if (record.ok()) deps_.metrics->AddBytesOut(record->extent.size);
        break;
      case StreamRequest::kPrefetch:
        record = deps_.registry->Prefetch(session, request.prefetch().object_id());
        break;
      case StreamRequest::kRelease:
        record = deps_.registry->Release(session, request.release().object_id());
        break;
      case StreamRequest::kWriteBack:
        record = deps_.registry->WriteBack(session, request.write_back().object_id(),
                                           request.write_back().version());
        if (record.ok()) {
          // An NVME object's record has no extent: count its size.
          deps_.metrics->AddBytesIn(record->extent.size != 0
                                        ? record->extent.size
                                        : record->num_elements * DTypeSize(record->dtype));
        }
        break;
      case StreamRequest::kPing:
        return absl::OkStatus();
      case StreamRequest::kAccessOrder: {
        const auto& ids = request.access_order().object_ids();
        return deps_.registry
            ->SetAccessOrder(session, std::vector<uint64_t>(ids.begin(), ids.end()))
            .status();
      }
      case StreamRequest::kGradReady: {
        const auto& g = request.grad_ready();
        auto sum = deps_.optimizer->GradReady(
            session, g.group_id(), g.grad_object_id(), g.step(), g.micro_step(),
            g.has_sum_squares() ? std::optional<double>(g.sum_squares()) : std::nullopt);
        if (!sum.ok()) return sum.status();
        event->set_sum_squares(*sum);
        return absl::OkStatus();
      }
      case StreamRequest::kOptimizerStep: {
        const auto& st = request.optimizer_step();
        SPILL_ASSIGN_OR_RETURN(StepMode mode, StepModeFromProto(st.mode()));
        auto outcome = deps_.optimizer->Step(session, st.group_id(), st.step(), st.lr(),
                                             st.grad_scale(), st.skip(), mode);
        if (!outcome.ok()) return outcome.status();
        ToProto(*outcome, event->mutable_step());
        return absl::OkStatus();
      }
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("stream request with tag ", request.tag(), " names no operation"));
    }
    if (!record.ok()) return record.status();
    ToProto(*record, event->mutable_object());
    return absl::OkStatus();
  }

  void Enqueue(StreamEvent event) {
    const StreamEvent* next = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (broken_ || finished_) return;
      writes_.push_back(std::move(event));
      if (!writing_) {
        writing_ = true;
        next = &writes_.front();
      }
    }
    // Deque elements stay put while others are pushed, so next stays valid.
    if (next != nullptr) StartWrite(next);
  }

  void MaybeFinish() {
    bool stopping;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_ || !(reads_done_ || stopping_) || Busy()) return;
      finished_ = true;
      stopping = stopping_;
    }
    if (stopping) {
      FinishStopping();
    } else {
      Finish(grpc::Status::OK);
    }
  }

  WorkerService* const service_;
  const WorkerServiceDeps& deps_;
  bool stopping_ = false;
  StreamRequest request_;
  std::mutex mu_;
  uint64_t session_id_ = 0;
  std::deque<StreamEvent> writes_;  // front() is being written while writing_.
  bool writing_ = false;
  bool broken_ = false;
  bool reads_done_ = false;
  bool finished_ = false;
  bool read_paused_ = false;    // Too many answers queued; OnWriteDone resumes.
  bool starting_read_ = false;  // Between deciding to read and StartRead.
  int pending_ = 0;
};

void ToProto(const ObjectRecord& record, spill::v1::ObjectInfo* out) {
  out->set_object_id(record.id);
  out->set_name(record.name);
  out->set_kind(static_cast<spill::v1::ObjectKind>(record.kind));
  out->set_dtype(static_cast<spill::v1::DType>(record.dtype));
  out->set_num_elements(record.num_elements);
  out->mutable_location()->set_segment_id(record.extent.segment_id);
  out->mutable_location()->set_offset(record.extent.offset);
  out->mutable_location()->set_size_bytes(record.extent.size);
  out->set_version(record.version);
  out->set_pin_count(record.pin_count);
  out->set_home(record.home == storage::Home::kNvme ? spill::v1::OBJECT_HOME_NVME
                                                    : spill::v1::OBJECT_HOME_PINNED);
}

template <typename Fn>
grpc::ServerUnaryReactor* WorkerService::RunUnary(grpc::CallbackServerContext* ctx,
                                                  const char* op, Fn fn) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  auto start = SteadyClock::now();
  Metrics* metrics = deps_.metrics;
  unary_in_flight_.fetch_add(1);
  bool posted = deps_.pool->Post([this, reactor, fn = std::move(fn), op, start, metrics]() mutable {
    absl::Status status = fn();
    metrics->RecordRequest(op, SteadyClock::now() - start, status.code());
    reactor->Finish(ToGrpcStatus(status));
    unary_in_flight_.fetch_sub(1);
  });
  if (!posted) {
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "spilld is stopping"));
    unary_in_flight_.fetch_sub(1);
  }
  return reactor;
}

grpc::ServerUnaryReactor* WorkerService::OpenSession(grpc::CallbackServerContext* ctx,
                                                     const spill::v1::OpenSessionRequest* request,
                                                     spill::v1::OpenSessionResponse* response) {
  std::optional<PeerCreds> peer = deps_.peers->Get(ctx->peer());
  return RunUnary(ctx, "open_session", [this, request, response, peer]() -> absl::Status {
    if (!peer.has_value()) {
      return absl::PermissionDeniedError("connection has no recorded peer credentials");
    }
    JobBudgets budgets;
    if (request->has_param_budget()) budgets.param = BudgetFromWire(request->param_budget());
    if (request->has_optimizer_budget()) {
      budgets.optimizer = BudgetFromWire(request->optimizer_budget());
    }
    auto opened = deps_.registry->OpenSession(request->job_id(), request->rank(),
                                              request->world_size(), *peer, budgets);
    if (!opened.ok()) return opened.status();
    response->mutable_session()->set_session_id(opened->session_id);
    response->mutable_session()->set_token(
        std::string(opened->token.begin(), opened->token.end()));
    response->set_job_existed(opened->job_existed);
    response->set_attach_timeout_ms(deps_.attach_timeout.count());
    response->set_alignment_bytes(deps_.alignment_bytes);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* WorkerService::CloseSession(
    grpc::CallbackServerContext* ctx, const spill::v1::CloseSessionRequest* request,
    spill::v1::CloseSessionResponse* /*response*/) {
  return RunUnary(ctx, "close_session", [this, request]() -> absl::Status {
    auto token = TokenOf(request->session());
    if (!token.ok()) return token.status();
    return deps_.registry->CloseSession(request->session().session_id(), *token);
  });
}

grpc::ServerUnaryReactor* WorkerService::RegisterObject(
    grpc::CallbackServerContext* ctx, const spill::v1::RegisterObjectRequest* request,
    spill::v1::RegisterObjectResponse* response) {
  return RunUnary(ctx, "register", [this, request, response]() -> absl::Status {
    auto token = TokenOf(request->session());
    if (!token.ok()) return token.status();
    storage::Home home = storage::Home::kPinned;
    switch (request->home()) {
      case spill::v1::OBJECT_HOME_UNSPECIFIED:
      case spill::v1::OBJECT_HOME_PINNED: break;
      case spill::v1::OBJECT_HOME_NVME: home = storage::Home::kNvme; break;
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("object '", request->name(), "': home ", request->home(),
                         " is not a valid ObjectHome (PINNED=1, NVME=2)"));
    }
    auto record = deps_.registry->RegisterObject(request->session().session_id(), *token,
                                                 request->name(), request->kind(),
                                                 request->dtype(), request->num_elements(), home);
    if (!record.ok()) return record.status();
    ToProto(*record, response->mutable_object());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* WorkerService::FreeObject(grpc::CallbackServerContext* ctx,
                                                    const spill::v1::FreeObjectRequest* request,
                                                    spill::v1::FreeObjectResponse* /*response*/) {
  return RunUnary(ctx, "free", [this, request]() -> absl::Status {
    auto token = TokenOf(request->session());
    if (!token.ok()) return token.status();
    return deps_.registry->FreeObject(request->session().session_id(), *token,
                                      request->object_id());
  });
}

grpc::ServerUnaryReactor* WorkerService::ListObjects(grpc::CallbackServerContext* ctx,
                                                     const spill::v1::ListObjectsRequest* request,
                                                     spill::v1::ListObjectsResponse* response) {
  return RunUnary(ctx, "list", [this, request, response]() -> absl::Status {
    auto token = TokenOf(request->session());
    if (!token.ok()) return token.status();
    auto records = deps_.registry->ListObjects(request->session().session_id(), *token);
    if (!records.ok()) return records.status();
    for (const ObjectRecord& r : *records) ToProto(r, response->add_objects());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* WorkerService::Flush(grpc::CallbackServerContext* ctx,
                                               const spill::v1::FlushRequest* request,
                                               spill::v1::FlushResponse* /*response*/) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  auto start = SteadyClock::now();
  unary_in_flight_.fetch_add(1);
  auto finish = [this, reactor, start](absl::Status status) {
    deps_.metrics->RecordRequest("flush", SteadyClock::now() - start, status.code());
    reactor->Finish(ToGrpcStatus(status));
    unary_in_flight_.fetch_sub(1);
  };
  bool posted = deps_.pool->Post([this, request, finish] {
    auto token = TokenOf(request->session());
    if (!token.ok()) {
      finish(token.status());
      return;
    }
    // Answered from the TierManager's callback; no pool thread waits.
    deps_.registry->Flush(request->session().session_id(), *token, finish);
  });
  if (!posted) finish(absl::UnavailableError("spilld is stopping"));
  return reactor;
}

grpc::ServerUnaryReactor* WorkerService::CreateGroup(
    grpc::CallbackServerContext* ctx, const spill::v1::CreateGroupRequest* request,
    spill::v1::CreateGroupResponse* response) {
  return RunUnary(ctx, "create_group", [this, request, response]() -> absl::Status {
    auto token = TokenOf(request->session());
    if (!token.ok()) return token.status();
    auto spec = GroupSpecFromProto(*request);
    if (!spec.ok()) return spec.status();
    auto created = deps_.optimizer->CreateGroup(request->session().session_id(), *token, *spec);
    if (!created.ok()) return created.status();
    ToProto(created->first, response->mutable_group());
    response->set_existed(created->second);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* WorkerService::DropGroup(grpc::CallbackServerContext* ctx,
                                                   const spill::v1::DropGroupRequest* request,
                                                   spill::v1::DropGroupResponse* /*response*/) {
  return RunUnary(ctx, "drop_group", [this, request]() -> absl::Status {
    auto token = TokenOf(request->session());
    if (!token.ok()) return token.status();
    return deps_.optimizer->DropGroup(request->session().session_id(), *token,
                                      request->group_id());
  });
}

grpc::ServerUnaryReactor* WorkerService::ListGroups(grpc::CallbackServerContext* ctx,
                                                    const spill::v1::ListGroupsRequest* request,
                                                    spill::v1::ListGroupsResponse* response) {
  return RunUnary(ctx, "list_groups", [this, request, response]() -> absl::Status {
    auto token = TokenOf(request->session());
    if (!token.ok()) return token.status();
    auto groups = deps_.optimizer->ListGroups(request->session().session_id(), *token);
    if (!groups.ok()) return groups.status();
    for (const GroupInfo& g : *groups) ToProto(g, response->add_groups());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* WorkerService::CopyGroupState(
    grpc::CallbackServerContext* ctx, const spill::v1::CopyGroupStateRequest* request,
    spill::v1::CopyGroupStateResponse* /*response*/) {
  return RunUnary(ctx, "copy_group_state", [this, request]() -> absl::Status {
    auto token = TokenOf(request->session());
    if (!token.ok()) return token.status();
    auto direction = StateCopyFromProto(request->direction());
    if (!direction.ok()) return direction.status();
    std::vector<uint64_t> ids(request->object_ids().begin(), request->object_ids().end());
    return deps_.optimizer->CopyState(request->session().session_id(), *token,
                                      request->group_id(), request->member_index(), *direction,
                                      ids);
  });
}

grpc::ServerBidiReactor<StreamRequest, StreamEvent>* WorkerService::Session(
    grpc::CallbackServerContext* /*ctx*/) {
  {
    std::lock_guard<std::mutex> lock(streams_mu_);
    if (!stopping_) {
      auto* reactor = new SessionReactor(this, /*stopping=*/false);
      streams_.insert(reactor);
      return reactor;
    }
  }
  return new SessionReactor(this, /*stopping=*/true);  // Finishes at once; untracked.
}

void WorkerService::Untrack(SessionReactor* reactor) {
  std::lock_guard<std::mutex> lock(streams_mu_);
  streams_.erase(reactor);
}

size_t WorkerService::InFlight() {
  std::lock_guard<std::mutex> lock(streams_mu_);
  return unary_in_flight_.load() + streams_.size();
}

void WorkerService::StopStreams() {
  std::vector<SessionReactor*> to_finish;
  {
    std::lock_guard<std::mutex> lock(streams_mu_);
    stopping_ = true;
    for (SessionReactor* r : streams_) {
      if (r->BeginShutdown()) to_finish.push_back(r);
    }
  }
  // A reactor is not deleted before OnDone, which cannot run before Finish.
  for (SessionReactor* r : to_finish) r->FinishStopping();
}

}  // namespace spill::server
