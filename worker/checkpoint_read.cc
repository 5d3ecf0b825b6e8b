// Reading checkpoints: CheckpointReader (re-sharding reads) and the
// consolidated-weights writers.
#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "storage/crc32c.h"
#include "worker/checkpoint.h"
#include "worker/checkpoint_internal.h"
#include "worker/safetensors.h"

namespace spill::worker {
namespace {

using internal::TagDir;
using internal::TensorName;

StDType ToStDType(CkptDType dtype) {
  switch (dtype) {
    case CkptDType::kBf16:
      return StDType::kBF16;
    case CkptDType::kFp16:
      return StDType::kF16;
    case CkptDType::kFp32:
      break;
  }
  return StDType::kF32;
}

int64_t ParamNumel(const CkptParam& p) {
  int64_t n = 1;
  for (int64_t d : p.shape) n *= d;
  return n;
}

// Writes every parameter of `layers` to `out_path`; fetch(i) yields layer
// i's flat vector (valid until the next call).
template <typename Fetch>
absl::Status WriteParamFile(const std::string& out_path, const std::vector<CkptLayer>& layers,
                            CkptDType dtype, const std::map<std::string, std::string>& metadata,
                            Fetch fetch) {
  const StDType st = ToStDType(dtype);
  std::vector<StTensorSpec> specs;
  for (const CkptLayer& layer : layers) {
    for (const CkptParam& p : layer.params) specs.push_back({p.name, st, p.shape});
  }
  SPILL_ASSIGN_OR_RETURN(auto writer,
                         SafetensorsWriter::Create(out_path, std::move(specs), metadata));
  for (size_t i = 0; i < layers.size(); ++i) {
    SPILL_ASSIGN_OR_RETURN(absl::Span<const float> flat, fetch(i));
    for (const CkptParam& p : layers[i].params) {
      SPILL_RETURN_IF_ERROR(writer->AppendFloats(
          flat.subspan(static_cast<size_t>(p.offset), static_cast<size_t>(ParamNumel(p))), st));
    }
  }
  return writer->Commit();
}

// Reads elements [first, first + count) of tensor `name` of a rank file into
// `out`. When they are all of the tensor's `real` (non-padding) elements, the
// padding is read too and the tensor's CRC32C checked: DataLoss naming file
// and tensor on a mismatch.
absl::Status ReadPiece(const SafetensorsFile& file, const std::string& name, int64_t first,
                       int64_t count, int64_t real, float* out) {
  const StTensorInfo& t = *file.Find(name);  // CheckRankFile saw every tensor.
  const uint64_t bytes = static_cast<uint64_t>(count) * sizeof(float);
  SPILL_RETURN_IF_ERROR(
      file.ReadBytes(t, static_cast<uint64_t>(first) * sizeof(float), out, bytes));
  if (first != 0 || count != real) return absl::OkStatus();
  uint32_t crc = storage::Crc32c(out, bytes);
  if (t.bytes() > bytes) {
    std::vector<char> padding(t.bytes() - bytes);
    SPILL_RETURN_IF_ERROR(file.ReadBytes(t, bytes, padding.data(), padding.size()));
    crc = storage::Crc32c(padding.data(), padding.size(), crc);
  }
  uint32_t want = 0;
  internal::TensorCrc(file, name, &want);  // Present: CheckRankFile checked.
  if (crc != want) {
    return absl::DataLossError(
        absl::StrFormat("checkpoint rank file %s is corrupt: tensor '%s' has "
                        "CRC32C %08x, its header says %08x",
                        file.path(), name, crc, want));
  }
  return absl::OkStatus();
}

}  // namespace

CheckpointReader::CheckpointReader() = default;
CheckpointReader::CheckpointReader(CheckpointReader&&) noexcept = default;
CheckpointReader& CheckpointReader::operator=(CheckpointReader&&) noexcept = default;
CheckpointReader::~CheckpointReader() = default;

absl::StatusOr<CheckpointReader> CheckpointReader::Open(const std::string& dir,
                                                        const std::string& tag) {
  SPILL_ASSIGN_OR_RETURN(std::string resolved, ResolveCheckpointTag(dir, tag));
  SPILL_ASSIGN_OR_RETURN(CkptMeta meta, ReadCheckpointMeta(dir, resolved));
  return Open(dir, resolved, meta);
}

absl::StatusOr<CheckpointReader> CheckpointReader::Open(const std::string& dir,
                                                        const std::string& tag,
                                                        const CkptMeta& meta) {
  SPILL_ASSIGN_OR_RETURN(std::string resolved, ResolveCheckpointTag(dir, tag));
  SPILL_RETURN_IF_ERROR(ValidateCkptMeta(meta));
  CheckpointReader reader;
  reader.dir_ = dir;
  reader.tag_ = resolved;
  reader.meta_ = meta;
  for (int r = 0; r < meta.world_size; ++r) {
    const std::string path =
        absl::StrCat(TagDir(dir, resolved), "/", RankFileName(r, meta.world_size));
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
    if (absl::IsNotFound(file.status())) {
      return absl::DataLossError(
          absl::StrCat("checkpoint rank file ", path, " of a published checkpoint is missing"));
    }
    if (!file.ok()) return file.status();
    const std::string why = internal::CheckRankFile(*file, r, meta);
    if (!why.empty()) {
      return absl::DataLossError(
          absl::StrCat("checkpoint rank file ", path, " does not match its meta: ", why));
    }
    reader.ranks_.push_back(std::make_unique<SafetensorsFile>(*std::move(file)));
  }
  return reader;
}

absl::StatusOr<std::vector<float>> CheckpointReader::ReadShard(const std::string& layer,
                                                               const std::string& state,
                                                               int new_rank, int new_world) const {
  const auto it = std::find_if(meta_.layers.begin(), meta_.layers.end(),
                               [&](const CkptLayer& l) { return l.name == layer; });
  const int64_t numel = it == meta_.layers.end() ? 0 : it->numel;
  std::vector<float> out(
      static_cast<size_t>(std::max<int64_t>(0, ShardElements(numel, new_world))));
  SPILL_RETURN_IF_ERROR(ReadShardInto(layer, state, new_rank, new_world, absl::MakeSpan(out)));
  return out;
}

absl::Status CheckpointReader::ReadShardInto(const std::string& layer, const std::string& state,
                                             int new_rank, int new_world,
                                             absl::Span<float> out) const {
  const auto it = std::find_if(meta_.layers.begin(), meta_.layers.end(),
                               [&](const CkptLayer& l) { return l.name == layer; });
  if (it == meta_.layers.end()) {
    return absl::NotFoundError(absl::StrCat("layer '", layer, "' is not in checkpoint ", tag_));
  }
  if (std::find(meta_.states.begin(), meta_.states.end(), state) == meta_.states.end()) {
    return absl::NotFoundError(absl::StrCat("state '", state, "' is not in checkpoint ", tag_));
  }
  if (new_world < 1 || new_rank < 0 || new_rank >= new_world) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", new_rank, " of world size ", new_world, " is not a rank"));
  }
  const int64_t numel = it->numel, new_shard = ShardElements(numel, new_world);
  if (static_cast<int64_t>(out.size()) != new_shard) {
    return absl::InvalidArgumentError(absl::StrCat("shard of '", layer, "' for world size ",
                                                   new_world, " has ", new_shard,
                                                   " elements, the buffer ", out.size()));
  }
  std::fill(out.begin(), out.end(), 0.0f);
  const int64_t old_shard = ShardElements(numel, meta_.world_size);
  const int64_t lo = new_rank * new_shard, hi = std::min(numel, lo + new_shard);
  const std::string name = TensorName(layer, state);
  for (int64_t pos = lo; pos < hi;) {
    const int64_t r = pos / old_shard, base = r * old_shard;
    const int64_t end = std::min(hi, base + old_shard);
    SPILL_RETURN_IF_ERROR(ReadPiece(*ranks_[static_cast<size_t>(r)], name, pos - base, end - pos,
                                    std::min(numel, base + old_shard) - base,
                                    out.data() + (pos - lo)));
    pos = end;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> ReadShard(const std::string& dir, const std::string& tag,
                                             const CkptMeta& meta, const std::string& layer,
                                             const std::string& state, int new_rank,
                                             int new_world) {
  SPILL_ASSIGN_OR_RETURN(CheckpointReader reader, CheckpointReader::Open(dir, tag, meta));
  return reader.ReadShard(layer, state, new_rank, new_world);
}

absl::Status ConsolidateCheckpoint(const std::string& dir, const std::string& tag,
                                   const std::string& out_path, CkptDType dtype) {
  SPILL_ASSIGN_OR_RETURN(CheckpointReader reader, CheckpointReader::Open(dir, tag));
  const CkptMeta& meta = reader.meta();
  if (std::find(meta.states.begin(), meta.states.end(), "master") == meta.states.end()) {
    return absl::FailedPreconditionError(absl::StrCat("checkpoint ", TagDir(dir, reader.tag()),
                                                      " has no \"master\" state to consolidate"));
  }
  std::vector<float> flat;
  auto fetch = [&](size_t i) -> absl::StatusOr<absl::Span<const float>> {
    SPILL_ASSIGN_OR_RETURN(flat, reader.ReadShard(meta.layers[i].name, "master", 0, 1));
    return absl::Span<const float>(flat);
  };
  return WriteParamFile(
      out_path, meta.layers, dtype,
      {{"format", "pt"}, {"step", absl::StrCat(meta.step)}, {"tag", reader.tag()}}, fetch);
}

absl::Status WriteConsolidatedWeights(const std::string& out_path,
                                      const std::vector<CkptLayer>& layers,
                                      const std::vector<absl::Span<const float>>& full_layers,
                                      CkptDType dtype) {
  CkptMeta check;
  check.world_size = 1;
  check.states = {"master"};
  check.layers = layers;
  SPILL_RETURN_IF_ERROR(ValidateCkptMeta(check));
  if (full_layers.size() != layers.size()) {
    return absl::InvalidArgumentError(absl::StrCat("consolidated weights: ", full_layers.size(),
                                                   " layer arrays for ", layers.size(), " layers"));
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    if (static_cast<int64_t>(full_layers[i].size()) < layers[i].numel) {
      return absl::InvalidArgumentError(
          absl::StrCat("consolidated weights: layer '", layers[i].name, "' has ",
                       full_layers[i].size(), " elements, needs ", layers[i].numel));
    }
  }
  auto fetch = [&](size_t i) -> absl::StatusOr<absl::Span<const float>> { return full_layers[i]; };
  return WriteParamFile(out_path, layers, dtype, {{"format", "pt"}}, fetch);
}

}  // namespace spill::worker
