// FdChannel: a session's connection for receiving segment descriptors (the
// protocol is in common/fd_protocol.h).
//
// Thread-safe: requests are serialised on the one connection. After an I/O
// error the connection is dropped and the next request reconnects (with a
// fresh FdHello), so one lost exchange does not leave the channel out of step.
#ifndef SPILL_CLIENT_FD_CHANNEL_H_
#define SPILL_CLIENT_FD_CHANNEL_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/fd_protocol.h"
#include "common/unique_fd.h"

namespace spill::client::internal {

// A segment descriptor as spilld handed it over, not yet checked or mapped.
struct ReceivedSegment {
  uint64_t segment_id = 0;
  UniqueFd fd;
  uint64_t size_bytes = 0;
  uint32_t flags = 0;  // FdSegmentFlags.
};

class FdChannel {
 public:
  // Connects to socket_path and says hello for the session. token must be
  // kSessionTokenBytes long. Fails with the connection's error, or with the
  // code and text spilld answered the hello with.
  static absl::StatusOr<std::unique_ptr<FdChannel>> Connect(std::string socket_path,
                                                            uint64_t session_id,
                                                            std::string token,
                                                            std::chrono::milliseconds timeout);

  // Asks for segment_id. Returns its descriptor, size and flags; the error
  // spilld answered with (e.g. PermissionDenied, NotFound) with its text;
  // Internal when the reply breaks the protocol.
  absl::StatusOr<ReceivedSegment> GetSegment(uint64_t segment_id);

  // Closes the connection; later requests fail with FailedPrecondition.
  void Close();

 private:
  FdChannel(std::string socket_path, uint64_t session_id, std::string token,
            std::chrono::milliseconds timeout);
  absl::Status ConnectLocked();
  absl::StatusOr<ReceivedSegment> ExchangeLocked(uint64_t segment_id);
  absl::Status Decorate(const absl::Status& status) const;

  const std::string socket_path_;
  const uint64_t session_id_;
  const std::string token_;
  const std::chrono::milliseconds timeout_;
  std::mutex mu_;
  UniqueFd sock_;
  bool closed_ = false;
};

// Reads an FdReplyHeader and its message from sock; the attached descriptor,
// if any, goes to received_fd. Returns the reply's status (its code and
// message) in *reply_status and the header in *header; a non-OK return is an
// I/O or protocol error that leaves the connection unusable.
absl::Status ReadFdReply(int sock, spill::FdReplyHeader* header, UniqueFd* received_fd,
                         absl::Status* reply_status);

}  // namespace spill::client::internal

#endif  // SPILL_CLIENT_FD_CHANNEL_H_
