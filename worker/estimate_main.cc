// spill-estimate: DeepSpeed's ZeRO-3 memory estimate (per-CPU and per-GPU
// bytes for each offload combination) plus NVMe rows, for a model given by
// its parameter counts or a GPT preset, and a node shape.
//
//   spill-estimate --preset=1.3B --gpus-per-node=8 [--nodes=1] [--json]
//   spill-estimate --params=2851e6 --largest-layer=32.9e6 --gpus-per-node=8
//
// Exit status: 0 on success, 2 for a usage error.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/units.h"
#include "worker/estimate.h"
#include "worker/gpt_shape.h"

namespace {

using spill::worker::EstimateInput;

constexpr char kUsage[] =
    "usage: spill-estimate (--preset=NAME | --params=N --largest-layer=N) [options]\n"
    "  --preset=NAME          GPT shape: 125M, 350M, 1.3B, 2.7B, 6.7B, 13B\n"
    "  --params=N             total parameters (1.3e9 accepted)\n"
    "  --largest-layer=N      parameters of the largest layer\n"
    "  --gpus-per-node=N      (1)    --nodes=N (1)\n"
    "  --buffer-factor=X      additional_buffer_factor (1.5)\n"
    "  --sub-group-size=N     (1e9)  --optimizer-buffer-count=N (4)\n"
    "  --param-buffer-count=N (5)    --param-buffer-size=N (1e8)\n"
    "  --host-memory=SIZE     node host memory (e.g. 128GiB): show what is left\n"
    "  --json                 one JSON object instead of the table\n";

int Usage(const std::string& error) {
  std::cerr << "spill-estimate: " << error << "\n" << kUsage;
  return 2;
}

// "1.3e9", "125000000": a positive integral count.
bool ParseCount(const std::string& text, int64_t* out) {
  double d = 0;
  if (!absl::SimpleAtod(text, &d) || !std::isfinite(d) || d < 1 || d > 9e18 ||
      std::floor(d) != d) {
    return false;
  }
  *out = static_cast<int64_t>(d);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  EstimateInput in;
  bool json = false, have_params = false, have_largest = false;
  std::string preset;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      return 0;
    }
    if (arg == "--json") {
      json = true;
      continue;
    }
    size_t eq = arg.find('=');
    if (!absl::StartsWith(arg, "--") || eq == std::string::npos) {
      return Usage(absl::StrCat("unexpected argument '", arg, "'"));
    }
    std::string name = arg.substr(2, eq - 2), value = arg.substr(eq + 1);
    int64_t* count = nullptr;
    if (name == "preset") {
      preset = value;
      continue;
    } else if (name == "params") {
      count = &in.total_params;
      have_params = true;
    } else if (name == "largest-layer") {
      count = &in.largest_layer_params;
      have_largest = true;
    } else if (name == "gpus-per-node") {
      count = &in.gpus_per_node;
    } else if (name == "nodes") {
      count = &in.nodes;
    } else if (name == "sub-group-size") {
      count = &in.sub_group_size;
    } else if (name == "optimizer-buffer-count") {
      count = &in.optimizer_buffer_count;
    } else if (name == "param-buffer-count") {
      count = &in.param_buffer_count;
    } else if (name == "param-buffer-size") {
      count = &in.param_buffer_size;
    } else if (name == "buffer-factor") {
      if (!absl::SimpleAtod(value, &in.additional_buffer_factor)) {
        return Usage(absl::StrCat("--buffer-factor: '", value, "' is not a number"));
      }
      continue;
    } else if (name == "host-memory") {
      absl::StatusOr<uint64_t> bytes = spill::ParseSize(value);
      if (!bytes.ok()) return Usage(absl::StrCat("--host-memory: ", bytes.status().message()));
      in.host_memory_bytes = static_cast<int64_t>(*bytes);
      continue;
    } else {
      return Usage(absl::StrCat("unknown flag --", name));
    }
    if (!ParseCount(value, count)) {
      return Usage(absl::StrCat("--", name, ": '", value, "' is not a positive integer"));
    }
  }
  if (!preset.empty()) {
    if (have_params || have_largest) return Usage("--preset excludes --params/--largest-layer");
    absl::StatusOr<spill::worker::GptShape> shape = spill::worker::GptPreset(preset);
    if (!shape.ok()) return Usage(std::string(shape.status().message()));
    in.total_params = spill::worker::GptTotalParams(*shape);
    in.largest_layer_params = spill::worker::GptLargestLayerParams(*shape);
  } else if (!have_params || !have_largest) {
    return Usage("give --preset, or both --params and --largest-layer");
  }
  absl::StatusOr<std::vector<spill::worker::EstimateRow>> rows = spill::worker::EstimateZero3(in);
  if (!rows.ok()) return Usage(std::string(rows.status().message()));
  if (json) {
    std::cout << spill::worker::EstimateJson(in, *rows) << "\n";
  } else {
    if (!preset.empty()) std::cout << "Model: GPT preset " << preset << "\n";
    std::cout << spill::worker::FormatEstimateTable(in, *rows);
  }
  return 0;
}
