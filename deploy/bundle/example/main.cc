// An example client of an installed Spill bundle (find_package(Spill),
// Spill::client): offloads one fp32 tensor into spilld's pinned tier, fetches
// it back in a second acquire and checks every element.
//
//   spill_example [--socket=PATH]   (default: $SPILL_SOCKET, else
//                                    /run/spill/spilld.sock)
// Exit status 0 when every element came back, 1 otherwise.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "spill/client.h"

namespace {

using spill::client::DType;
using spill::client::ObjectInfo;
using spill::client::ObjectKind;
using spill::client::Session;

constexpr std::chrono::seconds kTimeout(30);
constexpr int64_t kElements = 1 << 20;

float Expected(int64_t i) { return static_cast<float>(i % 1000) * 0.5f; }

// Pins the object, runs fn over its elements, then (when version > 0) writes
// it back as that step, and releases it.
template <typename Fn>
absl::Status WithPinned(Session& session, uint64_t id, uint64_t version, Fn fn) {
  absl::StatusOr<ObjectInfo> pinned = session.Acquire(id)->Get(kTimeout);
  if (!pinned.ok()) return pinned.status();
  absl::StatusOr<absl::Span<float>> data = session.Data<float>(*pinned);
  absl::Status status = data.ok() ? fn(*data) : data.status();
  if (status.ok() && version > 0) status = session.WriteBack(id, version)->Wait(kTimeout);
  absl::Status released = session.Release(id)->Wait(kTimeout);
  return status.ok() ? released : status;
}

absl::Status Run(const std::string& socket_path) {
  spill::client::SessionOptions options;
  options.socket_path = socket_path;
  options.job_id = "spill-example";
  absl::StatusOr<std::unique_ptr<Session>> session = Session::Open(options);
  if (!session.ok()) return session.status();
  Session& s = **session;

  absl::StatusOr<ObjectInfo> object =
      s.Register("example.weights", ObjectKind::kMaster, DType::kFloat32, kElements);
  if (!object.ok()) return object.status();
  absl::Status status = WithPinned(s, object->object_id, 1, [](absl::Span<float> data) {
    for (size_t i = 0; i < data.size(); ++i) data[i] = Expected(static_cast<int64_t>(i));
    return absl::OkStatus();
  });
  if (status.ok()) {
    status = WithPinned(s, object->object_id, 0, [](absl::Span<float> data) {
      for (size_t i = 0; i < data.size(); ++i) {
        if (data[i] != Expected(static_cast<int64_t>(i))) {
          return absl::DataLossError("element " + std::to_string(i) + " differs");
        }
      }
      return absl::OkStatus();
    });
  }
  absl::Status freed = s.Free(object->object_id);
  absl::Status closed = s.Close();
  if (!status.ok()) return status;
  return freed.ok() ? closed : freed;
}

}  // namespace

int main(int argc, char** argv) {
  std::string socket_path = spill::client::DefaultSocketPath();
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--socket=", 0) == 0) {
      socket_path = arg.substr(9);
    } else {
      std::fprintf(stderr, "usage: spill_example [--socket=PATH]\n");
      return 2;
    }
  }
  absl::Status status = Run(socket_path);
  if (!status.ok()) {
    std::fprintf(stderr, "spill_example: %s\n", status.ToString().c_str());
    return 1;
  }
  std::printf("spill_example: offloaded %lld floats to spilld at %s and got every one back\n",
              static_cast<long long>(kElements), socket_path.c_str());
  return 0;
}
