#include "bench/zero3_lanes.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <liburing.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "server/optim/executor.h"
#include "server/optim/half.h"
#include "server/optim/optimizer.h"

#if SPILL_ZERO3_CUDA
#include <cuda_runtime.h>
#endif

namespace spill::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void Synchronize(const at::Device& device) {
#if SPILL_ZERO3_CUDA
  if (device.is_cuda()) cudaDeviceSynchronize();
#endif
}

}  // namespace

StepTraffic TrafficPerStep(const worker::DeepSpeedConfig& config, double total_params,
                           double flops_per_rank_step, int world) {
  using worker::OffloadDevice;
  StepTraffic t;
  t.flops = flops_per_rank_step;
  const double shard = total_params / world;
  const double b = config.bf16_enabled ? 2 : 4;
  const double gas = static_cast<double>(config.gradient_accumulation_steps);
  const OffloadDevice param = config.zero.offload_param.device;
  const OffloadDevice optim = config.zero.offload_optimizer.device;
  if (param != OffloadDevice::kNone) {
    t.h2d_bytes = 2 * gas * shard * b;
    t.d2h_bytes = gas * shard * b;
  } else if (optim != OffloadDevice::kNone) {
    t.h2d_bytes = shard * b;
    t.d2h_bytes = gas * shard * b;
  }
  if (optim != OffloadDevice::kNone) t.optimizer_params = total_params;
  if (optim == OffloadDevice::kNvme) t.nvme_bytes += 24 * total_params;
  if (param == OffloadDevice::kNvme) {
    // What the pinned cache cannot hold (DeepSpeed's swap buffers plus
    // max_in_cpu, per rank; all ranks here) is written back once stepped
    // (dirty, it must be before eviction) and read by each pass (forward and
    // backward of each micro-step). The write-back of cached parameters is
    // asynchronous and coalesces versions, so it bounds nothing.
    const worker::OffloadParamConfig& p = config.zero.offload_param;
    const double cached =
        (static_cast<double>(p.max_in_cpu) + static_cast<double>(p.buffer_count * p.buffer_size)) *
        world;
    const double uncached = std::max(0.0, total_params - cached);
    t.nvme_bytes += uncached * b + 2 * gas * uncached * b;
  }
  return t;
}

LaneTimes LaneTimesFor(const StepTraffic& t, const LaneRates& r) {
  LaneTimes l;
  auto time = [](double amount, double rate) { return amount > 0 && rate > 0 ? amount / rate : 0; };
  l.gpu_compute_s = time(t.flops, r.gemm_flops_per_s);
  l.pcie_s = time(t.h2d_bytes, r.h2d_bytes_per_s) + time(t.d2h_bytes, r.d2h_bytes_per_s);
  l.cpu_optimizer_s = time(t.optimizer_params, r.optimizer_params_per_s);
  l.nvme_s = time(t.nvme_bytes, r.nvme_bytes_per_s);
  const std::pair<double, const char*> lanes[] = {{l.gpu_compute_s, "gpu_compute"},
                                                  {l.pcie_s, "pcie"},
                                                  {l.cpu_optimizer_s, "cpu_optimizer"},
                                                  {l.nvme_s, "nvme"}};
  for (const auto& [s, name] : lanes) {
    if (s > l.bound_s) {
      l.bound_s = s;
      l.bound_lane = name;
    }
  }
  return l;
}

absl::StatusOr<double> MeasureGemm(const at::Device& device, at::ScalarType dtype, int64_t m,
                                   int64_t hidden, double seconds) {
  if (m < 1 || hidden < 1) {
    return absl::InvalidArgumentError(absl::StrCat("GEMM sizes must be positive: m=", m,
                                                   " hidden=", hidden));
  }
  try {
    const at::TensorOptions opts = at::TensorOptions().device(device).dtype(dtype);
    at::Tensor a = at::randn({m, hidden}, opts);
    at::Tensor b = at::randn({hidden, 4 * hidden}, opts);
    at::Tensor c = at::mm(a, b);  // warm-up: kernels chosen, workspace allocated
    Synchronize(device);
    const double flops = 2.0 * m * hidden * 4 * hidden;
    // Repeats that take about seconds/3 per timed run, best of three.
    auto t0 = Clock::now();
    at::mm_out(c, a, b);
    Synchronize(device);
    const int reps = std::clamp(static_cast<int>(seconds / 3 / std::max(Since(t0), 1e-6)), 1, 10000);
    double best = 1e30;
    for (int run = 0; run < 3; ++run) {
      t0 = Clock::now();
      for (int i = 0; i < reps; ++i) at::mm_out(c, a, b);
      Synchronize(device);
      best = std::min(best, Since(t0) / reps);
    }
    return flops / best;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("GEMM measurement: ", e.what_without_backtrace()));
  }
}

#if SPILL_ZERO3_CUDA
absl::StatusOr<double> MeasurePinnedCopy(int device, uint64_t bytes, bool h2d) {
  auto cuda = [](cudaError_t e, const char* what) {
    return e == cudaSuccess ? absl::OkStatus()
                            : absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
  };
  void* host = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (host == MAP_FAILED) return absl::ErrnoToStatus(errno, "mmap of the copy buffer");
  std::memset(host, 0x5C, bytes);
  void* dev = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  float ms = 0;
  const int iters = 8;
  absl::Status s = cuda(cudaSetDevice(device), "cudaSetDevice");
  if (s.ok()) s = cuda(cudaHostRegister(host, bytes, cudaHostRegisterDefault), "cudaHostRegister");
  const bool registered = s.ok();
  if (s.ok()) s = cuda(cudaMalloc(&dev, bytes), "cudaMalloc");
  if (s.ok()) s = cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  if (s.ok()) s = cuda(cudaEventCreate(&start), "event");
  if (s.ok()) s = cuda(cudaEventCreate(&stop), "event");
  void* dst = h2d ? dev : host;
  const void* src = h2d ? host : dev;
  const cudaMemcpyKind kind = h2d ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
  if (s.ok()) s = cuda(cudaMemcpyAsync(dst, src, bytes, kind, stream), "warm-up copy");
  if (s.ok()) s = cuda(cudaEventRecord(start, stream), "event");
  for (int i = 0; s.ok() && i < iters; ++i) {
    s = cuda(cudaMemcpyAsync(dst, src, bytes, kind, stream), "cudaMemcpyAsync");
  }
  if (s.ok()) s = cuda(cudaEventRecord(stop, stream), "event");
  if (s.ok()) s = cuda(cudaEventSynchronize(stop), "cudaEventSynchronize");
  if (s.ok()) s = cuda(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  if (start != nullptr) cudaEventDestroy(start);
  if (stop != nullptr) cudaEventDestroy(stop);
  if (stream != nullptr) cudaStreamDestroy(stream);
  if (dev != nullptr) cudaFree(dev);
  if (registered) cudaHostUnregister(host);
  munmap(host, bytes);
  if (!s.ok()) return s;
  return static_cast<double>(bytes) * iters / (ms / 1000.0);
}
#else
absl::StatusOr<double> MeasurePinnedCopy(int, uint64_t, bool) {
  return absl::FailedPreconditionError("built without CUDA: no PCIe lane");
}
#endif

absl::StatusOr<double> MeasureOptimizerStep(uint64_t n, uint32_t threads, bool bf16) {
  if (n == 0 || threads == 0) return absl::InvalidArgumentError("params and threads must be > 0");
  optim::Executor exec(threads - 1);
  std::vector<float> master(n, 1.f), m(n, 0.f), v(n, 0.f), g32(n);
  std::vector<uint16_t> g16(n), p16(n, 0);
  for (uint64_t i = 0; i < n; ++i) {
    g32[i] = ((i % 13) - 6.f) * 1e-3f;
    g16[i] = optim::FloatToBF16(g32[i]);
  }
  optim::Hyper h;
  h.weight_decay = 0.1f;
  const optim::ShardView view =
      bf16 ? optim::ShardView{DType::kBFloat16, g16.data(), master.data(), {m.data(), v.data()},
                              DType::kBFloat16, p16.data(), n}
           : optim::ShardView{DType::kFloat32, g32.data(), master.data(), {m.data(), v.data()},
                              DType::kFloat32, nullptr, n};
  double best = 1e30;
  for (uint64_t step = 1; step <= 4; ++step) {
    const auto t0 = Clock::now();
    absl::Status s = optim::Step(h, {step, 1.f}, view, exec);
    if (!s.ok()) return s;
    if (step > 1) best = std::min(best, Since(t0));
  }
  return static_cast<double>(n) / best;
}

namespace {

constexpr uint64_t kLaneBlock = 1 << 20;

// One range of blocks moved in one direction, `depth` requests in flight.
struct LaneStream {
  bool write = false;
  bool alternate = false;       // even blocks written, odd ones read (fio's rw, rwmixread=50)
  uint64_t next = 0, last = 0;  // blocks [next, last) not yet submitted
  char* buffers = nullptr;  // depth blocks; a request's slot is its user_data
};

// Runs the streams at once through one io_uring ring (O_DIRECT, 1 MiB
// requests), the way fio's io_uring engine drives a disk. user_data holds
// (stream << 32) | slot.
absl::Status UringPass(int fd, std::vector<LaneStream>& streams, int depth) {
  io_uring ring;
  const int rc = io_uring_queue_init(static_cast<unsigned>(depth * streams.size()), &ring, 0);
  if (rc < 0) return absl::ErrnoToStatus(-rc, "io_uring_queue_init");
  absl::Status status;
  std::vector<std::vector<int>> free_slots(streams.size());
  for (size_t i = 0; i < streams.size(); ++i) {
    for (int slot = depth - 1; slot >= 0; --slot) free_slots[i].push_back(slot);
  }
  auto fill = [&] {
    for (size_t i = 0; i < streams.size() && status.ok(); ++i) {
      LaneStream& st = streams[i];
      while (st.next < st.last && !free_slots[i].empty()) {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring);
        if (sqe == nullptr) return;
        const int slot = free_slots[i].back();
        free_slots[i].pop_back();
        char* buf = st.buffers + static_cast<uint64_t>(slot) * kLaneBlock;
        const uint64_t offset = st.next++ * kLaneBlock;
        if (st.alternate ? offset / kLaneBlock % 2 == 0 : st.write) {
          io_uring_prep_write(sqe, fd, buf, kLaneBlock, offset);
        } else {
          io_uring_prep_read(sqe, fd, buf, kLaneBlock, offset);
        }
        const uint64_t data = (static_cast<uint64_t>(i) << 32) | static_cast<uint64_t>(slot);
        io_uring_sqe_set_data64(sqe, data);
      }
    }
  };
  // Requests the kernel holds; a failed submit leaves its entries with us.
  int submitted_total = 0;
  auto more = [&] {
    if (!status.ok()) return false;
    for (const LaneStream& st : streams) {
      if (st.next < st.last) return true;
    }
    return false;
  };
  while (more() || submitted_total > 0) {
    fill();
    const int submitted = io_uring_submit(&ring);
    if (submitted < 0) {
      if (status.ok()) status = absl::ErrnoToStatus(-submitted, "io_uring_submit");
      if (submitted_total == 0) break;
    } else {
      submitted_total += submitted;
    }
    io_uring_cqe* cqe = nullptr;
    const int waited = io_uring_wait_cqe(&ring, &cqe);
    if (waited < 0) {
      if (waited == -EINTR) continue;
      if (status.ok()) status = absl::ErrnoToStatus(-waited, "io_uring_wait_cqe");
      break;  // nothing more can be reaped
    }
    const uint64_t data = io_uring_cqe_get_data64(cqe);
    const size_t i = data >> 32;
    LaneStream& st = streams[i];
    if (cqe->res != static_cast<int>(kLaneBlock) && status.ok()) {
      const char* what = st.alternate ? "O_DIRECT read/write"
                         : st.write   ? "O_DIRECT write"
                                      : "O_DIRECT read";
      status = cqe->res < 0 ? absl::ErrnoToStatus(-cqe->res, what)
                            : absl::DataLossError(absl::StrCat("short ", what));
    }
    io_uring_cqe_seen(&ring, cqe);
    --submitted_total;
    free_slots[i].push_back(static_cast<int>(data & 0xffffffffu));
  }
  io_uring_queue_exit(&ring);
  return status;
}

}  // namespace

absl::StatusOr<double> MeasureNvme(const std::string& dir, uint64_t bytes, int queue_depth) {
  if (queue_depth < 1) return absl::InvalidArgumentError("the NVMe lane needs a queue depth >= 1");
  const uint64_t blocks = std::max<uint64_t>(bytes / kLaneBlock, 2);
  bytes = blocks * kLaneBlock;
  const std::string path = dir + "/zero3_train_lane.tmp";
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_DIRECT | O_CLOEXEC, 0600);
  if (fd < 0) {
    const int err = errno;
    unlink(path.c_str());  // Some file systems create it before refusing O_DIRECT.
    return absl::ErrnoToStatus(err, "open " + path + " with O_DIRECT");
  }
  void* mem = nullptr;
  const uint64_t buffer_bytes = 2 * kLaneBlock * static_cast<uint64_t>(queue_depth);
  if (posix_memalign(&mem, 4096, buffer_bytes) != 0) {
    close(fd);
    unlink(path.c_str());
    return absl::ResourceExhaustedError("no memory for the NVMe lane's buffers");
  }
  // Allocated up front, so that the write pass does not extend the file
  // (extending O_DIRECT writes run one at a time on ext4).
  if (fallocate(fd, 0, 0, static_cast<off_t>(bytes)) != 0 && errno != EOPNOTSUPP) {
    const int err = errno;
    std::free(mem);
    close(fd);
    unlink(path.c_str());
    return absl::ErrnoToStatus(err, "fallocate " + path);
  }
  char* buffers = static_cast<char*>(mem);
  char* second = buffers + kLaneBlock * static_cast<uint64_t>(queue_depth);
  std::memset(buffers, 0xA5, buffer_bytes);
  auto pass = [&](std::vector<LaneStream> streams, double* seconds) {
    const auto t0 = Clock::now();
    absl::Status s = UringPass(fd, streams, queue_depth);
    if (s.ok() && fdatasync(fd) != 0) s = absl::ErrnoToStatus(errno, "fdatasync " + path);
    *seconds = Since(t0);
    return s;
  };
  double write_s = 0, read_s = 0, mixed_s = 0, alternate_s = 0;
  absl::Status s = pass({{.write = true, .next = 0, .last = blocks, .buffers = buffers}}, &write_s);
  if (s.ok()) s = pass({{.write = false, .next = 0, .last = blocks, .buffers = buffers}}, &read_s);
  // The optimizer's pattern: one half of the file read while the other is
  // rewritten, queue_depth requests in flight each way.
  if (s.ok()) {
    s = pass({{.write = false, .next = 0, .last = blocks / 2, .buffers = buffers},
              {.write = true, .next = blocks / 2, .last = blocks, .buffers = second}},
             &mixed_s);
  }
  // The same interleaved in one stream, as fio's mixed cell does it.
  if (s.ok()) {
    s = pass({{.alternate = true, .next = 0, .last = blocks, .buffers = buffers}}, &alternate_s);
  }
  std::free(mem);
  close(fd);
  unlink(path.c_str());
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  // Read and written bytes count alike; the best of the separate passes
  // and the mixed ones, since a bound must not be slower than the disk.
  const double separate = 2.0 * static_cast<double>(bytes) / (write_s + read_s);
  const double mixed = static_cast<double>(bytes) / mixed_s;
  const double alternate = static_cast<double>(bytes) / alternate_s;
  return std::max({separate, mixed, alternate});
}

}  // namespace spill::bench
