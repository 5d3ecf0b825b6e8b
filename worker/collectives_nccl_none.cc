// Built when CMake found no CUDA toolkit with NCCL.
#include "worker/collectives.h"

namespace spill::worker {

bool NcclAvailable() { return false; }

std::string DeviceMemorySummary(int) { return ""; }
int64_t DevicePeakBytes(int) { return -1; }

absl::StatusOr<std::unique_ptr<Collectives>> CreateNcclCollectives(const RendezvousInfo&, int,
                                                                   void*,
                                                                   std::chrono::milliseconds) {
  return absl::FailedPreconditionError(
      "this spill-train was built without NCCL (no CUDA toolkit with nccl.h at configure time)");
}

}  // namespace spill::worker
