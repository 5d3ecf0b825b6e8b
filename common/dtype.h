// Element types of objects, shared by server and client (the wire enum lives
// in proto/; these values match spill.v1.DType).
#ifndef SPILL_COMMON_DTYPE_H_
#define SPILL_COMMON_DTYPE_H_

#include <cstddef>
#include <cstdint>

namespace spill {

enum class DType : int {
  kFloat32 = 1,
  kFloat16 = 2,
  kBFloat16 = 3,
  kFloat64 = 4,
  kInt8 = 5,
  kUInt8 = 6,
  kInt32 = 7,
  kInt64 = 8,
};

// Bytes per element; 0 for a value that is not a DType.
constexpr size_t DTypeSize(int dtype) {
  switch (dtype) {
    case 1: case 7: return 4;
    case 2: case 3: return 2;
    case 4: case 8: return 8;
    case 5: case 6: return 1;
    default: return 0;
  }
}

constexpr const char* DTypeName(int dtype) {
  switch (dtype) {
    case 1: return "float32";
    case 2: return "float16";
    case 3: return "bfloat16";
    case 4: return "float64";
    case 5: return "int8";
    case 6: return "uint8";
    case 7: return "int32";
    case 8: return "int64";
    default: return "invalid";
  }
}

}  // namespace spill

#endif  // SPILL_COMMON_DTYPE_H_
