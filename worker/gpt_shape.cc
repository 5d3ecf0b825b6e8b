#include "worker/gpt_shape.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace spill::worker {

const std::vector<std::string>& GptPresetNames() {
  static const std::vector<std::string>* names =
      new std::vector<std::string>{"125M", "350M", "1.3B", "2.7B", "6.7B", "13B"};
  return *names;
}

absl::StatusOr<GptShape> GptPreset(const std::string& name) {
  struct Preset {
    const char* name;
    int64_t layers, hidden, heads;
  };
  static constexpr Preset kPresets[] = {
      {"125M", 12, 768, 12},  {"350M", 24, 1024, 16}, {"1.3B", 24, 2048, 16},
      {"2.7B", 32, 2560, 32}, {"6.7B", 32, 4096, 32}, {"13B", 40, 5120, 40},
  };
  for (const Preset& p : kPresets) {
    if (name == p.name) {
      GptShape shape;
      shape.name = p.name;
      shape.layers = p.layers;
      shape.hidden = p.hidden;
      shape.heads = p.heads;
      return shape;
    }
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown preset '", name, "' (known: ",
                                                 absl::StrJoin(GptPresetNames(), ", "), ")"));
}

absl::Status ValidateGptShape(const GptShape& s) {
  const std::pair<const char*, int64_t> fields[] = {{"layers", s.layers}, {"hidden", s.hidden},
                                                    {"heads", s.heads},   {"vocab", s.vocab},
                                                    {"seq_len", s.seq_len}};
  for (const auto& [field, value] : fields) {
    if (value < 1) {
      return absl::InvalidArgumentError(absl::StrCat("model ", field, "=", value, " must be >= 1"));
    }
  }
  if (s.hidden % s.heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("model heads=", s.heads,
                                                   " must divide hidden=", s.hidden));
  }
  return absl::OkStatus();
}

int64_t GptBlockParams(const GptShape& s) {
  const int64_t h = s.hidden;
  // ln1 (2h) + qkv (3h^2 + 3h) + attention out (h^2 + h) + ln2 (2h)
  // + fc (4h^2 + 4h) + mlp out (4h^2 + h).
  return 12 * h * h + 13 * h;
}

int64_t GptEmbeddingParams(const GptShape& s) { return (s.vocab + s.seq_len) * s.hidden; }

int64_t GptTotalParams(const GptShape& s) {
  return GptEmbeddingParams(s) + s.layers * GptBlockParams(s) + 2 * s.hidden;
}

int64_t GptLargestLayerParams(const GptShape& s) {
  return std::max(GptEmbeddingParams(s), GptBlockParams(s));
}

}  // namespace spill::worker
