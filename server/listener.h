// Listener: owns spilld's Unix socket and accepts every connection itself.
//
// For each connection it reads the peer's credentials (SO_PEERCRED), waits
// for the first bytes and routes it: an HTTP/2 client preface goes to gRPC
// (grpc::AddInsecureChannelFromFd) after the credentials are recorded under
// the peer name gRPC will report ("fd:N"); kFdMagic starts an fd channel
// (common/fd_protocol.h) served on a thread of its own; anything else, or
// silence past the handshake timeout, is closed.
#ifndef SPILL_SERVER_LISTENER_H_
#define SPILL_SERVER_LISTENER_H_

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/unique_fd.h"
#include "server/registry.h"

namespace grpc {
class Server;
}

namespace spill::server {

// Credentials of gRPC connections, by the peer string gRPC reports.
class PeerTable {
 public:
  void Set(const std::string& peer, const PeerCreds& creds);
  std::optional<PeerCreds> Get(const std::string& peer) const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, PeerCreds> peers_;
};

struct ListenerOptions {
  std::string socket_path;
  std::string socket_group;  // Empty: keep the process's group.
  std::chrono::milliseconds handshake_timeout{std::chrono::seconds(5)};
};

class Listener {
 public:
  // Creates the socket's directory (0750) when missing, removes a stale
  // socket file (refusing with AlreadyExists when a live spilld answers on
  // it), binds, sets the socket to 0660 (and its group), and listens.
  static absl::StatusOr<std::unique_ptr<Listener>> Create(const ListenerOptions& options,
                                                          Registry* registry, PeerTable* peers);
  ~Listener();

  // Starts accepting; gRPC connections are added to server.
  void Start(grpc::Server* server);
  // Stops accepting, closes connections still in handshake and every fd
  // channel, joins all threads, and removes the socket file. Idempotent.
  void Stop();

 private:
  Listener(ListenerOptions options, UniqueFd listen_fd, Registry* registry, PeerTable* peers);
  void AcceptLoop();
  void Route(int fd, const PeerCreds& creds);
  void ServeFdChannel(int fd, PeerCreds creds);
  void ReapFinishedChannels();

  const ListenerOptions options_;
  UniqueFd listen_fd_;
  UniqueFd wake_fd_;  // eventfd that interrupts the accept loop.
  Registry* const registry_;
  PeerTable* const peers_;
  grpc::Server* server_ = nullptr;
  std::thread accept_thread_;
  std::atomic<bool> stopping_{false};

  struct Channel {
    // Closed only after the thread is joined, so Stop() can shut it down to
    // unblock the thread without racing a reuse of the descriptor number.
    UniqueFd fd;
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::mutex channels_mu_;
  std::map<uint64_t, Channel> channels_;
  uint64_t next_channel_ = 0;
};

}  // namespace spill::server

#endif  // SPILL_SERVER_LISTENER_H_
