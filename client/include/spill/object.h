// Objects: the tensors spilld holds for a job, as a client sees them.
//
// Every value here mirrors the wire contract (spill.v1 in proto/), but this
// header is plain C++ so that it can be compiled next to LibTorch's headers.
#ifndef SPILL_CLIENT_OBJECT_H_
#define SPILL_CLIENT_OBJECT_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "spill/export.h"

namespace spill::client {

// What an object holds; spilld uses it for accounting and tier placement.
enum class ObjectKind : int {
  kUnspecified = 0,
  kParamShard = 1,  // A rank's 16-bit parameter shard.
  kGradShard = 2,   // A rank's gradient shard.
  kMaster = 3,      // fp32 master weights.
  kMoment = 4,      // An optimizer moment (Adam's exp_avg, exp_avg_sq).
  kOther = 5,
};

// Element type of an object. The values are spill.v1.DType's.
enum class DType : int {
  kUnspecified = 0,
  kFloat32 = 1,
  kFloat16 = 2,
  kBFloat16 = 3,
  kFloat64 = 4,
  kInt8 = 5,
  kUInt8 = 6,
  kInt32 = 7,
  kInt64 = 8,
};

// Bytes per element; 0 for kUnspecified or a value that is not a DType.
SPILL_CLIENT_EXPORT size_t DTypeSize(DType dtype);
// True for kFloat32, kFloat16, kBFloat16 and kFloat64.
SPILL_CLIENT_EXPORT bool DTypeIsFloatingPoint(DType dtype);
// "float32", "bfloat16", ...; "invalid" for anything else.
SPILL_CLIENT_EXPORT const char* DTypeName(DType dtype);
// "param_shard", "grad_shard", "master", "moment", "other", "unspecified".
SPILL_CLIENT_EXPORT const char* ObjectKindName(ObjectKind kind);

// Where an object lives (spill.v1.ObjectHome). kPinned: in the pinned tier
// from Register to Free. kNvme: durable on spilld's NVMe tier (spilld
// --nvme-dirs), cached in the pinned tier while acquired or until evicted;
// WriteBack starts an asynchronous write, Session::Flush waits until it is
// durable, and the object survives a restart of spilld.
enum class ObjectHome : int {
  kPinned = 1,
  kNvme = 2,
};

// Where an object's bytes are while it is resident in the pinned tier: a
// segment (which the session maps on first use) and an offset in it.
struct ObjectLocation {
  uint64_t segment_id = 0;
  uint64_t offset = 0;
  // 0 when the object has no pinned extent (for instance while it lives only
  // on NVMe); Acquire makes it resident and returns its current location.
  uint64_t size_bytes = 0;
};

// A snapshot of an object as spilld last reported it. The location is valid
// while the object is pinned (between a successful Acquire and its Release);
// an unpinned object may be moved or spilled, so take the location from the
// latest Acquire rather than from Register or List.
struct ObjectInfo {
  uint64_t object_id = 0;
  std::string name;
  ObjectKind kind = ObjectKind::kUnspecified;
  DType dtype = DType::kUnspecified;
  uint64_t num_elements = 0;
  ObjectLocation location;
  // The step that last wrote the object (set by WriteBack); 0 if never.
  uint64_t version = 0;
  // Pins held on the object by all sessions of the job.
  uint32_t pin_count = 0;
  ObjectHome home = ObjectHome::kPinned;

  // num_elements * DTypeSize(dtype).
  uint64_t byte_size() const { return num_elements * DTypeSize(dtype); }
  bool resident() const { return location.size_bytes != 0; }
};

}  // namespace spill::client

#endif  // SPILL_CLIENT_OBJECT_H_
