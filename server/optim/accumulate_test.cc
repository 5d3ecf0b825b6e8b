// Gradient accumulation, sums of squares, master initialisation, and the
// detection of non-finite gradients.
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "server/optim/optimizer.h"
#include "server/optim/test_util.h"

namespace spill::optim {
namespace {

using testing::Buffer;

// fma(g, scale, acc) rounded once (kernel) vs (acc + g*scale) in double
// rounded to fp32 (reference): double rounding differs by at most one ulp.
double Ulp(float x) { return std::nextafter(std::fabs(x), INFINITY) - std::fabs(x); }

TEST(AccumulateTest, MatchesReferenceAndSumsSquaresOfTheResult) {
  std::mt19937 rng(11);
  Executor exec(2);
  for (DType gd : testing::kDTypes) {
    for (uint64_t n : {1ull, 5ull, 31ull, 1024ull, 200003ull}) {
      Buffer g(gd, n);
      std::vector<float> acc(n), ref(n);
      for (int micro = 0; micro < 4; ++micro) {
        testing::FillRandom(rng, g, n, -3, 0.5);
        const bool assign = micro == 0;
        const float scale = 1.f / (micro + 1.5f);
        auto got = Accumulate(gd, g.data(), acc.data(), n, assign, scale, exec);
        auto want = reference::Accumulate(gd, g.data(), ref.data(), n, assign, scale);
        ASSERT_TRUE(got.ok() && want.ok());
        for (uint64_t i = 0; i < n; ++i) {
          ASSERT_LE(std::fabs(acc[i] - ref[i]), Ulp(ref[i])) << i;
          acc[i] = ref[i];  // continue from identical inputs
        }
        // Squares of values that may differ by one ulp: relative 2^-22.
        EXPECT_NEAR(*got, *want, *want * 3e-7 + 1e-300);
        auto sq = SumSquares(DType::kFloat32, acc.data(), n, exec);
        ASSERT_TRUE(sq.ok());
        EXPECT_NEAR(*sq, *want, *want * 1e-12);
      }
    }
  }
}

TEST(AccumulateTest, SumSquaresMatchesReference) {
  std::mt19937 rng(12);
  Executor exec(3);
  for (DType d : testing::kDTypes) {
    const uint64_t n = 99991;
    Buffer b(d, n);
    testing::FillRandom(rng, b, n, -2, 1);
    auto got = SumSquares(d, b.data(), n, exec, 2);
    auto want = reference::SumSquares(d, b.data(), n);
    ASSERT_TRUE(got.ok() && want.ok());
    EXPECT_NEAR(*got, *want, *want * 1e-12);  // both in double, different order
  }
}

TEST(AccumulateTest, NonFiniteGradientsAreReported) {
  Executor exec(1);
  const uint64_t n = 1000;
  for (uint16_t bad : {uint16_t{0x7c00}, uint16_t{0xfc00}, uint16_t{0x7e00}}) {  // +Inf -Inf NaN
    Buffer g(DType::kFloat16, n);
    for (uint64_t i = 0; i < n; ++i) g.Set(i, 0.5f);
    std::memcpy(&g.bytes[2 * 777], &bad, 2);
    std::vector<float> acc(n, 1.f);
    auto s = Accumulate(DType::kFloat16, g.data(), acc.data(), n, false, 1.f, exec);
    ASSERT_TRUE(s.ok());
    EXPECT_FALSE(std::isfinite(*s)) << std::hex << bad;
    auto sq = SumSquares(DType::kFloat16, g.data(), n, exec);
    ASSERT_TRUE(sq.ok());
    EXPECT_FALSE(std::isfinite(*sq));
  }
  // fp32 overflow of the accumulated value itself.
  std::vector<float> g(64, 3e38f), acc(64, 3e38f);
  auto s = Accumulate(DType::kFloat32, g.data(), acc.data(), 64, false, 1.f, exec);
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(std::isinf(*s));
  // All finite: finite.
  std::vector<float> ok(64, 2.f);
  auto f = SumSquares(DType::kFloat32, ok.data(), 64, exec);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(*f, 256.0);
}

TEST(AccumulateTest, InitMasterWidensEveryBitPattern) {
  Executor exec(2);
  const uint64_t n = 65536;
  std::vector<uint16_t> bits(n);
  for (uint64_t i = 0; i < n; ++i) bits[i] = static_cast<uint16_t>(i);
  std::vector<float> master(n);
  for (DType d : {DType::kBFloat16, DType::kFloat16}) {
    ASSERT_TRUE(InitMaster(d, bits.data(), master.data(), n, exec).ok());
    for (uint64_t i = 0; i < n; ++i) {
      const float want = d == DType::kBFloat16 ? BF16ToFloat(bits[i]) : HalfToFloat(bits[i]);
      if (std::isnan(want)) {
        ASSERT_TRUE(std::isnan(master[i])) << i;
      } else {
        ASSERT_EQ(FloatBits(master[i]), FloatBits(want)) << DTypeName(static_cast<int>(d)) << i;
      }
    }
  }
  std::vector<float> src = {1.5f, -2.25f, 3e-40f};
  ASSERT_TRUE(InitMaster(DType::kFloat32, src.data(), master.data(), 3, exec).ok());
  EXPECT_EQ(FloatBits(master[2]), FloatBits(src[2]));
}

}  // namespace
}  // namespace spill::optim
