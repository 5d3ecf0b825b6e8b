// A GPT-style decoder in LibTorch (ATen ops, autograd-capable), built as a
// list of layers whose parameters live outside them, so the ZeRO-3 engine
// can create one layer's parameters at a time, flatten and shard them, and
// run each layer with parameters it gathered:
//
//   absl::StatusOr<GptModel> model = GptModel::Create(shape);
//   for (const auto& layer : model->layers()) {
//     at::Tensor flat = at::empty({layer->numel()});   // one layer at a time
//     layer->Initialize(flat, seed);
//     ... shard `flat` into world_size pieces, keep this rank's ...
//   }
//   // forward, with each layer's gathered flat parameters:
//   at::Tensor x = tokens;
//   for (i ...) x = layers[i]->Forward(x, layers[i]->Unflatten(gathered[i]), tied);
//
// Layers: "embedding" (wte [vocab, h], wpe [seq_len, h]) maps int64 tokens
// [B, T] to [B, T, h]; "block.N" (pre-LN: x + attn(ln1(x)), then
// x + mlp(ln2(x)), causal attention through scaled_dot_product_attention,
// GELU(tanh) MLP of width 4h); "head" (final LayerNorm, then logits against
// the embedding's wte: the LM head is tied, so the head's Forward takes the
// gathered wte as `tied`).
#ifndef SPILL_WORKER_GPT_H_
#define SPILL_WORKER_GPT_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/gpt_shape.h"

namespace spill::worker {

enum class ParamInit { kNormal, kZeros, kOnes };

struct ParamSpec {
  std::string name;  // "block.3.attn.qkv.weight"
  std::vector<int64_t> shape;
  int64_t numel = 0;
  int64_t offset = 0;  // In the layer's flat parameter vector.
  ParamInit init = ParamInit::kNormal;
  double init_std = 0.02;
};

class Layer {
 public:
  virtual ~Layer() = default;
  const std::string& name() const { return name_; }
  int index() const { return index_; }
  // This layer's parameters in flattening order.
  const std::vector<ParamSpec>& params() const { return params_; }
  // Total elements of the flattened parameters.
  int64_t numel() const { return numel_; }

  // Writes the initial values (GPT-2's: normal(0, 0.02), residual
  // projections scaled by 1/sqrt(2 * layers), LayerNorm 1/0, biases 0) into
  // `flat` (numel() elements, any floating dtype and device). The values are
  // drawn in fp32 on the CPU in chunks of kInitChunk elements of each
  // parameter, each chunk from its own generator, seeded by (seed, index(),
  // the chunk's ordinal in the layer): every rank, world size and thread
  // count gets the same values, and the chunks are drawn in parallel.
  // InvalidArgument for a wrong size.
  absl::Status Initialize(const at::Tensor& flat, uint64_t seed) const;

  // The same values for elements [begin, begin + out.numel()) of the flat
  // vector only, drawing just the chunks that overlap them: a rank's shard
  // without the rest of the layer. `out` is a contiguous 1-D fp32 CPU
  // tensor; elements past numel() (a shard's padding) are set to 0.
  // InvalidArgument for another tensor, a negative begin, a layer index of
  // 4096 or more or a layer of more than 2^20 chunks (the chunks' seeds are
  // distinct by construction within those bounds); ResourceExhausted when
  // the host cannot allocate a partial chunk.
  absl::Status InitializeRange(const at::Tensor& out, int64_t begin, uint64_t seed) const;

  static constexpr int64_t kInitChunk = int64_t{1} << 20;

  // Views of `flat` (numel() elements) as this layer's parameters, in
  // params() order, sharing its storage (and autograd history).
  std::vector<at::Tensor> Unflatten(const at::Tensor& flat) const;

  // Runs the layer. `params` as from Unflatten. `tied` is the embedding's
  // wte for the head, undefined otherwise. Throws c10::Error on shape
  // mismatches (LibTorch's convention at this edge).
  virtual at::Tensor Forward(const at::Tensor& x, const std::vector<at::Tensor>& params,
                             const at::Tensor& tied) const = 0;

 protected:
  Layer(std::string name, int index) : name_(std::move(name)), index_(index) {}
  void Add(const std::string& name, std::vector<int64_t> shape, ParamInit init,
           double std = 0.02);

 private:
  std::string name_;
  int index_;
  std::vector<ParamSpec> params_;
  int64_t numel_ = 0;
};

class GptModel {
 public:
  // InvalidArgument for an invalid shape (see ValidateGptShape).
  static absl::StatusOr<GptModel> Create(const GptShape& shape);

  const GptShape& shape() const { return shape_; }
  // embedding, block.0 .. block.{layers-1}, head.
  const std::vector<std::shared_ptr<const Layer>>& layers() const { return layers_; }
  // Index of the wte parameter inside the embedding layer's params().
  static constexpr int kTiedParam = 0;

  // Logits [B, T, vocab] for int64 tokens [B, T] (T <= seq_len), with every
  // layer's full flat parameters (flat[i] for layers()[i]).
  at::Tensor Logits(const at::Tensor& tokens, const std::vector<at::Tensor>& flat) const;
  // Mean cross-entropy of logits [B, T, V] against targets [B, T].
  static at::Tensor Loss(const at::Tensor& logits, const at::Tensor& targets);
  // Forward FLOPs per token (6 * params + attention), for TFLOP/s logs:
  // 2 * params_without_embeddings + 2 * layers * seq_len * hidden.
  double ForwardFlopsPerToken(int64_t seq_len) const;

 private:
  GptShape shape_;
  std::vector<std::shared_ptr<const Layer>> layers_;
};

}  // namespace spill::worker

#endif  // SPILL_WORKER_GPT_H_
