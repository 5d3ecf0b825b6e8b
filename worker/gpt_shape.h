// The shape of a GPT-style decoder (token + position embeddings, pre-LN
// blocks of causal self-attention and a 4x GELU MLP, final LayerNorm, LM head
// tied to the token embedding) and its parameter counts. No LibTorch: used by
// the memory estimator as well as the model.
#ifndef SPILL_WORKER_GPT_SHAPE_H_
#define SPILL_WORKER_GPT_SHAPE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace spill::worker {

struct GptShape {
  std::string name;  // Preset name, or "custom".
  int64_t layers = 12;
  int64_t hidden = 768;
  int64_t heads = 12;
  int64_t vocab = 50257;
  int64_t seq_len = 2048;
};

// Names of the presets, smallest first: 125M, 350M, 1.3B, 2.7B, 6.7B, 13B
// (the GPT-3 paper's shapes; 13B uses hidden 5120 so heads divide it).
const std::vector<std::string>& GptPresetNames();
// A preset's shape (vocab 50257, seq_len 2048). InvalidArgument naming the
// unknown preset and listing the known ones.
absl::StatusOr<GptShape> GptPreset(const std::string& name);
// InvalidArgument naming the field when a size is < 1 or heads does not
// divide hidden.
absl::Status ValidateGptShape(const GptShape& shape);

// Parameters of one transformer block: 12*h^2 + 13*h.
int64_t GptBlockParams(const GptShape& shape);
// Token and position embeddings: (vocab + seq_len) * h.
int64_t GptEmbeddingParams(const GptShape& shape);
// Everything, the tied head counted once: embeddings + layers * block + 2*h.
int64_t GptTotalParams(const GptShape& shape);
// The largest unit the worker gathers at once (the embedding layer or one
// block): max(embedding params, block params).
int64_t GptLargestLayerParams(const GptShape& shape);

}  // namespace spill::worker

#endif  // SPILL_WORKER_GPT_SHAPE_H_
