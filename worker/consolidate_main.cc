// spill-consolidate: DeepSpeed's zero_to_fp32 for spill-train checkpoints.
// Reads a published ZeRO-3 checkpoint of any world size and writes every
// parameter's master weights, padding dropped, as one safetensors file.
//
//   spill-consolidate --checkpoint=DIR [--tag=TAG] --output=FILE
//   [--dtype=fp32|bf16|fp16]
//
// Without --tag the checkpoint named by DIR/latest is read. Exit status: 0 on
// success, 1 when the checkpoint cannot be read or the output written, 2 for
// a usage error.
#include <iostream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "worker/checkpoint.h"

namespace {

using spill::worker::CkptDType;

constexpr char kUsage[] =
    "usage: spill-consolidate --checkpoint=DIR [--tag=TAG] --output=FILE "
    "[--dtype=fp32|bf16|fp16]\n"
    "  --checkpoint=DIR   the checkpoint directory spill-train saved to\n"
    "  --tag=TAG          the checkpoint to read (default: the one DIR/latest "
    "names)\n"
    "  --output=FILE      the safetensors file to write\n"
    "  --dtype=TYPE       fp32 (default), bf16 or fp16 (round to nearest "
    "even)\n";

int Usage(const std::string& error) {
  std::cerr << "spill-consolidate: " << error << "\n" << kUsage;
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir, tag, output, dtype_name = "fp32";
  bool have_dir = false, have_output = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      return 0;
    }
    const size_t eq = arg.find('=');
    if (!absl::StartsWith(arg, "--") || eq == std::string::npos) {
      return Usage(absl::StrCat("unexpected argument '", arg, "'"));
    }
    const std::string name = arg.substr(2, eq - 2), value = arg.substr(eq + 1);
    if (value.empty()) return Usage(absl::StrCat("--", name, " needs a value"));
    if (name == "checkpoint") {
      dir = value;
      have_dir = true;
    } else if (name == "tag") {
      tag = value;
    } else if (name == "output") {
      output = value;
      have_output = true;
    } else if (name == "dtype") {
      dtype_name = value;
    } else {
      return Usage(absl::StrCat("unknown flag --", name));
    }
  }
  if (!have_dir) return Usage("--checkpoint=DIR is required");
  if (!have_output) return Usage("--output=FILE is required");
  CkptDType dtype;
  if (dtype_name == "fp32")
    dtype = CkptDType::kFp32;
  else if (dtype_name == "bf16")
    dtype = CkptDType::kBf16;
  else if (dtype_name == "fp16")
    dtype = CkptDType::kFp16;
  else
    return Usage(absl::StrCat("--dtype '", dtype_name, "' is not one of fp32, bf16, fp16"));

  absl::StatusOr<spill::worker::CkptMeta> meta = spill::worker::ReadCheckpointMeta(dir, tag);
  absl::Status status = meta.status();
  if (status.ok()) status = spill::worker::ConsolidateCheckpoint(dir, tag, output, dtype);
  if (!status.ok()) {
    std::cerr << "spill-consolidate: " << status << "\n";
    return 1;
  }
  int64_t params = 0, tensors = 0;
  for (const auto& layer : meta->layers) {
    for (const auto& p : layer.params) {
      int64_t n = 1;
      for (int64_t d : p.shape) n *= d;
      params += n;
      ++tensors;
    }
  }
  std::cout << "spill-consolidate: wrote " << tensors << " tensors (" << params << " parameters, "
            << dtype_name << ") of step " << meta->step << " (world size " << meta->world_size
            << ") to " << output << "\n";
  return 0;
}
