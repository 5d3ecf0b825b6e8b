#include "client/testing/fake_spilld.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>
#include <grpcpp/server_posix.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/fd_protocol.h"
#include "common/memfd.h"
#include "common/status_macros.h"
#include "common/unique_fd.h"
#include "spill/v1/spill.grpc.pb.h"

namespace spill::client::testing {
namespace {

using grpc::ServerContext;
using grpc::Status;
using grpc::StatusCode;
using Stream = grpc::ServerReaderWriter<v1::StreamEvent, v1::StreamRequest>;

struct FakeSession {
  std::string job;
  std::string token;
  bool attached = false;
  ServerContext* stream_context = nullptr;
  Stream* stream = nullptr;
  std::shared_ptr<std::mutex> write_mu;
  std::multiset<uint64_t> pins;
};

struct Held {
  uint64_t session_id;
  v1::StreamRequest request;
};

class FakeSpilldImpl final : public FakeSpilld, public v1::Worker::Service {
 public:
  explicit FakeSpilldImpl(FakeSpilldOptions options) : options_(options) {}
  ~FakeSpilldImpl() override { Stop(); }

  absl::Status Init();

  const std::string& socket_path() const override { return socket_path_; }
  uint8_t* segment_data() const override { return mapping_.data(); }
  void HoldAnswers(bool hold) override {
    std::lock_guard<std::mutex> lock(mu_);
    hold_ = hold;
  }
  void AnswerHeld(bool reverse) override;
  size_t held() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return held_.size();
  }
  void BreakStreams() override;
  void SendUnsealedSegments(bool on) override { unsealed_ = on; }
  int segment_requests() const override { return segment_requests_; }
  int attached_sessions() const override;
  int close_calls() const override { return close_calls_; }
  void Stop() override;

  // Worker service.
  Status OpenSession(ServerContext*, const v1::OpenSessionRequest* request,
                     v1::OpenSessionResponse* response) override;
  Status CloseSession(ServerContext*, const v1::CloseSessionRequest* request,
                      v1::CloseSessionResponse*) override;
  Status RegisterObject(ServerContext*, const v1::RegisterObjectRequest* request,
                        v1::RegisterObjectResponse* response) override;
  Status FreeObject(ServerContext*, const v1::FreeObjectRequest* request,
                    v1::FreeObjectResponse*) override;
  Status ListObjects(ServerContext*, const v1::ListObjectsRequest* request,
                     v1::ListObjectsResponse* response) override;
  Status Session(ServerContext* context, Stream* stream) override;

 private:
  // The session ref's session when its token matches; requires mu_.
  FakeSession* AuthLocked(const v1::SessionRef& ref);
  v1::StreamEvent Answer(uint64_t session_id, const v1::StreamRequest& request);
  bool AnswerPinOpLocked(FakeSession& session, const v1::StreamRequest& request,
                         v1::StreamEvent* event);
  void DetachLocked(uint64_t session_id);
  void AcceptLoop();
  void Dispatch(UniqueFd sock);
  void FdLoop(UniqueFd sock);

  const FakeSpilldOptions options_;
  std::string dir_;
  std::string socket_path_;
  UniqueFd listen_fd_;
  UniqueFd stop_event_;
  UniqueFd segment_fd_;
  Mapping mapping_;
  std::unique_ptr<grpc::Server> server_;
  std::thread acceptor_;

  mutable std::mutex mu_;
  bool stopped_ = false;
  std::vector<std::thread> connections_;
  std::set<int> fd_channels_;
  std::set<std::string> jobs_;
  std::map<uint64_t, FakeSession> sessions_;
  std::map<uint64_t, std::pair<std::string, v1::ObjectInfo>> objects_;  // id -> (job, info)
  uint64_t next_session_ = 100;
  uint64_t next_object_ = 1000;
  uint64_t bump_ = 0;
  bool hold_ = false;
  std::vector<Held> held_;
  std::atomic<bool> unsealed_{false};
  std::atomic<int> segment_requests_{0};
  std::atomic<int> close_calls_{0};
};

absl::Status FakeSpilldImpl::Init() {
  char dir_template[] = "/tmp/spill_fake.XXXXXX";
  if (::mkdtemp(dir_template) == nullptr) return absl::ErrnoToStatus(errno, "mkdtemp");
  dir_ = dir_template;
  socket_path_ = dir_ + "/spilld.sock";
  SPILL_ASSIGN_OR_RETURN(segment_fd_,
                         CreateSealedMemfd({"fake-spilld", options_.segment_bytes, false}));
  SPILL_ASSIGN_OR_RETURN(mapping_, Mapping::Map(segment_fd_.get(), options_.segment_bytes, true));

  listen_fd_.Reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_path_.c_str(), sizeof(addr.sun_path) - 1);
  if (::bind(listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listen_fd_.get(), 64) != 0) {
    return absl::ErrnoToStatus(errno, "bind/listen " + socket_path_);
  }
  stop_event_.Reset(::eventfd(0, EFD_CLOEXEC));

  grpc::ServerBuilder builder;
  builder.RegisterService(this);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr) return absl::InternalError("grpc::ServerBuilder::BuildAndStart failed");
  acceptor_ = std::thread([this] { AcceptLoop(); });
  return absl::OkStatus();
}

void FakeSpilldImpl::AcceptLoop() {
  while (true) {
    pollfd fds[2] = {{listen_fd_.get(), POLLIN, 0}, {stop_event_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) continue;
    if (fds[1].revents != 0) return;
    UniqueFd sock(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!sock.valid()) continue;
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    connections_.emplace_back([this, s = std::make_shared<UniqueFd>(std::move(sock))] {
      Dispatch(std::move(*s));
    });
  }
}

// Tells the fd channel from gRPC by the first eight bytes, as spilld does.
void FakeSpilldImpl::Dispatch(UniqueFd sock) {
  char first[sizeof(kFdMagic)];
  for (int tries = 0; tries < 5000; ++tries) {
    ssize_t n = ::recv(sock.get(), first, sizeof(first), MSG_PEEK);
    if (n <= 0) return;
    if (static_cast<size_t>(n) == sizeof(first)) break;
    ::usleep(1000);
  }
  if (std::memcmp(first, kFdMagic, sizeof(first)) == 0) {
    FdLoop(std::move(sock));
  } else {
    // gRPC expects a non-blocking descriptor and does not set it itself.
    ::fcntl(sock.get(), F_SETFL, ::fcntl(sock.get(), F_GETFL) | O_NONBLOCK);
    grpc::AddInsecureChannelFromFd(server_.get(), sock.Release());
  }
}

void FakeSpilldImpl::FdLoop(UniqueFd sock) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    fd_channels_.insert(sock.get());
  }
  FdHello hello{};
  bool ok = RecvAll(sock.get(), &hello, sizeof(hello)).ok();
  if (ok) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sessions_.find(hello.session_id);
    ok = it != sessions_.end() &&
         std::memcmp(it->second.token.data(), hello.token, kSessionTokenBytes) == 0;
  }
  if (!ok) {
    SendFdError(sock.get(), absl::PermissionDeniedError("unknown session or bad token")).IgnoreError();
  } else {
    FdReplyHeader welcome{};
    ok = SendAll(sock.get(), &welcome, sizeof(welcome)).ok();
  }
  FdRequest request{};
  while (ok && RecvAll(sock.get(), &request, sizeof(request)).ok()) {
    segment_requests_++;
    if (request.segment_id != kSegmentId) {
      ok = SendFdError(sock.get(), absl::NotFoundError(absl::StrCat("no segment ", request.segment_id))).ok();
      continue;
    }
    UniqueFd unsealed;
    int send_fd = segment_fd_.get();
    if (unsealed_) {
      unsealed.Reset(::memfd_create("unsealed", MFD_CLOEXEC));
      if (::ftruncate(unsealed.get(), static_cast<off_t>(options_.segment_bytes)) != 0) break;
      send_fd = unsealed.get();
    }
    FdReplyHeader header{};
    header.segment_id = request.segment_id;
    header.size_bytes = options_.segment_bytes;
    ok = SendAll(sock.get(), &header, sizeof(header), send_fd).ok();
  }
  std::lock_guard<std::mutex> lock(mu_);
  fd_channels_.erase(sock.get());
}

FakeSession* FakeSpilldImpl::AuthLocked(const v1::SessionRef& ref) {
  auto it = sessions_.find(ref.session_id());
  if (it == sessions_.end() || it->second.token != ref.token()) return nullptr;
  return &it->second;
}

Status FakeSpilldImpl::OpenSession(ServerContext*, const v1::OpenSessionRequest* request,
                                   v1::OpenSessionResponse* response) {
  if (request->job_id().empty()) return Status(StatusCode::INVALID_ARGUMENT, "job_id is empty");
  std::lock_guard<std::mutex> lock(mu_);
  response->set_job_existed(!jobs_.insert(request->job_id()).second);
  uint64_t id = next_session_++;
  FakeSession& session = sessions_[id];
  session.job = request->job_id();
  std::random_device random;
  for (size_t i = 0; i < kSessionTokenBytes; ++i) session.token.push_back(static_cast<char>(random()));
  response->mutable_session()->set_session_id(id);
  response->mutable_session()->set_token(session.token);
  response->set_attach_timeout_ms(10'000);
  response->set_alignment_bytes(options_.alignment);
  return Status::OK;
}

Status FakeSpilldImpl::CloseSession(ServerContext*, const v1::CloseSessionRequest* request,
                                    v1::CloseSessionResponse*) {
  close_calls_++;
  std::lock_guard<std::mutex> lock(mu_);
  FakeSession* session = AuthLocked(request->session());
  if (session == nullptr) return Status(StatusCode::NOT_FOUND, "no such session");
  if (session->stream_context != nullptr) session->stream_context->TryCancel();
  DetachLocked(request->session().session_id());
  sessions_.erase(request->session().session_id());
  return Status::OK;
}

Status FakeSpilldImpl::RegisterObject(ServerContext*, const v1::RegisterObjectRequest* request,
                                      v1::RegisterObjectResponse* response) {
  std::lock_guard<std::mutex> lock(mu_);
  FakeSession* session = AuthLocked(request->session());
  if (session == nullptr) return Status(StatusCode::UNAUTHENTICATED, "bad session");
  size_t element = spill::DTypeSize(request->dtype());
  if (element == 0) return Status(StatusCode::INVALID_ARGUMENT, "invalid dtype");
  if (request->num_elements() <= 0) {
    return Status(StatusCode::INVALID_ARGUMENT, "num_elements must be positive");
  }
  for (const auto& [id, entry] : objects_) {
    if (entry.first == session->job && entry.second.name() == request->name()) {
      return Status(StatusCode::ALREADY_EXISTS, "object '" + request->name() + "' exists");
    }
  }
  uint64_t bytes = static_cast<uint64_t>(request->num_elements()) * element;
  uint64_t offset = (bump_ + options_.alignment - 1) / options_.alignment * options_.alignment;
  if (offset + bytes > options_.segment_bytes) {
    return Status(StatusCode::RESOURCE_EXHAUSTED, "fake segment is full");
  }
  bump_ = offset + bytes;
  v1::ObjectInfo& info = objects_[next_object_].second;
  objects_[next_object_].first = session->job;
  info.set_object_id(next_object_++);
  info.set_name(request->name());
  info.set_kind(request->kind());
  info.set_dtype(request->dtype());
  info.set_num_elements(static_cast<uint64_t>(request->num_elements()));
  info.mutable_location()->set_segment_id(kSegmentId);
  info.mutable_location()->set_offset(offset);
  info.mutable_location()->set_size_bytes(bytes);
  *response->mutable_object() = info;
  return Status::OK;
}

Status FakeSpilldImpl::FreeObject(ServerContext*, const v1::FreeObjectRequest* request,
                                  v1::FreeObjectResponse*) {
  std::lock_guard<std::mutex> lock(mu_);
  FakeSession* session = AuthLocked(request->session());
  if (session == nullptr) return Status(StatusCode::UNAUTHENTICATED, "bad session");
  auto it = objects_.find(request->object_id());
  if (it == objects_.end() || it->second.first != session->job) {
    return Status(StatusCode::NOT_FOUND, absl::StrCat("no object ", request->object_id()));
  }
  if (it->second.second.pin_count() > 0) return Status(StatusCode::FAILED_PRECONDITION, "pinned");
  objects_.erase(it);
  return Status::OK;
}

Status FakeSpilldImpl::ListObjects(ServerContext*, const v1::ListObjectsRequest* request,
                                   v1::ListObjectsResponse* response) {
  std::lock_guard<std::mutex> lock(mu_);
  FakeSession* session = AuthLocked(request->session());
  if (session == nullptr) return Status(StatusCode::UNAUTHENTICATED, "bad session");
  for (const auto& [id, entry] : objects_) {
    if (entry.first == session->job) *response->add_objects() = entry.second;
  }
  return Status::OK;
}

Status FakeSpilldImpl::Session(ServerContext* context, Stream* stream) {
  v1::StreamRequest request;
  if (!stream->Read(&request)) return Status(StatusCode::INVALID_ARGUMENT, "no attach");
  uint64_t session_id = request.attach().session().session_id();
  auto write_mu = std::make_shared<std::mutex>();
  v1::StreamEvent event;
  event.set_tag(request.tag());
  {
    std::lock_guard<std::mutex> lock(mu_);
    FakeSession* session = request.has_attach() ? AuthLocked(request.attach().session()) : nullptr;
    if (session == nullptr || session->attached) {
      event.set_code(static_cast<int>(StatusCode::PERMISSION_DENIED));
      event.set_message("attach refused: unknown session, bad token or already attached");
      stream->Write(event);
      return Status::OK;
    }
    session->attached = true;
    session->stream_context = context;
    session->stream = stream;
    session->write_mu = write_mu;
  }
  stream->Write(event);
  while (stream->Read(&request)) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (hold_) {
        held_.push_back({session_id, request});
        continue;
      }
    }
    v1::StreamEvent answer = Answer(session_id, request);
    std::lock_guard<std::mutex> lock(*write_mu);
    stream->Write(answer);
  }
  std::lock_guard<std::mutex> lock(mu_);
  DetachLocked(session_id);
  return Status::OK;
}

void FakeSpilldImpl::DetachLocked(uint64_t session_id) {
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) return;
  FakeSession& session = it->second;
  for (uint64_t object_id : session.pins) {
    auto object = objects_.find(object_id);
    if (object != objects_.end()) {
      object->second.second.set_pin_count(object->second.second.pin_count() - 1);
    }
  }
  session.pins.clear();
  session.attached = false;
  session.stream = nullptr;
  session.stream_context = nullptr;
  std::erase_if(held_, [&](const Held& h) { return h.session_id == session_id; });
}

v1::StreamEvent FakeSpilldImpl::Answer(uint64_t session_id, const v1::StreamRequest& request) {
  v1::StreamEvent event;
  event.set_tag(request.tag());
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) {
    event.set_code(static_cast<int>(StatusCode::FAILED_PRECONDITION));
    event.set_message("session is closed");
  } else if (!request.has_ping() && !AnswerPinOpLocked(it->second, request, &event)) {
    // AnswerPinOpLocked filled in the error.
  }
  return event;
}

bool FakeSpilldImpl::AnswerPinOpLocked(FakeSession& session, const v1::StreamRequest& request,
                                       v1::StreamEvent* event) {
  auto fail = [&](StatusCode code, std::string message) {
    event->set_code(static_cast<int>(code));
    event->set_message(std::move(message));
    return false;
  };
  uint64_t id = 0;
  switch (request.op_case()) {
    case v1::StreamRequest::kAcquire: id = request.acquire().object_id(); break;
    case v1::StreamRequest::kPrefetch: id = request.prefetch().object_id(); break;
    case v1::StreamRequest::kRelease: id = request.release().object_id(); break;
    case v1::StreamRequest::kWriteBack: id = request.write_back().object_id(); break;
    default: return fail(StatusCode::INVALID_ARGUMENT, "unexpected request");
  }
  auto object = objects_.find(id);
  if (object == objects_.end() || object->second.first != session.job) {
    return fail(StatusCode::NOT_FOUND, absl::StrCat("no object ", id));
  }
  v1::ObjectInfo& info = object->second.second;
  bool pinned = session.pins.count(id) > 0;
  if (request.has_acquire()) {
    session.pins.insert(id);
    info.set_pin_count(info.pin_count() + 1);
  } else if (request.has_release()) {
    if (!pinned) return fail(StatusCode::FAILED_PRECONDITION, absl::StrCat("object ", id, " is not pinned"));
    session.pins.erase(session.pins.find(id));
    info.set_pin_count(info.pin_count() - 1);
  } else if (request.has_write_back()) {
    if (!pinned) return fail(StatusCode::FAILED_PRECONDITION, absl::StrCat("object ", id, " is not pinned"));
    if (request.write_back().version() < info.version()) {
      return fail(StatusCode::INVALID_ARGUMENT, "version goes backwards");
    }
    info.set_version(request.write_back().version());
  }
  *event->mutable_object() = info;
  return true;
}

void FakeSpilldImpl::AnswerHeld(bool reverse) {
  std::vector<Held> held;
  {
    std::lock_guard<std::mutex> lock(mu_);
    held.swap(held_);
  }
  if (reverse) std::reverse(held.begin(), held.end());
  for (const Held& h : held) {
    v1::StreamEvent event = Answer(h.session_id, h.request);
    // mu_ keeps the stream alive (its handler detaches under mu_).
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sessions_.find(h.session_id);
    if (it == sessions_.end() || it->second.stream == nullptr) continue;
    std::lock_guard<std::mutex> write_lock(*it->second.write_mu);
    it->second.stream->Write(event);
  }
}

void FakeSpilldImpl::BreakStreams() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [id, session] : sessions_) {
    if (session.stream_context != nullptr) session.stream_context->TryCancel();
  }
}

int FakeSpilldImpl::attached_sessions() const {
  std::lock_guard<std::mutex> lock(mu_);
  int attached = 0;
  for (const auto& [id, session] : sessions_) attached += session.attached ? 1 : 0;
  return attached;
}

void FakeSpilldImpl::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    stopped_ = true;
    for (int fd : fd_channels_) ::shutdown(fd, SHUT_RDWR);
  }
  uint64_t one = 1;
  if (stop_event_.valid()) ::write(stop_event_.get(), &one, sizeof(one));
  if (acceptor_.joinable()) acceptor_.join();
  for (std::thread& t : connections_) t.join();
  if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
  listen_fd_.Reset();
  if (!socket_path_.empty()) ::unlink(socket_path_.c_str());
  if (!dir_.empty()) ::rmdir(dir_.c_str());
}

}  // namespace

absl::StatusOr<std::unique_ptr<FakeSpilld>> FakeSpilld::Start(FakeSpilldOptions options) {
  auto fake = std::make_unique<FakeSpilldImpl>(options);
  SPILL_RETURN_IF_ERROR(fake->Init());
  return std::unique_ptr<FakeSpilld>(std::move(fake));
}

}  // namespace spill::client::testing
