#include "server/listener.h"

#include <fcntl.h>
#include <grp.h>
#include <grpcpp/server.h>
#include <grpcpp/server_posix.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/fd_protocol.h"
#include "common/status_macros.h"

namespace spill::server {
namespace {

absl::StatusOr<sockaddr_un> SocketAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path '", path, "' is ", path.size(),
                                                   " bytes; Unix sockets allow at most ",
                                                   sizeof(addr.sun_path) - 1));
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

// Creates the socket's directory with mode 0750 when it does not exist.
absl::Status PrepareDirectory(const std::string& path) {
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (dir.empty()) return absl::OkStatus();
  std::error_code ec;
  if (std::filesystem::exists(dir, ec)) return absl::OkStatus();
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create socket directory '", dir.string(), "': ", ec.message()));
  }
  if (::chmod(dir.c_str(), 0750) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("chmod 0750 '", dir.string(), "'"));
  }
  return absl::OkStatus();
}

// Removes a socket file left by a dead spilld; refuses when one still answers.
absl::Status RemoveStaleSocket(const std::string& path, const sockaddr_un& addr) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return absl::OkStatus();
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("'", path, "' exists and is not a socket; refusing to replace it"));
  }
  UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!probe.valid()) return absl::ErrnoToStatus(errno, "socket(AF_UNIX)");
  if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) {
    return absl::AlreadyExistsError(
        absl::StrCat("another spilld is already listening on '", path, "'"));
  }
  if (::unlink(path.c_str()) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("removing stale socket '", path, "'"));
  }
  return absl::OkStatus();
}

absl::Status SetSocketGroup(const std::string& path, const std::string& group) {
  if (group.empty()) return absl::OkStatus();
  struct group* gr = ::getgrnam(group.c_str());
  if (gr == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("--socket-group: no group named '", group, "'"));
  }
  if (::chown(path.c_str(), static_cast<uid_t>(-1), gr->gr_gid) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("chown ':", group, "' '", path, "'"));
  }
  return absl::OkStatus();
}

absl::StatusOr<PeerCreds> ReadPeerCreds(int fd) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return absl::ErrnoToStatus(errno, "getsockopt(SO_PEERCRED)");
  }
  return PeerCreds{cred.pid, cred.uid, cred.gid};
}

void SetTimeout(int fd, int option, std::chrono::milliseconds timeout) {
  timeval tv{};
  tv.tv_sec = timeout.count() / 1000;
  tv.tv_usec = (timeout.count() % 1000) * 1000;
  ::setsockopt(fd, SOL_SOCKET, option, &tv, sizeof(tv));
}

}  // namespace

void PeerTable::Set(const std::string& peer, const PeerCreds& creds) {
  std::lock_guard<std::mutex> lock(mu_);
  peers_[peer] = creds;
}

std::optional<PeerCreds> PeerTable::Get(const std::string& peer) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = peers_.find(peer);
  if (it == peers_.end()) return std::nullopt;
  return it->second;
}

absl::StatusOr<std::unique_ptr<Listener>> Listener::Create(const ListenerOptions& options,
                                                           Registry* registry,
                                                           PeerTable* peers) {
  SPILL_ASSIGN_OR_RETURN(sockaddr_un addr, SocketAddress(options.socket_path));
  SPILL_RETURN_IF_ERROR(PrepareDirectory(options.socket_path));
  SPILL_RETURN_IF_ERROR(RemoveStaleSocket(options.socket_path, addr));
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, "socket(AF_UNIX)");
  // The umask closes the window between bind() and chmod(); spilld is still
  // single-threaded here.
  mode_t old_umask = ::umask(0117);
  int rc = ::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  int bind_errno = errno;
  ::umask(old_umask);
  if (rc != 0) {
    return absl::ErrnoToStatus(bind_errno, absl::StrCat("bind '", options.socket_path, "'"));
  }
  if (::chmod(options.socket_path.c_str(), 0660) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("chmod 0660 '", options.socket_path, "'"));
  }
  SPILL_RETURN_IF_ERROR(SetSocketGroup(options.socket_path, options.socket_group));
  if (::listen(fd.get(), 128) != 0) return absl::ErrnoToStatus(errno, "listen");
  return std::unique_ptr<Listener>(new Listener(options, std::move(fd), registry, peers));
}

Listener::Listener(ListenerOptions options, UniqueFd listen_fd, Registry* registry,
                   PeerTable* peers)
    : options_(std::move(options)),
      listen_fd_(std::move(listen_fd)),
      wake_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
      registry_(registry),
      peers_(peers) {}

Listener::~Listener() { Stop(); }

void Listener::Start(grpc::Server* server) {
  server_ = server;
  accept_thread_ = std::thread([this] { AcceptLoop(); });
}

void Listener::AcceptLoop() {
  UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = listen_fd_.get();
  ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, listen_fd_.get(), &ev);
  ev.data.fd = wake_fd_.get();
  ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, wake_fd_.get(), &ev);

  struct Pending {
    PeerCreds creds;
    std::chrono::steady_clock::time_point deadline;
  };
  std::map<int, Pending> pending;
  while (!stopping_.load()) {
    epoll_event events[32];
    int n = ::epoll_wait(ep.get(), events, 32, 250);
    for (int i = 0; i < n; ++i) {
      int fd = events[i].data.fd;
      if (fd == wake_fd_.get()) continue;
      if (fd == listen_fd_.get()) {
        for (;;) {
          int conn = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
          if (conn < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
              // Out of descriptors: the pending connection stays readable,
              // so back off instead of spinning on it.
              std::this_thread::sleep_for(std::chrono::milliseconds(50));
            }
            break;
          }
          auto creds = ReadPeerCreds(conn);
          if (!creds.ok()) {
            ::close(conn);
            continue;
          }
          epoll_event cev{};
          cev.events = EPOLLIN | EPOLLRDHUP;
          cev.data.fd = conn;
          ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, conn, &cev);
          pending[conn] = {*creds, std::chrono::steady_clock::now() + options_.handshake_timeout};
        }
        continue;
      }
      auto it = pending.find(fd);
      if (it == pending.end()) continue;
      PeerCreds creds = it->second.creds;
      pending.erase(it);
      ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, fd, nullptr);
      Route(fd, creds);
    }
    const auto now = std::chrono::steady_clock::now();
    for (auto it = pending.begin(); it != pending.end();) {
      if (now >= it->second.deadline) {
        ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, it->first, nullptr);
        ::close(it->first);
        it = pending.erase(it);
      } else {
        ++it;
      }
    }
    ReapFinishedChannels();
  }
  for (const auto& [fd, p] : pending) ::close(fd);
}

void Listener::Route(int fd, const PeerCreds& creds) {
  char first = 0;
  ssize_t n = ::recv(fd, &first, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 1 && first == 'P') {
    // "PRI * HTTP/2.0": gRPC validates the rest of the preface itself.
    int flags = ::fcntl(fd, F_GETFL);
    ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    peers_->Set(absl::StrCat("fd:", fd), creds);
    grpc::AddInsecureChannelFromFd(server_, fd);
    return;
  }
  if (n == 1 && first == kFdMagic[0]) {
    auto done = std::make_shared<std::atomic<bool>>(false);
    std::lock_guard<std::mutex> lock(channels_mu_);
    Channel& channel = channels_[next_channel_++];
    channel.fd.Reset(fd);
    channel.done = done;
    channel.thread = std::thread([this, fd, creds, done] {
      ServeFdChannel(fd, creds);
      done->store(true);
    });
    return;
  }
  ::close(fd);  // Unknown protocol, or the peer left before speaking.
}

void Listener::ServeFdChannel(int fd, PeerCreds creds) {
  SetTimeout(fd, SO_RCVTIMEO, options_.handshake_timeout);
  SetTimeout(fd, SO_SNDTIMEO, options_.handshake_timeout);
  FdHello hello{};
  if (!RecvAll(fd, &hello, sizeof(hello)).ok()) return;
  if (std::memcmp(hello.magic, kFdMagic, sizeof(kFdMagic)) != 0) return;
  Token token{};
  std::memcpy(token.data(), hello.token, token.size());
  absl::Status auth = registry_->Authenticate(hello.session_id, token);
  if (!auth.ok()) {
    (void)SendFdError(fd, auth);
    return;
  }
  if (!SendFdError(fd, absl::OkStatus()).ok()) return;
  SetTimeout(fd, SO_RCVTIMEO, std::chrono::milliseconds(0));  // Idle is fine now.
  for (;;) {
    FdRequest request{};
    if (!RecvAll(fd, &request, sizeof(request)).ok()) return;
    if (request.op != static_cast<uint32_t>(FdOp::kGetSegment)) {
      (void)SendFdError(fd, absl::InvalidArgumentError(
                                      absl::StrCat("unknown fd channel op ", request.op)));
      return;
    }
    auto segment =
        registry_->SegmentForSession(hello.session_id, token, creds.uid, request.segment_id);
    if (!segment.ok()) {
      if (!SendFdError(fd, segment.status()).ok()) return;
      continue;
    }
    FdReplyHeader reply{};
    reply.segment_id = segment->segment_id;
    reply.size_bytes = segment->size_bytes;
    reply.flags = segment->huge_pages ? kFdSegmentHugePages : 0;
    if (!SendAll(fd, &reply, sizeof(reply), segment->fd.get()).ok()) return;
  }
}

void Listener::ReapFinishedChannels() {
  std::lock_guard<std::mutex> lock(channels_mu_);
  for (auto it = channels_.begin(); it != channels_.end();) {
    if (it->second.done->load()) {
      it->second.thread.join();
      it = channels_.erase(it);
    } else {
      ++it;
    }
  }
}

void Listener::Stop() {
  if (stopping_.exchange(true)) return;
  uint64_t one = 1;
  (void)!::write(wake_fd_.get(), &one, sizeof(one));
  if (accept_thread_.joinable()) accept_thread_.join();
  listen_fd_.Reset();
  ::unlink(options_.socket_path.c_str());
  std::map<uint64_t, Channel> channels;
  {
    std::lock_guard<std::mutex> lock(channels_mu_);
    channels.swap(channels_);
  }
  for (auto& [id, channel] : channels) ::shutdown(channel.fd.get(), SHUT_RDWR);
  for (auto& [id, channel] : channels) channel.thread.join();
}

}  // namespace spill::server
