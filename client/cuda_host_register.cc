// Built only when the CUDA toolkit is found; links CUDA::cudart.
#include "client/cuda_host_register.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <mutex>

#include "absl/strings/str_cat.h"

namespace spill::client::internal {
namespace {

struct Probe {
  bool usable = false;
  std::string reason;
};

Probe RunProbe() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // Leave no error behind for the caller's CUDA code.
    return {false, absl::StrCat("no CUDA device (cudaGetDeviceCount: ", cudaGetErrorString(err), ")")};
  }
  if (count == 0) return {false, "no CUDA device (cudaGetDeviceCount returned 0)"};
  return {true, ""};
}

}  // namespace

bool CudaCompiled() { return true; }

bool CudaUsable(std::string* reason) {
  static const Probe probe = RunProbe();
  if (reason != nullptr) *reason = probe.reason;
  return probe.usable;
}

absl::Status CudaHostRegister(void* addr, uint64_t size) {
  auto* base = static_cast<uint8_t*>(addr);
  for (uint64_t done = 0; done < size;) {
    uint64_t chunk = std::min(size - done, kMaxCudaRegisterChunk);
    cudaError_t err = cudaHostRegister(base + done, chunk, cudaHostRegisterDefault);
    if (err != cudaSuccess) {
      cudaGetLastError();
      CudaHostUnregister(addr, done);
      return absl::InternalError(absl::StrCat("cudaHostRegister of ", chunk, " bytes at offset ",
                                              done, " failed: ", cudaGetErrorString(err)));
    }
    done += chunk;
  }
  return absl::OkStatus();
}

void CudaHostUnregister(void* addr, uint64_t size) {
  auto* base = static_cast<uint8_t*>(addr);
  for (uint64_t done = 0; done < size; done += std::min(size - done, kMaxCudaRegisterChunk)) {
    if (cudaHostUnregister(base + done) != cudaSuccess) cudaGetLastError();
  }
}

}  // namespace spill::client::internal
