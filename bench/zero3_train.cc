// zero3_train: tokens/s and TFLOP/s of ZeRO-3 training of the GPT model with
// the engine (worker/engine.h), against the lane bound measured in the same
// run on the same machine (bench/zero3_lanes.h): the slowest of GPU compute,
// PCIe copies, spilld's CPU optimizer and NVMe traffic.
//
//   zero3_train --preset=1.3B --steps=10 --warmup=2 --bf16        (one GPU)
//   python3 -m torch.distributed.run --nproc-per-node=2 $(command -v zero3_train) ...
//   zero3_train --device=cpu --layers=2 --hidden=64 --heads=4 --vocab=256 --seq=32
//
// Rank 0 starts a spilld (--spilld=, default $SPILL_SPILLD) on a private
// socket, its pinned tier sized from the model with headroom, and every rank
// of the node uses it; all ranks train, rank 0 prints JSON lines
// (bench/bench_json.h): tokens_per_s (baseline "lane_bound"), tflops, the
// time split per step and each lane. Runs on one node (LOCAL_WORLD_SIZE, when
// set, must equal WORLD_SIZE).
//
// Exit status: 0 success; 2 bad flags or config (and modes the engine lacks);
// 3 the model does not fit (host or GPU memory), with a "does_not_fit" line;
// 1 anything else failed, with an "error" line.
#include <ATen/ATen.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/bench_json.h"
#include "bench/zero3_flags.h"
#include "bench/zero3_lanes.h"
#include "bench/zero3_profile.h"
#include "bench/zero3_sizing.h"
#include "common/status_macros.h"
#include "worker/collectives.h"
#include "worker/config.h"
#include "worker/data.h"
#include "worker/engine.h"
#include "worker/estimate.h"
#include "worker/gpt.h"
#include "worker/rendezvous.h"
#include "worker/testing/spilld_fixture.h"

#if SPILL_ZERO3_CUDA
#include <cuda_runtime.h>
#endif

namespace spill::bench {
namespace {

using worker::OffloadDevice;
constexpr char kBench[] = "zero3_train";

// Exit codes.
constexpr int kFailed = 1, kUsage = 2, kNoFit = 3;

struct Failure {
  int code = kFailed;
  std::string metric = "error";
  std::string reason;
};

struct Run {
  Zero3Flags flags;
  worker::RendezvousInfo info;
  worker::GptShape shape;
  worker::DeepSpeedConfig config;
  at::Device device = at::Device(at::kCPU);
  std::string machine;
  uint64_t spilld_pinned = 0, spilld_segment = 0, spilld_nvme = 0;
  uint64_t nvme_homed = 0;  // bytes of states with home NVMe
  double total_params = 0;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
};

// Rank 0's progress on stderr, with the seconds since start: a large model
// spends minutes before its first step (the pinned pool, the model's build).
void Progress(const Run& run, const std::string& what) {
  if (run.info.rank != 0) return;
  const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - run.started).count();
  std::cerr << absl::StrFormat("zero3_train: [%7.1f s] %s\n", t, what) << std::flush;
}

void EmitLine(const Run& run, const std::string& metric, double value, const std::string& unit,
              nlohmann::json extra = nlohmann::json::object()) {
  Result r;
  r.bench = kBench;
  r.metric = metric;
  r.value = value;
  r.unit = unit;
  r.extra = std::move(extra);
  r.extra["preset"] = run.shape.name;
  r.extra["world_size"] = run.info.world_size;
  Emit(r, run.machine);
}

void EmitFailure(const Run& run, const Failure& f) {
  if (run.info.rank == 0) EmitLine(run, f.metric, 0, "", {{"reason", f.reason}});
  std::cerr << "zero3_train: rank " << run.info.rank << ": " << f.reason << "\n";
}

std::string MachineOf(const at::Device& device) {
  if (const char* env = std::getenv("SPILL_BENCH_MACHINE"); env != nullptr && *env) return env;
#if SPILL_ZERO3_CUDA
  cudaDeviceProp prop{};
  if (device.is_cuda() && cudaGetDeviceProperties(&prop, device.index()) == cudaSuccess) {
    return std::string(prop.name) + " / " + MachineName();
  }
#endif
  return MachineName();
}

// MemAvailable of /proc/meminfo in bytes (0 when unknown).
uint64_t HostAvailableBytes() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  uint64_t kib = 0;
  while (in >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return 0;
}

bool Offloaded(const Run& run) {
  return run.config.zero.offload_optimizer.device != OffloadDevice::kNone ||
         run.config.zero.offload_param.device != OffloadDevice::kNone;
}

// Bytes the file system holding `dir` has free for us; none when it cannot
// be asked (no directory given, or statvfs fails).
std::optional<uint64_t> FreeBytes(const std::string& dir) {
  struct statvfs fs {};
  if (dir.empty() || statvfs(dir.c_str(), &fs) != 0) return std::nullopt;
  return static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
}

// Bytes spilld holds for the whole node: 16-bit (or fp32) parameter and
// gradient shards, fp32 master and two moments, an fp32 accumulator with
// gradient accumulation (server/optimizer_host.h), times 1.1, plus 256 MiB.
// With the optimizer on NVMe its states stream through spilld's heap, not
// the pool; with parameters on NVMe the pool caches what offload_param
// allows (max_in_cpu plus the buffers, per rank of the node).
void SizeSpilld(Run& run) {
  const double b = run.config.bf16_enabled ? 2 : 4;
  const bool optim_nvme = run.config.zero.offload_optimizer.device == OffloadDevice::kNvme;
  const worker::OffloadParamConfig& p = run.config.zero.offload_param;
  const bool param_nvme = p.device == OffloadDevice::kNvme;
  const double per_param = b + (optim_nvme ? 0 : 12) +
                           (run.config.gradient_accumulation_steps > 1 ? 4 : 0);
  double param_bytes = b * run.total_params;
  if (param_nvme) {
    const double cached = static_cast<double>(p.max_in_cpu) +
                          static_cast<double>(p.buffer_count) * static_cast<double>(p.buffer_size);
    param_bytes = std::min(param_bytes, b * cached * run.info.world_size);
  }
  run.spilld_pinned =
      static_cast<uint64_t>((run.total_params * per_param + param_bytes) * 1.1) + (256ull << 20);
  if (param_nvme) {
    // spilld refuses a buffer_size its pool could not hold.
    const double buffer = b * static_cast<double>(p.buffer_size);
    run.spilld_pinned =
        std::max<uint64_t>(run.spilld_pinned, static_cast<uint64_t>(buffer * 1.1) + (256ull << 20));
  }
  // The largest object: one layer's fp32 master shard, rounded to 2 MiB.
  const double largest = static_cast<double>(worker::GptLargestLayerParams(run.shape)) /
                         run.info.world_size * 4;
  const uint64_t smallest = (static_cast<uint64_t>(largest) / (2 << 20) + 1) * (2 << 20);
  // States on NVMe: each rank stages one layer's three fp32 states in the
  // pool to import them (worker/engine_checkpoint.cc); a segment each, and one
  // more since the pool's other objects fragment it.
  const uint64_t staging = optim_nvme ? 3 * run.info.world_size + 1 : 0;
  // The segment that wastes least (2.7B: 41 GiB of packed segments instead
  // of 52 GiB, a 43.7 GiB pool instead of 51.5 once the margin above is
  // counted; 13B: 211 GiB instead of 242 GiB).
  PoolObjects objects;
  const worker::GptModel model = worker::GptModel::Create(run.shape).value();
  for (const auto& layer : model.layers()) objects.layers.push_back(layer->numel());
  objects.world = run.info.world_size;
  objects.element_bytes = run.config.bf16_enabled ? 2 : 4;
  objects.params = !param_nvme;
  objects.states = !optim_nvme;
  objects.accumulate = run.config.gradient_accumulation_steps > 1;
  const PinnedPlan plan = ChoosePinnedSegment(objects, smallest, 2 + staging);
  run.spilld_segment = plan.segment;
  run.spilld_pinned = std::max<uint64_t>(
      run.spilld_pinned, plan.packed + 2 * run.spilld_segment + (param_nvme ? param_bytes : 0));
  run.spilld_pinned += staging * run.spilld_segment;
  // NVMe: a parameter can hold three extents at once (published, newest,
  // being written) and a group member's states a shadow copy while it steps
  // (the tier spreads an extent over up to 64 free ranges per directory when
  // the space is fragmented): three times the NVMe-homed
  // bytes, at most 90% of what the directory's file system has free.
  const double nvme_bytes = ((optim_nvme ? 12 : 0) + (param_nvme ? b : 0)) * run.total_params;
  run.nvme_homed = static_cast<uint64_t>(nvme_bytes);
  run.spilld_nvme = std::max<uint64_t>(static_cast<uint64_t>(3 * nvme_bytes), 1ull << 30);
  if (const std::optional<uint64_t> free_bytes = FreeBytes(run.flags.nvme_dir)) {
    run.spilld_nvme = std::min(run.spilld_nvme, *free_bytes / 10 * 9);
  }
}

// Whether the model's states fit the node's host memory and each GPU
// (DeepSpeed's estimate, zero.Init rows). A Failure with kNoFit otherwise.
std::optional<Failure> CheckFits(const Run& run) {
  const bool offloaded = Offloaded(run);
  const uint64_t host = HostAvailableBytes();
  if (offloaded && host != 0 && run.spilld_pinned > host) {
    return Failure{kNoFit, "does_not_fit",
                   absl::StrFormat("spilld needs %.1f GiB pinned for %.3g parameters; the host has "
                                   "%.1f GiB available (MemAvailable)",
                                   run.spilld_pinned / 1073741824.0, run.total_params,
                                   host / 1073741824.0)};
  }
  // Less room than 1.5 times the NVMe-homed bytes fails mid-run for want of
  // a free extent; say so before starting.
  if (run.nvme_homed > 0 && run.spilld_nvme < run.nvme_homed / 2 * 3) {
    return Failure{kNoFit, "does_not_fit",
                   absl::StrFormat("%.1f GiB of states live on NVMe; spilld can have %.1f GiB of "
                                   "%s (90%% of its free space), less than 1.5 times that",
                                   run.nvme_homed / 1073741824.0, run.spilld_nvme / 1073741824.0,
                                   run.flags.nvme_dir)};
  }
#if SPILL_ZERO3_CUDA
  if (run.device.is_cuda()) {
    worker::EstimateInput in;
    in.total_params = static_cast<int64_t>(run.total_params);
    in.largest_layer_params = worker::GptLargestLayerParams(run.shape);
    in.gpus_per_node = run.info.world_size;
    absl::StatusOr<std::vector<worker::EstimateRow>> rows = worker::EstimateZero3(in);
    size_t free_b = 0, total_b = 0;
    if (rows.ok() && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
      for (const worker::EstimateRow& r : *rows) {
        if (!r.zero_init || r.offload_param != run.config.zero.offload_param.device ||
            r.offload_optimizer != run.config.zero.offload_optimizer.device) {
          continue;
        }
        if (static_cast<size_t>(r.gpu_bytes) > free_b) {
          return Failure{kNoFit, "does_not_fit",
                         absl::StrFormat("model states need %.1f GiB per GPU (DeepSpeed's "
                                         "estimate); the GPU has %.1f GiB free",
                                         r.gpu_bytes / 1073741824.0, free_b / 1073741824.0)};
        }
      }
    }
  }
#endif
  return std::nullopt;
}

// The spilld socket every rank of the node uses: private to this run's
// rendezvous port and user.
std::string SocketPath(const Run& run) {
  const char* tmp = std::getenv("TMPDIR");
  return absl::StrCat(tmp != nullptr && *tmp ? tmp : "/tmp", "/spill-zero3-", getuid(), "-",
                      run.info.master_port, "/spilld.sock");
}

std::vector<std::string> SpilldFlags(const Run& run) {
  std::vector<std::string> flags = {
      "--socket=" + SocketPath(run), absl::StrCat("--pinned-bytes=", run.spilld_pinned),
      absl::StrCat("--segment-bytes=", run.spilld_segment),
      absl::StrCat("--optim-threads=", run.flags.optim_threads),
      "--metrics-address=127.0.0.1:0"};
  if (run.flags.optim_nice >= 0) flags.push_back(absl::StrCat("--optim-nice=", run.flags.optim_nice));
  if (!run.flags.nvme_dir.empty()) {
    flags.push_back("--nvme-dirs=" + run.flags.nvme_dir);
    flags.push_back(absl::StrCat("--nvme-capacity=", run.spilld_nvme));
  }
  return flags;
}

// Rank 0 starts spilld (with offload); then every rank meets at a barrier
// and the others check that the socket is there.
absl::StatusOr<std::unique_ptr<worker::testing::SpilldFixture>> StartSpilld(
    const Run& run, worker::Collectives& coll) {
  std::unique_ptr<worker::testing::SpilldFixture> spilld;
  absl::Status started;
  const std::string sock = SocketPath(run);
  if (run.info.rank == 0 && Offloaded(run)) {
    unlink(sock.c_str());  // One left by a killed run on the same port.
    mkdir(sock.substr(0, sock.rfind('/')).c_str(), 0750);
    auto s = worker::testing::SpilldFixture::Start(SpilldFlags(run));
    if (s.ok()) spilld = std::move(*s);
    else started = absl::Status(s.status().code(), absl::StrCat("spilld: ", s.status().message()));
  }
  SPILL_RETURN_IF_ERROR(coll.Barrier(std::chrono::minutes(5)));
  SPILL_RETURN_IF_ERROR(started);
  struct stat st{};
  if (Offloaded(run) && stat(sock.c_str(), &st) != 0) {
    return absl::UnavailableError("rank 0 did not start spilld at " + sock + " (see its error)");
  }
  return spilld;
}

struct Totals {
  double seconds = 0;
  int64_t tokens = 0;
  int steps = 0;
  worker::StepStats split;  // Sums of the time fields.
  int speculative_steps = 0;  // Steps whose layer steps went out speculatively.
  int clipped_steps = 0;      // Steps whose clip coefficient was below 1.
  double max_grad_norm = 0;
  // spilld's optimizer over the measured steps (rank 0 with spilld; -1
  // when not read): wall time with a step or gradient pass running, and
  // the sums of the step and gradient passes' own times.
  double optimizer_busy_s = -1, optimizer_step_s = -1, optimizer_grad_s = -1;
  // Bytes spilld's NVMe tier read and wrote from the first measured step's
  // start until the last one's optimizer pass ended (never less than the
  // measured steps' traffic; up to the warm-up's tail more), and while the
  // measured steps ran (the tails in and out about cancel: the rate
  // spilld achieved). -1 when not read or spilld has no NVMe tier.
  double nvme_read_bytes = -1, nvme_written_bytes = -1, nvme_timed_bytes = -1;
};

// spilld's counters over the measured steps: optimizer busy, step and
// gradient-pass seconds, NVMe bytes read and written; -1 each without spilld
// (or, for the NVMe ones, without its NVMe tier).
using SpilldCounters = std::array<double, 5>;
bool HasNvmeCounters(const SpilldCounters& c) { return c[3] >= 0 && c[4] >= 0; }
SpilldCounters ReadSpilldCounters(worker::testing::SpilldFixture* spilld) {
  if (spilld == nullptr) return {-1, -1, -1, -1, -1};
  return {spilld->Metric("spill_optimizer_busy_seconds_total"),
          spilld->Metric("spill_optimizer_step_seconds_total"),
          spilld->Metric("spill_optimizer_grad_ready_seconds_total"),
          spilld->Metric("spill_nvme_read_bytes_total"),
          spilld->Metric("spill_nvme_written_bytes_total")};
}

// Warm-up and measured steps. A Failure on error (OOM included).
std::optional<Failure> Train(const Run& run, worker::Engine& engine, Totals& totals,
                             worker::testing::SpilldFixture* spilld) {
  SpilldCounters before{-1, -1, -1, -1, -1};
  absl::StatusOr<worker::ByteDataset> data = worker::ByteDataset::Open(worker::DefaultDataPath());
  if (!data.ok()) return Failure{kFailed, "error", std::string(data.status().message())};
  const int64_t gas = run.config.gradient_accumulation_steps;
  const int64_t mb = run.config.train_micro_batch_size_per_gpu;
  const int64_t seq = run.shape.seq_len;
  const int total_steps = run.flags.warmup + run.flags.steps;
  StepProfiler profiler(run.flags.profile, run.info.rank, run.device.is_cuda());
  const int profile_from = total_steps - std::min(run.flags.profile_steps, run.flags.steps);
  for (int step = 0; step < total_steps; ++step) {
    std::vector<worker::MicroBatch> micro;
    for (int64_t k = 0; k < gas; ++k) {
      absl::StatusOr<worker::TokenBatch> b = data->Batch(step * gas + k, run.info.rank, mb, seq, 1);
      if (!b.ok()) return Failure{kFailed, "error", std::string(b.status().message())};
      micro.push_back({at::tensor(b->tokens, at::kLong).view({mb, seq}).to(run.device),
                       at::tensor(b->targets, at::kLong).view({mb, seq}).to(run.device)});
    }
    if (step == run.flags.warmup) before = ReadSpilldCounters(spilld);
    if (step == profile_from) {
      engine.TakeOptimizerSpans();  // Only the profiled steps' spans.
      profiler.Start();
    }
    const auto t0 = std::chrono::steady_clock::now();
    absl::StatusOr<worker::StepStats> s;
    try {
      s = engine.TrainStep(micro);
    } catch (const c10::Error& e) {
      // An out-of-memory inside the model: the shape does not fit the GPU.
      const bool oom = std::string(e.what()).find("out of memory") != std::string::npos;
      return Failure{oom ? kNoFit : kFailed, oom ? "does_not_fit" : "error",
                     absl::StrCat("step ", step, ": ", e.what_without_backtrace())};
    }
    if (!s.ok()) return Failure{kFailed, "error", absl::StrCat("step ", step, ": ", s.status().ToString())};
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    Progress(run, absl::StrFormat("step %d of %d%s: %.3f s, loss %.4f", step + 1, total_steps,
                                  step < run.flags.warmup ? " (warm-up)" : "", sec, s->loss));
    if (step < run.flags.warmup) continue;
    if (step + 1 == total_steps) {
      // The NVMe bytes moved while the measured steps ran: the rate spilld
      // achieved (the byte count per step is read below, once quiet).
      const SpilldCounters end = ReadSpilldCounters(spilld);
      if (HasNvmeCounters(end) && HasNvmeCounters(before)) {
        totals.nvme_timed_bytes = end[3] - before[3] + end[4] - before[4];
      }
    }
    totals.seconds += sec;
    totals.tokens += s->tokens;
    totals.steps += 1;
    totals.split.forward_s += s->forward_s;
    totals.split.backward_s += s->backward_s;
    totals.split.reduce_s += s->reduce_s;
    totals.split.spilld_wait_s += s->spilld_wait_s;
    totals.split.optimizer_s += s->optimizer_s;
    totals.split.steps_sent_in_backward += s->steps_sent_in_backward;
    totals.split.steps_done_in_backward += s->steps_done_in_backward;
    totals.split.step_refusals += s->step_refusals;
    totals.split.steps_rescaled += s->steps_rescaled;
    totals.speculative_steps += s->speculative ? 1 : 0;
    totals.clipped_steps += s->clip < 1.0 ? 1 : 0;
    totals.max_grad_norm = std::max(totals.max_grad_norm, s->grad_norm);
  }
  if (profiler.started()) {
    // The profiled steps' spans end with the last step's optimizer passes.
    absl::Status p = engine.WaitForOptimizer();
    if (p.ok()) p = profiler.Finish(engine.TakeOptimizerSpans());
    if (!p.ok()) return Failure{kFailed, "error", "profile: " + p.ToString()};
  }
  // The last step's optimizer passes run on after TrainStep returns; the
  // counters are read once they are done, so the window is measured steps
  // plus that tail (and minus the warm-up's tail).
  if (spilld != nullptr && before[0] >= 0) {
    if (absl::Status w = engine.WaitForOptimizer(); !w.ok()) {
      return Failure{kFailed, "error", w.ToString()};
    }
    const SpilldCounters after = ReadSpilldCounters(spilld);
    if (HasNvmeCounters(after) && HasNvmeCounters(before)) {
      totals.nvme_read_bytes = after[3] - before[3];
      totals.nvme_written_bytes = after[4] - before[4];
    }
    if (after[0] >= 0) {
      totals.optimizer_busy_s = after[0] - before[0];
      totals.optimizer_step_s = after[1] - before[1];
      totals.optimizer_grad_s = after[2] - before[2];
    }

  }
  return std::nullopt;
}

// Measures every lane this run's mode uses (rank 0, after training).
absl::StatusOr<LaneRates> MeasureLanes(const Run& run, const StepTraffic& t) {
  LaneRates r;
  const at::ScalarType dtype = run.config.bf16_enabled ? at::kBFloat16 : at::kFloat;
  const bool cuda = run.device.is_cuda();
  const int64_t m = std::min<int64_t>(run.config.train_micro_batch_size_per_gpu * run.shape.seq_len,
                                      cuda ? 16384 : 512);
  SPILL_ASSIGN_OR_RETURN(r.gemm_flops_per_s,
                         MeasureGemm(run.device, dtype, m, run.shape.hidden, cuda ? 1.0 : 0.3));
  if (cuda && (t.h2d_bytes > 0 || t.d2h_bytes > 0)) {
    SPILL_ASSIGN_OR_RETURN(r.h2d_bytes_per_s, MeasurePinnedCopy(run.device.index(), 256 << 20, true));
    SPILL_ASSIGN_OR_RETURN(r.d2h_bytes_per_s, MeasurePinnedCopy(run.device.index(), 256 << 20, false));
  }
  if (t.optimizer_params > 0) {
    const uint64_t n = std::clamp<uint64_t>(static_cast<uint64_t>(t.optimizer_params), 1 << 16,
                                            cuda ? (64ull << 20) : (4ull << 20));
    SPILL_ASSIGN_OR_RETURN(r.optimizer_params_per_s,
                           MeasureOptimizerStep(n, run.flags.optim_threads, run.config.bf16_enabled));
  }
  if (t.nvme_bytes > 0) {
    // 2 GiB (a quarter of the free space when less): a virtio disk's rate
    // over 1 GiB passes was noisy. spilld has stopped, so nothing else
    // uses the disk.
    uint64_t bytes = cuda ? (2ull << 30) : (256ull << 20);  // CPU runs are tests
    if (const std::optional<uint64_t> free_bytes = FreeBytes(run.flags.nvme_dir)) {
      bytes = std::clamp<uint64_t>(*free_bytes / 4, 64ull << 20, bytes);
    }
    // At spilld's queue depth (aio.queue_depth, 32) and deeper: the better
    // of those that ran.
    absl::Status first_error;
    for (const int depth : {32, 128}) {
      absl::StatusOr<double> rate = MeasureNvme(run.flags.nvme_dir, bytes, depth);
      if (rate.ok()) {
        r.nvme_bytes_per_s = std::max(r.nvme_bytes_per_s, *rate);
      } else if (first_error.ok()) {
        first_error = rate.status();
      }
    }
    if (r.nvme_bytes_per_s <= 0) {
      return first_error.ok() ? absl::InternalError("the NVMe lane measured no rate") : first_error;
    }
  }
  return r;
}

void Report(const Run& run, const Totals& totals, StepTraffic t, LaneRates r) {
  // The NVMe lane counts the smaller of the model's bytes and what spilld's
  // tier moved: what spilld keeps cached in pinned memory never reaches the
  // disk, and write-backs it repeats or discards are its own overhead. Its
  // rate is the better of the disk's measured one and what spilld achieved
  // in training: the disk can do at least that.
  const double model_nvme_bytes = t.nvme_bytes;
  const double measured_nvme_rate = r.nvme_bytes_per_s;
  const double spilld_nvme_rate =
      totals.nvme_timed_bytes > 0 && totals.seconds > 0 ? totals.nvme_timed_bytes / totals.seconds
                                                        : 0;
  if (t.nvme_bytes > 0 && totals.nvme_read_bytes >= 0 && totals.steps > 0) {
    t.nvme_bytes = std::min(t.nvme_bytes,
                            (totals.nvme_read_bytes + totals.nvme_written_bytes) / totals.steps);
    r.nvme_bytes_per_s = std::max(r.nvme_bytes_per_s, spilld_nvme_rate);
  }
  const LaneTimes lanes = LaneTimesFor(t, r);
  const double tokens_per_s = totals.tokens / totals.seconds;
  const double tokens_per_step = static_cast<double>(totals.tokens) / totals.steps;
  const double flops_per_token = t.flops * run.info.world_size / tokens_per_step;
  const nlohmann::json mode = {
      {"offload_optimizer", worker::OffloadDeviceName(run.config.zero.offload_optimizer.device)},
      {"offload_param", worker::OffloadDeviceName(run.config.zero.offload_param.device)},
      {"bf16", run.config.bf16_enabled}, {"micro_batch", run.config.train_micro_batch_size_per_gpu},
      {"gas", run.config.gradient_accumulation_steps}, {"gradient_clipping", run.config.gradient_clipping}, {"seq", run.shape.seq_len},
      {"params", run.total_params}, {"steps", totals.steps}, {"device", run.device.str()},
      // The bound and TFLOP/s count model work: no recomputation, no
      // activation copies.
      {"gradient_checkpointing", run.flags.gradient_checkpointing},
      {"cpu_checkpointing", run.flags.cpu_checkpointing},
      // A run with engine or spilld knobs off their defaults, or profiled:
      // not the configuration a baseline of the same mode is compared with.
      {"speculative", run.flags.speculative},
      {"tuned", !run.flags.profile.empty() || run.flags.steps_in_flight != 2 ||
                    run.flags.acquire_ahead != 4 || run.flags.optim_nice != -1 ||
                    run.flags.optim_threads != std::max(1u, std::thread::hardware_concurrency())}};
  Result headline{kBench, "tokens_per_s", tokens_per_s, "tokens/s", "lane_bound",
              lanes.bound_s > 0 ? tokens_per_step / lanes.bound_s : 0, mode};
  headline.extra["preset"] = run.shape.name;
  headline.extra["world_size"] = run.info.world_size;
  headline.extra["bound_lane"] = lanes.bound_lane;
  headline.extra["target_ratio"] = ">= 0.8";
  // The host memory the run needed: spilld's pinned pool and its segment.
  headline.extra["spilld_pinned_gib"] = run.spilld_pinned / 1073741824.0;
  headline.extra["spilld_segment_mib"] = run.spilld_segment / 1048576.0;
  if (const int64_t peak = worker::DevicePeakBytes(run.device.is_cuda() ? run.device.index() : -1);
      peak >= 0) {
    headline.extra["gpu_peak_gib"] = peak / 1073741824.0;
  }
  Emit(headline, run.machine);
  EmitLine(run, "tflops", tokens_per_s * flops_per_token / 1e12, "TFLOP/s",
           {{"per_gpu", tokens_per_s * flops_per_token / 1e12 / run.info.world_size}});
  const double n = totals.steps;
  EmitLine(run, "step_s", totals.seconds / n, "s/step");
  EmitLine(run, "forward_s", totals.split.forward_s / n, "s/step");
  EmitLine(run, "backward_s", totals.split.backward_s / n, "s/step");
  EmitLine(run, "reduce_s", totals.split.reduce_s / n, "s/step");
  EmitLine(run, "spilld_wait_s", totals.split.spilld_wait_s / n, "s/step");
  EmitLine(run, "optimizer_s", totals.split.optimizer_s / n, "s/step",
           {{"layers", run.shape.layers + 2},
            {"steps_sent_in_backward", totals.split.steps_sent_in_backward / n},
            {"steps_done_in_backward", totals.split.steps_done_in_backward / n},
            {"step_refusals", totals.split.step_refusals / n},
            {"speculative", run.flags.speculative},
            {"speculative_steps", totals.speculative_steps},
            {"clipped_steps", totals.clipped_steps},
            {"max_grad_norm", totals.max_grad_norm},
            {"rescaled_layer_steps", totals.split.steps_rescaled}});
  if (totals.optimizer_busy_s >= 0) {
    // How much of the step spilld's CPU optimizer had work: busy ≈ step
    // time means the CPU lane itself is slower in training than alone;
    // busy < step means it waited for gradients or requests.
    EmitLine(run, "spilld_optimizer_busy_s", totals.optimizer_busy_s / n, "s/step",
             {{"step_pass_s", totals.optimizer_step_s / n},
              {"grad_pass_s", totals.optimizer_grad_s / n},
              {"busy_fraction", totals.optimizer_busy_s / totals.seconds}});
  }
  EmitLine(run, "lane_gpu_compute_s", lanes.gpu_compute_s, "s/step",
           {{"flops_per_rank", t.flops}, {"gemm_flops_per_s", r.gemm_flops_per_s},
            {"compute_device", run.device.str()}});
  EmitLine(run, "lane_pcie_s", lanes.pcie_s, "s/step",
           {{"h2d_bytes", t.h2d_bytes}, {"d2h_bytes", t.d2h_bytes},
            {"h2d_bytes_per_s", r.h2d_bytes_per_s}, {"d2h_bytes_per_s", r.d2h_bytes_per_s},
            {"measured", run.device.is_cuda()}});
  EmitLine(run, "lane_cpu_optimizer_s", lanes.cpu_optimizer_s, "s/step",
           {{"params", t.optimizer_params}, {"params_per_s", r.optimizer_params_per_s},
            {"threads", run.flags.optim_threads},
            {"steps_in_flight", run.flags.steps_in_flight},
            {"acquire_ahead", run.flags.acquire_ahead},
            {"optim_nice", run.flags.optim_nice}});
  EmitLine(run, "lane_nvme_s", lanes.nvme_s, "s/step",
           {{"bytes", t.nvme_bytes}, {"bytes_per_s", r.nvme_bytes_per_s},
            {"disk_bytes_per_s", measured_nvme_rate}, {"spilld_bytes_per_s", spilld_nvme_rate},
            {"model_bytes", model_nvme_bytes},
            {"spilld_read_bytes", totals.nvme_read_bytes >= 0 ? totals.nvme_read_bytes / n : -1},
            {"spilld_written_bytes",
             totals.nvme_written_bytes >= 0 ? totals.nvme_written_bytes / n : -1}});
  EmitLine(run, "lane_bound_s", lanes.bound_s, "s/step", {{"bound_lane", lanes.bound_lane}});
}

// Everything after the flags: fit check, spilld, engine, training, lanes.
int Bench(Run& run) {
  if (std::optional<Failure> f = CheckFits(run)) return EmitFailure(run, *f), f->code;
  absl::StatusOr<std::unique_ptr<worker::Collectives>> coll =
      run.device.is_cuda() ? worker::CreateNcclCollectives(run.info, run.device.index())
                           : worker::CreateGlooCollectives(run.info, worker::EngineOptions().timeout);
  if (!coll.ok()) return EmitFailure(run, {kFailed, "error", coll.status().ToString()}), kFailed;
  Progress(run, absl::StrFormat("%.3g parameters; starting spilld: %.1f GiB pinned in %.0f MiB "
                                "segments", run.total_params, run.spilld_pinned / 1073741824.0,
                                run.spilld_segment / 1048576.0));
  auto spilld = StartSpilld(run, **coll);
  if (!spilld.ok()) return EmitFailure(run, {kFailed, "error", spilld.status().ToString()}), kFailed;
  Progress(run, "spilld is up; building the model's shards");
  worker::EngineOptions o;
  o.config = run.config;
  o.shape = run.shape;
  o.session.job_id = "zero3_train";
  o.session.socket_path = SocketPath(run);
  o.device = run.device;
  o.max_steps_in_flight = run.flags.steps_in_flight;
  o.acquire_ahead = run.flags.acquire_ahead;
  using Speculation = worker::EngineOptions::Speculation;
  o.speculative_steps = run.flags.speculative == "always"  ? Speculation::kAlways
                        : run.flags.speculative == "never" ? Speculation::kNever
                                                           : Speculation::kAuto;
  o.gradient_checkpointing = run.flags.gradient_checkpointing;
  o.ranks_per_node = run.info.world_size;  // zero3_train runs on one node.
  o.record_optimizer_spans = !run.flags.profile.empty();
  absl::StatusOr<std::unique_ptr<worker::Engine>> engine = worker::Engine::Create(o, coll->get());
  if (!engine.ok()) {
    const bool mode = engine.status().code() == absl::StatusCode::kUnimplemented;
    const bool mem = engine.status().code() == absl::StatusCode::kResourceExhausted;
    Failure f{mode ? kUsage : mem ? kNoFit : kFailed, mem ? "does_not_fit" : "error",
              engine.status().ToString()};
    return EmitFailure(run, f), f.code;
  }
  Progress(run, absl::StrFormat("model built; training %d warm-up and %d measured steps",
                                run.flags.warmup, run.flags.steps));
  Totals totals;
  if (std::optional<Failure> f = Train(run, **engine, totals, spilld->get())) {
    return EmitFailure(run, *f), f->code;
  }
  const double tokens_per_rank_step = static_cast<double>(totals.tokens) / totals.steps / run.info.world_size;
  const worker::GptModel& model = (*engine)->model();
  const StepTraffic traffic = TrafficPerStep(
      run.config, run.total_params, 3 * model.ForwardFlopsPerToken(run.shape.seq_len) * tokens_per_rank_step,
      run.info.world_size);
  engine->reset();  // Closes the session before spilld stops.
  int rc = 0;
  // Every rank's session is closed before spilld stops; the lanes are
  // measured after, so that spilld's write-backs do not share the disk,
  // the CPU or the copy engines with them.
  absl::Status b = (*coll)->Barrier(std::chrono::minutes(5));
  if (*spilld) {
    if ((*spilld)->Stop() != 0) {
      std::cerr << "zero3_train: spilld exited with an error:\n" << (*spilld)->output();
      rc = kFailed;
    }
    const std::string sock = SocketPath(run);
    unlink(sock.c_str());
    rmdir(sock.substr(0, sock.rfind('/')).c_str());
  }
  if (run.info.rank == 0 && !b.ok()) {
    EmitFailure(run, {kFailed, "error", "barrier before the lanes: " + b.ToString()});
  } else if (run.info.rank == 0) {
    Progress(run, "spilld stopped; measuring the lanes");
    absl::StatusOr<LaneRates> rates = MeasureLanes(run, traffic);
    if (rates.ok()) {
      Report(run, totals, traffic, *rates);
    } else {
      EmitFailure(run, {kFailed, "error", "lane measurement: " + rates.status().ToString()});
      rc = kFailed;
    }
  }
  return b.ok() ? rc : kFailed;
}

int Main(int argc, char** argv) {
  Run run;
  absl::Status s = ParseZero3Flags(argc, argv, run.flags);
  if (s.ok()) s = ResolveZero3(run.flags, run.info, run.shape, run.config);
  if (!s.ok()) {
    std::cerr << "zero3_train: " << s.message() << "\n" << kZero3Usage;
    return kUsage;
  }
  run.device = run.flags.device == "cuda" ? at::Device(at::kCUDA, run.info.local_rank)
                                          : at::Device(at::kCPU);
#if SPILL_ZERO3_CUDA
  if (run.device.is_cuda()) cudaSetDevice(run.info.local_rank);
#endif
  run.machine = MachineOf(run.device);
  run.total_params = static_cast<double>(worker::GptTotalParams(run.shape));
  SizeSpilld(run);
  return Bench(run);
}

}  // namespace
}  // namespace spill::bench

int main(int argc, char** argv) { return spill::bench::Main(argc, argv); }
