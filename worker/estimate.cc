#include "worker/estimate.h"

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace spill::worker {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

absl::Status CheckInput(const EstimateInput& in) {
  const std::pair<const char*, int64_t> counts[] = {
      {"total_params", in.total_params},
      {"largest_layer_params", in.largest_layer_params},
      {"gpus_per_node", in.gpus_per_node},
      {"nodes", in.nodes},
      {"sub_group_size", in.sub_group_size},
      {"optimizer_buffer_count", in.optimizer_buffer_count},
      {"param_buffer_count", in.param_buffer_count},
      {"param_buffer_size", in.param_buffer_size}};
  for (const auto& [name, value] : counts) {
    if (value < 1) return absl::InvalidArgumentError(absl::StrCat(name, "=", value, " must be >= 1"));
  }
  if (in.largest_layer_params > in.total_params) {
    return absl::InvalidArgumentError(absl::StrCat("largest_layer_params=", in.largest_layer_params,
                                                   " exceeds total_params=", in.total_params));
  }
  if (!(in.additional_buffer_factor >= 1.0)) {
    return absl::InvalidArgumentError("additional_buffer_factor must be >= 1");
  }
  return absl::OkStatus();
}

// DeepSpeed's estimate_zero3_model_states_mem_needs, the same arithmetic
// (float products truncated to int at the end).
EstimateRow DeepSpeedRow(const EstimateInput& in, bool cpu_offload, bool cpu_offload_params,
                         bool zero_init) {
  const double total = static_cast<double>(in.total_params);
  const double per_node = static_cast<double>(in.gpus_per_node);
  const double gpus = static_cast<double>(in.nodes * in.gpus_per_node);
  const double gpus_factor = 1.0 / static_cast<double>(in.nodes);
  const double f = in.additional_buffer_factor;
  const int64_t largest_layer_memory = 4 * in.largest_layer_params;
  double cpu = 0;
  int64_t gpu = 0;
  if (cpu_offload) {
    const double state = cpu_offload_params ? 18 : 16;
    gpu = cpu_offload_params ? largest_layer_memory
                             : largest_layer_memory + static_cast<int64_t>(2 * total / gpus);
    cpu = zero_init ? total * state * gpus_factor * f
                    : total * std::max(4 * per_node, state * gpus_factor) * f;
  } else {
    gpu = largest_layer_memory + static_cast<int64_t>(18 * total / gpus);
    cpu = zero_init ? static_cast<double>(in.largest_layer_params) * 4 * per_node * f
                    : total * 4 * per_node * f;
  }
  EstimateRow row;
  row.offload_param = cpu_offload_params ? OffloadDevice::kCpu : OffloadDevice::kNone;
  row.offload_optimizer = cpu_offload ? OffloadDevice::kCpu : OffloadDevice::kNone;
  row.zero_init = zero_init;
  row.cpu_bytes = static_cast<int64_t>(cpu);
  row.gpu_bytes = gpu;
  return row;
}

EstimateRow NvmeRow(const EstimateInput& in, OffloadDevice param) {
  const double total = static_cast<double>(in.total_params);
  const double gpus = static_cast<double>(in.nodes * in.gpus_per_node);
  const double per_node_params = total / static_cast<double>(in.nodes);
  const double f = in.additional_buffer_factor;
  const int64_t partition = static_cast<int64_t>(total / gpus);
  const int64_t opt_buffers = in.gpus_per_node * in.optimizer_buffer_count *
                              std::min(in.sub_group_size, std::max<int64_t>(partition, 1)) * 4;
  const int64_t param_buffers = in.gpus_per_node * in.param_buffer_count * in.param_buffer_size * 2;
  EstimateRow row;
  row.offload_optimizer = OffloadDevice::kNvme;
  row.offload_param = param;
  row.zero_init = true;
  const int64_t largest_layer_memory = 4 * in.largest_layer_params;
  double resident = 4;  // fp32 gradients stay in host memory for the step.
  row.nvme_bytes = static_cast<int64_t>(12 * per_node_params);
  row.swap_buffer_bytes = opt_buffers;
  switch (param) {
    case OffloadDevice::kCpu:
      resident += 2;
      row.gpu_bytes = largest_layer_memory;
      break;
    case OffloadDevice::kNvme:
      row.nvme_bytes += static_cast<int64_t>(2 * per_node_params);
      row.swap_buffer_bytes += param_buffers;
      row.gpu_bytes = largest_layer_memory;
      break;
    case OffloadDevice::kNone:
      row.gpu_bytes = largest_layer_memory + static_cast<int64_t>(2 * total / gpus);
      break;
  }
  row.cpu_bytes = static_cast<int64_t>(per_node_params * resident * f) + row.swap_buffer_bytes;
  return row;
}

std::string Padded(OffloadDevice d) {
  return d == OffloadDevice::kNone ? "none" : absl::StrFormat("%-4s", OffloadDeviceName(d));
}

std::string Options(const EstimateRow& r) {
  return absl::StrCat("offload_param=", Padded(r.offload_param),
                      ", offload_optimizer=", Padded(r.offload_optimizer),
                      ", zero_init=", r.zero_init ? 1 : 0);
}

}  // namespace

absl::StatusOr<std::vector<EstimateRow>> EstimateZero3(const EstimateInput& in) {
  absl::Status ok = CheckInput(in);
  if (!ok.ok()) return ok;
  std::vector<EstimateRow> rows;
  for (bool cpu_offload : {true, false}) {
    for (bool cpu_offload_params : {true, false}) {
      if (!cpu_offload && cpu_offload_params) continue;
      for (bool zero_init : {true, false}) {
        rows.push_back(DeepSpeedRow(in, cpu_offload, cpu_offload_params, zero_init));
      }
    }
  }
  for (OffloadDevice param : {OffloadDevice::kCpu, OffloadDevice::kNvme, OffloadDevice::kNone}) {
    rows.push_back(NvmeRow(in, param));
  }
  if (in.host_memory_bytes.has_value()) {
    for (EstimateRow& row : rows) row.host_left_bytes = *in.host_memory_bytes - row.cpu_bytes;
  }
  return rows;
}

std::string FormatEstimateTable(const EstimateInput& in, const std::vector<EstimateRow>& rows) {
  std::string out = absl::StrCat(
      "Estimated memory needed for params, optim states and gradients for a:\n",
      "HW: Setup with ", in.nodes, " node", in.nodes == 1 ? "" : "s", ", ", in.gpus_per_node,
      " GPU", in.gpus_per_node == 1 ? "" : "s", " per node.\n", "SW: Model with ",
      in.total_params / 1'000'000, "M total params, ", in.largest_layer_params / 1'000'000,
      "M largest layer params.\n", "  per CPU  |  per GPU |   Options\n");
  for (const EstimateRow& r : rows) {
    if (r.offload_optimizer == OffloadDevice::kNvme) continue;
    absl::StrAppend(&out, absl::StrFormat(" %7.2fGB | %6.2fGB | %s\n", r.cpu_bytes / kGiB,
                                          r.gpu_bytes / kGiB, Options(r)));
  }
  absl::StrAppend(&out,
                  "NVMe offload (not in DeepSpeed's estimator; CPU includes swap buffers):\n"
                  "  per CPU  |  per GPU | NVMe/node | swap buf |",
                  in.host_memory_bytes ? " host left |" : "", "   Options\n");
  for (const EstimateRow& r : rows) {
    if (r.offload_optimizer != OffloadDevice::kNvme) continue;
    std::string left = r.host_left_bytes
                           ? absl::StrFormat(" %7.2fGB |", *r.host_left_bytes / kGiB)
                           : std::string();
    absl::StrAppend(&out, absl::StrFormat(" %7.2fGB | %6.2fGB | %7.2fGB | %6.2fGB |%s %s\n",
                                          r.cpu_bytes / kGiB, r.gpu_bytes / kGiB,
                                          r.nvme_bytes / kGiB, r.swap_buffer_bytes / kGiB, left,
                                          Options(r)));
  }
  if (in.host_memory_bytes.has_value()) {
    absl::StrAppend(&out, absl::StrFormat("Host memory %.2fGB; left after each row:",
                                          *in.host_memory_bytes / kGiB));
    for (const EstimateRow& r : rows) {
      if (r.offload_optimizer == OffloadDevice::kNvme) continue;
      absl::StrAppend(&out, absl::StrFormat(" %.2fGB", *r.host_left_bytes / kGiB));
    }
    absl::StrAppend(&out, "\n");
  }
  return out;
}

std::string EstimateJson(const EstimateInput& in, const std::vector<EstimateRow>& rows) {
  nlohmann::json j;
  j["input"] = {{"total_params", in.total_params},
                {"largest_layer_params", in.largest_layer_params},
                {"gpus_per_node", in.gpus_per_node},
                {"nodes", in.nodes},
                {"additional_buffer_factor", in.additional_buffer_factor},
                {"sub_group_size", in.sub_group_size},
                {"optimizer_buffer_count", in.optimizer_buffer_count},
                {"param_buffer_count", in.param_buffer_count},
                {"param_buffer_size", in.param_buffer_size}};
  if (in.host_memory_bytes) j["input"]["host_memory_bytes"] = *in.host_memory_bytes;
  j["rows"] = nlohmann::json::array();
  for (const EstimateRow& r : rows) {
    nlohmann::json row = {{"offload_param", OffloadDeviceName(r.offload_param)},
                          {"offload_optimizer", OffloadDeviceName(r.offload_optimizer)},
                          {"zero_init", r.zero_init},
                          {"cpu_bytes", r.cpu_bytes},
                          {"gpu_bytes", r.gpu_bytes},
                          {"nvme_bytes", r.nvme_bytes},
                          {"swap_buffer_bytes", r.swap_buffer_bytes}};
    if (r.host_left_bytes) row["host_left_bytes"] = *r.host_left_bytes;
    j["rows"].push_back(row);
  }
  return j.dump();
}

}  // namespace spill::worker
