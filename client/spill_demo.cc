// spill_demo: the README's "main job" client. It offloads a few tensors of a
// pretend ZeRO-3 rank (16-bit parameter and gradient shards, fp32 master
// weights and Adam moments) to spilld through the zero-copy view, closes its
// session as a crashed or finished worker would, re-attaches with a new
// session, and checks every byte came back. Exit status: 0 when everything
// verified, 1 on any error or mismatch, 2 on a usage error.
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "spill/client.h"

namespace spill::client {
namespace {

constexpr char kUsage[] = R"(usage: spill_demo [--socket=PATH] [--job=ID] [--tensors=N] [--mib=M]

Offloads N tensors of M MiB each to spilld (cycling through a bf16 parameter
shard, an fp16 gradient shard, fp32 master weights and two fp32 Adam moments),
fills them through the zero-copy view, writes them back as step 1, closes the
session, re-attaches with a new one, verifies every byte and frees them.

  --socket=PATH  spilld's socket (default: $SPILL_SOCKET, else /run/spill/spilld.sock)
  --job=ID       job id (default: demo)
  --tensors=N    number of tensors (default: 10)
  --mib=M        MiB per tensor (default: 1)
  --no-cuda      do not register segments with CUDA
)";

constexpr auto kWaitTimeout = std::chrono::seconds(60);

struct Args {
  std::string socket_path;
  std::string job = "demo";
  int tensors = 10;
  int mib = 1;
  bool register_with_cuda = true;
  bool help = false;
};

struct TensorSpec {
  const char* suffix;
  ObjectKind kind;
  DType dtype;
};

// One layer's worth of ZeRO-3 state, cycled through by tensor index.
constexpr TensorSpec kSpecs[] = {
    {"param", ObjectKind::kParamShard, DType::kBFloat16},
    {"grad", ObjectKind::kGradShard, DType::kFloat16},
    {"master", ObjectKind::kMaster, DType::kFloat32},
    {"exp_avg", ObjectKind::kMoment, DType::kFloat32},
    {"exp_avg_sq", ObjectKind::kMoment, DType::kFloat32},
};

std::optional<std::string> ParseArgs(int argc, char** argv, Args* args) {
  const char* env = std::getenv("SPILL_SOCKET");
  args->socket_path = env != nullptr && env[0] != '\0' ? env : "/run/spill/spilld.sock";
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&](const char* flag) -> std::optional<std::string> {
      std::string prefix = absl::StrCat(flag, "=");
      if (absl::StartsWith(arg, prefix)) return arg.substr(prefix.size());
      return std::nullopt;
    };
    if (arg == "-h" || arg == "--help") {
      args->help = true;
    } else if (arg == "--no-cuda") {
      args->register_with_cuda = false;
    } else if (auto v = value("--socket")) {
      args->socket_path = *v;
    } else if (auto v = value("--job")) {
      args->job = *v;
    } else if (auto v = value("--tensors")) {
      if (!absl::SimpleAtoi(*v, &args->tensors) || args->tensors < 1) {
        return absl::StrCat("--tensors needs a positive integer, got '", *v, "'");
      }
    } else if (auto v = value("--mib")) {
      if (!absl::SimpleAtoi(*v, &args->mib) || args->mib < 1 || args->mib > (1 << 20)) {
        return absl::StrCat("--mib needs a positive integer, got '", *v, "'");
      }
    } else {
      return absl::StrCat("unknown argument '", arg, "'");
    }
  }
  return std::nullopt;
}

// The pattern tensor `index` holds: element i as raw bits of the dtype,
// deterministic and different per tensor. 16-bit values stay finite.
uint64_t PatternBits(DType dtype, int index, uint64_t i) {
  uint64_t n = i * 2654435761u + static_cast<uint64_t>(index) * 40503u;
  switch (dtype) {
    case DType::kBFloat16: return 0x3F80 | (n & 0x7F);  // bf16 in [1, 2).
    case DType::kFloat16: return 0x3C00 | (n & 0x3FF);  // fp16 in [1, 2).
    default: {
      float value = static_cast<float>(n % 4096) * 0.25f - 512.0f;
      uint32_t bits;
      std::memcpy(&bits, &value, sizeof(bits));
      return bits;
    }
  }
}

template <typename T>
absl::Status Fill(Session& session, const ObjectInfo& object, int index) {
  absl::StatusOr<absl::Span<T>> data = session.Data<T>(object);
  if (!data.ok()) return data.status();
  for (uint64_t i = 0; i < data->size(); ++i) {
    (*data)[i] = static_cast<T>(PatternBits(object.dtype, index, i));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status Verify(Session& session, const ObjectInfo& object, int index) {
  absl::StatusOr<absl::Span<T>> data = session.Data<T>(object);
  if (!data.ok()) return data.status();
  if (data->size() != object.num_elements) {
    return absl::DataLossError(absl::StrCat(object.name, ": view has ", data->size(),
                                            " elements, expected ", object.num_elements));
  }
  for (uint64_t i = 0; i < data->size(); ++i) {
    T expected = static_cast<T>(PatternBits(object.dtype, index, i));
    if (std::memcmp(&(*data)[i], &expected, sizeof(T)) != 0) {
      return absl::DataLossError(absl::StrCat(object.name, ": element ", i, " (byte ",
                                              i * sizeof(T), ") differs from what was written"));
    }
  }
  return absl::OkStatus();
}

// Fill or verify through the typed view that matches the dtype: uint16_t
// bits for the 16-bit floats, float for fp32.
absl::Status Visit(Session& session, const ObjectInfo& object, int index, bool fill) {
  if (object.dtype == DType::kFloat32) {
    return fill ? Fill<float>(session, object, index) : Verify<float>(session, object, index);
  }
  return fill ? Fill<uint16_t>(session, object, index) : Verify<uint16_t>(session, object, index);
}

std::string TensorName(int index) {
  return absl::StrCat("layer", index / 5, ".", kSpecs[index % 5].suffix);
}

absl::StatusOr<std::unique_ptr<Session>> OpenSession(const Args& args) {
  SessionOptions options;
  options.socket_path = args.socket_path;
  options.job_id = args.job;
  options.register_with_cuda = args.register_with_cuda;
  return Session::Open(options);
}

// Waits for every Work; returns the first failure, naming the object.
absl::Status WaitAll(const std::vector<std::shared_ptr<Work>>& works) {
  for (const auto& work : works) {
    absl::Status status = work->Wait(kWaitTimeout);
    if (!status.ok()) {
      return absl::Status(status.code(), absl::StrCat(WorkOpName(work->op()), " of object ",
                                                      work->object_id(), ": ", status.message()));
    }
  }
  return absl::OkStatus();
}

std::string Describe(const ObjectInfo& o) {
  return absl::StrFormat("    %-18s %-12s %-9s %10d elems  %10s  segment %d @ %d", o.name,
                         ObjectKindName(o.kind), DTypeName(o.dtype), o.num_elements,
                         FormatBytes(o.byte_size()), o.location.segment_id, o.location.offset);
}

std::string DescribeMapping(const MappingStats& m) {
  std::string cuda =
      m.cuda_registered_segments > 0
          ? absl::StrFormat("registered %s with CUDA in %.3f s", FormatBytes(m.cuda_registered_bytes),
                            m.cuda_register_seconds)
          : absl::StrCat("CUDA registration skipped: ", m.cuda_skip_reason);
  return absl::StrFormat("  mapped %d segment(s), %s, in %.3f s; %s", m.segments_mapped,
                         FormatBytes(m.bytes_mapped), m.map_seconds, cuda);
}

// A job left over from an earlier, interrupted run would make names collide.
absl::Status FreeLeftovers(Session& session) {
  SPILL_ASSIGN_OR_RETURN(std::vector<ObjectInfo> leftovers, session.List());
  for (const ObjectInfo& object : leftovers) SPILL_RETURN_IF_ERROR(session.Free(object.object_id));
  std::cout << "  job existed already: freed " << leftovers.size() << " leftover object(s)\n";
  return absl::OkStatus();
}

// Session 1: register, fill, write back as step 1, release, close.
absl::Status Offload(const Args& args) {
  SPILL_ASSIGN_OR_RETURN(std::unique_ptr<Session> session, OpenSession(args));
  std::cout << "session " << session->session_id() << " opened for job '" << args.job << "' at "
            << args.socket_path << "\n";
  if (session->job_existed()) SPILL_RETURN_IF_ERROR(FreeLeftovers(*session));
  std::vector<ObjectInfo> objects;
  uint64_t total = 0;
  for (int i = 0; i < args.tensors; ++i) {
    const TensorSpec& spec = kSpecs[i % 5];
    uint64_t elements = (uint64_t{1} << 20) * args.mib / DTypeSize(spec.dtype);
    SPILL_ASSIGN_OR_RETURN(ObjectInfo object,
                           session->Register(TensorName(i), spec.kind, spec.dtype,
                                             static_cast<int64_t>(elements)));
    objects.push_back(std::move(object));
    total += objects.back().byte_size();
  }
  std::vector<std::shared_ptr<Work>> works;
  for (const ObjectInfo& object : objects) works.push_back(session->Acquire(object.object_id));
  SPILL_RETURN_IF_ERROR(WaitAll(works));
  for (int i = 0; i < args.tensors; ++i) {
    objects[i] = works[i]->object();
    SPILL_RETURN_IF_ERROR(Visit(*session, objects[i], i, /*fill=*/true));
  }
  works.clear();
  for (const ObjectInfo& object : objects) works.push_back(session->WriteBack(object.object_id, 1));
  SPILL_RETURN_IF_ERROR(WaitAll(works));
  works.clear();
  for (const ObjectInfo& object : objects) works.push_back(session->Release(object.object_id));
  SPILL_RETURN_IF_ERROR(WaitAll(works));
  std::cout << "  offloaded " << objects.size() << " tensors, " << FormatBytes(total)
            << ", written back as step 1:\n";
  for (const ObjectInfo& object : objects) std::cout << Describe(object) << "\n";
  std::cout << DescribeMapping(session->mapping_stats()) << "\n";
  SPILL_RETURN_IF_ERROR(session->Close());
  std::cout << "session closed\n";
  return absl::OkStatus();
}

// Session 2: re-attach, find every tensor, verify every byte, free.
absl::Status Reattach(const Args& args) {
  SPILL_ASSIGN_OR_RETURN(std::unique_ptr<Session> session, OpenSession(args));
  std::cout << "session " << session->session_id() << " re-attached to job '" << args.job << "'\n";
  if (!session->job_existed()) {
    return absl::DataLossError(absl::StrCat("spilld did not keep job '", args.job,
                                            "' after its first session closed"));
  }
  SPILL_ASSIGN_OR_RETURN(std::vector<ObjectInfo> listed, session->List());
  if (listed.size() != static_cast<size_t>(args.tensors)) {
    return absl::DataLossError(absl::StrCat("job lists ", listed.size(), " objects, expected ",
                                            args.tensors));
  }
  std::vector<ObjectInfo> objects(args.tensors);
  for (const ObjectInfo& object : listed) {
    int index = -1;
    for (int i = 0; i < args.tensors; ++i) {
      if (TensorName(i) == object.name) index = i;
    }
    if (index < 0) return absl::DataLossError(absl::StrCat("unexpected object '", object.name, "'"));
    objects[index] = object;
  }
  std::vector<std::shared_ptr<Work>> works;
  for (const ObjectInfo& object : objects) works.push_back(session->Prefetch(object.object_id));
  SPILL_RETURN_IF_ERROR(WaitAll(works));
  works.clear();
  for (const ObjectInfo& object : objects) works.push_back(session->Acquire(object.object_id));
  SPILL_RETURN_IF_ERROR(WaitAll(works));
  uint64_t verified = 0;
  for (int i = 0; i < args.tensors; ++i) {
    const ObjectInfo& pinned = works[i]->object();
    if (pinned.version != 1) {
      return absl::DataLossError(absl::StrCat(pinned.name, " has version ", pinned.version,
                                              ", expected 1"));
    }
    SPILL_RETURN_IF_ERROR(Visit(*session, pinned, i, /*fill=*/false));
    verified += pinned.byte_size();
  }
  works.clear();
  for (const ObjectInfo& object : objects) works.push_back(session->Release(object.object_id));
  SPILL_RETURN_IF_ERROR(WaitAll(works));
  std::cout << "  listed " << listed.size() << " objects; verified every byte of "
            << objects.size() << " tensors (" << FormatBytes(verified) << "), all at step 1\n";
  for (const ObjectInfo& object : objects) SPILL_RETURN_IF_ERROR(session->Free(object.object_id));
  std::cout << "  freed " << objects.size() << " objects\n";
  std::cout << DescribeMapping(session->mapping_stats()) << "\n";
  return session->Close();
}

}  // namespace
}  // namespace spill::client

int main(int argc, char** argv) {
  spill::client::Args args;
  if (std::optional<std::string> error = spill::client::ParseArgs(argc, argv, &args)) {
    std::cerr << "spill_demo: " << *error << "\nrun 'spill_demo --help' for usage\n";
    return 2;
  }
  if (args.help) {
    std::cout << spill::client::kUsage;
    return 0;
  }
  absl::Status status = spill::client::Offload(args);
  if (status.ok()) status = spill::client::Reattach(args);
  if (!status.ok()) {
    std::cerr << "spill_demo: FAILED: " << status << "\n";
    return 1;
  }
  std::cout << "OK: every byte came back\n";
  return 0;
}
