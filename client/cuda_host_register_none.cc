// Built when the CUDA toolkit is absent (or SPILL_WITH_CUDA is off).
#include "client/cuda_host_register.h"

namespace spill::client::internal {

bool CudaCompiled() { return false; }

bool CudaUsable(std::string* reason) {
  if (reason != nullptr) *reason = "built without CUDA";
  return false;
}

absl::Status CudaHostRegister(void*, uint64_t) {
  return absl::FailedPreconditionError("libspill_client was built without CUDA");
}

void CudaHostUnregister(void*, uint64_t) {}

}  // namespace spill::client::internal
