// FakeSpilld: an in-process stand-in for spilld, for the client's unit tests.
//
// It speaks the real wire protocol on a temporary Unix socket: gRPC (the
// Worker service) and the fd channel, told apart by their first bytes as
// spilld does. Objects live in one sealed memfd segment handed out over the
// fd channel; allocation is a bump pointer; there is no NVMe tier, quota or
// per-job segment isolation. Fault switches let tests hold answers back,
// answer them out of order, break every stream (a daemon that died), or
// hand out a segment that is not sealed.
//
// Thread-safe.
#ifndef SPILL_CLIENT_TESTING_FAKE_SPILLD_H_
#define SPILL_CLIENT_TESTING_FAKE_SPILLD_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace spill::client::testing {

struct FakeSpilldOptions {
  uint64_t segment_bytes = 1 << 20;
  uint64_t alignment = 256;
};

class FakeSpilld {
 public:
  // The one segment's id (deliberately not 0 or 1).
  static constexpr uint64_t kSegmentId = 7;

  // Listens on a fresh socket in a new temporary directory.
  static absl::StatusOr<std::unique_ptr<FakeSpilld>> Start(FakeSpilldOptions options = {});
  virtual ~FakeSpilld() = default;

  virtual const std::string& socket_path() const = 0;
  // The fake's own mapping of the segment, to check what clients wrote.
  virtual uint8_t* segment_data() const = 0;

  // While on, stream requests after the attach are kept unanswered.
  virtual void HoldAnswers(bool hold) = 0;
  // Answers every held request, last received first when reverse.
  virtual void AnswerHeld(bool reverse) = 0;
  virtual size_t held() const = 0;
  // Ends every open session stream with UNAVAILABLE, as a dying daemon would.
  virtual void BreakStreams() = 0;
  // Hands out an unsealed memfd instead of the segment from now on.
  virtual void SendUnsealedSegments(bool on) = 0;
  // Fd-channel segment requests served so far.
  virtual int segment_requests() const = 0;
  // Sessions whose stream is attached right now.
  virtual int attached_sessions() const = 0;
  // CloseSession calls received.
  virtual int close_calls() const = 0;

  // Stops serving (every connection ends) and removes the socket.
  virtual void Stop() = 0;
};

}  // namespace spill::client::testing

#endif  // SPILL_CLIENT_TESTING_FAKE_SPILLD_H_
