#include "bench/grpc_echo.h"

#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include <grpcpp/create_channel.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/sync_stream.h>
#include <grpcpp/support/byte_buffer.h>

#include "common/status_macros.h"
#include "tests/integration/spilld_process.h"

namespace spill::bench {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kMethod[] = "/spill.bench.Echo/Echo";

// Echoes every message of every stream back, from gRPC's callback threads:
// the threading spilld's session streams run on with inline dispatch.
class EchoService final : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext*) override {
    class Reactor final : public grpc::ServerGenericBidiReactor {
     public:
      Reactor() { StartRead(&buffer_); }
      void OnReadDone(bool ok) override {
        if (!ok) {
          Finish(grpc::Status::OK);
          return;
        }
        StartWrite(&buffer_);
      }
      void OnWriteDone(bool ok) override {
        if (!ok) {
          Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "write failed"));
          return;
        }
        StartRead(&buffer_);
      }
      void OnDone() override { delete this; }

     private:
      grpc::ByteBuffer buffer_;
    };
    return new Reactor;
  }
};

// Waits for `tag` on `cq`, which has nothing else outstanding.
bool Await(grpc::CompletionQueue* cq, void* tag) {
  void* got = nullptr;
  bool ok = false;
  return cq->Next(&got, &ok) && ok && got == tag;
}

}  // namespace

int RunEchoServer(const std::string& socket_path) {
  prctl(PR_SET_PDEATHSIG, SIGTERM);  // Goes with control_rtt, however it ends.
  EchoService service;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + socket_path, grpc::InsecureServerCredentials());
  builder.RegisterCallbackGenericService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    std::fprintf(stderr, "grpc echo server: cannot listen on %s\n", socket_path.c_str());
    return 1;
  }
  std::printf("ready\n");
  std::fflush(stdout);
  for (;;) ::pause();  // Until SIGTERM.
}

absl::StatusOr<EchoServerProcess> EchoServerProcess::Start(const std::string& self,
                                                           const std::string& socket_path) {
  SPILL_ASSIGN_OR_RETURN(testing::SpawnResult child,
                         testing::Spawn({self, "--echo-server=" + socket_path}));
  EchoServerProcess p;
  p.pid_ = child.pid;
  p.output_fd_ = child.stdout_fd;  // Open until the server stops: it may still log.
  std::string line;
  char c;
  while (line.size() < 6 && ::read(p.output_fd_, &c, 1) == 1) line += c;
  if (line != "ready\n") {
    return absl::UnavailableError("the gRPC echo server on " + socket_path +
                                  " did not start: " + line);
  }
  return p;
}

EchoServerProcess::EchoServerProcess(EchoServerProcess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)), output_fd_(std::exchange(other.output_fd_, -1)) {}

EchoServerProcess::~EchoServerProcess() {
  if (pid_ > 0) {
    ::kill(pid_, SIGTERM);
    testing::WaitExit(pid_);
  }
  if (output_fd_ >= 0) ::close(output_fd_);
}

namespace {

// Times round_trip() back to back from start until end; latencies in µs.
template <typename RoundTrip>
std::vector<double> TimeRoundTrips(Clock::time_point start, Clock::time_point end,
                                   int* failures, RoundTrip round_trip) {
  std::vector<double> lat;
  if (!round_trip()) {  // Warms the stream up.
    ++*failures;
    return lat;
  }
  lat.reserve(1 << 20);
  std::this_thread::sleep_until(start);
  while (Clock::now() < end) {
    const auto t0 = Clock::now();
    if (!round_trip()) {
      ++*failures;
      break;
    }
    lat.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  return lat;
}

std::shared_ptr<grpc::Channel> EchoChannel(const std::string& socket_path) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // A connection of its own.
  return grpc::CreateCustomChannel("unix:" + socket_path, grpc::InsecureChannelCredentials(),
                                   args);
}

grpc::ByteBuffer Message(const std::string& payload) {
  grpc::Slice slice(payload);
  return grpc::ByteBuffer(&slice, 1);
}

// One thread writes, reads and polls its own completion queue.
std::vector<double> AsyncOneThread(const std::string& socket_path, size_t message_bytes,
                                   Clock::time_point start, Clock::time_point end,
                                   int* failures) {
  auto channel = EchoChannel(socket_path);
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  grpc::CompletionQueue cq;
  std::vector<double> lat;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call =
      stub.PrepareCall(&context, kMethod, &cq);
  int tag = 0;
  call->StartCall(&tag);
  if (!Await(&cq, &tag)) {
    ++*failures;
    return lat;
  }
  const std::string payload(message_bytes, 'x');
  lat = TimeRoundTrips(start, end, failures, [&] {
    grpc::ByteBuffer in;
    call->Write(Message(payload), &tag);
    if (!Await(&cq, &tag)) return false;
    call->Read(&in, &tag);
    return Await(&cq, &tag);
  });
  call->WritesDone(&tag);
  Await(&cq, &tag);
  grpc::Status status;
  call->Finish(&status, &tag);
  Await(&cq, &tag);
  cq.Shutdown();
  void* ignored_tag;
  bool ignored_ok;
  while (cq.Next(&ignored_tag, &ignored_ok)) {
  }
  return lat;
}

// Spill's client structure: the caller writes on a synchronous stream and
// sleeps; a reader thread reads the answers and wakes it.
std::vector<double> SyncReaderThread(const std::string& socket_path, size_t message_bytes,
                                     Clock::time_point start, Clock::time_point end,
                                     int* failures) {
  auto channel = EchoChannel(socket_path);
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          channel.get(),
          grpc::internal::RpcMethod(kMethod, grpc::internal::RpcMethod::BIDI_STREAMING),
          &context));
  std::mutex mu;
  std::condition_variable answered;
  uint64_t answers = 0;  // Guarded by mu.
  bool ended = false;    // Guarded by mu.
  std::thread reader([&] {
    grpc::ByteBuffer in;
    while (stream->Read(&in)) {
      std::lock_guard<std::mutex> lock(mu);
      ++answers;
      answered.notify_all();
    }
    std::lock_guard<std::mutex> lock(mu);
    ended = true;
    answered.notify_all();
  });
  const std::string payload(message_bytes, 'x');
  uint64_t sent = 0;
  std::vector<double> lat = TimeRoundTrips(start, end, failures, [&] {
    if (!stream->Write(Message(payload))) return false;
    ++sent;
    std::unique_lock<std::mutex> lock(mu);
    answered.wait(lock, [&] { return answers >= sent || ended; });
    return answers >= sent;
  });
  stream->WritesDone();
  reader.join();
  (void)stream->Finish();
  return lat;
}

}  // namespace

const char* EchoClientName(EchoClient client) {
  return client == EchoClient::kAsyncOneThread ? "grpc_echo" : "grpc_echo_reader_thread";
}

std::vector<double> EchoPingLoop(EchoClient client, const std::string& socket_path,
                                 size_t message_bytes, Clock::time_point start,
                                 Clock::time_point end, int* failures) {
  return client == EchoClient::kAsyncOneThread
             ? AsyncOneThread(socket_path, message_bytes, start, end, failures)
             : SyncReaderThread(socket_path, message_bytes, start, end, failures);
}

}  // namespace spill::bench

