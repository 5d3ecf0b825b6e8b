#include "common/fd_protocol.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "common/memfd.h"
#include "gtest/gtest.h"

namespace spill {
namespace {

// The fd channel is a wire format between separately built binaries.
static_assert(sizeof(FdHello) == 32);
static_assert(sizeof(FdRequest) == 16);
static_assert(sizeof(FdReplyHeader) == 32);

struct SocketPair {
  SocketPair() {
    int sv[2] = {-1, -1};
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    a.Reset(sv[0]);
    b.Reset(sv[1]);
  }
  UniqueFd a;
  UniqueFd b;
};

int OpenFdCount() {
  int count = 0;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  while (::readdir(dir) != nullptr) ++count;
  ::closedir(dir);
  return count;
}

UniqueFd TestMemfd() {
  MemfdOptions options;
  options.name = "fd-protocol-test";
  options.size_bytes = 4096;
  absl::StatusOr<UniqueFd> fd = CreateSealedMemfd(options);
  EXPECT_TRUE(fd.ok()) << fd.status();
  return fd.ok() ? std::move(fd).value() : UniqueFd();
}

bool SameFile(int x, int y) {
  struct stat sx {}, sy {};
  return ::fstat(x, &sx) == 0 && ::fstat(y, &sy) == 0 && sx.st_dev == sy.st_dev &&
         sx.st_ino == sy.st_ino;
}

TEST(FdProtocolTest, LargeTransfersArriveWhole) {
  SocketPair s;
  // Larger than a socket buffer, so both sides see short transfers.
  std::vector<uint8_t> out(8 << 20);
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<uint8_t>(i * 131 + 7);
  absl::Status sent;
  std::thread sender([&] { sent = SendAll(s.a.get(), out.data(), out.size()); });
  std::vector<uint8_t> in(out.size());
  absl::Status got = RecvAll(s.b.get(), in.data(), in.size());
  sender.join();
  ASSERT_TRUE(sent.ok()) << sent;
  ASSERT_TRUE(got.ok()) << got;
  EXPECT_EQ(in, out);
}

TEST(FdProtocolTest, PassedFdRefersToTheSameMemfd) {
  SocketPair s;
  UniqueFd memfd = TestMemfd();
  ASSERT_TRUE(memfd.valid());
  FdReplyHeader header{};
  header.segment_id = 42;
  header.size_bytes = 4096;
  ASSERT_TRUE(SendAll(s.a.get(), &header, sizeof(header), memfd.get()).ok());

  FdReplyHeader received_header{};
  UniqueFd received;
  ASSERT_TRUE(RecvAll(s.b.get(), &received_header, sizeof(received_header), &received).ok());
  EXPECT_EQ(received_header.segment_id, 42u);
  ASSERT_TRUE(received.valid());
  EXPECT_NE(received.get(), memfd.get());
  EXPECT_TRUE(SameFile(received.get(), memfd.get()));
  EXPECT_NE(::fcntl(received.get(), F_GETFD) & FD_CLOEXEC, 0);
  EXPECT_TRUE(CheckReceivedSegment(received.get(), 4096).ok());
  // Bytes written through one fd are read through the other.
  ASSERT_EQ(::pwrite(received.get(), "zero-copy", 9, 100), 9);
  char buf[9] = {};
  ASSERT_EQ(::pread(memfd.get(), buf, sizeof(buf), 100), 9);
  EXPECT_EQ(std::string(buf, 9), "zero-copy");
}

TEST(FdProtocolTest, FdRidesOnTheFirstByteAcrossSplitReads) {
  SocketPair s;
  UniqueFd memfd = TestMemfd();
  const char msg[8] = {'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'};
  ASSERT_TRUE(SendAll(s.a.get(), msg, sizeof(msg), memfd.get()).ok());
  char part[4];
  UniqueFd first, second;
  ASSERT_TRUE(RecvAll(s.b.get(), part, 4, &first).ok());
  EXPECT_EQ(std::string(part, 4), "abcd");
  ASSERT_TRUE(RecvAll(s.b.get(), part, 4, &second).ok());
  EXPECT_EQ(std::string(part, 4), "efgh");
  EXPECT_TRUE(first.valid());
  EXPECT_FALSE(second.valid());
  EXPECT_TRUE(SameFile(first.get(), memfd.get()));
}

TEST(FdProtocolTest, UnwantedAndExtraFdsAreClosed) {
  SocketPair s;
  UniqueFd memfd = TestMemfd();
  const int before = OpenFdCount();
  // Not asked for: closed on arrival.
  uint32_t word = 7;
  ASSERT_TRUE(SendAll(s.a.get(), &word, sizeof(word), memfd.get()).ok());
  ASSERT_TRUE(RecvAll(s.b.get(), &word, sizeof(word), nullptr).ok());
  EXPECT_EQ(OpenFdCount(), before);

  // Two fds in one message: the first is kept, the second closed.
  int fds[2] = {memfd.get(), memfd.get()};
  iovec iov{&word, sizeof(word)};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(fds))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* cm = CMSG_FIRSTHDR(&msg);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(fds));
  std::memcpy(CMSG_DATA(cm), fds, sizeof(fds));
  ASSERT_EQ(::sendmsg(s.a.get(), &msg, 0), static_cast<ssize_t>(sizeof(word)));
  UniqueFd kept;
  ASSERT_TRUE(RecvAll(s.b.get(), &word, sizeof(word), &kept).ok());
  EXPECT_TRUE(kept.valid());
  EXPECT_EQ(OpenFdCount(), before + 1);
}

TEST(FdProtocolTest, EofIsUnavailable) {
  {
    SocketPair s;
    s.a.Reset();
    uint64_t x;
    EXPECT_EQ(RecvAll(s.b.get(), &x, sizeof(x)).code(), absl::StatusCode::kUnavailable);
  }
  {
    SocketPair s;  // EOF after part of a message.
    ASSERT_TRUE(SendAll(s.a.get(), "abc", 3).ok());
    s.a.Reset();
    uint64_t x;
    EXPECT_EQ(RecvAll(s.b.get(), &x, sizeof(x)).code(), absl::StatusCode::kUnavailable);
  }
}

TEST(FdProtocolTest, SendToAClosedPeerFailsWithoutSigpipe) {
  SocketPair s;
  s.b.Reset();
  absl::Status status = SendAll(s.a.get(), "x", 1);
  EXPECT_FALSE(status.ok());  // EPIPE as a status; SIGPIPE would have killed the test.
}

TEST(FdProtocolTest, BadSocketIsAnError) {
  uint32_t word = 0;
  EXPECT_FALSE(SendAll(-1, &word, sizeof(word)).ok());
  EXPECT_FALSE(RecvAll(-1, &word, sizeof(word)).ok());
}

// Reads one error reply and checks nothing follows it.
void ExpectErrorReply(int sock, absl::StatusCode code, const std::string& text) {
  FdReplyHeader header{};
  UniqueFd fd;
  ASSERT_TRUE(RecvAll(sock, &header, sizeof(header), &fd).ok());
  EXPECT_EQ(header.code, static_cast<int32_t>(code));
  EXPECT_EQ(header.message_len, text.size());
  EXPECT_EQ(header.segment_id, 0u);
  EXPECT_EQ(header.size_bytes, 0u);
  EXPECT_EQ(header.flags, 0u);
  EXPECT_FALSE(fd.valid()) << "an error reply carries no fd";
  std::string message(header.message_len, '\0');
  if (!message.empty()) {
    ASSERT_TRUE(RecvAll(sock, message.data(), message.size()).ok());
  }
  EXPECT_EQ(message, text);
  char extra;
  EXPECT_EQ(::recv(sock, &extra, 1, MSG_DONTWAIT), -1);
  EXPECT_EQ(errno, EAGAIN);
}

TEST(FdProtocolTest, SendFdErrorFraming) {
  SocketPair s;
  ASSERT_TRUE(SendFdError(s.a.get(), absl::PermissionDeniedError("not your segment")).ok());
  ExpectErrorReply(s.b.get(), absl::StatusCode::kPermissionDenied, "not your segment");

  ASSERT_TRUE(SendFdError(s.a.get(), absl::NotFoundError("")).ok());
  ExpectErrorReply(s.b.get(), absl::StatusCode::kNotFound, "");

  const std::string long_text(3 * kFdMaxMessage, 'x');
  ASSERT_TRUE(SendFdError(s.a.get(), absl::InternalError(long_text)).ok());
  ExpectErrorReply(s.b.get(), absl::StatusCode::kInternal, long_text.substr(0, kFdMaxMessage));
}

}  // namespace
}  // namespace spill
