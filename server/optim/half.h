// Scalar bf16 / fp16 <-> fp32 conversions: the definition the SIMD kernels
// match bit for bit (round to nearest, ties to even; NaN stays NaN with its
// sign; overflow becomes infinity; fp16 subnormals exact). Used by the
// reference implementation, tests and benchmarks.
#ifndef SPILL_SERVER_OPTIM_HALF_H_
#define SPILL_SERVER_OPTIM_HALF_H_

#include <cstdint>
#include <cstring>

namespace spill::optim {

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float BF16ToFloat(uint16_t h) { return BitsFloat(static_cast<uint32_t>(h) << 16); }

inline uint16_t FloatToBF16(float f) {
  const uint32_t u = FloatBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t o = static_cast<uint32_t>(h & 0x7fff) << 13;
  const uint32_t exp = o & 0x0f800000u;
  o += (127 - 15) << 23;
  if (exp == 0x0f800000u) {
    o += (128 - 16) << 23;  // Inf / NaN
  } else if (exp == 0) {
    o += 1 << 23;  // zero / subnormal: renormalise through the FPU (exact)
    o = FloatBits(BitsFloat(o) - BitsFloat(113u << 23));
  }
  return BitsFloat(o | sign);
}

inline uint16_t FloatToHalf(float f) {
  uint32_t u = FloatBits(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint32_t o;
  if (u >= (143u << 23)) {  // |f| >= 65536, Inf or NaN
    o = u > 0x7f800000u ? 0x7e00 : 0x7c00;
  } else if (u < (113u << 23)) {  // result subnormal or zero: the FPU rounds
    o = FloatBits(BitsFloat(u) + BitsFloat(126u << 23)) - (126u << 23);
  } else {
    const uint32_t odd = (u >> 13) & 1;
    u += (static_cast<uint32_t>(15 - 127) << 23) + 0xfff + odd;
    o = u >> 13;  // a carry out of 0x7bff gives 0x7c00 = Inf
  }
  return static_cast<uint16_t>(o | (sign >> 16));
}

}  // namespace spill::optim

#endif  // SPILL_SERVER_OPTIM_HALF_H_
