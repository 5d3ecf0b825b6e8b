#include "worker/checkpoint.h"

#include <algorithm>
#include <limits>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "storage/crc32c.h"
#include "worker/atomic_file.h"
#include "worker/checkpoint_internal.h"
#include "worker/safetensors.h"

namespace spill::worker {
namespace {

using internal::TagDir;
using internal::TensorName;
using nlohmann::json;

absl::Status Bad(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("checkpoint meta: ", what));
}

bool BadName(const std::string& name) { return name.empty() || absl::StrContains(name, "/"); }

absl::Status ValidateLayer(const CkptLayer& layer, std::set<std::string>* param_names) {
  if (layer.numel < 0) return Bad(absl::StrCat("layer '", layer.name, "' has numel ", layer.numel));
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (const CkptParam& p : layer.params) {
    const std::string where = absl::StrCat("parameter '", p.name, "' of layer '", layer.name, "'");
    if (p.name.empty() || !param_names->insert(p.name).second) {
      return Bad(absl::StrCat(where, ": empty or duplicate name"));
    }
    int64_t n = 1;
    for (int64_t d : p.shape) {
      if (d < 0 || (d > 0 && n > std::numeric_limits<int64_t>::max() / d)) {
        return Bad(absl::StrCat(where, ": bad shape"));
      }
      n *= d;
    }
    if (p.offset < 0 || n > layer.numel || p.offset > layer.numel - n) {
      return Bad(absl::StrCat(where, ": elements [", p.offset, ", ", p.offset + n,
                              ") are outside the layer's ", layer.numel));
    }
    if (n > 0) ranges.emplace_back(p.offset, p.offset + n);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) {
      return Bad(absl::StrCat("layer '", layer.name, "' has overlapping parameters at element ",
                              ranges[i].first));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateLayers(const std::vector<CkptLayer>& layers) {
  std::set<std::string> layer_names, param_names;
  for (const CkptLayer& layer : layers) {
    if (BadName(layer.name) || !layer_names.insert(layer.name).second) {
      return Bad(absl::StrCat("layer name '", layer.name, "' is empty, duplicate or has a '/'"));
    }
    SPILL_RETURN_IF_ERROR(ValidateLayer(layer, &param_names));
  }
  return absl::OkStatus();
}

absl::StatusOr<json> EngineStateJson(const std::string& text) {
  if (text.empty()) return json::object();
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Bad("engine_state_json is not a JSON object");
  return j;
}

std::string EncodeMeta(const CkptMeta& meta, const json& engine_state) {
  json layers = json::array();
  for (const CkptLayer& layer : meta.layers) {
    json params = json::array();
    for (const CkptParam& p : layer.params) {
      params.push_back({{"name", p.name}, {"shape", p.shape}, {"offset", p.offset}});
    }
    layers.push_back({{"name", layer.name}, {"numel", layer.numel}, {"params", params}});
  }
  const json j = {{"format", internal::kMetaFormat}, {"version", internal::kFormatVersion},
                  {"world_size", meta.world_size},   {"step", meta.step},
                  {"states", meta.states},           {"layers", layers},
                  {"engine_state", engine_state}};
  return j.dump(1) + "\n";
}

CkptMeta DecodeMeta(const json& j) {  // Throws json::exception.
  if (j.at("format").get<std::string>() != internal::kMetaFormat ||
      j.at("version").get<int>() != internal::kFormatVersion) {
    throw std::invalid_argument("unknown format or version");
  }
  CkptMeta meta;
  meta.world_size = j.at("world_size").get<int>();
  meta.step = j.at("step").get<int64_t>();
  meta.states = j.at("states").get<std::vector<std::string>>();
  for (const json& jl : j.at("layers")) {
    CkptLayer layer{jl.at("name").get<std::string>(), jl.at("numel").get<int64_t>(), {}};
    for (const json& jp : jl.at("params")) {
      layer.params.push_back({jp.at("name").get<std::string>(),
                              jp.at("shape").get<std::vector<int64_t>>(),
                              jp.at("offset").get<int64_t>()});
    }
    meta.layers.push_back(std::move(layer));
  }
  const json& engine = j.at("engine_state");
  if (!engine.is_object()) throw std::invalid_argument("engine_state is not an object");
  meta.engine_state_json = engine.dump();
  return meta;
}

// The arrays in file order (layers x states), or InvalidArgument.
absl::StatusOr<std::vector<const CkptArray*>> OrderArrays(const CkptMeta& meta,
                                                          const std::vector<CkptArray>& arrays) {
  std::map<std::string, const CkptArray*> by_name;
  for (const CkptArray& a : arrays) {
    if (!by_name.emplace(TensorName(a.layer, a.state), &a).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("checkpoint arrays: '", a.layer, "/", a.state, "' given twice"));
    }
  }
  std::vector<const CkptArray*> ordered;
  for (const CkptLayer& layer : meta.layers) {
    const int64_t shard = ShardElements(layer.numel, meta.world_size);
    for (const std::string& state : meta.states) {
      const auto it = by_name.find(TensorName(layer.name, state));
      if (it == by_name.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("checkpoint arrays: '", layer.name, "/", state, "' is missing"));
      }
      if (static_cast<int64_t>(it->second->data.size()) != shard) {
        return absl::InvalidArgumentError(
            absl::StrCat("checkpoint arrays: '", layer.name, "/", state, "' has ",
                         it->second->data.size(), " elements, the shard of ", layer.numel, " over ",
                         meta.world_size, " ranks is ", shard));
      }
      ordered.push_back(it->second);
      by_name.erase(it);
    }
  }
  if (!by_name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint arrays: '", by_name.begin()->first,
                                                   "' is not a layer/state of the meta"));
  }
  return ordered;
}

std::map<std::string, std::string> ShardMetadata(int rank, const CkptMeta& meta) {
  return {{"format", internal::kShardFormat},
          {"version", absl::StrCat(internal::kFormatVersion)},
          {"rank", absl::StrCat(rank)},
          {"world_size", absl::StrCat(meta.world_size)},
          {"step", absl::StrCat(meta.step)}};
}

absl::Status CheckNotPublished(const std::string& dir, const std::string& tag) {
  if (PathExists(absl::StrCat(TagDir(dir, tag), "/", internal::kCompleteFile))) {
    return absl::AlreadyExistsError(
        absl::StrCat("checkpoint ", TagDir(dir, tag), " is already published"));
  }
  return absl::OkStatus();
}

}  // namespace

namespace internal {

std::string TagDir(const std::string& dir, const std::string& tag) {
  return absl::StrCat(dir, "/", tag);
}

std::string TensorName(const std::string& layer, const std::string& state) {
  return absl::StrCat(layer, "/", state);
}

std::string CrcKey(const std::string& tensor_name) { return absl::StrCat("crc32c:", tensor_name); }

bool TensorCrc(const SafetensorsFile& file, const std::string& tensor_name, uint32_t* crc) {
  const auto it = file.metadata().find(CrcKey(tensor_name));
  if (it == file.metadata().end() || it->second.size() != 8) return false;
  return absl::SimpleHexAtoi(it->second, crc);
}

std::string CheckRankFile(const SafetensorsFile& file, int rank, const CkptMeta& meta) {
  const std::map<std::string, std::string> want = ShardMetadata(rank, meta);
  for (const auto& [key, value] : want) {
    const auto it = file.metadata().find(key);
    const std::string got = it == file.metadata().end() ? "(none)" : it->second;
    if (got != value) return absl::StrCat("metadata ", key, " is ", got, ", expected ", value);
  }
  size_t expected = 0;
  for (const CkptLayer& layer : meta.layers) {
    const int64_t shard = ShardElements(layer.numel, meta.world_size);
    for (const std::string& state : meta.states) {
      const std::string name = TensorName(layer.name, state);
      const StTensorInfo* t = file.Find(name);
      if (t == nullptr) return absl::StrCat("tensor '", name, "' is missing");
      if (t->dtype != StDType::kF32 || t->shape != std::vector<int64_t>{shard}) {
        return absl::StrCat("tensor '", name, "' is not F32 [", shard, "]");
      }
      uint32_t crc = 0;
      if (!TensorCrc(file, name, &crc)) return absl::StrCat("tensor '", name, "' has no checksum");
      ++expected;
    }
  }
  if (file.tensors().size() != expected) {
    return absl::StrCat(file.tensors().size(), " tensors, expected ", expected);
  }
  return "";
}

}  // namespace internal

int64_t ShardElements(int64_t numel, int world) {
  return world <= 0 ? 0 : (numel + world - 1) / world;
}

std::string RankFileName(int rank, int world) {
  return absl::StrCat("rank_", rank, "_of_", world, ".safetensors");
}

absl::Status ValidateCkptTag(const std::string& tag) {
  const bool chars_ok = std::all_of(tag.begin(), tag.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
  if (tag.empty() || tag.size() > 200 || !chars_ok || tag == "." || tag == "..") {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint tag '", tag, "' must be 1 to 200 of [A-Za-z0-9._-], not '.' or '..'"));
  }
  return absl::OkStatus();
}

absl::Status ValidateCkptMeta(const CkptMeta& meta) {
  if (meta.world_size < 1) return Bad(absl::StrCat("world_size ", meta.world_size, " < 1"));
  if (meta.step < 0) return Bad(absl::StrCat("step ", meta.step, " < 0"));
  if (meta.states.empty()) return Bad("no states");
  std::set<std::string> states;
  for (const std::string& s : meta.states) {
    if (BadName(s) || !states.insert(s).second) {
      return Bad(absl::StrCat("state name '", s, "' is empty, duplicate or has a '/'"));
    }
  }
  SPILL_RETURN_IF_ERROR(ValidateLayers(meta.layers));
  return EngineStateJson(meta.engine_state_json).status();
}

absl::Status WriteRankShard(const std::string& dir, const std::string& tag, int rank,
                            const CkptMeta& meta, const std::vector<CkptArray>& arrays) {
  SPILL_RETURN_IF_ERROR(ValidateCkptTag(tag));
  SPILL_RETURN_IF_ERROR(ValidateCkptMeta(meta));
  if (rank < 0 || rank >= meta.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint rank ", rank, " is outside [0, ", meta.world_size, ")"));
  }
  SPILL_ASSIGN_OR_RETURN(std::vector<const CkptArray*> ordered, OrderArrays(meta, arrays));
  SPILL_RETURN_IF_ERROR(CheckNotPublished(dir, tag));
  SPILL_RETURN_IF_ERROR(MakeDirs(TagDir(dir, tag)));
  std::vector<StTensorSpec> specs;
  std::map<std::string, std::string> metadata = ShardMetadata(rank, meta);
  for (const CkptArray* a : ordered) {
    const std::string name = TensorName(a->layer, a->state);
    const uint32_t crc = storage::Crc32c(a->data.data(), a->data.size() * sizeof(float));
    metadata[internal::CrcKey(name)] = absl::StrFormat("%08x", crc);
    specs.push_back({name, StDType::kF32, {static_cast<int64_t>(a->data.size())}});
  }
  const std::string path = absl::StrCat(TagDir(dir, tag), "/", RankFileName(rank, meta.world_size));
  SPILL_ASSIGN_OR_RETURN(auto writer, SafetensorsWriter::Create(path, std::move(specs), metadata));
  for (const CkptArray* a : ordered) {
    SPILL_RETURN_IF_ERROR(writer->AppendFloats(a->data, StDType::kF32));
  }
  return writer->Commit();
}

absl::Status PublishCheckpoint(const std::string& dir, const std::string& tag,
                               const CkptMeta& meta) {
  SPILL_RETURN_IF_ERROR(ValidateCkptTag(tag));
  SPILL_RETURN_IF_ERROR(ValidateCkptMeta(meta));
  SPILL_ASSIGN_OR_RETURN(json engine_state, EngineStateJson(meta.engine_state_json));
  SPILL_RETURN_IF_ERROR(CheckNotPublished(dir, tag));
  const std::string tag_dir = TagDir(dir, tag);
  for (int r = 0; r < meta.world_size; ++r) {
    const std::string path = absl::StrCat(tag_dir, "/", RankFileName(r, meta.world_size));
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
    std::string why =
        file.ok() ? internal::CheckRankFile(*file, r, meta) : std::string(file.status().message());
    if (!why.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("checkpoint ", tag_dir, " not published: rank file ", path, ": ", why));
    }
  }
  SPILL_RETURN_IF_ERROR(WriteFileAtomic(absl::StrCat(tag_dir, "/", internal::kMetaFile),
                                        EncodeMeta(meta, engine_state)));
  SPILL_RETURN_IF_ERROR(
      WriteFileAtomic(absl::StrCat(tag_dir, "/", internal::kCompleteFile),
                      absl::StrCat("step ", meta.step, " world_size ", meta.world_size, "\n")));
  return WriteFileAtomic(absl::StrCat(dir, "/", internal::kLatestFile), tag + "\n");
}

absl::StatusOr<std::string> ResolveCheckpointTag(const std::string& dir, const std::string& tag) {
  std::string resolved = tag;
  if (resolved.empty()) {
    const std::string latest = absl::StrCat(dir, "/", internal::kLatestFile);
    absl::StatusOr<std::string> text = ReadSmallFile(latest, 4096);
    if (absl::IsNotFound(text.status())) {
      return absl::NotFoundError(
          absl::StrCat("no checkpoint in ", dir, " (", latest, " does not exist)"));
    }
    if (!text.ok()) return text.status();
    resolved = std::string(absl::StripAsciiWhitespace(*text));
  }
  SPILL_RETURN_IF_ERROR(ValidateCkptTag(resolved));
  const std::string tag_dir = TagDir(dir, resolved);
  if (!PathExists(tag_dir)) {
    return absl::NotFoundError(absl::StrCat("checkpoint ", tag_dir, " does not exist"));
  }
  if (!PathExists(absl::StrCat(tag_dir, "/", internal::kCompleteFile))) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", tag_dir, " was not completed (no ", internal::kCompleteFile, " marker)"));
  }
  return resolved;
}

absl::StatusOr<CkptMeta> ReadCheckpointMeta(const std::string& dir, const std::string& tag) {
  SPILL_ASSIGN_OR_RETURN(std::string resolved, ResolveCheckpointTag(dir, tag));
  const std::string path = absl::StrCat(TagDir(dir, resolved), "/", internal::kMetaFile);
  SPILL_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path));
  auto loss = [&](const std::string& what) {
    return absl::DataLossError(absl::StrCat("checkpoint meta ", path, " is corrupt: ", what));
  };
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return loss("not JSON");
  CkptMeta meta;
  try {
    meta = DecodeMeta(j);
  } catch (const std::exception& e) {
    return loss(e.what());
  }
  absl::Status valid = ValidateCkptMeta(meta);
  if (!valid.ok()) return loss(std::string(valid.message()));
  return meta;
}

}  // namespace spill::worker
