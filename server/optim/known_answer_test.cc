// Known-answer vectors: three steps of each optimizer on fixed inputs,
// computed in float64 by testdata/gen_known_answers.py (numpy, the
// torch.optim formulas written out independently of this code).
//
// Tolerance: the kernel works in fp32 with hyper-parameters rounded to fp32,
// so after three steps its results differ from float64 by a few units of
// 2^-24 relative to the magnitudes involved (~1e-7); we allow 2e-6 relative
// of the magnitudes involved (result and initial weight, plus 1e-9 absolute),
// far below the size of any
// update (>= 1e-4 relative here) so a wrong formula cannot pass.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server/optim/optimizer.h"
#include "server/optim/testdata/known_answers.h"

namespace spill::optim {
namespace {

Hyper FromCase(const kat::Case& c) {
  const std::string a = c.algo;
  Hyper h;
  h.algo = a == "adamw" ? Algo::kAdamW
           : a == "adam" ? Algo::kAdam
           : a == "adagrad" ? Algo::kAdagrad
           : a == "lion" ? Algo::kLion
                         : Algo::kSgd;
  h.lr = static_cast<float>(c.lr);
  h.beta1 = static_cast<float>(c.beta1);
  h.beta2 = static_cast<float>(c.beta2);
  h.eps = static_cast<float>(c.eps);
  h.weight_decay = static_cast<float>(c.weight_decay);
  h.bias_correction = c.bias_correction;
  h.momentum = static_cast<float>(c.momentum);
  h.dampening = static_cast<float>(c.dampening);
  h.nesterov = c.nesterov;
  h.initial_accumulator_value = static_cast<float>(c.initial_accumulator_value);
  return h;
}

void ExpectClose(const char* what, const char* name, int step, const float* got,
                 const double* want) {
  for (int i = 0; i < kat::kN; ++i) {
    EXPECT_NEAR(got[i], want[i], 2e-6 * (std::fabs(want[i]) + std::fabs(kat::kMaster0[i])) + 1e-9)
        << name << " " << what << " step " << step + 1 << " element " << i;
  }
}

// Runs every case through `step_fn` (kernel or reference) with fp32 or bf16
// gradients (the inputs are exact in both).
template <class StepFn>
void RunCases(DType grad_dtype, StepFn step_fn) {
  for (const kat::Case& c : kat::kCases) {
    const Hyper h = FromCase(c);
    ASSERT_TRUE(ValidateHyper(h).ok()) << c.name;
    std::vector<float> master(kat::kMaster0, kat::kMaster0 + kat::kN), s0(kat::kN), s1(kat::kN);
    float* st[2] = {s0.data(), s1.data()};
    ASSERT_TRUE(InitState(h, st, kat::kN).ok());
    for (int t = 0; t < kat::kSteps; ++t) {
      std::vector<float> g32(kat::kGrads[t], kat::kGrads[t] + kat::kN);
      std::vector<uint16_t> g16(kat::kN);
      for (int i = 0; i < kat::kN; ++i) {
        uint32_t u;
        std::memcpy(&u, &g32[i], 4);
        ASSERT_EQ(u & 0xffff, 0u) << "input not bf16-exact";
        g16[i] = static_cast<uint16_t>(u >> 16);
      }
      ShardView v{grad_dtype,
                  grad_dtype == DType::kFloat32 ? static_cast<const void*>(g32.data()) : g16.data(),
                  master.data(), {s0.data(), s1.data()}, DType::kFloat32, nullptr, kat::kN};
      ASSERT_TRUE(step_fn(h, StepArgs{static_cast<uint64_t>(t + 1),
                                      static_cast<float>(kat::kGradScale)}, v).ok());
      ExpectClose("master", c.name, t, master.data(), c.master[t]);
      if (StateCount(h) > 0) ExpectClose("state0", c.name, t, s0.data(), c.state0[t]);
      if (StateCount(h) > 1) ExpectClose("state1", c.name, t, s1.data(), c.state1[t]);
    }
  }
}

TEST(KnownAnswerTest, KernelMatchesFloat64Vectors) {
  Executor exec(1);
  for (DType gd : {DType::kFloat32, DType::kBFloat16}) {
    RunCases(gd, [&](const Hyper& h, const StepArgs& a, const ShardView& v) {
      return Step(h, a, v, exec);
    });
  }
}

TEST(KnownAnswerTest, ReferenceMatchesFloat64Vectors) {
  RunCases(DType::kFloat32, [](const Hyper& h, const StepArgs& a, const ShardView& v) {
    return reference::Step(h, a, v);
  });
}

}  // namespace
}  // namespace spill::optim
