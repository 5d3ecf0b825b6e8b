// Bad input: a clear InvalidArgument naming what was wrong, and nothing
// written.
#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server/optim/optimizer.h"

namespace spill::optim {
namespace {

void ExpectInvalid(const absl::Status& s, const std::string& mentions) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(std::string(s.message()).find(mentions), std::string::npos)
      << "'" << s.message() << "' does not mention " << mentions;
}

TEST(ValidationTest, HyperParametersNameTheField) {
  auto with = [](auto change) {
    Hyper h;
    change(h);
    return ValidateHyper(h);
  };
  EXPECT_TRUE(with([](Hyper&) {}).ok());
  ExpectInvalid(with([](Hyper& h) { h.lr = -1e-3f; }), "lr");
  ExpectInvalid(with([](Hyper& h) { h.lr = NAN; }), "lr");
  ExpectInvalid(with([](Hyper& h) { h.beta1 = 1.f; }), "beta1");
  ExpectInvalid(with([](Hyper& h) { h.beta2 = -0.1f; }), "beta2");
  ExpectInvalid(with([](Hyper& h) { h.eps = 0.f; }), "eps");
  ExpectInvalid(with([](Hyper& h) { h.weight_decay = -1.f; }), "weight_decay");
  ExpectInvalid(with([](Hyper& h) { h.algo = Algo::kLion; h.beta2 = 1.5f; }), "beta2");
  ExpectInvalid(with([](Hyper& h) { h.algo = Algo::kAdagrad; h.initial_accumulator_value = -1; }),
                "initial_accumulator_value");
  ExpectInvalid(with([](Hyper& h) { h.algo = Algo::kSgd; h.momentum = -0.5f; }), "momentum");
  ExpectInvalid(with([](Hyper& h) { h.algo = Algo::kSgd; h.dampening = 2.f; }), "dampening");
  ExpectInvalid(with([](Hyper& h) { h.algo = Algo::kSgd; h.nesterov = true; }), "nesterov");
  ExpectInvalid(with([](Hyper& h) {
                  h.algo = Algo::kSgd;
                  h.momentum = 0.9f;
                  h.dampening = 0.1f;
                  h.nesterov = true;
                }),
                "nesterov");
  ExpectInvalid(with([](Hyper& h) { h.algo = static_cast<Algo>(42); }), "algo");
  // Fields an algorithm does not use are not checked for it.
  EXPECT_TRUE(with([](Hyper& h) { h.algo = Algo::kSgd; h.eps = 0.f; }).ok());
}

TEST(ValidationTest, StateCounts) {
  Hyper h;
  EXPECT_EQ(StateCount(h), 2);
  h.algo = Algo::kAdam;
  EXPECT_EQ(StateCount(h), 2);
  h.algo = Algo::kAdagrad;
  EXPECT_EQ(StateCount(h), 1);
  h.algo = Algo::kLion;
  EXPECT_EQ(StateCount(h), 1);
  h.algo = Algo::kSgd;
  EXPECT_EQ(StateCount(h), 0);
  h.momentum = 0.9f;
  EXPECT_EQ(StateCount(h), 1);
}

class StepInputTest : public ::testing::Test {
 protected:
  static constexpr uint64_t kN = 100;
  std::vector<float> grad = std::vector<float>(kN, 0.5f), master = std::vector<float>(kN, 1.f),
                     m = std::vector<float>(kN, 0.1f), v = std::vector<float>(kN, 0.2f);
  std::vector<uint16_t> param = std::vector<uint16_t>(kN, 7);
  Executor exec{1};
  Hyper h;

  ShardView View() {
    return {DType::kFloat32, grad.data(), master.data(), {m.data(), v.data()},
            DType::kBFloat16, param.data(), kN};
  }
  // Runs Step and the reference on a view changed by `change`; both must
  // fail mentioning `mentions` and leave every array untouched.
  template <class F>
  void ExpectRejected(F change, const std::string& mentions, StepArgs a = {}) {
    ShardView view = View();
    change(view);
    ExpectInvalid(Step(h, a, view, exec), mentions);
    ExpectInvalid(reference::Step(h, a, view), mentions);
    EXPECT_EQ(master, std::vector<float>(kN, 1.f));
    EXPECT_EQ(m, std::vector<float>(kN, 0.1f));
    EXPECT_EQ(v, std::vector<float>(kN, 0.2f));
    EXPECT_EQ(param, std::vector<uint16_t>(kN, 7));
  }
};

TEST_F(StepInputTest, RejectsBadViewsAndChangesNothing) {
  ExpectRejected([](ShardView& s) { s.n = 0; }, "n is 0");
  ExpectRejected([](ShardView& s) { s.grad = nullptr; }, "grad");
  ExpectRejected([](ShardView& s) { s.master = nullptr; }, "master");
  ExpectRejected([](ShardView& s) { s.state[1] = nullptr; }, "state[1]");
  ExpectRejected([](ShardView& s) { s.grad_dtype = DType::kFloat64; }, "float64");
  ExpectRejected([](ShardView& s) { s.param_dtype = DType::kInt8; }, "int8");
  ExpectRejected([](ShardView& s) { s.grad_dtype = static_cast<DType>(99); }, "grad dtype");
  ExpectRejected([](ShardView&) {}, "step", StepArgs{0, 1.f});
  ExpectRejected([](ShardView&) {}, "grad_scale", StepArgs{1, NAN});
  ExpectRejected([](ShardView&) {}, "grad_scale", StepArgs{1, INFINITY});
  h.lr = -1;
  ExpectRejected([](ShardView&) {}, "lr");
}

TEST_F(StepInputTest, StatesNotNeededMayBeNull) {
  h.algo = Algo::kSgd;
  ShardView view = View();
  view.state[0] = view.state[1] = nullptr;
  EXPECT_TRUE(Step(h, {}, view, exec).ok());
  h.momentum = 0.9f;
  ExpectInvalid(Step(h, {}, view, exec), "state[0]");
}

TEST_F(StepInputTest, NonFiniteGradientPropagatesIntoTheUpdatedElements) {
  // Documented: Step does not check gradients; the caller skips overflowed
  // steps (found by Accumulate/SumSquares) before calling it.
  grad[3] = INFINITY;
  ASSERT_TRUE(Step(h, {}, View(), exec).ok());
  EXPECT_FALSE(std::isfinite(master[3]));
  EXPECT_TRUE(std::isfinite(master[2]) && std::isfinite(master[4]));
}

TEST(ValidationTest, AccumulateSumSquaresInitRejectBadInput) {
  Executor exec(1);
  std::vector<float> a(8, 1.f), g(8, 1.f);
  ExpectInvalid(Accumulate(DType::kFloat32, nullptr, a.data(), 8, false, 1, exec).status(), "grad");
  ExpectInvalid(Accumulate(DType::kFloat32, g.data(), nullptr, 8, false, 1, exec).status(), "accum");
  ExpectInvalid(Accumulate(DType::kFloat32, g.data(), a.data(), 0, false, 1, exec).status(), "n is 0");
  ExpectInvalid(Accumulate(DType::kInt32, g.data(), a.data(), 8, false, 1, exec).status(), "int32");
  ExpectInvalid(Accumulate(DType::kFloat32, g.data(), a.data(), 8, false, NAN, exec).status(),
                "scale");
  EXPECT_EQ(a, std::vector<float>(8, 1.f));
  ExpectInvalid(reference::Accumulate(DType::kInt32, g.data(), a.data(), 8, false, 1).status(),
                "int32");
  ExpectInvalid(SumSquares(DType::kFloat32, nullptr, 8, exec).status(), "data");
  ExpectInvalid(SumSquares(DType::kFloat64, g.data(), 8, exec).status(), "float64");
  ExpectInvalid(SumSquares(DType::kFloat32, g.data(), 0, exec).status(), "n is 0");
  ExpectInvalid(InitMaster(DType::kBFloat16, nullptr, a.data(), 8, exec), "param");
  ExpectInvalid(InitMaster(DType::kBFloat16, g.data(), nullptr, 8, exec), "master");
  ExpectInvalid(InitMaster(DType::kUInt8, g.data(), a.data(), 8, exec), "uint8");
  Hyper h;
  float* st[2] = {a.data(), nullptr};
  ExpectInvalid(InitState(h, st, 8), "state[1]");
  EXPECT_EQ(a, std::vector<float>(8, 1.f));
  ExpectInvalid(InitState(h, st, 0), "n is 0");
  h.algo = Algo::kAdagrad;
  h.initial_accumulator_value = 0.25f;
  ASSERT_TRUE(InitState(h, st, 8).ok());
  EXPECT_EQ(a, std::vector<float>(8, 0.25f));
}

}  // namespace
}  // namespace spill::optim
