#include "storage/crc32c.h"

#include <isa-l/crc.h>

#include <algorithm>
#include <limits>

namespace spill::storage {

uint32_t Crc32c(const void* data, size_t n, uint32_t seed) {
  // ISA-L's crc32_iscsi takes the raw register (no pre/post inversion) and a
  // 32-bit length.
  uint32_t crc = ~seed;
  auto* p = static_cast<const unsigned char*>(data);
  constexpr size_t kMaxChunk = size_t{1} << 30;
  while (n > 0) {
    const size_t chunk = std::min(n, kMaxChunk);
    crc = crc32_iscsi(const_cast<unsigned char*>(p), static_cast<int>(chunk), crc);
    p += chunk;
    n -= chunk;
  }
  return ~crc;
}

}  // namespace spill::storage
