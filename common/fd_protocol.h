// The fd channel: how segment file descriptors reach a client.
//
// gRPC owns its connection's socket, so segments travel over a second
// connection to the same Unix socket. spilld tells the two apart by the first
// bytes a client sends: an HTTP/2 preface goes to gRPC, kFdMagic to the fd
// channel. On the fd channel the client sends one FdHello (its session id and
// token), reads an FdReplyHeader, then sends FdRequests; each gets an
// FdReplyHeader followed by message_len bytes of error text, with the
// segment's fd attached (SCM_RIGHTS) when code is 0. spilld hands a segment
// only to sessions of the job that owns it, over a connection from the same
// uid as the session's gRPC connection.
#ifndef SPILL_COMMON_FD_PROTOCOL_H_
#define SPILL_COMMON_FD_PROTOCOL_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/unique_fd.h"

namespace spill {

inline constexpr char kFdMagic[8] = {'S', 'P', 'I', 'L', 'L', 'F', 'D', '1'};
inline constexpr size_t kSessionTokenBytes = 16;
// Longest error text spilld sends on the fd channel.
inline constexpr uint32_t kFdMaxMessage = 1024;

struct FdHello {
  char magic[8];
  uint64_t session_id;
  uint8_t token[kSessionTokenBytes];
};

enum class FdOp : uint32_t { kGetSegment = 1 };

struct FdRequest {
  uint32_t op;
  uint32_t reserved;
  uint64_t segment_id;
};

enum FdSegmentFlags : uint32_t { kFdSegmentHugePages = 1 };

struct FdReplyHeader {
  int32_t code;  // absl::StatusCode
  uint32_t message_len;
  uint64_t segment_id;
  uint64_t size_bytes;
  uint32_t flags;
  uint32_t reserved;
};

// Writes all of len bytes (retrying EINTR and short writes); fd_to_send, when
// not -1, rides on the first byte as SCM_RIGHTS.
absl::Status SendAll(int sock, const void* buf, size_t len, int fd_to_send = -1);

// Reads exactly len bytes. When received_fd is given, an SCM_RIGHTS fd that
// arrives with the data is stored there (else closed). Unavailable on EOF.
absl::Status RecvAll(int sock, void* buf, size_t len, UniqueFd* received_fd = nullptr);

// Writes an FdReplyHeader for status (with its message, truncated to
// kFdMaxMessage) followed by the message bytes.
absl::Status SendFdError(int sock, const absl::Status& status);

}  // namespace spill

#endif  // SPILL_COMMON_FD_PROTOCOL_H_
