#include "worker/gpt.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/data.h"

namespace spill::worker {
namespace {

GptShape Tiny() {
  GptShape s;
  s.name = "tiny";
  s.layers = 2;
  s.hidden = 32;
  s.heads = 4;
  s.vocab = 256;
  s.seq_len = 32;
  return s;
}

std::vector<at::Tensor> InitAll(const GptModel& model, uint64_t seed) {
  std::vector<at::Tensor> flat;
  for (const auto& layer : model.layers()) {
    at::Tensor t = at::empty({layer->numel()});
    EXPECT_TRUE(layer->Initialize(t, seed).ok());
    flat.push_back(t.requires_grad_());
  }
  return flat;
}

TEST(GptTest, LayersCoverEveryParameterOnce) {
  auto model = GptModel::Create(Tiny());
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_EQ(model->layers().size(), 4u);  // embedding, 2 blocks, head
  int64_t total = 0;
  for (const auto& layer : model->layers()) total += layer->numel();
  EXPECT_EQ(total, GptTotalParams(Tiny()));
  EXPECT_EQ(model->layers()[1]->numel(), GptBlockParams(Tiny()));
  EXPECT_EQ(model->layers()[1]->params()[2].name, "block.0.attn.qkv.weight");
  EXPECT_EQ(model->layers()[0]->params()[GptModel::kTiedParam].name, "embedding.wte");
}

TEST(GptTest, InitializationIsDeterministicPerLayer) {
  auto model = GptModel::Create(Tiny());
  ASSERT_TRUE(model.ok());
  const Layer& block = *model->layers()[1];
  at::Tensor a = at::empty({block.numel()}), b = at::empty({block.numel()}, at::kBFloat16);
  ASSERT_TRUE(block.Initialize(a, 7).ok());
  ASSERT_TRUE(block.Initialize(b, 7).ok());
  EXPECT_TRUE(a.to(at::kBFloat16).equal(b));
  std::vector<at::Tensor> p = block.Unflatten(a);
  EXPECT_TRUE(p[0].eq(1).all().item<bool>());  // ln1.weight
  EXPECT_TRUE(p[1].eq(0).all().item<bool>());  // ln1.bias
  EXPECT_NEAR(p[2].std().item<double>(), 0.02, 0.002);
  EXPECT_FALSE(block.Initialize(at::empty({3}), 7).ok());
}

// An embedding of 50,000 x 64 elements spans four chunks of its wte.
TEST(GptTest, ARangeOfTheInitialValuesIsTheSameSliceOfTheWhole) {
  GptShape shape = Tiny();
  shape.vocab = 50000;
  shape.hidden = 64;
  auto model = GptModel::Create(shape);
  ASSERT_TRUE(model.ok());
  const Layer& emb = *model->layers()[0];
  ASSERT_GT(emb.numel(), 3 * Layer::kInitChunk);
  at::Tensor whole = at::empty({emb.numel()});
  ASSERT_TRUE(emb.Initialize(whole, 11).ok());
  // Chunk by chunk, the values are the distribution's.
  EXPECT_NEAR(whole.narrow(0, 0, 50000 * 64).std().item<double>(), 0.02, 0.001);
  EXPECT_NEAR(whole.narrow(0, 50000 * 64, 32 * 64).std().item<double>(), 0.01, 0.001);
  // Neighbouring chunks are not copies of each other.
  EXPECT_FALSE(whole.narrow(0, 0, 1000).equal(whole.narrow(0, Layer::kInitChunk, 1000)));
  const int64_t n = emb.numel();
  // Ranges inside a chunk, across chunk and parameter boundaries, and past
  // the end (a shard's padding, zeros).
  for (auto [begin, count] : std::vector<std::pair<int64_t, int64_t>>{
           {0, 17}, {5, Layer::kInitChunk}, {Layer::kInitChunk - 3, 2 * Layer::kInitChunk},
           {50000 * 64 - 100, 300}, {n - 50, 100}, {n + 10, 20}, {0, n}}) {
    at::Tensor part = at::full({count}, 7.0f);
    ASSERT_TRUE(emb.InitializeRange(part, begin, 11).ok()) << begin;
    const int64_t in = std::max<int64_t>(0, std::min(n, begin + count) - begin);
    EXPECT_TRUE(part.narrow(0, 0, in).equal(whole.narrow(0, std::min(begin, n), in))) << begin;
    EXPECT_TRUE(part.narrow(0, in, count - in).eq(0).all().item<bool>()) << begin;
  }
  // The same values on one thread as on four.
  const int threads = at::get_num_threads();
  at::Tensor serial = at::empty({emb.numel()}), parallel = at::empty({emb.numel()});
  at::set_num_threads(1);
  ASSERT_TRUE(emb.Initialize(serial, 11).ok());
  at::set_num_threads(4);
  ASSERT_TRUE(emb.Initialize(parallel, 11).ok());
  at::set_num_threads(threads);
  EXPECT_TRUE(serial.equal(whole));
  EXPECT_TRUE(parallel.equal(whole));
  // Another seed, other values, also when the seeds differ only above their
  // low 32 bits (the generators keep 32).
  for (uint64_t seed : {uint64_t{12}, 11 + (uint64_t{7} << 32)}) {
    at::Tensor other = at::empty({emb.numel()});
    ASSERT_TRUE(emb.Initialize(other, seed).ok());
    EXPECT_FALSE(other.narrow(0, 0, 1000).equal(whole.narrow(0, 0, 1000))) << seed;
  }
  // Another layer's chunks are not this one's.
  const Layer& block = *model->layers()[1];
  at::Tensor b = at::empty({block.numel()});
  ASSERT_TRUE(block.Initialize(b, 11).ok());
  const int64_t qkv = block.params()[2].offset;
  EXPECT_FALSE(b.narrow(0, qkv, 1000).equal(whole.narrow(0, 0, 1000)));
  // Bad outputs are refused and left alone.
  at::Tensor bf16 = at::zeros({8}, at::kBFloat16);
  EXPECT_EQ(emb.InitializeRange(bf16, 0, 11).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(bf16.eq(0).all().item<bool>());
  at::Tensor f32 = at::zeros({8});
  EXPECT_EQ(emb.InitializeRange(f32, -1, 11).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(f32.eq(0).all().item<bool>());
  at::Tensor strided = at::zeros({16}).narrow(0, 0, 8).view({4, 2}).t();
  EXPECT_EQ(emb.InitializeRange(strided, 0, 11).code(), absl::StatusCode::kInvalidArgument);
  at::Tensor two_d = at::zeros({4, 2});
  EXPECT_EQ(emb.InitializeRange(two_d, 0, 11).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(two_d.eq(0).all().item<bool>());
}

TEST(GptTest, ForwardBackwardShapes) {
  auto model = GptModel::Create(Tiny());
  ASSERT_TRUE(model.ok());
  std::vector<at::Tensor> flat = InitAll(*model, 1);
  at::Tensor tokens = at::randint(256, {3, 16}, at::kLong);
  at::Tensor logits = model->Logits(tokens, flat);
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{3, 16, 256}));
  at::Tensor targets = at::randint(256, {3, 16}, at::kLong);
  at::Tensor loss = GptModel::Loss(logits, targets);
  EXPECT_NEAR(loss.item<double>(), std::log(256.0), 0.5);  // near uniform at init
  loss.backward();
  for (size_t i = 0; i < flat.size(); ++i) {
    ASSERT_TRUE(flat[i].grad().defined()) << i;
    EXPECT_EQ(flat[i].grad().sizes(), flat[i].sizes());
    EXPECT_GT(flat[i].grad().abs().sum().item<double>(), 0) << model->layers()[i]->name();
  }
}

TEST(GptTest, CausalMaskHidesTheFuture) {
  auto model = GptModel::Create(Tiny());
  ASSERT_TRUE(model.ok());
  std::vector<at::Tensor> flat = InitAll(*model, 2);
  c10::NoGradGuard no_grad;
  at::Tensor tokens = at::randint(256, {1, 10}, at::kLong);
  at::Tensor changed = tokens.clone();
  changed.index_put_({0, 9}, (tokens.index({0, 9}) + 1) % 256);
  at::Tensor a = model->Logits(tokens, flat), b = model->Logits(changed, flat);
  EXPECT_TRUE(at::allclose(a.narrow(1, 0, 9), b.narrow(1, 0, 9)));
  EXPECT_FALSE(at::allclose(a.narrow(1, 9, 1), b.narrow(1, 9, 1)));
}

// Plain Adam on one fixed batch of the default text: the loss must fall far.
TEST(GptTest, TinyModelOverfitsOneBatch) {
  auto model = GptModel::Create(Tiny());
  ASSERT_TRUE(model.ok());
  std::vector<at::Tensor> flat = InitAll(*model, 3);
  auto data = ByteDataset::Open(DefaultDataPath());
  ASSERT_TRUE(data.ok()) << data.status();
  auto batch = data->Batch(0, 0, 4, 32);
  ASSERT_TRUE(batch.ok());
  at::Tensor tokens = at::tensor(batch->tokens, at::kLong).view({4, 32});
  at::Tensor targets = at::tensor(batch->targets, at::kLong).view({4, 32});
  std::vector<at::Tensor> m, v;
  for (const at::Tensor& p : flat) {
    m.push_back(at::zeros_like(p));
    v.push_back(at::zeros_like(p));
  }
  double first = 0, last = 0;
  for (int step = 1; step <= 150; ++step) {
    at::Tensor loss = GptModel::Loss(model->Logits(tokens, flat), targets);
    if (step == 1) first = loss.item<double>();
    last = loss.item<double>();
    loss.backward();
    c10::NoGradGuard no_grad;
    for (size_t i = 0; i < flat.size(); ++i) {
      at::Tensor g = flat[i].grad();
      m[i].mul_(0.9).add_(g, 0.1);
      v[i].mul_(0.999).addcmul_(g, g, 0.001);
      at::Tensor mhat = m[i] / (1 - std::pow(0.9, step));
      at::Tensor vhat = v[i] / (1 - std::pow(0.999, step));
      flat[i].sub_(3e-3 * mhat / (vhat.sqrt() + 1e-8));
      g.zero_();
    }
  }
  EXPECT_LT(last, 0.5 * first) << "first " << first << " last " << last;
}

// On CUDA the head multiplies by the tied weight padded to 64 rows (cuBLAS
// is slow for an odd vocabulary): logits and gradients must be those of the
// plain product, with no padded logit showing.
TEST(GpuGptTest, HeadWithAnOddVocabularyMatchesThePlainProduct) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device, this machine has none";
  GptShape shape = Tiny();
  shape.vocab = 257;
  auto model = GptModel::Create(shape);
  ASSERT_TRUE(model.ok()) << model.status();
  std::vector<at::Tensor> flat = InitAll(*model, 3);
  std::vector<at::Tensor> cuda, plain;
  for (const at::Tensor& t : flat) {
    cuda.push_back(t.detach().to(at::kCUDA).requires_grad_());
    plain.push_back(t.detach().to(at::kCUDA).requires_grad_());
  }
  const at::Tensor tokens = at::randint(257, {2, 16}, at::kLong).to(at::kCUDA);
  const at::Tensor targets = at::randint(257, {2, 16}, at::kLong).to(at::kCUDA);
  at::Tensor logits = model->Logits(tokens, cuda);
  ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{2, 16, 257}));
  GptModel::Loss(logits, targets).backward();

  // The same network with the head's product written out.
  const auto& layers = model->layers();
  const at::Tensor wte = layers[0]->Unflatten(plain[0])[GptModel::kTiedParam];
  at::Tensor x = tokens;
  for (size_t i = 0; i + 1 < layers.size(); ++i) {
    x = layers[i]->Forward(x, layers[i]->Unflatten(plain[i]), at::Tensor());
  }
  const std::vector<at::Tensor> ln = layers.back()->Unflatten(plain.back());
  const at::Tensor expected = at::linear(at::layer_norm(x, {x.size(-1)}, ln[0], ln[1]), wte);
  GptModel::Loss(expected, targets).backward();

  EXPECT_TRUE(at::allclose(logits, expected, 1e-5, 1e-5));
  for (size_t i = 0; i < flat.size(); ++i) {
    EXPECT_TRUE(at::allclose(cuda[i].grad(), plain[i].grad(), 1e-5, 1e-6))
        << layers[i]->name() << ": max difference "
        << (cuda[i].grad() - plain[i].grad()).abs().max().item<double>();
  }
}

}  // namespace
}  // namespace spill::worker
