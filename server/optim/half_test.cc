#include "server/optim/half.h"

#include <cmath>
#include <random>

#include "gtest/gtest.h"

namespace spill::optim {
namespace {

uint16_t HalfBits(_Float16 h) {
  uint16_t u;
  std::memcpy(&u, &h, 2);
  return u;
}
_Float16 BitsHalf(uint16_t u) {
  _Float16 h;
  std::memcpy(&h, &u, 2);
  return h;
}

// bf16 by definition: the nearer of the two bf16 neighbours, ties to even.
uint16_t NearestBF16(float f) {
  const uint32_t u = FloatBits(f);
  const uint16_t lo = static_cast<uint16_t>(u >> 16);
  const uint16_t hi = static_cast<uint16_t>(lo + 1);
  const double dlo = std::fabs(double{f} - double{BF16ToFloat(lo)});
  const double dhi = std::fabs(double{f} - double{BF16ToFloat(hi)});
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return (lo & 1) ? hi : lo;
}

TEST(HalfTest, EveryHalfWidensLikeTheCompiler) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float want = static_cast<float>(BitsHalf(static_cast<uint16_t>(h)));
    const float got = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << h;
    } else {
      ASSERT_EQ(FloatBits(got), FloatBits(want)) << h;
      ASSERT_EQ(FloatToHalf(got), h) << h;  // round trip
    }
  }
}

TEST(HalfTest, NarrowingRoundsToNearestEvenLikeTheCompiler) {
  std::mt19937 rng(1);
  for (int i = 0; i < 2000000; ++i) {
    // Half of the samples in fp16's range (incl. subnormals), half anywhere.
    uint32_t u = rng();
    if (i & 1) u = (u & 0x807fffffu) | ((100u + rng() % 45u) << 23);
    const float f = BitsFloat(u);
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToHalf(f), HalfBits(static_cast<_Float16>(f))) << std::hex << u;
  }
  EXPECT_EQ(FloatToHalf(65519.f), 0x7bff);  // rounds down to 65504
  EXPECT_EQ(FloatToHalf(65520.f), 0x7c00);  // ties to even: Inf
  EXPECT_EQ(FloatToHalf(-INFINITY), 0xfc00);
  EXPECT_TRUE((FloatToHalf(NAN) & 0x7c00) == 0x7c00 && (FloatToHalf(NAN) & 0x3ff) != 0);
}

TEST(HalfTest, BF16RoundsToNearestEven) {
  std::mt19937 rng(2);
  for (int i = 0; i < 2000000; ++i) {
    const float f = BitsFloat(rng());
    if (!std::isfinite(f) || std::fabs(f) > 3.38e38f) continue;
    ASSERT_EQ(FloatToBF16(f), NearestBF16(f)) << f;
  }
  EXPECT_EQ(FloatToBF16(BitsFloat(0x3f808000u)), 0x3f80);  // tie, even below
  EXPECT_EQ(FloatToBF16(BitsFloat(0x3f818000u)), 0x3f82);  // tie, even above
  EXPECT_EQ(FloatToBF16(INFINITY), 0x7f80);
  EXPECT_EQ(FloatToBF16(BitsFloat(0x7f7fffffu)), 0x7f80);  // max float rounds to Inf
  const uint16_t nan = FloatToBF16(BitsFloat(0xffc00001u));
  EXPECT_TRUE(std::isnan(BF16ToFloat(nan)));
  EXPECT_EQ(nan & 0x8000, 0x8000);
  // A NaN whose payload sits only in the low 16 bits stays NaN.
  EXPECT_TRUE(std::isnan(BF16ToFloat(FloatToBF16(BitsFloat(0x7f800001u)))));
}

}  // namespace
}  // namespace spill::optim
