#include "client/fd_channel.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <thread>

#include "absl/strings/match.h"
#include "common/fd_protocol.h"
#include "common/memfd.h"

namespace spill::client::internal {
namespace {

constexpr uint64_t kSessionId = 42;
const std::string kToken(kSessionTokenBytes, 't');

// A scripted fd-channel peer: accepts connections one at a time on a temp
// socket and runs `serve` on each.
class ScriptedPeer {
 public:
  explicit ScriptedPeer(std::function<void(int)> serve) : serve_(std::move(serve)) {
    path_ = ::testing::TempDir() + "fd_channel_" + std::to_string(::getpid()) + ".sock";
    ::unlink(path_.c_str());
    listen_.Reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path_.c_str());
    EXPECT_EQ(::bind(listen_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(::listen(listen_.get(), 8), 0);
    thread_ = std::thread([this] {
      while (true) {
        UniqueFd conn(::accept(listen_.get(), nullptr, nullptr));
        if (!conn.valid() || stop_) return;
        connections_++;
        serve_(conn.get());
      }
    });
  }
  ~ScriptedPeer() {
    stop_ = true;
    ::shutdown(listen_.get(), SHUT_RDWR);
    thread_.join();
    ::unlink(path_.c_str());
  }
  const std::string& path() const { return path_; }
  int connections() const { return connections_; }

 private:
  std::function<void(int)> serve_;
  std::string path_;
  UniqueFd listen_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
};

// Reads the hello and checks it; answers OK when it matches.
bool AcceptHello(int sock) {
  FdHello hello{};
  if (!RecvAll(sock, &hello, sizeof(hello)).ok()) return false;
  bool ok = std::memcmp(hello.magic, kFdMagic, sizeof(kFdMagic)) == 0 &&
            hello.session_id == kSessionId &&
            std::memcmp(hello.token, kToken.data(), kSessionTokenBytes) == 0;
  if (!ok) {
    SendFdError(sock, absl::PermissionDeniedError("bad token")).IgnoreError();
    return false;
  }
  FdReplyHeader header{};
  return SendAll(sock, &header, sizeof(header)).ok();
}

// Answers segment requests: 7 gets a sealed memfd, 8 gets OK without an fd,
// anything else NotFound; stops after `limit` requests.
void ServeSegments(int sock, int limit) {
  static UniqueFd segment = std::move(CreateSealedMemfd({"seg", 4096, false}).value());
  FdRequest request{};
  for (int i = 0; i < limit && RecvAll(sock, &request, sizeof(request)).ok(); ++i) {
    if (request.segment_id == 7 || request.segment_id == 8) {
      FdReplyHeader header{};
      header.segment_id = request.segment_id;
      header.size_bytes = 4096;
      header.flags = kFdSegmentHugePages;
      SendAll(sock, &header, sizeof(header), request.segment_id == 7 ? segment.get() : -1)
          .IgnoreError();
    } else {
      SendFdError(sock, absl::NotFoundError("no segment " + std::to_string(request.segment_id)))
          .IgnoreError();
    }
  }
}

constexpr std::chrono::milliseconds kTimeout(5000);

TEST(FdChannelTest, ReceivesASegmentAndKeepsGoingAfterAnErrorReply) {
  ScriptedPeer peer([](int sock) {
    if (AcceptHello(sock)) ServeSegments(sock, 100);
  });
  auto channel = FdChannel::Connect(peer.path(), kSessionId, kToken, kTimeout);
  ASSERT_TRUE(channel.ok()) << channel.status();
  absl::StatusOr<ReceivedSegment> missing = (*channel)->GetSegment(99);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(missing.status().message(), "no segment 99"));
  absl::StatusOr<ReceivedSegment> segment = (*channel)->GetSegment(7);
  ASSERT_TRUE(segment.ok()) << segment.status();
  EXPECT_TRUE(segment->fd.valid());
  EXPECT_EQ(segment->size_bytes, 4096u);
  EXPECT_EQ(segment->flags, kFdSegmentHugePages);
  EXPECT_TRUE(CheckReceivedSegment(segment->fd.get(), 4096).ok());
  EXPECT_EQ(peer.connections(), 1);
}

TEST(FdChannelTest, HelloRefusalCarriesSpilldsCodeAndText) {
  ScriptedPeer peer([](int sock) { AcceptHello(sock); });
  std::string wrong_token(kSessionTokenBytes, 'x');
  auto channel = FdChannel::Connect(peer.path(), kSessionId, wrong_token, kTimeout);
  EXPECT_EQ(channel.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(channel.status().message(), "bad token")) << channel.status();
}

TEST(FdChannelTest, OkWithoutADescriptorIsAProtocolError) {
  ScriptedPeer peer([](int sock) {
    if (AcceptHello(sock)) ServeSegments(sock, 100);
  });
  auto channel = FdChannel::Connect(peer.path(), kSessionId, kToken, kTimeout);
  ASSERT_TRUE(channel.ok());
  EXPECT_EQ((*channel)->GetSegment(8).status().code(), absl::StatusCode::kInternal);
}

TEST(FdChannelTest, ReconnectsAfterTheConnectionDrops) {
  // The first connection serves one request and hangs up.
  ScriptedPeer peer([](int sock) {
    if (AcceptHello(sock)) ServeSegments(sock, 1);
  });
  auto channel = FdChannel::Connect(peer.path(), kSessionId, kToken, kTimeout);
  ASSERT_TRUE(channel.ok());
  ASSERT_TRUE((*channel)->GetSegment(7).ok());
  EXPECT_FALSE((*channel)->GetSegment(7).ok()) << "the peer hung up";
  absl::StatusOr<ReceivedSegment> again = (*channel)->GetSegment(7);
  EXPECT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(peer.connections(), 2);
}

TEST(FdChannelTest, RejectsABadTokenLengthAndUseAfterClose) {
  EXPECT_EQ(FdChannel::Connect("/nonexistent", 1, "short", kTimeout).status().code(),
            absl::StatusCode::kInvalidArgument);
  ScriptedPeer peer([](int sock) {
    if (AcceptHello(sock)) ServeSegments(sock, 100);
  });
  auto channel = FdChannel::Connect(peer.path(), kSessionId, kToken, kTimeout);
  ASSERT_TRUE(channel.ok());
  (*channel)->Close();
  EXPECT_EQ((*channel)->GetSegment(7).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace spill::client::internal
