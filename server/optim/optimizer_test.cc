// The SIMD kernels against the double-precision reference.
//
// Tolerances. Each step is checked from identical fp32 inputs: the kernel
// rounds every operation to fp32 (unit roundoff u = 2^-24), the reference
// computes in double and rounds the result once. By the standard forward
// error bound, a chain of k fp32 operations whose terms t_j are summed has an
// absolute error <= k * u * sum |t_j| (to first order), whatever the
// cancellation. Every state is at most ~5 operations deep in a step (scale,
// L2 term, two products, the FMA, the final rounding), so we allow
// 8 * u * (sum of the absolute values of its terms). For the master weight
// the errors of the moments propagate through the update m / (sqrt(v) + eps):
// first-order propagation (d(m/den) = dm/den + m * dden / den^2, with
// dden = dv / (2 sqrt(v))) doubled as a margin, plus 8u of |p|.
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server/optim/kernels.h"
#include "server/optim/optimizer.h"
#include "server/optim/test_util.h"

namespace spill::optim {
namespace {

using testing::Buffer;
constexpr double kU = 1.0 / (1 << 24);

struct Tol {
  double p, s0, s1;
  bool sign_ambiguous = false;  // Lion: sign(c) within rounding of 0
  double lion_lr = 0;
};

// Error bounds for one element from its pre-step values (see file comment).
Tol Tolerance(const Hyper& h, const StepArgs& a, double g, double p, double s0, double s1,
              double p_ref, double s0_ref, double s1_ref) {
  const double lr = h.lr, wd = h.weight_decay, b1 = h.beta1, b2 = h.beta2, eps = h.eps;
  g *= a.grad_scale;
  const bool l2 = h.algo == Algo::kAdam || h.algo == Algo::kAdagrad || h.algo == Algo::kSgd;
  const double gs = std::fabs(g) + (l2 ? wd * std::fabs(p) : 0.0);  // |terms| of g'
  const double gl = g + (l2 ? wd * p : 0.0);
  Tol t{8 * kU * (std::fabs(p) + std::fabs(p_ref)), 0, 0};
  auto through_div = [&](double step, double num, double dnum, double v, double dv, double mul,
                         double add) {
    const double den = std::sqrt(v) * mul + add;
    const double dden = (v > 0 ? dv / (2 * std::sqrt(v)) : std::sqrt(dv)) * mul + 4 * kU * den;
    return 2 * step * (dnum / den + std::fabs(num) * dden / (den * den)) +
           4 * kU * step * std::fabs(num) / den;
  };
  switch (h.algo) {
    case Algo::kAdam:
    case Algo::kAdamW: {
      const double tt = static_cast<double>(a.step);
      const double bc1 = h.bias_correction ? 1 - std::pow(b1, tt) : 1;
      const double bc2 = h.bias_correction ? 1 - std::pow(b2, tt) : 1;
      t.s0 = 8 * kU * (b1 * std::fabs(s0) + (1 - b1) * gs);
      t.s1 = 8 * kU * (b2 * s1 + (1 - b2) * gs * gs);
      t.p += through_div(lr / bc1, s0_ref, t.s0, s1_ref, t.s1, 1 / std::sqrt(bc2), eps);
      break;
    }
    case Algo::kAdagrad:
      t.s0 = 8 * kU * (s0 + gs * gs);
      t.p += through_div(lr, gl, 8 * kU * gs, s0_ref, t.s0, 1, eps);
      break;
    case Algo::kLion: {
      const double c = b1 * s0 + (1 - b1) * g;
      t.sign_ambiguous = std::fabs(c) <= 8 * kU * (b1 * std::fabs(s0) + (1 - b1) * std::fabs(g));
      t.lion_lr = lr;
      t.p += 8 * kU * lr;
      t.s0 = 8 * kU * (b2 * std::fabs(s0) + (1 - b2) * std::fabs(g));
      break;
    }
    case Algo::kSgd: {
      double dir = gs;
      if (h.momentum > 0) {
        const double buf = a.step == 1 ? gs : h.momentum * std::fabs(s0) + (1 - h.dampening) * gs;
        t.s0 = 8 * kU * buf;
        dir = h.nesterov ? gs + h.momentum * buf : buf;
      }
      t.p += 2 * lr * 8 * kU * dir;
      break;
    }
  }
  return t;
}

struct Shard {
  uint64_t n;
  Buffer grad, param;
  std::vector<float> master, s0, s1;
  Shard(uint64_t n_, DType gd, DType pd)
      : n(n_), grad(gd, n_), param(pd, n_), master(n_), s0(n_), s1(n_) {}
  ShardView View(bool write_param = true) {
    return {grad.dtype, grad.data(), master.data(), {s0.data(), s1.data()}, param.dtype,
            write_param ? param.data() : nullptr, n};
  }
};

Hyper RandomHyper(std::mt19937& rng, Algo algo) {
  std::uniform_real_distribution<float> u01(0, 1);
  Hyper h;
  h.algo = algo;
  h.lr = std::pow(10.f, -4 + 3 * u01(rng));
  h.beta1 = algo == Algo::kLion ? 0.8f + 0.19f * u01(rng) : 0.99f * u01(rng);
  h.beta2 = 0.9f + 0.0999f * u01(rng);
  h.eps = std::pow(10.f, -10 + 4 * u01(rng));
  h.weight_decay = u01(rng) < 0.3f ? 0.f : 0.1f * u01(rng);
  h.bias_correction = u01(rng) < 0.8f;
  if (algo == Algo::kSgd) {
    h.momentum = u01(rng) < 0.25f ? 0.f : 0.99f * u01(rng);
    h.dampening = u01(rng) < 0.5f ? 0.f : u01(rng);
    h.nesterov = h.momentum > 0 && h.dampening == 0 && u01(rng) < 0.6f;
  }
  h.initial_accumulator_value = u01(rng) < 0.5f ? 0.f : u01(rng);
  return h;
}

void InitShard(std::mt19937& rng, const Hyper& h, Shard& s) {
  std::normal_distribution<float> nd;
  for (uint64_t i = 0; i < s.n; ++i) s.master[i] = nd(rng);
  float* st[2] = {s.s0.data(), s.s1.data()};
  ASSERT_TRUE(InitState(h, st, s.n).ok());
}

// Runs `steps` steps of the kernel, each checked against the reference from
// the same inputs; the kernel's outputs carry on to the next step.
void CheckSteps(std::mt19937& rng, const Hyper& h, Shard& s, uint64_t first_step, int steps,
                Executor& exec) {
  const int states = StateCount(h);
  std::uniform_real_distribution<float> u01(0, 1);
  for (int k = 0; k < steps; ++k) {
    const StepArgs a{first_step + k, 0.1f + 1.9f * u01(rng)};
    testing::FillRandom(rng, s.grad, s.n, -3, s.grad.dtype == DType::kFloat16 ? 0.5 : 1);
    Shard ref = s;
    ASSERT_TRUE(reference::Step(h, a, ref.View()).ok());
    const Shard before = s;
    ASSERT_TRUE(Step(h, a, s.View(), exec).ok());
    for (uint64_t i = 0; i < s.n; ++i) {
      const double g = before.grad.Get(i);
      const Tol t = Tolerance(h, a, g, before.master[i], before.s0[i], before.s1[i], ref.master[i],
                              ref.s0[i], ref.s1[i]);
      const double dp = std::fabs(double{s.master[i]} - ref.master[i]);
      bool p_ok = dp <= t.p;
      if (!p_ok && t.sign_ambiguous) {  // the other sign (or 0) is as right
        for (double shift : {-2.0, -1.0, 1.0, 2.0}) {
          p_ok |= std::fabs(s.master[i] - (ref.master[i] + shift * t.lion_lr)) <= t.p;
        }
      }
      ASSERT_TRUE(p_ok) << AlgoName(h.algo) << " step " << a.step << " i " << i << " master "
                        << s.master[i] << " ref " << ref.master[i] << " tol " << t.p;
      if (states > 0) {
        ASSERT_LE(std::fabs(double{s.s0[i]} - ref.s0[i]), t.s0)
            << AlgoName(h.algo) << " state0 i " << i << " " << s.s0[i] << " ref " << ref.s0[i];
      }
      if (states > 1) {
        ASSERT_LE(std::fabs(double{s.s1[i]} - ref.s1[i]), t.s1)
            << AlgoName(h.algo) << " state1 i " << i << " " << s.s1[i] << " ref " << ref.s1[i];
      }
      // The parameter is exactly the kernel's master rounded to its dtype.
      Buffer want(s.param.dtype, 1);
      want.Set(0, s.master[i]);
      ASSERT_EQ(std::memcmp(&s.param.bytes[i * want.bytes.size()], want.bytes.data(),
                            want.bytes.size()), 0)
          << "param i " << i;
    }
  }
}

constexpr Algo kAlgos[] = {Algo::kAdamW, Algo::kAdam, Algo::kAdagrad, Algo::kLion, Algo::kSgd};

TEST(OptimizerTest, MatchesReferenceOverShapesDtypesAndHyperParameters) {
  std::mt19937 rng(42);
  Executor exec(2);
  std::printf("SIMD target: %s\n", internal::TargetName());
  for (Algo algo : kAlgos) {
    for (DType gd : testing::kDTypes) {
      for (DType pd : testing::kDTypes) {
        for (uint64_t n : {1ull, 7ull, 15ull, 16ull, 17ull, 33ull, 1000ull, 70001ull}) {
          const Hyper h = RandomHyper(rng, algo);
          ASSERT_TRUE(ValidateHyper(h).ok());
          Shard s(n, gd, pd);
          InitShard(rng, h, s);
          const uint64_t first = rng() % 2 ? 1 : 1 + rng() % 1000;
          CheckSteps(rng, h, s, first, n > 10000 ? 3 : 12, exec);
          if (::testing::Test::HasFatalFailure()) return;
        }
      }
    }
  }
}

TEST(OptimizerTest, LargeShardManySteps) {
  std::mt19937 rng(7);
  Executor exec(2);
  for (Algo algo : kAlgos) {
    Hyper h = RandomHyper(rng, algo);
    Shard s((1u << 18) + 3, DType::kBFloat16, DType::kBFloat16);  // 1 MiB+ per array
    InitShard(rng, h, s);
    CheckSteps(rng, h, s, 1, 4, exec);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(OptimizerTest, ResultDoesNotDependOnThreadsOrRangeSplits) {
  std::mt19937 rng(3);
  Executor one(0), many(3);
  for (Algo algo : kAlgos) {
    const Hyper h = RandomHyper(rng, algo);
    const uint64_t n = 300007;
    Shard a(n, DType::kBFloat16, DType::kFloat16);
    InitShard(rng, h, a);
    testing::FillRandom(rng, a.grad, n, -3, 0);
    Shard b = a, c = a;
    const StepArgs args{5, 0.7f};
    ASSERT_TRUE(Step(h, args, a.View(), one).ok());
    ASSERT_TRUE(Step(h, args, b.View(), many, 3).ok());
    // Two calls split at an odd element: the tail path gives the same bits.
    const uint64_t cut = 12345;
    ShardView lo = c.View(), hi = c.View();
    lo.n = cut;
    hi.n = n - cut;
    hi.grad = static_cast<const uint16_t*>(hi.grad) + cut;
    hi.master += cut;
    hi.state[0] += cut;
    hi.state[1] += cut;
    hi.param = static_cast<uint16_t*>(hi.param) + cut;
    ASSERT_TRUE(Step(h, args, lo, many).ok());
    ASSERT_TRUE(Step(h, args, hi, many).ok());
    for (const Shard* o : {&b, &c}) {
      ASSERT_EQ(std::memcmp(a.master.data(), o->master.data(), n * 4), 0) << AlgoName(algo);
      ASSERT_EQ(std::memcmp(a.s0.data(), o->s0.data(), n * 4), 0);
      ASSERT_EQ(std::memcmp(a.s1.data(), o->s1.data(), n * 4), 0);
      ASSERT_EQ(a.param.bytes, o->param.bytes);
    }
  }
}

TEST(OptimizerTest, NullParamWritesNoParameter) {
  std::mt19937 rng(4);
  Executor exec(1);
  Hyper h;
  Shard s(100, DType::kFloat32, DType::kBFloat16);
  InitShard(rng, h, s);
  testing::FillRandom(rng, s.grad, 100, -2, 0);
  const auto param_before = s.param.bytes;
  const auto master_before = s.master;
  ASSERT_TRUE(Step(h, {}, s.View(false), exec).ok());
  EXPECT_EQ(s.param.bytes, param_before);
  EXPECT_NE(s.master, master_before);
}

// A step rescaled afterwards (Rescale) against the step run with that
// grad_scale from the start. Bounds: each moment is off by the rounding of
// the terms it was made of (the first step's stored result, the change, the
// direct step's result), 16u of their absolute values; the master by that
// propagated through m / (sqrt(v) + eps) as in Tolerance, plus 16u of |p|.
TEST(OptimizerTest, RescaledStepMatchesTheStepWithTheOtherScale) {
  std::mt19937 rng(11);
  Executor exec(2);
  const std::pair<float, float> scales[] = {{1.f, 0.8f}, {1.f, 0.3f}, {1.f, 0.05f}, {0.5f, 1.f}};
  for (Algo algo : {Algo::kAdamW, Algo::kAdam}) {
    for (DType gd : testing::kDTypes) {
      for (const auto& [ran, want] : scales) {
        Hyper h = RandomHyper(rng, algo);
        if (algo == Algo::kAdam) h.weight_decay = 0.f;
        const uint64_t n = 4099;
        Shard a(n, gd, DType::kBFloat16);
        InitShard(rng, h, a);
        // Moments from a few earlier steps, then this step's gradient.
        for (uint64_t t = 1; t <= 3; ++t) {
          testing::FillRandom(rng, a.grad, n, -3, 1);
          ASSERT_TRUE(Step(h, {t, 1.f}, a.View(), exec).ok());
        }
        testing::FillRandom(rng, a.grad, n, -3, 1);
        Shard b = a;
        const StepArgs args{4, ran};
        ASSERT_TRUE(Step(h, args, a.View(), exec).ok());
        const Shard after = a;
        ASSERT_TRUE(Rescale(h, args, want, a.View(), exec).ok());
        ASSERT_TRUE(Step(h, {4, want}, b.View(), exec).ok());
        const double bc1 = h.bias_correction ? 1 - std::pow(double{h.beta1}, 4) : 1;
        const double bc2 = h.bias_correction ? 1 - std::pow(double{h.beta2}, 4) : 1;
        const double step_size = h.lr / bc1, k = 1 / std::sqrt(bc2);
        for (uint64_t i = 0; i < n; ++i) {
          const double g = a.grad.Get(i), ga = g * ran, gb = g * want;
          const double e0 = 16 * kU * (std::fabs(after.s0[i]) + (1 - h.beta1) * std::fabs(ga - gb) +
                                       std::fabs(b.s0[i]));
          const double e1 = 16 * kU * (after.s1[i] + (1 - h.beta2) * std::fabs(ga * ga - gb * gb) +
                                       b.s1[i]);
          const double den = std::sqrt(b.s1[i]) * k + h.eps;
          const double dden =
              (b.s1[i] > 0 ? e1 / (2 * std::sqrt(b.s1[i])) : std::sqrt(e1)) * k + 4 * kU * den;
          const double ep = 16 * kU * (std::fabs(after.master[i]) + std::fabs(b.master[i])) +
                            2 * step_size * (e0 / den + std::fabs(b.s0[i]) * dden / (den * den));
          const std::string where = std::string(AlgoName(algo)) + " grad " +
                                    DTypeName(static_cast<int>(gd)) + " " + std::to_string(ran) +
                                    " -> " + std::to_string(want) + " i " + std::to_string(i);
          ASSERT_LE(std::fabs(double{a.s0[i]} - b.s0[i]), e0) << where;
          ASSERT_LE(std::fabs(double{a.s1[i]} - b.s1[i]), e1) << where;
          ASSERT_LE(std::fabs(double{a.master[i]} - b.master[i]), ep) << where;
          ASSERT_EQ(a.param.Bits16(i), FloatToBF16(a.master[i])) << where;
        }
      }
    }
  }
}

TEST(OptimizerTest, RescaleToTheScaleItRanWithChangesNothing) {
  std::mt19937 rng(12);
  Executor exec(2);
  const Hyper h = RandomHyper(rng, Algo::kAdamW);
  Shard s(1000, DType::kBFloat16, DType::kBFloat16);
  InitShard(rng, h, s);
  testing::FillRandom(rng, s.grad, s.n, -3, 1);
  ASSERT_TRUE(Step(h, {1, 0.7f}, s.View(), exec).ok());
  const Shard before = s;
  ASSERT_TRUE(Rescale(h, {1, 0.7f}, 0.7f, s.View(), exec).ok());
  EXPECT_EQ(s.master, before.master);
  EXPECT_EQ(s.s0, before.s0);
  EXPECT_EQ(s.s1, before.s1);
  EXPECT_EQ(s.param.bytes, before.param.bytes);
}

TEST(OptimizerTest, RescaleRefusesWhatItCannotUndoAndWritesNothing) {
  std::mt19937 rng(13);
  Executor exec(1);
  struct Case {
    Algo algo;
    float weight_decay, rescale_to;
    const char* message;
  };
  const Case cases[] = {
      {Algo::kLion, 0.f, 0.5f, "lion step cannot be rescaled"},
      {Algo::kAdagrad, 0.f, 0.5f, "adagrad step cannot be rescaled"},
      {Algo::kSgd, 0.f, 0.5f, "sgd step cannot be rescaled"},
      {Algo::kAdam, 0.01f, 0.5f, "adam step with weight decay cannot be rescaled"},
      {Algo::kAdamW, 0.01f, 0.f, "rescale_to = 0 must be finite and > 0"},
      {Algo::kAdamW, 0.01f, NAN, "rescale_to = nan must be finite and > 0"},
  };
  for (const Case& c : cases) {
    Hyper h = RandomHyper(rng, c.algo);
    h.weight_decay = c.weight_decay;
    h.momentum = 0.5f;
    h.nesterov = false;
    Shard s(100, DType::kFloat32, DType::kBFloat16);
    InitShard(rng, h, s);
    testing::FillRandom(rng, s.grad, s.n, -2, 0);
    const Shard before = s;
    const absl::Status st = Rescale(h, {1, 1.f}, c.rescale_to, s.View(), exec);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
    EXPECT_NE(st.message().find(c.message), std::string::npos) << st.message();
    EXPECT_EQ(s.master, before.master);
    EXPECT_EQ(s.s0, before.s0);
    EXPECT_EQ(s.param.bytes, before.param.bytes);
  }
}

}  // namespace
}  // namespace spill::optim
