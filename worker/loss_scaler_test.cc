#include "worker/loss_scaler.h"

#include "gtest/gtest.h"

namespace spill::worker {
namespace {

Fp16Config Dynamic(int64_t window, int64_t hysteresis) {
  Fp16Config c;
  c.enabled = true;
  c.loss_scale = 0;
  c.initial_scale_power = 4;
  c.loss_scale_window = window;
  c.hysteresis = hysteresis;
  c.min_loss_scale = 2;
  return c;
}

TEST(LossScalerTest, StaticScaleNeverChanges) {
  Fp16Config c;
  c.loss_scale = 128;
  auto s = LossScaler::Create(c);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE(s->dynamic());
  s->Update(true);
  s->Update(false);
  EXPECT_EQ(s->scale(), 128);
}

TEST(LossScalerTest, DynamicFollowsDeepSpeedsRule) {
  auto s = LossScaler::Create(Dynamic(/*window=*/3, /*hysteresis=*/2));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->scale(), 16);
  // iter 0: (0 - -1) % 3 != 0; iter 1: 2 % 3; iter 2: 3 % 3 == 0 -> double.
  s->Update(false);
  s->Update(false);
  EXPECT_EQ(s->scale(), 16);
  s->Update(false);
  EXPECT_EQ(s->scale(), 32);
  // The first overflow is absorbed by hysteresis 2, the second halves.
  s->Update(true);
  EXPECT_EQ(s->scale(), 32);
  s->Update(true);
  EXPECT_EQ(s->scale(), 16);
  // Hysteresis is not restored until a window completes: the next halves.
  s->Update(true);
  EXPECT_EQ(s->scale(), 8);
  for (int i = 0; i < 5; ++i) s->Update(true);
  EXPECT_EQ(s->scale(), 2);  // min_loss_scale
}

TEST(LossScalerTest, BadValuesNameTheKey) {
  Fp16Config c = Dynamic(3, 2);
  c.hysteresis = 0;
  auto s = LossScaler::Create(c);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("fp16.hysteresis"), absl::string_view::npos);
  c = Dynamic(0, 2);
  s = LossScaler::Create(c);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("fp16.loss_scale_window"), absl::string_view::npos);
  c = Dynamic(3, 2);
  c.min_loss_scale = 0;
  EXPECT_FALSE(LossScaler::Create(c).ok());
  c = Dynamic(3, 2);
  c.loss_scale = -1;
  EXPECT_FALSE(LossScaler::Create(c).ok());
}

}  // namespace
}  // namespace spill::worker
