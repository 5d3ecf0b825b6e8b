#include "client/grpc_session.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/cuda_host_register.h"
#include "client/unix_socket.h"
#include "client/wire.h"
#include "common/fd_protocol.h"
#include "common/mutex_checks.h"
#include "common/status_macros.h"
#include "proto/grpc_status.h"

namespace spill::client {

Session::~Session() = default;

absl::StatusOr<std::unique_ptr<Session>> Session::Open(const SessionOptions& options) {
  SessionOptions resolved = options;
  if (resolved.socket_path.empty()) resolved.socket_path = DefaultSocketPath();
  SPILL_RETURN_IF_ERROR(ValidateSessionOptions(resolved));
  SPILL_RETURN_IF_ERROR(internal::CheckSocketPath(resolved.socket_path));
  return internal::GrpcSession::Open(std::move(resolved));
}

namespace internal {
namespace {

// How long Close waits for spilld to end the stream after the half-close
// before cancelling it.
constexpr std::chrono::milliseconds kStreamEndGrace(2000);

}  // namespace

GrpcSession::GrpcSession(SessionOptions options) : options_(std::move(options)) {}

GrpcSession::~GrpcSession() { Close().IgnoreError(); }

absl::StatusOr<std::unique_ptr<Session>> GrpcSession::Open(SessionOptions options) {
  ConfigureAbslDeadlockDetection();
  std::unique_ptr<GrpcSession> session(new GrpcSession(std::move(options)));
  absl::Status status = session->OpenSessionRpc();
  if (status.ok()) status = session->AttachStream();
  if (status.ok()) status = session->OpenFdChannel();
  if (!status.ok()) {
    session->Close().IgnoreError();
    return status;
  }
  return std::unique_ptr<Session>(std::move(session));
}

void GrpcSession::SetDeadline(grpc::ClientContext* context) const {
  context->set_deadline(std::chrono::system_clock::now() + options_.timeout);
}

absl::Status GrpcSession::RpcError(const char* method, const grpc::Status& status) const {
  const std::string& path = options_.socket_path;
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
      return CannotConnect(absl::StatusCode::kUnavailable, path,
                           absl::StrCat(method, ": ", status.error_message()));
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return absl::DeadlineExceededError(absl::StrCat("spilld at ", path, " did not answer ",
                                                      method, " within ",
                                                      options_.timeout.count(), " ms"));
    default: {
      absl::Status converted = FromGrpcStatus(status);
      return absl::Status(converted.code(), absl::StrCat(method, ": ", converted.message()));
    }
  }
}

absl::Status GrpcSession::OpenSessionRpc() {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(kMaxSendMessageBytes);
  args.SetMaxReceiveMessageSize(kMaxReceiveMessageBytes);
  // One connection per session: spilld identifies peers per connection.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  channel_ = grpc::CreateCustomChannel("unix:" + options_.socket_path,
                                       grpc::InsecureChannelCredentials(), args);
  stub_ = v1::Worker::NewStub(channel_);

  v1::OpenSessionRequest request;
  request.set_job_id(options_.job_id);
  request.set_rank(options_.rank);
  request.set_world_size(options_.world_size);
  auto budget = [](const OffloadBudget& b, v1::OffloadBudget* out) {
    out->set_buffer_count(b.buffer_count);
    out->set_buffer_size(b.buffer_size);
    out->set_max_in_cpu(b.max_in_cpu);
  };
  if (options_.param_budget) budget(*options_.param_budget, request.mutable_param_budget());
  if (options_.optimizer_budget) {
    budget(*options_.optimizer_budget, request.mutable_optimizer_budget());
  }
  v1::OpenSessionResponse response;
  grpc::ClientContext context;
  SetDeadline(&context);
  grpc::Status status = stub_->OpenSession(&context, request, &response);
  if (!status.ok()) return RpcError("OpenSession", status);
  ref_ = response.session();
  opened_ = true;
  job_existed_ = response.job_existed();
  alignment_bytes_ = response.alignment_bytes();
  if (ref_.token().size() != kSessionTokenBytes) {
    return absl::InternalError(absl::StrCat("spilld returned a ", ref_.token().size(),
                                            "-byte session token; expected ", kSessionTokenBytes));
  }
  return absl::OkStatus();
}

absl::Status GrpcSession::AttachStream() {
  StreamDriver::Callbacks callbacks;
  callbacks.on_event = [this](v1::StreamEvent event) { OnEvent(event); };
  callbacks.on_end = [this](const grpc::Status& status) { OnStreamEnded(status); };
  callbacks.has_pending = [this] { return works_.pending() > 0; };
  stream_ = StreamDriver::Start(stub_.get(), std::move(callbacks));
  works_.SetDriver(stream_);
  v1::StreamRequest request;
  *request.mutable_attach()->mutable_session() = ref_;
  std::shared_ptr<Work> attach = Submit(WorkOp::kAttach, 0, std::move(request));
  absl::Status status = attach->Wait(options_.timeout);
  if (status.ok()) return status;
  if (!attach->IsCompleted()) {
    return absl::DeadlineExceededError(absl::StrCat("spilld at ", options_.socket_path,
                                                    " did not answer the session attach within ",
                                                    options_.timeout.count(), " ms"));
  }
  return absl::Status(status.code(), absl::StrCat("attaching the session stream: ", status.message()));
}

absl::Status GrpcSession::OpenFdChannel() {
  SPILL_ASSIGN_OR_RETURN(fd_channel_, FdChannel::Connect(options_.socket_path, ref_.session_id(),
                                                         ref_.token(), options_.timeout));
  FdChannel* channel = fd_channel_.get();
  segments_ = std::make_unique<SegmentMap>(
      [channel](uint64_t segment_id) { return channel->GetSegment(segment_id); },
      options_.register_with_cuda);
  return absl::OkStatus();
}

absl::Status GrpcSession::Usable() const {
  std::lock_guard<std::mutex> lock(state_mu_);
  switch (state_) {
    case State::kOpen: return absl::OkStatus();
    case State::kBroken: return broken_status_;
    case State::kClosed: break;
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "session ", ref_.session_id(), " of job '", options_.job_id, "' is closed"));
}

std::shared_ptr<Work> GrpcSession::Submit(WorkOp op, uint64_t object_id,
                                          v1::StreamRequest request) {
  absl::Status usable = Usable();
  if (!usable.ok()) return WorkTable::Failed(op, object_id, std::move(usable));
  WorkTable::Started started = works_.Start(op, object_id);
  if (started.tag == 0) return started.work;
  request.set_tag(started.tag);
  if (!stream_->Write(std::move(request))) {
    // The stream is ending; its end reports why, unless Close got here first.
    absl::Status why = Usable();
    if (why.ok()) {
      why = absl::UnavailableError(absl::StrCat("cannot send to spilld at ", options_.socket_path,
                                                ": the session stream is broken"));
    }
    works_.Complete(started.tag, std::move(why), WorkResult{});
  }
  return started.work;
}

void GrpcSession::OnEvent(const v1::StreamEvent& event) {
  absl::Status status = StatusFromCode(event.code(), event.message());
  WorkResult result;
  if (status.ok()) {
    if (event.has_object()) result.object = FromProto(event.object());
    if (event.has_step()) result.step = FromProto(event.step());
    result.sum_squares = event.sum_squares();
  }
  // An unknown tag (a request already failed locally) is dropped.
  works_.Complete(event.tag(), std::move(status), std::move(result));
}

void GrpcSession::OnStreamEnded(const grpc::Status& status) {
  absl::Status failure;
  {
    std::lock_guard<std::mutex> lock(state_mu_);
    if (state_ != State::kOpen) return;
    state_ = State::kBroken;
    absl::Status ended = FromGrpcStatus(status);
    broken_status_ = absl::UnavailableError(absl::StrCat(
        "lost the session stream to spilld at ", options_.socket_path, " (",
        ended.ok() ? "ended by spilld" : ended.ToString(), "); session ", ref_.session_id(),
        " no longer holds pins: open a new session to re-attach job '", options_.job_id, "'"));
    failure = broken_status_;
  }
  works_.Shutdown(failure);
}

absl::Status GrpcSession::Close() {
  std::lock_guard<std::mutex> close_lock(close_mu_);
  bool was_broken = false;
  {
    std::lock_guard<std::mutex> lock(state_mu_);
    if (state_ == State::kClosed) return absl::OkStatus();
    was_broken = state_ == State::kBroken;
    state_ = State::kClosed;
  }
  works_.Shutdown(absl::CancelledError(absl::StrCat(
      "session ", ref_.session_id(), " was closed before spilld answered")));
  if (stream_ != nullptr) stream_->Interrupt();  // Their waiters see it now.
  absl::Status result;
  if (opened_) {
    v1::CloseSessionRequest request;
    *request.mutable_session() = ref_;
    v1::CloseSessionResponse response;
    grpc::ClientContext context;
    SetDeadline(&context);
    grpc::Status status = stub_->CloseSession(&context, request, &response);
    // After a lost stream spilld may have dropped the session already.
    if (!status.ok() && !was_broken) result = RpcError("CloseSession", status);
  }
  // Half-closes the stream, waits briefly for spilld to end it, cancels it
  // otherwise.
  if (stream_ != nullptr) stream_->Close(std::min(options_.timeout, kStreamEndGrace));
  if (fd_channel_ != nullptr) fd_channel_->Close();
  if (segments_ != nullptr) segments_->Clear();
  return result;
}

absl::StatusOr<ObjectInfo> GrpcSession::Register(const std::string& name, ObjectKind kind,
                                                  DType dtype, int64_t num_elements,
                                                  ObjectHome home) {
  SPILL_RETURN_IF_ERROR(Usable());
  v1::RegisterObjectRequest request;
  request.set_home(static_cast<v1::ObjectHome>(home));
  *request.mutable_session() = ref_;
  request.set_name(name);
  request.set_kind(static_cast<v1::ObjectKind>(kind));
  request.set_dtype(static_cast<v1::DType>(dtype));
  request.set_num_elements(num_elements);
  v1::RegisterObjectResponse response;
  grpc::ClientContext context;
  SetDeadline(&context);
  grpc::Status status = stub_->RegisterObject(&context, request, &response);
  if (!status.ok()) return RpcError("RegisterObject", status);
  return FromProto(response.object());
}

absl::Status GrpcSession::Free(uint64_t object_id) {
  SPILL_RETURN_IF_ERROR(Usable());
  v1::FreeObjectRequest request;
  *request.mutable_session() = ref_;
  request.set_object_id(object_id);
  v1::FreeObjectResponse response;
  grpc::ClientContext context;
  SetDeadline(&context);
  grpc::Status status = stub_->FreeObject(&context, request, &response);
  if (!status.ok()) return RpcError("FreeObject", status);
  return absl::OkStatus();
}

absl::Status GrpcSession::Flush() {
  SPILL_RETURN_IF_ERROR(Usable());
  v1::FlushRequest request;
  *request.mutable_session() = ref_;
  v1::FlushResponse response;
  grpc::ClientContext context;
  SetDeadline(&context);
  grpc::Status status = stub_->Flush(&context, request, &response);
  if (!status.ok()) return RpcError("Flush", status);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ObjectInfo>> GrpcSession::List() {
  SPILL_RETURN_IF_ERROR(Usable());
  v1::ListObjectsRequest request;
  *request.mutable_session() = ref_;
  v1::ListObjectsResponse response;
  grpc::ClientContext context;
  SetDeadline(&context);
  grpc::Status status = stub_->ListObjects(&context, request, &response);
  if (!status.ok()) return RpcError("ListObjects", status);
  std::vector<ObjectInfo> objects;
  objects.reserve(response.objects_size());
  for (const v1::ObjectInfo& object : response.objects()) objects.push_back(FromProto(object));
  return objects;
}

std::shared_ptr<Work> GrpcSession::Acquire(uint64_t object_id, bool for_write) {
  v1::StreamRequest request;
  request.mutable_acquire()->set_object_id(object_id);
  request.mutable_acquire()->set_for_write(for_write);
  return Submit(WorkOp::kAcquire, object_id, std::move(request));
}

std::shared_ptr<Work> GrpcSession::Prefetch(uint64_t object_id) {
  v1::StreamRequest request;
  request.mutable_prefetch()->set_object_id(object_id);
  return Submit(WorkOp::kPrefetch, object_id, std::move(request));
}

std::shared_ptr<Work> GrpcSession::SetAccessOrder(std::vector<uint64_t> object_ids) {
  v1::StreamRequest request;
  v1::AccessOrder* order = request.mutable_access_order();
  for (uint64_t id : object_ids) order->add_object_ids(id);
  return Submit(WorkOp::kAccessOrder, 0, std::move(request));
}

std::shared_ptr<Work> GrpcSession::Release(uint64_t object_id) {
  v1::StreamRequest request;
  request.mutable_release()->set_object_id(object_id);
  return Submit(WorkOp::kRelease, object_id, std::move(request));
}

std::shared_ptr<Work> GrpcSession::WriteBack(uint64_t object_id, uint64_t version) {
  v1::StreamRequest request;
  request.mutable_write_back()->set_object_id(object_id);
  request.mutable_write_back()->set_version(version);
  return Submit(WorkOp::kWriteBack, object_id, std::move(request));
}

std::shared_ptr<Work> GrpcSession::Ping() {
  v1::StreamRequest request;
  request.mutable_ping();
  return Submit(WorkOp::kPing, 0, std::move(request));
}

absl::StatusOr<GroupInfo> GrpcSession::CreateGroup(const GroupSpec& spec) {
  SPILL_RETURN_IF_ERROR(Usable());
  v1::CreateGroupRequest request;
  *request.mutable_session() = ref_;
  ToProto(spec, &request);
  v1::CreateGroupResponse response;
  grpc::ClientContext context;
  SetDeadline(&context);
  grpc::Status status = stub_->CreateGroup(&context, request, &response);
  if (!status.ok()) return RpcError("CreateGroup", status);
  GroupInfo group = FromProto(response.group());
  group.existed = response.existed();
  return group;
}

absl::Status GrpcSession::DropGroup(uint64_t group_id) {
  SPILL_RETURN_IF_ERROR(Usable());
  v1::DropGroupRequest request;
  *request.mutable_session() = ref_;
  request.set_group_id(group_id);
  v1::DropGroupResponse response;
  grpc::ClientContext context;
  SetDeadline(&context);
  grpc::Status status = stub_->DropGroup(&context, request, &response);
  if (!status.ok()) return RpcError("DropGroup", status);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<GroupInfo>> GrpcSession::ListGroups() {
  SPILL_RETURN_IF_ERROR(Usable());
  v1::ListGroupsRequest request;
  *request.mutable_session() = ref_;
  v1::ListGroupsResponse response;
  grpc::ClientContext context;
  SetDeadline(&context);
  grpc::Status status = stub_->ListGroups(&context, request, &response);
  if (!status.ok()) return RpcError("ListGroups", status);
  std::vector<GroupInfo> groups;
  for (const v1::GroupInfo& g : response.groups()) groups.push_back(FromProto(g));
  return groups;
}

absl::Status GrpcSession::CopyGroupState(uint64_t group_id, uint32_t member_index,
                                         GroupStateDirection direction,
                                         const std::vector<uint64_t>& object_ids) {
  SPILL_RETURN_IF_ERROR(Usable());
  v1::CopyGroupStateRequest request;
  *request.mutable_session() = ref_;
  request.set_group_id(group_id);
  request.set_member_index(member_index);
  switch (direction) {
    case GroupStateDirection::kExport:
      request.set_direction(v1::GROUP_STATE_DIRECTION_EXPORT);
      break;
    case GroupStateDirection::kImport:
      request.set_direction(v1::GROUP_STATE_DIRECTION_IMPORT);
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "group state direction ", static_cast<int>(direction), " is not kExport or kImport"));
  }
  for (uint64_t id : object_ids) request.add_object_ids(id);
  v1::CopyGroupStateResponse response;
  grpc::ClientContext context;
  SetDeadline(&context);
  grpc::Status status = stub_->CopyGroupState(&context, request, &response);
  if (!status.ok()) return RpcError("CopyGroupState", status);
  return absl::OkStatus();
}

namespace {

// A GradReady stream request; sum_squares only when the worker computed it.
v1::StreamRequest GradReadyRequest(uint64_t group_id, uint64_t grad_object_id, uint64_t step,
                                   uint32_t micro_step, std::optional<double> sum_squares) {
  v1::StreamRequest request;
  v1::GradReady* g = request.mutable_grad_ready();
  g->set_group_id(group_id);
  g->set_grad_object_id(grad_object_id);
  g->set_step(step);
  g->set_micro_step(micro_step);
  if (sum_squares.has_value()) g->set_sum_squares(*sum_squares);
  return request;
}

}  // namespace

std::shared_ptr<Work> GrpcSession::GradReady(uint64_t group_id, uint64_t grad_object_id,
                                             uint64_t step, uint32_t micro_step) {
  return Submit(WorkOp::kGradReady, grad_object_id,
                GradReadyRequest(group_id, grad_object_id, step, micro_step, std::nullopt));
}

std::shared_ptr<Work> GrpcSession::GradReadySummed(uint64_t group_id, uint64_t grad_object_id,
                                                   uint64_t step, double sum_squares) {
  return Submit(WorkOp::kGradReady, grad_object_id,
                GradReadyRequest(group_id, grad_object_id, step, 0, sum_squares));
}

namespace {
v1::StreamRequest StepRequest(uint64_t group_id, uint64_t step, float lr, float grad_scale,
                              bool skip, v1::StepMode mode) {
  v1::StreamRequest request;
  v1::OptimizerStep* st = request.mutable_optimizer_step();
  st->set_group_id(group_id);
  st->set_step(step);
  st->set_lr(lr);
  st->set_grad_scale(grad_scale);
  st->set_skip(skip);
  st->set_mode(mode);
  return request;
}
}  // namespace

std::shared_ptr<Work> GrpcSession::OptimizerStep(uint64_t group_id, uint64_t step, float lr,
                                                 float grad_scale, bool skip) {
  return Submit(WorkOp::kOptimizerStep, 0,
                StepRequest(group_id, step, lr, grad_scale, skip, v1::STEP_MODE_FINAL));
}

std::shared_ptr<Work> GrpcSession::SpeculativeOptimizerStep(uint64_t group_id, uint64_t step,
                                                            float lr,
                                                            float predicted_grad_scale) {
  return Submit(WorkOp::kOptimizerStep, 0,
                StepRequest(group_id, step, lr, predicted_grad_scale, false,
                            v1::STEP_MODE_SPECULATIVE));
}

std::shared_ptr<Work> GrpcSession::CommitOptimizerStep(uint64_t group_id, uint64_t step,
                                                       float grad_scale) {
  return Submit(WorkOp::kOptimizerStep, 0,
                StepRequest(group_id, step, 0.f, grad_scale, false, v1::STEP_MODE_COMMIT));
}

absl::StatusOr<absl::Span<uint8_t>> GrpcSession::Bytes(const ObjectInfo& object) {
  SPILL_RETURN_IF_ERROR(Usable());
  if (DTypeSize(object.dtype) == 0) {
    return absl::InvalidArgumentError(absl::StrCat("object '", object.name, "' has no valid dtype (",
                                                   static_cast<int>(object.dtype), ")"));
  }
  uint64_t length = object.byte_size();
  if (length == 0) return absl::Span<uint8_t>();
  if (!object.resident()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "object '", object.name, "' (id ", object.object_id,
        ") has no pinned location; Acquire it and use the ObjectInfo the Acquire returns"));
  }
  if (length > object.location.size_bytes) {
    return absl::OutOfRangeError(absl::StrCat("object '", object.name, "' needs ", length,
                                              " bytes but its location holds ",
                                              object.location.size_bytes));
  }
  return segments_->Resolve(object.location.segment_id, object.location.offset, length);
}

MappingStats GrpcSession::mapping_stats() const {
  if (segments_ != nullptr) return segments_->stats();
  MappingStats stats;
  stats.cuda_compiled = CudaCompiled();
  return stats;
}

}  // namespace internal
}  // namespace spill::client
