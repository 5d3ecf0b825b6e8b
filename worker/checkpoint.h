// ZeRO-3 checkpoints of spill-train: each rank's shards of every layer's
// optimizer states, written per rank, published once every rank has written,
// and readable into any world size. No LibTorch: data are plain float spans.
//
// A layer's parameters are one flat vector of `numel` elements, padded to
// shard * world with shard = ceil(numel / world); rank r holds elements
// [r * shard, (r + 1) * shard). On disk:
//
//   <dir>/<tag>/rank_<r>_of_<W>.safetensors  tensors "<layer>/<state>" (F32,
//       1-D, shard elements) in meta order; __metadata__: format, version,
//       rank, world_size, step
//   <dir>/<tag>/meta.json   layers (name, numel, params), world size, step,
//                           states, the engine's opaque state
//   <dir>/<tag>/COMPLETE    the marker: written last, after meta.json
//   <dir>/latest            the tag of the last published checkpoint
//
// Saving (every rank, then rank 0):
//   SPILL_RETURN_IF_ERROR(WriteRankShard(dir, tag, rank, meta, arrays));
//   collectives->Barrier();
//   if (rank == 0) SPILL_RETURN_IF_ERROR(PublishCheckpoint(dir, tag, meta));
// Resuming into any world size:
//   SPILL_ASSIGN_OR_RETURN(CheckpointReader ckpt, CheckpointReader::Open(dir,
//   "")); for (layer, state) SPILL_RETURN_IF_ERROR(
//       ckpt.ReadShardInto(layer.name, state, rank, world, slot_span));
//
// <dir> must be one file system shared by every rank (rank 0 checks all rank
// files before publishing), as for DeepSpeed's checkpoints. A published tag
// is never rewritten: saving to it again is AlreadyExists.
//
// Every file is written under a temp name, fsynced, renamed and its directory
// fsynced. Functions are thread-compatible; a CheckpointReader's const
// methods may run concurrently.
#ifndef SPILL_WORKER_CHECKPOINT_H_
#define SPILL_WORKER_CHECKPOINT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace spill::worker {

class SafetensorsFile;

struct CkptParam {
  std::string name;  // Unique over the model ("block.3.attn.qkv.weight").
  std::vector<int64_t> shape;
  int64_t offset = 0;  // In the layer's flat vector.
};

struct CkptLayer {
  std::string name;  // Unique; no '/'.
  int64_t numel = 0;
  std::vector<CkptParam> params;  // Within [0, numel), not overlapping.
};

struct CkptMeta {
  std::vector<CkptLayer> layers;
  int world_size = 0;
  int64_t step = 0;
  std::vector<std::string> states;  // e.g. {"master", "exp_avg", "exp_avg_sq"}; no '/'.
  // A JSON object the engine round-trips (scaler, trace, config echo); empty
  // means {}. Read back as compact JSON (same value, not the same bytes).
  std::string engine_state_json;
};

struct CkptArray {
  std::string layer;
  std::string state;
  absl::Span<const float> data;  // shard = ShardElements(numel, world) elements.
};

enum class CkptDType { kFp32, kBf16, kFp16 };

// ceil(numel / world): elements of one rank's shard.
int64_t ShardElements(int64_t numel, int world);

// "rank_<r>_of_<W>.safetensors".
std::string RankFileName(int rank, int world);

// InvalidArgument naming the field for: world_size < 1, step < 0, no states,
// an empty, duplicate or '/'-containing state or layer name, numel < 0, a
// parameter with an empty or duplicate name, a negative dimension, or a range
// outside [0, numel) or overlapping another, or engine_state_json that is not
// a JSON object. A tag must be 1..200 of [A-Za-z0-9._-], not "." or "..".
absl::Status ValidateCkptMeta(const CkptMeta& meta);
absl::Status ValidateCkptTag(const std::string& tag);

// Writes <dir>/<tag>/rank_<rank>_of_<W>.safetensors (creating the
// directories) from `arrays`: exactly one per (layer, state) of `meta`, each
// of ShardElements(numel, world_size) elements. InvalidArgument for an
// invalid tag or meta, a rank outside [0, world_size), an unknown, missing or
// duplicate array or a wrong size; AlreadyExists when <dir>/<tag> is already
// a published checkpoint (it is left untouched); errno statuses for I/O.
// On any failure no rank file is replaced.
absl::Status WriteRankShard(const std::string& dir, const std::string& tag, int rank,
                            const CkptMeta& meta, const std::vector<CkptArray>& arrays);

// Rank 0, after every rank's WriteRankShard and a barrier: checks every rank
// file (exists, parses, format/version/rank/world_size/step match, every
// (layer, state) present as F32 [shard] and nothing else), then writes
// meta.json, the COMPLETE marker and <dir>/latest, in that order, each
// atomically. InvalidArgument for an invalid tag or meta; AlreadyExists when
// the tag is already published; FailedPrecondition naming the missing or bad
// rank file (nothing written, `latest` unchanged); errno statuses for I/O.
absl::Status PublishCheckpoint(const std::string& dir, const std::string& tag,
                               const CkptMeta& meta);

// The tag to load: `tag`, or the contents of <dir>/latest when empty.
// NotFound "no checkpoint in <dir> (<dir>/latest does not exist)" or
// "checkpoint <dir>/<tag> does not exist"; InvalidArgument for a bad tag
// (also one read from `latest`); FailedPrecondition "checkpoint <dir>/<tag>
// was not completed (no COMPLETE marker)".
absl::StatusOr<std::string> ResolveCheckpointTag(const std::string& dir, const std::string& tag);

// meta.json of checkpoint `tag` (empty: latest), after ResolveCheckpointTag's
// checks (its errors). DataLoss naming meta.json when it is unreadable as a
// valid CkptMeta.
absl::StatusOr<CkptMeta> ReadCheckpointMeta(const std::string& dir, const std::string& tag);

class CheckpointReader {
 public:
  // Resolves `tag` (empty: latest), reads meta.json and opens every rank file,
  // checking each header against the meta. Errors of ReadCheckpointMeta;
  // DataLoss naming the file for a missing, truncated, corrupt or mismatched
  // rank file.
  static absl::StatusOr<CheckpointReader> Open(const std::string& dir, const std::string& tag);
  // Same with a meta the caller already read (ReadCheckpointMeta).
  static absl::StatusOr<CheckpointReader> Open(const std::string& dir, const std::string& tag,
                                               const CkptMeta& meta);
  CheckpointReader(CheckpointReader&&) noexcept;
  CheckpointReader& operator=(CheckpointReader&&) noexcept;
  ~CheckpointReader();

  const std::string& tag() const { return tag_; }
  const CkptMeta& meta() const { return meta_; }

  // The `state` array of `layer` for rank `new_rank` of `new_world`:
  // ShardElements(numel, new_world) elements, the padding zero, assembled
  // from the old ranks' files by reading only the byte ranges needed.
  // NotFound for an unknown layer or state; InvalidArgument for a bad
  // new_rank/new_world or (Into) an `out` of another size; DataLoss naming
  // file and tensor when a file turns out shorter than its header, or when a
  // read that covers a whole old tensor (same world size, or consolidation)
  // fails its CRC32C. Partial reads of a tensor are not checksummed.
  absl::StatusOr<std::vector<float>> ReadShard(const std::string& layer, const std::string& state,
                                               int new_rank, int new_world) const;
  absl::Status ReadShardInto(const std::string& layer, const std::string& state, int new_rank,
                             int new_world, absl::Span<float> out) const;

 private:
  CheckpointReader();
  std::string dir_, tag_;
  CkptMeta meta_;
  std::vector<std::unique_ptr<SafetensorsFile>> ranks_;
};

// One-shot CheckpointReader::Open(dir, tag, meta).ReadShard(...).
absl::StatusOr<std::vector<float>> ReadShard(const std::string& dir, const std::string& tag,
                                             const CkptMeta& meta, const std::string& layer,
                                             const std::string& state, int new_rank, int new_world);

// DeepSpeed's zero_to_fp32: every parameter of the "master" state (by
// CkptParam name and shape, padding dropped) as one safetensors file in
// `dtype` (16-bit by round-to-nearest-even), metadata {"format": "pt",
// "step", "tag"}. Streams one layer at a time. Errors of
// CheckpointReader::Open; FailedPrecondition when the checkpoint has no
// "master" state; errno statuses for I/O (`out_path` then unchanged).
absl::Status ConsolidateCheckpoint(const std::string& dir, const std::string& tag,
                                   const std::string& out_path, CkptDType dtype);

// stage3_gather_16bit_weights_on_model_save: `full_layers[i]` is layers[i]'s
// gathered flat vector (at least numel elements; the padding is ignored),
// written as named parameters in `dtype`, metadata {"format": "pt"}.
// InvalidArgument for invalid layers, a count mismatch or a short layer;
// errno statuses for I/O (`out_path` then unchanged).
absl::Status WriteConsolidatedWeights(const std::string& out_path,
                                      const std::vector<CkptLayer>& layers,
                                      const std::vector<absl::Span<const float>>& full_layers,
                                      CkptDType dtype);

}  // namespace spill::worker

#endif  // SPILL_WORKER_CHECKPOINT_H_
