// Test helpers: random shards in any dtype.
#ifndef SPILL_SERVER_OPTIM_TEST_UTIL_H_
#define SPILL_SERVER_OPTIM_TEST_UTIL_H_

#include <cstring>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "server/optim/half.h"

namespace spill::optim::testing {

// Raw storage of n elements of a dtype (float32/bfloat16/float16).
struct Buffer {
  DType dtype;
  std::vector<uint8_t> bytes;
  Buffer(DType d, size_t n) : dtype(d), bytes(n * DTypeSize(static_cast<int>(d))) {}
  void* data() { return bytes.data(); }
  void Set(size_t i, float v) {
    if (dtype == DType::kFloat32) {
      std::memcpy(&bytes[i * 4], &v, 4);
      return;
    }
    const uint16_t h = dtype == DType::kBFloat16 ? FloatToBF16(v) : FloatToHalf(v);
    std::memcpy(&bytes[i * 2], &h, 2);
  }
  float Get(size_t i) const {
    if (dtype == DType::kFloat32) {
      float v;
      std::memcpy(&v, &bytes[i * 4], 4);
      return v;
    }
    uint16_t h;
    std::memcpy(&h, &bytes[i * 2], 2);
    return dtype == DType::kBFloat16 ? BF16ToFloat(h) : HalfToFloat(h);
  }
  uint16_t Bits16(size_t i) const {
    uint16_t h;
    std::memcpy(&h, &bytes[i * 2], 2);
    return h;
  }
};

// Normal values scaled by 10^U(lo, hi) per element.
inline void FillRandom(std::mt19937& rng, Buffer& b, size_t n, double lo, double hi) {
  std::normal_distribution<double> nd;
  std::uniform_real_distribution<double> ex(lo, hi);
  for (size_t i = 0; i < n; ++i) b.Set(i, static_cast<float>(nd(rng) * std::pow(10.0, ex(rng))));
}

constexpr DType kDTypes[] = {DType::kFloat32, DType::kBFloat16, DType::kFloat16};

}  // namespace spill::optim::testing

#endif  // SPILL_SERVER_OPTIM_TEST_UTIL_H_
