// The lanes of zero3_train's lane bound, each measured in the running
// process on this machine: how fast one step could go if only GPU compute,
// only PCIe copies, only spilld's CPU optimizer or only NVMe traffic limited
// it. The bound is the slowest lane.
//
//   LaneRates r;
//   SPILL_ASSIGN_OR_RETURN(r.gemm_flops, MeasureGemm(device, dtype, m, hidden));
//   StepTraffic t = TrafficPerStep(config, total_params, world, shard_bytes...);
//   LaneTimes lanes = LaneTimesFor(t, r);
//
// Not thread-safe (each function uses the whole device or all given threads
// while it runs).
#ifndef SPILL_BENCH_ZERO3_LANES_H_
#define SPILL_BENCH_ZERO3_LANES_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "worker/config.h"

namespace spill::bench {

// Work and bytes one optimizer step moves through each lane, per rank
// unless noted.
struct StepTraffic {
  double flops = 0;          // Model FLOPs (forward + backward = 3x forward).
  double h2d_bytes = 0;      // Pinned host -> GPU.
  double d2h_bytes = 0;      // GPU -> pinned host.
  double optimizer_params = 0;  // Elements spilld steps, all ranks of the node.
  double nvme_bytes = 0;     // Read + written on the NVMe tier, all ranks.
};

// Measured throughputs (0 = lane not used or not measurable here).
struct LaneRates {
  double gemm_flops_per_s = 0;
  double h2d_bytes_per_s = 0;
  double d2h_bytes_per_s = 0;
  double optimizer_params_per_s = 0;
  double nvme_bytes_per_s = 0;
};

// Seconds per step each lane needs; bound_s is their maximum.
struct LaneTimes {
  double gpu_compute_s = 0;
  double pcie_s = 0;
  double cpu_optimizer_s = 0;
  double nvme_s = 0;
  double bound_s = 0;
  std::string bound_lane;  // "gpu_compute", "pcie", "cpu_optimizer", "nvme"
};

// What the engine moves per step for the config's offload modes and
// precision: with offload_param cpu, every micro-step gathers each layer's
// 16-bit shard H2D twice (forward and backward) and copies its gradient
// shard D2H once; with offload_param none and offload_optimizer cpu, the
// gradient shard goes D2H each micro-step and the updated parameter shard
// H2D once per step; with both none, nothing crosses PCIe. The optimizer
// lane counts every parameter of the node (one spilld steps all ranks'
// shards with the same threads). NVMe: fp32 master and two moments read
// and written (24 bytes/param) with offload_optimizer nvme; with
// offload_param nvme, the 16-bit parameters the pinned cache cannot hold
// (max_in_cpu plus buffer_count * buffer_size per rank) written back once
// per step and read twice per micro-step (the write-back of cached ones is
// asynchronous and coalesces, so it is not charged).
StepTraffic TrafficPerStep(const worker::DeepSpeedConfig& config, double total_params,
                           double flops_per_rank_step, int world);

LaneTimes LaneTimesFor(const StepTraffic& traffic, const LaneRates& rates);

// FLOP/s of at::mm [m, hidden] x [hidden, 4*hidden] (the MLP's first GEMM)
// in `dtype` on `device`, best of timed repeats after a warm-up (about
// `seconds` of work). InvalidArgument for non-positive sizes; the tensor
// library's error (e.g. out of memory) as Internal.
absl::StatusOr<double> MeasureGemm(const at::Device& device, at::ScalarType dtype, int64_t m,
                                   int64_t hidden, double seconds);

// Bytes/s of cudaMemcpyAsync between a cudaHostRegister'd buffer of `bytes`
// (page-aligned mmap, as spilld's shm slots are registered by the client)
// and device memory of CUDA device `device`; h2d selects the direction.
// FailedPrecondition when built without CUDA; Internal with CUDA's message.
absl::StatusOr<double> MeasurePinnedCopy(int device, uint64_t bytes, bool h2d);

// Parameters/s of spill::optim's fused AdamW step (bf16 gradient and
// parameter when bf16, else fp32) over `params` elements with `threads`
// threads (the calling thread included), best of three after a warm-up.
absl::StatusOr<double> MeasureOptimizerStep(uint64_t params, uint32_t threads, bool bf16);

// Bytes/s (read and written bytes alike) of O_DIRECT traffic on a `bytes`
// file in `dir`, 1 MiB requests through one io_uring ring with queue_depth
// requests in flight each way: the best of sequential writes then reads,
// the optimizer's mix (half the file read while the other half is
// rewritten) and fio's (blocks written and read in turn). The file is
// removed after. InvalidArgument for a queue depth
// below 1; the errno status naming the path otherwise.
absl::StatusOr<double> MeasureNvme(const std::string& dir, uint64_t bytes, int queue_depth);

}  // namespace spill::bench

#endif  // SPILL_BENCH_ZERO3_LANES_H_
