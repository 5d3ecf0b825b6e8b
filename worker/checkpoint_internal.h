// Internal to checkpoint*.cc: the parts of the on-disk format shared by the
// writer and the reader.
#ifndef SPILL_WORKER_CHECKPOINT_INTERNAL_H_
#define SPILL_WORKER_CHECKPOINT_INTERNAL_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "worker/checkpoint.h"
#include "worker/safetensors.h"

namespace spill::worker::internal {

inline constexpr char kShardFormat[] = "spill-zero3-shard";
inline constexpr char kMetaFormat[] = "spill-zero3";
inline constexpr int kFormatVersion = 1;
inline constexpr char kMetaFile[] = "meta.json";
inline constexpr char kCompleteFile[] = "COMPLETE";
inline constexpr char kLatestFile[] = "latest";

// "<dir>/<tag>".
std::string TagDir(const std::string& dir, const std::string& tag);
// "<layer>/<state>".
std::string TensorName(const std::string& layer, const std::string& state);

// Metadata key of a rank-file tensor's CRC32C (8 hex digits, over the
// tensor's bytes as written, padding included).
std::string CrcKey(const std::string& tensor_name);
// The CRC32C of `tensor_name` in `file`'s metadata; false when absent or
// malformed.
bool TensorCrc(const SafetensorsFile& file, const std::string& tensor_name, uint32_t* crc);

// Why rank file `file` does not hold rank `rank` of `meta` (format, version,
// rank, world_size, step, exactly the tensors "<layer>/<state>" as F32
// [shard], each with its CRC32C); empty when it does.
std::string CheckRankFile(const SafetensorsFile& file, int rank, const CkptMeta& meta);

}  // namespace spill::worker::internal

#endif  // SPILL_WORKER_CHECKPOINT_INTERNAL_H_
