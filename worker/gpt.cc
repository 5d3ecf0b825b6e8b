#include "worker/gpt.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace spill::worker {
namespace {

// A 64-bit mix (Steele, Lea and Flood's SplitMix64 finaliser): distinct
// seeds for neighbouring chunks' generators.
uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

class EmbeddingLayer final : public Layer {
 public:
  explicit EmbeddingLayer(const GptShape& s) : Layer("embedding", 0) {
    Add("embedding.wte", {s.vocab, s.hidden}, ParamInit::kNormal);
    Add("embedding.wpe", {s.seq_len, s.hidden}, ParamInit::kNormal, 0.01);
  }
  at::Tensor Forward(const at::Tensor& tokens, const std::vector<at::Tensor>& p,
                     const at::Tensor&) const override {
    const int64_t t = tokens.size(1);
    TORCH_CHECK(t <= p[1].size(0), "sequence of ", t, " tokens exceeds seq_len ", p[1].size(0));
    at::Tensor pos = at::arange(t, tokens.options().dtype(at::kLong));
    return at::embedding(p[0], tokens) + at::embedding(p[1], pos);
  }
};

class BlockLayer final : public Layer {
 public:
  BlockLayer(const GptShape& s, int block)
      : Layer(absl::StrCat("block.", block), block + 1), heads_(s.heads) {
    const int64_t h = s.hidden;
    const double residual_std = 0.02 / std::sqrt(2.0 * static_cast<double>(s.layers));
    const std::string p = name() + ".";
    Add(p + "ln1.weight", {h}, ParamInit::kOnes);
    Add(p + "ln1.bias", {h}, ParamInit::kZeros);
    Add(p + "attn.qkv.weight", {3 * h, h}, ParamInit::kNormal);
    Add(p + "attn.qkv.bias", {3 * h}, ParamInit::kZeros);
    Add(p + "attn.out.weight", {h, h}, ParamInit::kNormal, residual_std);
    Add(p + "attn.out.bias", {h}, ParamInit::kZeros);
    Add(p + "ln2.weight", {h}, ParamInit::kOnes);
    Add(p + "ln2.bias", {h}, ParamInit::kZeros);
    Add(p + "mlp.fc.weight", {4 * h, h}, ParamInit::kNormal);
    Add(p + "mlp.fc.bias", {4 * h}, ParamInit::kZeros);
    Add(p + "mlp.proj.weight", {h, 4 * h}, ParamInit::kNormal, residual_std);
    Add(p + "mlp.proj.bias", {h}, ParamInit::kZeros);
  }

  at::Tensor Forward(const at::Tensor& x, const std::vector<at::Tensor>& p,
                     const at::Tensor&) const override {
    const int64_t b = x.size(0), t = x.size(1), h = x.size(2);
    at::Tensor a = at::layer_norm(x, {h}, p[0], p[1]);
    at::Tensor qkv = at::linear(a, p[2], p[3]);  // [B, T, 3h]
    auto split = [&](int64_t i) {
      return qkv.narrow(2, i * h, h).view({b, t, heads_, h / heads_}).transpose(1, 2);
    };
    at::Tensor y = at::scaled_dot_product_attention(split(0), split(1), split(2), /*attn_mask=*/{},
                                                    /*dropout_p=*/0.0, /*is_causal=*/true);
    y = y.transpose(1, 2).reshape({b, t, h});
    at::Tensor r = x + at::linear(y, p[4], p[5]);
    at::Tensor m = at::gelu(at::linear(at::layer_norm(r, {h}, p[6], p[7]), p[8], p[9]), "tanh");
    return r + at::linear(m, p[10], p[11]);
  }

 private:
  int64_t heads_;
};

class HeadLayer final : public Layer {
 public:
  static constexpr int64_t kVocabAlign = 64;
  HeadLayer(const GptShape& s) : Layer("head", static_cast<int>(s.layers) + 1) {
    Add("head.ln_f.weight", {s.hidden}, ParamInit::kOnes);
    Add("head.ln_f.bias", {s.hidden}, ParamInit::kZeros);
  }
  at::Tensor Forward(const at::Tensor& x, const std::vector<at::Tensor>& p,
                     const at::Tensor& tied) const override {
    TORCH_CHECK(tied.defined(), "the head needs the embedding's wte (tied LM head)");
    const at::Tensor h = at::layer_norm(x, {x.size(-1)}, p[0], p[1]);
    const int64_t vocab = tied.size(0);
    const int64_t pad = x.is_cuda() ? (kVocabAlign - vocab % kVocabAlign) % kVocabAlign : 0;
    if (pad == 0) return at::linear(h, tied);
    // cuBLAS has only slow kernels for rows of odd length (GPT-2's vocab of
    // 50257 ran at a sixth of the blocks' rate): the product runs on the
    // weight padded with zero rows and the extra logits are dropped.
    return at::linear(h, at::constant_pad_nd(tied, {0, 0, 0, pad})).narrow(-1, 0, vocab);
  }
};

}  // namespace

void Layer::Add(const std::string& name, std::vector<int64_t> shape, ParamInit init, double std) {
  ParamSpec spec;
  spec.name = name;
  spec.numel = 1;
  for (int64_t d : shape) spec.numel *= d;
  spec.shape = std::move(shape);
  spec.offset = numel_;
  spec.init = init;
  spec.init_std = std;
  numel_ += spec.numel;
  params_.push_back(std::move(spec));
}

absl::Status Layer::Initialize(const at::Tensor& flat, uint64_t seed) const {
  if (!flat.defined() || flat.numel() != numel_ || !flat.is_floating_point()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer ", name_, " needs a floating-point tensor of ", numel_, " elements, got ",
        flat.defined() ? flat.numel() : 0));
  }
  // Drawn in place when `flat` is what InitializeRange takes, else in fp32
  // first and copied.
  if (flat.dim() == 1 && flat.scalar_type() == at::kFloat && flat.device().is_cpu() &&
      flat.is_contiguous()) {
    return InitializeRange(flat, 0, seed);
  }
  at::Tensor values = at::empty({numel_}, at::kFloat);
  SPILL_RETURN_IF_ERROR(InitializeRange(values, 0, seed));
  c10::NoGradGuard no_grad;
  at::Tensor(flat).copy_(values);
  return absl::OkStatus();
}

absl::Status Layer::InitializeRange(const at::Tensor& out, int64_t begin, uint64_t seed) const {
  if (!out.defined() || out.dim() != 1 || out.scalar_type() != at::kFloat ||
      !out.device().is_cpu() || !out.is_contiguous() || begin < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer ", name_, ": initial values go to a contiguous 1-D fp32 CPU tensor from a "
        "non-negative offset, got ", out.defined() ? out.toString() : "an undefined tensor",
        out.defined() ? absl::StrCat(" of ", out.dim(), " dimensions") : "", " from ", begin));
  }
  // Each chunk's generator gets a 32-bit seed (mt19937 keeps only 32 bits):
  // the seed's hash XOR (layer index << 20 | the chunk's ordinal in the
  // layer), distinct for every chunk of a model by construction.
  if (index_ < 0 || index_ >= (1 << 12)) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", name_, ": index ", index_, " is past the 4096 layers the "
                     "initialiser's chunk seeds tell apart"));
  }
  std::vector<int64_t> first_chunk(params_.size() + 1, 0);  // per parameter, in layer order
  for (size_t k = 0; k < params_.size(); ++k) {
    first_chunk[k + 1] = first_chunk[k] + (params_[k].numel + kInitChunk - 1) / kInitChunk;
  }
  if (first_chunk.back() > (1 << 20)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer ", name_, " has ", first_chunk.back(), " initialisation chunks of ", kInitChunk,
        " elements; at most 2^20 have seeds of their own"));
  }
  const uint32_t seed_hash = static_cast<uint32_t>(SplitMix64(seed));
  const int64_t end = begin + out.numel();
  // The chunks overlapping [begin, end): (parameter, chunk index).
  std::vector<std::pair<size_t, int64_t>> chunks;
  for (size_t k = 0; k < params_.size(); ++k) {
    const ParamSpec& p = params_[k];
    const int64_t lo = std::max(begin, p.offset), hi = std::min(end, p.offset + p.numel);
    if (lo >= hi) continue;
    for (int64_t c = (lo - p.offset) / kInitChunk; c * kInitChunk + p.offset < hi; ++c) {
      chunks.emplace_back(k, c);
    }
  }
  try {
    c10::NoGradGuard no_grad;
    if (end > numel_) {
      const int64_t pad = std::max(begin, numel_);
      out.narrow(0, pad - begin, end - pad).zero_();
    }
    at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t from, int64_t to) {
      for (int64_t i = from; i < to; ++i) {
        const auto [k, c] = chunks[static_cast<size_t>(i)];
        const ParamSpec& p = params_[k];
        const int64_t chunk_lo = p.offset + c * kInitChunk;
        const int64_t chunk_n = std::min(kInitChunk, p.offset + p.numel - chunk_lo);
        const int64_t lo = std::max(begin, chunk_lo), hi = std::min(end, chunk_lo + chunk_n);
        at::Tensor dst = out.narrow(0, lo - begin, hi - lo);
        switch (p.init) {
          case ParamInit::kNormal: {
            // The whole chunk is drawn, so that its values do not depend on
            // which part of it this range holds.
            const uint32_t ordinal = static_cast<uint32_t>(first_chunk[k] + c);
            at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(
                seed_hash ^ (static_cast<uint32_t>(index_) << 20 | ordinal));
            const bool whole = lo == chunk_lo && hi == chunk_lo + chunk_n;
            at::Tensor v = whole ? dst : at::empty({chunk_n}, at::kFloat);
            v.normal_(0.0, p.init_std, gen);
            if (!whole) dst.copy_(v.narrow(0, lo - chunk_lo, hi - lo));
            break;
          }
          case ParamInit::kZeros: dst.zero_(); break;
          case ParamInit::kOnes: dst.fill_(1.0); break;
        }
      }
    });
  } catch (const c10::Error& e) {
    // An allocation of a partial chunk's values, when host memory is short.
    return absl::ResourceExhaustedError(absl::StrCat("layer ", name_, ": drawing initial values: ",
                                                     e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

std::vector<at::Tensor> Layer::Unflatten(const at::Tensor& flat) const {
  TORCH_CHECK(flat.numel() == numel_, "layer ", name_, " has ", numel_, " parameters, got ",
              flat.numel());
  std::vector<at::Tensor> out;
  out.reserve(params_.size());
  for (const ParamSpec& p : params_) out.push_back(flat.narrow(0, p.offset, p.numel).view(p.shape));
  return out;
}

absl::StatusOr<GptModel> GptModel::Create(const GptShape& shape) {
  absl::Status ok = ValidateGptShape(shape);
  if (!ok.ok()) return ok;
  GptModel model;
  model.shape_ = shape;
  model.layers_.push_back(std::make_shared<EmbeddingLayer>(shape));
  for (int i = 0; i < shape.layers; ++i) {
    model.layers_.push_back(std::make_shared<BlockLayer>(shape, i));
  }
  model.layers_.push_back(std::make_shared<HeadLayer>(shape));
  return model;
}

at::Tensor GptModel::Logits(const at::Tensor& tokens, const std::vector<at::Tensor>& flat) const {
  TORCH_CHECK(flat.size() == layers_.size(), "need ", layers_.size(), " flat parameter tensors");
  at::Tensor wte;
  at::Tensor x = tokens;
  for (size_t i = 0; i < layers_.size(); ++i) {
    std::vector<at::Tensor> params = layers_[i]->Unflatten(flat[i]);
    if (i == 0) wte = params[kTiedParam];
    x = layers_[i]->Forward(x, params, i + 1 == layers_.size() ? wte : at::Tensor());
  }
  return x;
}

at::Tensor GptModel::Loss(const at::Tensor& logits, const at::Tensor& targets) {
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}).to(at::kFloat),
                                targets.reshape({-1}));
}

double GptModel::ForwardFlopsPerToken(int64_t seq_len) const {
  const double non_embedding = static_cast<double>(GptTotalParams(shape_) -
                                                   GptEmbeddingParams(shape_));
  return 2.0 * non_embedding +
         2.0 * static_cast<double>(shape_.layers * seq_len * shape_.hidden) +
         2.0 * static_cast<double>(shape_.vocab * shape_.hidden);  // tied head matmul
}

}  // namespace spill::worker
