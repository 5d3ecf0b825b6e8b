// optim_nvme_step: the AdamW step with master and moments on the NVMe tier,
// streamed through pinned buffers in sub_group_size pieces (read i+1 ‖
// update i ‖ write i−1), against the NVMe tier's own bandwidth measured in
// the same run on the same files: how close the step is to I/O-bound.
//
//   optim_nvme_step --dir=DIR [--params=N] [--sub-group=N] [--threads=T]
//                   [--iters=K] [--block-size=BYTES] [--queue-depth=N]
//
// Per parameter a step reads and writes master, m and v: 12 B read + 12 B
// written on NVMe (the bf16 gradient and parameter stay in memory). The
// baseline moves the same bytes with plain tier reads then writes of the
// same piece size, at the same queue depth, with no compute: the bound the
// pipeline can reach. ratio = step's NVMe bytes/s ÷ the baseline's.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_json.h"
#include "server/nvme_state_store.h"
#include "server/optim/executor.h"
#include "server/optim/optimizer.h"
#include "server/optim/streamed_step.h"
#include "storage/nvme_tier.h"

namespace spill::bench {
namespace {

struct Flags {
  std::string dir;
  uint64_t params = 64ull << 20;
  uint64_t sub_group = 8ull << 20;
  uint32_t threads = std::max(1u, std::thread::hardware_concurrency());
  int iters = 3;
  uint32_t block_size = 1u << 20;
  uint32_t queue_depth = 32;
};

bool Parse(int argc, char** argv, Flags* f) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto eq = a.find('=');
    if (a.rfind("--", 0) != 0 || eq == std::string::npos) return false;
    std::string k = a.substr(2, eq - 2), v = a.substr(eq + 1);
    if (k == "dir") f->dir = v;
    else if (k == "params") f->params = std::stoull(v);
    else if (k == "sub-group") f->sub_group = std::stoull(v);
    else if (k == "threads") f->threads = static_cast<uint32_t>(std::stoul(v));
    else if (k == "iters") f->iters = std::stoi(v);
    else if (k == "block-size") f->block_size = static_cast<uint32_t>(std::stoul(v));
    else if (k == "queue-depth") f->queue_depth = static_cast<uint32_t>(std::stoul(v));
    else return false;
  }
  return !f->dir.empty() && f->params > 0 && f->sub_group % 1024 == 0 && f->sub_group > 0;
}

struct Aligned {
  explicit Aligned(uint64_t bytes)
      : p(std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096)) {
    std::memset(p, 0, (bytes + 4095) / 4096 * 4096);  // Fault the pages in.
  }
  ~Aligned() { std::free(p); }
  void* p;
};

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Reads then writes n floats per array (3 arrays) piece by piece through the
// tier with two pieces in flight: the bytes the streamed step moves, with
// no compute.
double RawBandwidth(storage::NvmeTier& tier, const Flags& f, float* buf) {
  const uint64_t pieces = (f.params + f.sub_group - 1) / f.sub_group;
  std::vector<storage::NvmeExtent> ext;
  std::vector<std::vector<uint32_t>> crcs(pieces * 3);
  for (uint64_t i = 0; i < pieces * 3; ++i) {
    ext.push_back(tier.Allocate("bench-raw", f.sub_group * 4).value());
  }
  auto run = [&](bool write) {
    std::vector<std::future<absl::Status>> inflight;
    for (uint64_t i = 0; i < pieces * 3; ++i) {
      auto p = std::make_shared<std::promise<absl::Status>>();
      inflight.push_back(p->get_future());
      float* mem = buf + (i % 6) * f.sub_group;
      auto done = [p](absl::Status s) { p->set_value(std::move(s)); };
      if (write) tier.Write(ext[i], mem, f.sub_group * 4, &crcs[i], done);
      else tier.Read(ext[i], crcs[i], mem, f.sub_group * 4, "raw", done);
      if (inflight.size() >= 6) {
        if (!inflight.front().get().ok()) std::abort();
        inflight.erase(inflight.begin());
      }
    }
    for (auto& fut : inflight) {
      if (!fut.get().ok()) std::abort();
    }
  };
  run(true);  // Give the reads something checksummed to read.
  double best = 0;
  for (int it = 0; it < f.iters; ++it) {
    auto t0 = std::chrono::steady_clock::now();
    run(false);
    run(true);
    best = std::max(best, 2.0 * pieces * 3 * f.sub_group * 4 / Seconds(t0));
  }
  for (auto& e : ext) (void)tier.Free("bench-raw", e);
  return best;
}

int Main(int argc, char** argv) {
  Flags f;
  if (!Parse(argc, argv, &f)) {
    std::fprintf(stderr,
                 "usage: optim_nvme_step --dir=DIR [--params=N] [--sub-group=N (multiple of "
                 "1024)] [--threads=T] [--iters=K] [--block-size=B] [--queue-depth=Q]\n");
    return 2;
  }
  storage::NvmeOptions o;
  o.dirs = {f.dir};
  o.capacity_bytes = (f.params * 12 * 2 + (f.sub_group * 12 * 4)) / f.block_size * f.block_size +
                     16ull * f.block_size;
  o.block_size = f.block_size;
  o.queue_depth = f.queue_depth;
  auto tier = storage::NvmeTier::Open(o);
  if (!tier.ok()) {
    std::fprintf(stderr, "cannot open the NVMe tier: %s\n", tier.status().ToString().c_str());
    return 1;
  }
  optim::Executor exec(f.threads - 1);
  optim::Hyper h;
  h.weight_decay = 0.01f;
  Aligned grad(f.params * 2), param(f.params * 2), stage(f.sub_group * 4 * 9);
  float* buffer = static_cast<float*>(stage.p);
  const double raw = RawBandwidth(**tier, f, buffer);

  server::NvmeStateStore store(tier->get(), "bench", "bench member", 3, f.params, f.sub_group);
  auto fill = [&](uint64_t, uint64_t count, float* master, float* state[2]) {
    std::fill(master, master + count, 0.5f);
    return optim::InitState(h, state, count);
  };
  if (!store.Initialize(fill, std::span<float>(buffer, 3 * f.sub_group)).ok()) return 1;
  double best = 0;
  for (int it = 0; it < f.iters + 1; ++it) {
    auto t0 = std::chrono::steady_clock::now();
    absl::Status s = optim::StreamedStep(h, {static_cast<uint64_t>(it + 1), 1.0f},
                                         DType::kBFloat16, grad.p, DType::kBFloat16, param.p,
                                         f.params, store, f.sub_group,
                                         std::span<float>(buffer, 9 * f.sub_group), exec);
    if (!s.ok()) {
      std::fprintf(stderr, "streamed step failed: %s\n", s.ToString().c_str());
      return 1;
    }
    store.Commit();
    if (it > 0) best = std::max(best, f.params / Seconds(t0));  // The first run warms up.
  }
  store.Free();
  const std::string machine = MachineName();
  Result r;
  r.bench = "optim_nvme_step";
  r.metric = "adamw_nvme_states_mparams_per_s";
  r.value = best / 1e6;
  r.unit = "Mparam/s";
  r.baseline = "nvme_tier_bound";  // The raw tier bandwidth over 24 bytes per parameter.
  r.baseline_value = raw / 24 / 1e6;
  Emit(r, machine);
  r.metric = "adamw_nvme_states_bytes_per_s";
  r.value = best * 24 / 1e9;
  r.unit = "GB/s";
  r.baseline = "nvme_tier_read_then_write";
  r.baseline_value = raw / 1e9;
  r.extra = {{"params", f.params}, {"sub_group_size", f.sub_group}, {"threads", f.threads},
             {"block_size", f.block_size}, {"queue_depth", f.queue_depth}};
  Emit(r, machine);
  return 0;
}

}  // namespace
}  // namespace spill::bench

int main(int argc, char** argv) { return spill::bench::Main(argc, argv); }
