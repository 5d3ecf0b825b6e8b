#include "server/metrics_http.h"

#include <httplib.h>
#include <sys/socket.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace spill::server {
namespace {

constexpr size_t kHttpThreads = 2;

bool IsScrape(const std::string& method) { return method == "GET" || method == "HEAD"; }

}  // namespace

absl::StatusOr<HostPort> ParseHostPort(const std::string& address) {
  const std::string where = absl::StrCat("metrics address '", address, "'");
  size_t colon = address.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " has no port (expected HOST:PORT, e.g. 127.0.0.1:9400)"));
  }
  HostPort out;
  out.host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  if (!out.host.empty() && out.host.front() == '[') {
    if (out.host.size() < 3 || out.host.back() != ']') {
      return absl::InvalidArgumentError(absl::StrCat(where, ": unbalanced '[' in the host"));
    }
    out.host = out.host.substr(1, out.host.size() - 2);
  } else if (out.host.find(':') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": write an IPv6 host in brackets, e.g. [::1]:9400"));
  }
  if (out.host.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " has no host (use 0.0.0.0:PORT for every interface)"));
  }
  if (port.empty() || port.find_first_not_of("0123456789") != std::string::npos ||
      !absl::SimpleAtoi(port, &out.port) || out.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": port '", port, "' is not an integer in [0, 65535]"));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& address, const CollectorSet* collectors) {
  auto parsed = ParseHostPort(address);
  if (!parsed.ok()) return parsed.status();
  std::unique_ptr<MetricsHttpServer> s(new MetricsHttpServer());
  s->bound_ = *parsed;
  s->http_ = std::make_unique<httplib::Server>();
  httplib::Server& http = *s->http_;
  http.new_task_queue = [] { return new httplib::ThreadPool(kHttpThreads); };
  http.set_read_timeout(2, 0);
  http.set_write_timeout(5, 0);
  http.set_keep_alive_timeout(2);
  http.set_payload_max_length(64 << 10);
  // httplib's default also sets SO_REUSEPORT, which would let a second
  // spilld share the port silently; a busy port must be an error.
  http.set_socket_options([](int sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  http.set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
    if (req.path != "/metrics") {
      res.status = 404;
      res.set_content("not found: spilld serves only /metrics\n", "text/plain");
      return httplib::Server::HandlerResponse::Handled;
    }
    if (!IsScrape(req.method)) {
      res.status = 405;
      res.set_header("Allow", "GET, HEAD");
      res.set_content("method not allowed: use GET /metrics\n", "text/plain");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  http.Get("/metrics", [collectors](const httplib::Request&, httplib::Response& res) {
    res.set_content(collectors->Render(), kPrometheusContentType);
  });
  int port = s->bound_.port;
  bool bound = port == 0 ? (port = http.bind_to_any_port(s->bound_.host)) > 0
                         : http.bind_to_port(s->bound_.host, port);
  if (!bound) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen for metrics on ", address, " (address in use, not an address of this ",
        "host, or a port below 1024 without privilege)"));
  }
  s->port_ = port;
  s->thread_ = std::thread([raw = s->http_.get(), done = s->listen_returned_] {
    raw->listen_after_bind();
    done->store(true);
  });
  // httplib's stop() does nothing until the accept loop runs: wait for it,
  // so that a Stop() right after Start() cannot miss it.
  while (!http.is_running() && !s->listen_returned_->load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!http.is_running()) {
    s->thread_.join();
    return absl::InternalError(absl::StrCat("metrics server on ", address, " stopped at once"));
  }
  return s;
}

std::string MetricsHttpServer::address() const {
  const bool v6 = bound_.host.find(':') != std::string::npos;
  return v6 ? absl::StrCat("[", bound_.host, "]:", port_) : absl::StrCat(bound_.host, ":", port_);
}

void MetricsHttpServer::Stop() {
  if (http_ == nullptr) return;
  http_->stop();
  if (thread_.joinable()) thread_.join();
  http_.reset();
}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

}  // namespace spill::server
