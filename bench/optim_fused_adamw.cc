// optim_fused_adamw: the fused AdamW step (bf16 gradient -> bf16 parameter,
// fp32 master and moments) and the plain fp32 step, in Mparam/s and GB/s of
// bytes actually moved, beside a STREAM triad measured in the same run with
// the same threads and arrays of the same size.
//
//   optim_fused_adamw [--threads T] [--params N] [--iters K]
//
// Bytes per parameter: bf16 step: grad 2 + param 2 + master 4r+4w + m 4r+4w
// + v 4r+4w = 28; fp32 step: grad 4 + master 8 + m 8 + v 8 = 28. Triad
// a = b + s*c counts 12 bytes per element, as STREAM does (the write-allocate
// read of a is not counted). Each figure is the best of --iters runs
// (STREAM's convention), after one warm-up run.
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "bench/bench_json.h"
#include "server/optim/executor.h"
#include "server/optim/half.h"
#include "server/optim/optimizer.h"

namespace spill::bench {
namespace {

using optim::Executor;

struct Flags {
  uint32_t threads = std::max(1u, std::thread::hardware_concurrency());
  uint64_t params = 256ull << 20;
  int iters = 5;
};

Flags Parse(int argc, char** argv) {
  Flags f;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--threads") f.threads = static_cast<uint32_t>(std::stoul(argv[i + 1]));
    else if (k == "--params") f.params = std::stoull(argv[i + 1]);
    else if (k == "--iters") f.iters = std::stoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown flag %s\nusage: %s [--threads T] [--params N] [--iters K]\n",
                   argv[i], argv[0]);
      std::exit(2);
    }
  }
  if (f.threads == 0 || f.params == 0 || f.iters <= 0) {
    std::fprintf(stderr, "--threads, --params and --iters must be > 0\n");
    std::exit(2);
  }
  return f;
}

// Page-aligned anonymous memory (transparent huge pages where allowed).
template <class T>
T* Alloc(uint64_t n) {
  void* p = mmap(nullptr, n * sizeof(T), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    std::perror("mmap");
    std::exit(1);
  }
  madvise(p, n * sizeof(T), MADV_HUGEPAGE);
  return static_cast<T*>(p);
}

template <class F>
double BestSeconds(int iters, F&& run) {
  run();  // warm-up: pages faulted, code paths dispatched
  double best = 1e30;
  for (int i = 0; i < iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    run();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

void Check(const absl::Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
    std::exit(1);
  }
}

__attribute__((optimize("O3"))) void Triad(float* a, const float* b, const float* c, float s,
                                           uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) a[i] = b[i] + s * c[i];
}

}  // namespace
}  // namespace spill::bench

int main(int argc, char** argv) {
  using namespace spill;
  using namespace spill::bench;
  const Flags f = Parse(argc, argv);
  const std::string machine = MachineName();
  optim::Executor exec(f.threads - 1);
  const uint64_t n = f.params;
  const uint64_t grain = 1 << 16;

  float* master = Alloc<float>(n);
  float* m = Alloc<float>(n);
  float* v = Alloc<float>(n);
  float* g32 = Alloc<float>(n);
  uint16_t* g16 = Alloc<uint16_t>(n);
  uint16_t* p16 = Alloc<uint16_t>(n);
  // First touch on the threads that will use the pages.
  Check(exec.ParallelFor(n, grain, 0, [&](uint64_t b, uint64_t e) {
    for (uint64_t i = b; i < e; ++i) {
      master[i] = 1.f + (i % 97) * 1e-3f;
      m[i] = 0.f;
      v[i] = 0.f;
      g32[i] = ((i % 13) - 6.f) * 1e-3f;
      g16[i] = optim::FloatToBF16(g32[i]);
      p16[i] = 0;
    }
  }));

  // Triad over three arrays of n floats (reusing m, v, g32's size).
  float* ta = Alloc<float>(n);
  float* tb = Alloc<float>(n);
  float* tc = Alloc<float>(n);
  Check(exec.ParallelFor(n, grain, 0, [&](uint64_t b, uint64_t e) {
    for (uint64_t i = b; i < e; ++i) ta[i] = 0.f, tb[i] = 1.f, tc[i] = 2.f;
  }));
  const double t_triad = BestSeconds(f.iters, [&] {
    Check(exec.ParallelFor(n, grain, 0, [&](uint64_t b, uint64_t e) {
      Triad(ta + b, tb + b, tc + b, 3.f, e - b);
    }));
  });
  const double triad_gbps = 12.0 * n / t_triad / 1e9;

  optim::Hyper h;
  h.weight_decay = 0.01f;
  uint64_t step = 0;
  const optim::ShardView bf16{DType::kBFloat16, g16, master, {m, v}, DType::kBFloat16, p16, n};
  const double t_bf16 = BestSeconds(f.iters, [&] { Check(optim::Step(h, {++step, 1.f}, bf16, exec)); });
  const optim::ShardView fp32{DType::kFloat32, g32, master, {m, v}, DType::kFloat32, nullptr, n};
  const double t_fp32 = BestSeconds(f.iters, [&] { Check(optim::Step(h, {++step, 1.f}, fp32, exec)); });

  nlohmann::json extra = {{"threads", f.threads}, {"params", n}, {"iters", f.iters},
                          {"simd", optim::SimdTargetName()}};
  auto emit = [&](const std::string& metric, double value, const std::string& unit,
                  bool vs_triad) {
    Result r;
    r.bench = "optim_fused_adamw";
    r.metric = metric;
    r.value = value;
    r.unit = unit;
    if (vs_triad) {
      r.baseline = "triad";
      r.baseline_value = triad_gbps;
    }
    r.extra = extra;
    Emit(r, machine);
  };
  emit("triad_bandwidth", triad_gbps, "GB/s", false);
  emit("bf16_step_bandwidth", 28.0 * n / t_bf16 / 1e9, "GB/s", true);
  emit("bf16_step_rate", n / t_bf16 / 1e6, "Mparam/s", false);
  emit("fp32_step_bandwidth", 28.0 * n / t_fp32 / 1e9, "GB/s", true);
  emit("fp32_step_rate", n / t_fp32 / 1e6, "Mparam/s", false);
  return 0;
}
