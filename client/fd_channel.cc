#include "client/fd_channel.h"

#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/unix_socket.h"
#include "common/fd_protocol.h"
#include "common/status_macros.h"

namespace spill::client::internal {

absl::Status ReadFdReply(int sock, FdReplyHeader* header, UniqueFd* received_fd,
                         absl::Status* reply_status) {
  SPILL_RETURN_IF_ERROR(RecvAll(sock, header, sizeof(*header), received_fd));
  if (header->message_len > kFdMaxMessage) {
    return absl::InternalError(absl::StrCat("fd channel reply announces a ", header->message_len,
                                            "-byte message (the limit is ", kFdMaxMessage, ")"));
  }
  std::string message(header->message_len, '\0');
  if (!message.empty()) SPILL_RETURN_IF_ERROR(RecvAll(sock, message.data(), message.size()));
  int code = header->code;
  if (code < 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::InternalError(absl::StrCat("fd channel reply has invalid status code ", code));
  }
  *reply_status = absl::Status(static_cast<absl::StatusCode>(code), message);
  return absl::OkStatus();
}

FdChannel::FdChannel(std::string socket_path, uint64_t session_id, std::string token,
                     std::chrono::milliseconds timeout)
    : socket_path_(std::move(socket_path)),
      session_id_(session_id),
      token_(std::move(token)),
      timeout_(timeout) {}

absl::StatusOr<std::unique_ptr<FdChannel>> FdChannel::Connect(std::string socket_path,
                                                              uint64_t session_id,
                                                              std::string token,
                                                              std::chrono::milliseconds timeout) {
  if (token.size() != kSessionTokenBytes) {
    return absl::InvalidArgumentError(absl::StrCat("session token is ", token.size(),
                                                   " bytes; expected ", kSessionTokenBytes));
  }
  std::unique_ptr<FdChannel> channel(
      new FdChannel(std::move(socket_path), session_id, std::move(token), timeout));
  std::lock_guard<std::mutex> lock(channel->mu_);
  SPILL_RETURN_IF_ERROR(channel->ConnectLocked());
  return channel;
}

absl::Status FdChannel::Decorate(const absl::Status& status) const {
  return absl::Status(status.code(), absl::StrCat("fd channel to spilld at ", socket_path_, ": ",
                                                  status.message()));
}

absl::Status FdChannel::ConnectLocked() {
  absl::StatusOr<UniqueFd> sock = ConnectUnixSocket(socket_path_, timeout_);
  if (!sock.ok()) return sock.status();
  FdHello hello{};
  std::memcpy(hello.magic, kFdMagic, sizeof(hello.magic));
  hello.session_id = session_id_;
  std::memcpy(hello.token, token_.data(), kSessionTokenBytes);
  absl::Status sent = SendAll(sock->get(), &hello, sizeof(hello));
  if (!sent.ok()) return Decorate(sent);
  FdReplyHeader header{};
  absl::Status reply;
  absl::Status read = ReadFdReply(sock->get(), &header, nullptr, &reply);
  if (!read.ok()) return Decorate(read);
  if (!reply.ok()) {
    return absl::Status(reply.code(), absl::StrCat("spilld refused the fd channel hello: ",
                                                   reply.message()));
  }
  sock_ = std::move(*sock);
  return absl::OkStatus();
}

absl::StatusOr<ReceivedSegment> FdChannel::GetSegment(uint64_t segment_id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return absl::FailedPreconditionError("fd channel is closed");
  if (!sock_.valid()) SPILL_RETURN_IF_ERROR(ConnectLocked());
  return ExchangeLocked(segment_id);
}

absl::StatusOr<ReceivedSegment> FdChannel::ExchangeLocked(uint64_t segment_id) {
  FdRequest request{};
  request.op = static_cast<uint32_t>(FdOp::kGetSegment);
  request.segment_id = segment_id;
  absl::Status io = SendAll(sock_.get(), &request, sizeof(request));
  FdReplyHeader header{};
  ReceivedSegment segment;
  absl::Status reply;
  if (io.ok()) io = ReadFdReply(sock_.get(), &header, &segment.fd, &reply);
  if (!io.ok()) {
    sock_.Reset();  // Out of step now; the next request reconnects.
    return Decorate(io);
  }
  if (!reply.ok()) {
    return absl::Status(reply.code(), absl::StrCat("segment ", segment_id, ": ", reply.message()));
  }
  if (!segment.fd.valid()) {
    return absl::InternalError(
        absl::StrCat("spilld answered OK for segment ", segment_id, " but sent no descriptor"));
  }
  if (header.segment_id != segment_id) {
    sock_.Reset();
    return absl::InternalError(absl::StrCat("asked for segment ", segment_id,
                                            ", spilld answered for segment ", header.segment_id));
  }
  segment.segment_id = segment_id;
  segment.size_bytes = header.size_bytes;
  segment.flags = header.flags;
  return segment;
}

void FdChannel::Close() {
  std::lock_guard<std::mutex> lock(mu_);
  closed_ = true;
  sock_.Reset();
}

}  // namespace spill::client::internal
