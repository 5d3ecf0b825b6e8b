// Registering mapped segments with CUDA (cudaHostRegister), so that copies
// between them and the GPU are DMA at full speed. Two implementations: one
// built when the CUDA toolkit is found (cuda_host_register.cc, which defines
// SPILL_CLIENT_WITH_CUDA for the client), one that registers nothing.
#ifndef SPILL_CLIENT_CUDA_HOST_REGISTER_H_
#define SPILL_CLIENT_CUDA_HOST_REGISTER_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace spill::client::internal {

// Recent drivers refuse larger single registrations.
inline constexpr uint64_t kMaxCudaRegisterChunk = uint64_t{64} << 30;

// True in a build with CUDA support.
bool CudaCompiled();

// Whether this process can register memory: it was built with CUDA and the
// runtime reports at least one device. Probed once per process; *reason
// (when not null) says why not ("no CUDA device: ...").
bool CudaUsable(std::string* reason);

// Page-locks [addr, addr + size) with cudaHostRegisterDefault, in chunks of
// at most kMaxCudaRegisterChunk. On failure unregisters the chunks already
// registered and returns Internal naming the CUDA error. Requires CudaUsable.
absl::Status CudaHostRegister(void* addr, uint64_t size);

// Undoes a successful CudaHostRegister(addr, size). Errors are ignored: the
// memory is about to be unmapped, which unpins it regardless.
void CudaHostUnregister(void* addr, uint64_t size);

}  // namespace spill::client::internal

#endif  // SPILL_CLIENT_CUDA_HOST_REGISTER_H_
