// ZeRO-3 memory estimate: DeepSpeed's estimate_zero3_model_states_mem_needs
// (the table estimate_zero3_model_states_mem_needs_all_cold prints: bytes
// per node of CPU memory and per GPU, for each offload_param /
// offload_optimizer combination, with and without zero.Init), plus rows for
// NVMe offload that DeepSpeed's estimator lacks.
//
// DeepSpeed's formulas (model states only; activations not included):
//   largest_layer_memory = 4 * largest_layer_params
//   param=cpu, optimizer=cpu:  GPU largest_layer_memory
//       CPU total * 18 / nodes * f            (zero_init=1)
//       CPU total * max(4 * gpus_per_node, 18 / nodes) * f   (zero_init=0)
//   param=none, optimizer=cpu: GPU largest_layer_memory + 2 * total / gpus
//       CPU total * 16 / nodes * f, or max(4 * gpus_per_node, 16 / nodes)
//   param=none, optimizer=none: GPU largest_layer_memory + 18 * total / gpus
//       CPU largest_layer_params * 4 * gpus_per_node * f, or
//       total * 4 * gpus_per_node * f
// with f = additional_buffer_factor (1.5) and gpus = nodes * gpus_per_node.
//
// NVMe rows (zero_init=1): the 12 bytes/param of fp32 master weights and Adam
// moments move to NVMe when the optimizer is offloaded there, the 2
// bytes/param of 16-bit parameters when parameters are; the CPU keeps the rest
// of DeepSpeed's accounting (scaled by f) plus the swap buffers:
//   optimizer: gpus_per_node * optimizer_buffer_count * min(sub_group_size,
//              total / gpus) * 4 bytes (fp32 buffers of one sub-group, as
//              DeepSpeed's optimizer swapper sizes them)
//   parameters: gpus_per_node * param_buffer_count * param_buffer_size * 2
#ifndef SPILL_WORKER_ESTIMATE_H_
#define SPILL_WORKER_ESTIMATE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/config.h"

namespace spill::worker {

struct EstimateInput {
  int64_t total_params = 0;
  int64_t largest_layer_params = 0;
  int64_t gpus_per_node = 1;
  int64_t nodes = 1;
  double additional_buffer_factor = 1.5;
  // NVMe rows (defaults are DeepSpeed's config defaults).
  int64_t sub_group_size = 1'000'000'000;
  int64_t optimizer_buffer_count = 4;
  int64_t param_buffer_count = 5;
  int64_t param_buffer_size = 100'000'000;
  // The node's host memory; when given each row says what is left of it.
  std::optional<int64_t> host_memory_bytes;
};

struct EstimateRow {
  OffloadDevice offload_param = OffloadDevice::kNone;
  OffloadDevice offload_optimizer = OffloadDevice::kNone;
  bool zero_init = true;
  int64_t cpu_bytes = 0;   // Per node.
  int64_t gpu_bytes = 0;   // Per GPU.
  int64_t nvme_bytes = 0;  // Per node.
  int64_t swap_buffer_bytes = 0;  // Per node, part of cpu_bytes.
  // host_memory_bytes - cpu_bytes (negative: does not fit), when given.
  std::optional<int64_t> host_left_bytes;
};

// DeepSpeed's three offload combinations x zero_init 1/0 (its order), then
// the NVMe rows (optimizer nvme with param cpu, nvme, none). InvalidArgument
// naming the field for a non-positive count or a largest layer above the
// total.
absl::StatusOr<std::vector<EstimateRow>> EstimateZero3(const EstimateInput& input);

// The table in DeepSpeed's layout ("  per CPU  |  per GPU |   Options"),
// GiB with two decimals, followed by the NVMe table.
std::string FormatEstimateTable(const EstimateInput& input, const std::vector<EstimateRow>& rows);
// {"input": {...}, "rows": [{"offload_param": "cpu", ..., "cpu_bytes": N}]}.
std::string EstimateJson(const EstimateInput& input, const std::vector<EstimateRow>& rows);

}  // namespace spill::worker

#endif  // SPILL_WORKER_ESTIMATE_H_
