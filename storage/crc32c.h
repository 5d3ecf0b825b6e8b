// CRC32C (Castagnoli, the iSCSI polynomial), computed by Intel ISA-L with the
// fastest instruction set the CPU has (selected at run time).
//
// Conventions are the standard ones (initial value 0xFFFFFFFF, reflected,
// final inversion): Crc32c("123456789", 9) == 0xE3069283. seed is a previous
// result, so checksums chain over pieces:
//
//   uint32_t c = Crc32c(a, na);
//   c = Crc32c(b, nb, c);          // == Crc32c(a || b)
//
// Thread-safe; data may be any alignment; n == 0 returns seed.
#ifndef SPILL_STORAGE_CRC32C_H_
#define SPILL_STORAGE_CRC32C_H_

#include <cstddef>
#include <cstdint>

namespace spill::storage {

uint32_t Crc32c(const void* data, size_t n, uint32_t seed = 0);

}  // namespace spill::storage

#endif  // SPILL_STORAGE_CRC32C_H_
