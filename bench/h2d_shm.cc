// h2d_shm / d2h_shm: GPU copy bandwidth from a spilld segment vs a
// cudaMallocHost buffer of the same size, measured in the same run.
//
// A real spilld is started with one segment as large as the largest size;
// the client maps it and registers it with cudaHostRegister (timed: that is
// the registration cost reported, for 4 KiB or 2 MiB pages). For each size,
// H2D and D2H copies run back to back on one stream, timed with CUDA events.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "bench/bench_json.h"
#include "common/units.h"
#include "spill/client.h"
#include "tests/integration/spilld_process.h"

namespace {

using spill::bench::Emit;
using spill::bench::Result;

#define CUDA_OR_DIE(expr)                                                             \
  do {                                                                                \
    cudaError_t err_ = (expr);                                                        \
    if (err_ != cudaSuccess) {                                                        \
      std::fprintf(stderr, "h2d_shm: %s: %s\n", #expr, cudaGetErrorString(err_));     \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

// GB/s of `iters` copies of `bytes` (after two warm-ups).
double CopyBandwidth(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, int iters,
                     cudaStream_t stream) {
  cudaEvent_t start, stop;
  CUDA_OR_DIE(cudaEventCreate(&start));
  CUDA_OR_DIE(cudaEventCreate(&stop));
  for (int i = 0; i < 2; ++i) CUDA_OR_DIE(cudaMemcpyAsync(dst, src, bytes, kind, stream));
  CUDA_OR_DIE(cudaEventRecord(start, stream));
  for (int i = 0; i < iters; ++i) CUDA_OR_DIE(cudaMemcpyAsync(dst, src, bytes, kind, stream));
  CUDA_OR_DIE(cudaEventRecord(stop, stream));
  CUDA_OR_DIE(cudaEventSynchronize(stop));
  float ms = 0;
  CUDA_OR_DIE(cudaEventElapsedTime(&ms, start, stop));
  CUDA_OR_DIE(cudaEventDestroy(start));
  CUDA_OR_DIE(cudaEventDestroy(stop));
  return static_cast<double>(bytes) * iters / (ms / 1000.0) / 1e9;
}

struct Options {
  std::vector<uint64_t> sizes;
  int iters = 10;
  std::string huge_pages = "off";
  std::string machine;
};

int Run(const Options& opt) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "h2d_shm: no CUDA device; this benchmark runs on a GPU machine\n");
    return 77;
  }
  cudaDeviceProp prop{};
  CUDA_OR_DIE(cudaGetDeviceProperties(&prop, 0));
  // $SPILL_BENCH_MACHINE (or --machine) names the whole machine, GPU included.
  std::string machine = opt.machine;
  if (machine.empty()) {
    const char* env = std::getenv("SPILL_BENCH_MACHINE");
    machine = env != nullptr && *env ? env
                                     : std::string(prop.name) + " / " + spill::bench::MachineName();
  }
  const uint64_t max_size = *std::max_element(opt.sizes.begin(), opt.sizes.end());
  const std::string seg = std::to_string(max_size);
  auto daemon = spill::testing::SpilldProcess::Start(
      {"--pinned-bytes=" + seg, "--segment-bytes=" + seg, "--huge-pages=" + opt.huge_pages});
  if (!daemon.ok()) {
    std::fprintf(stderr, "h2d_shm: %s\n", daemon.status().ToString().c_str());
    return 1;
  }
  spill::client::SessionOptions so;
  so.socket_path = (*daemon)->socket_path();
  so.job_id = "h2d";
  auto session = spill::client::Session::Open(so);
  if (!session.ok()) {
    std::fprintf(stderr, "h2d_shm: %s\n", session.status().ToString().c_str());
    return 1;
  }
  void* device = nullptr;
  CUDA_OR_DIE(cudaMalloc(&device, max_size));
  cudaStream_t stream;
  CUDA_OR_DIE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const char* pages = opt.huge_pages == "on" ? "2MiB" : "4KiB";
  bool reported_registration = false;
  for (uint64_t size : opt.sizes) {
    auto obj = (*session)->Register("buf" + std::to_string(size), spill::client::ObjectKind::kOther,
                                    spill::client::DType::kUInt8, static_cast<int64_t>(size));
    if (!obj.ok()) {
      std::fprintf(stderr, "h2d_shm: %s\n", obj.status().ToString().c_str());
      return 1;
    }
    auto bytes = (*session)->Bytes(*obj);
    if (!bytes.ok()) {
      std::fprintf(stderr, "h2d_shm: %s\n", bytes.status().ToString().c_str());
      return 1;
    }
    spill::client::MappingStats ms = (*session)->mapping_stats();
    if (ms.cuda_registered_bytes == 0) {
      std::fprintf(stderr, "h2d_shm: segment not registered with CUDA: %s\n",
                   ms.cuda_skip_reason.c_str());
      return 1;
    }
    if (!reported_registration) {
      reported_registration = true;
      Result reg{"h2d_shm", std::string("register_seconds_per_GiB_") + pages,
                 ms.cuda_register_seconds / (ms.cuda_registered_bytes / double(1 << 30)), "s/GiB",
                 "", 0, {{"segment_bytes", ms.cuda_registered_bytes}, {"pages", pages}}};
      Emit(reg, machine);
    }
    std::memset(bytes->data(), 0x5C, size);
    void* pinned = nullptr;
    CUDA_OR_DIE(cudaMallocHost(&pinned, size));
    std::memset(pinned, 0x5C, size);
    const std::string label = spill::FormatBytes(size);
    nlohmann::json extra = {{"size_bytes", size}, {"pages", pages}, {"iters", opt.iters}};
    for (bool h2d : {true, false}) {
      cudaMemcpyKind kind = h2d ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
      double ours = h2d ? CopyBandwidth(device, bytes->data(), size, kind, opt.iters, stream)
                        : CopyBandwidth(bytes->data(), device, size, kind, opt.iters, stream);
      double base = h2d ? CopyBandwidth(device, pinned, size, kind, opt.iters, stream)
                        : CopyBandwidth(pinned, device, size, kind, opt.iters, stream);
      Result r{h2d ? "h2d_shm" : "d2h_shm", "GBps_" + std::to_string(size >> 20) + "MiB", ours,
               "GB/s", "cudaMallocHost", base, extra};
      r.extra["target_ratio"] = ">= 0.95";
      Emit(r, machine);
    }
    CUDA_OR_DIE(cudaFreeHost(pinned));
    if (!(*session)->Free(obj->object_id).ok()) return 1;
  }
  CUDA_OR_DIE(cudaStreamDestroy(stream));
  CUDA_OR_DIE(cudaFree(device));
  (void)(*session)->Close();
  return (*daemon)->Stop() == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  std::string sizes = "64MiB,256MiB,1GiB,4GiB";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--sizes=", 0) == 0) sizes = a.substr(8);
    else if (a.rfind("--iters=", 0) == 0) opt.iters = std::stoi(a.substr(8));
    else if (a.rfind("--huge-pages=", 0) == 0) opt.huge_pages = a.substr(13);
    else if (a.rfind("--machine=", 0) == 0) opt.machine = a.substr(10);
    else {
      std::fprintf(stderr,
                   "usage: h2d_shm [--sizes=64MiB,...] [--iters=N] [--huge-pages=on|off] "
                   "[--machine=NAME]\n");
      return 2;
    }
  }
  for (absl::string_view s : absl::StrSplit(sizes, ',')) {
    auto size = spill::ParseSize(s);
    if (!size.ok() || *size == 0) {
      std::fprintf(stderr, "h2d_shm: bad size '%s'\n", std::string(s).c_str());
      return 2;
    }
    opt.sizes.push_back(*size);
  }
  return Run(opt);
}
